"""The files a training run leaves after each round, read back as types.

:class:`utils.learning.run_state.RunState` writes ``rounds.csv``, ``labelled.csv``
and ``state.json``; the run itself, the demo and the experiments read them back here, so that a column is
parsed in one place and a missing one fails here, naming the file, rather
than as a ``KeyError`` deep in a report (``--compare`` reads the runs it draws here too).
This module stays free of TensorFlow: reports read many runs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

from utils.common.errors import InputError
from utils.common.io import read_csv

ROUNDS_FILE = "rounds.csv"
STATE_FILE = "state.json"
LABELLED_FILE = "labelled.csv"


def _number(text: str | None) -> float:
    """A float column; empty (a metric the round could not measure) is NaN."""
    return math.nan if text in ("", None) else float(text)


@dataclass(frozen=True)
class RoundRow:
    """One line of ``rounds.csv``: a round's labelled set and its scores
    (round -1: the loaded model before any target label)."""

    round: int
    labelled: int
    labelled_per_class: dict[str, int]
    pseudo_labelled: int
    pseudo_accuracy: float  # NaN when the round used no tile of the pool
    val_macro_f1: float
    val_loss: float
    test_macro_f1: float
    test_f1_per_class: dict[str, float]  # NaN for a class absent from the test set
    epochs: int
    steps: int
    seconds: float

    @classmethod
    def from_csv(cls, row: dict[str, str]) -> RoundRow:
        def per_class(prefix: str, convert) -> dict:
            return {k[len(prefix):]: convert(v) for k, v in row.items() if k.startswith(prefix)}

        return cls(round=int(row["round"]), labelled=int(row["labelled"]),
                   labelled_per_class=per_class("labelled_", int),
                   # Files from before the pool was used have no pseudo-label columns: no tile of it was used.
                   pseudo_labelled=int(row.get("pseudo_labelled", 0)),
                   pseudo_accuracy=_number(row.get("pseudo_accuracy")),
                   val_macro_f1=_number(row["val_macro_f1"]), val_loss=_number(row["val_loss"]),
                   test_macro_f1=_number(row["test_macro_f1"]), test_f1_per_class=per_class("test_f1_", _number),
                   epochs=int(row["epochs"]), steps=int(row["steps"]), seconds=_number(row["seconds"]))


def read_rounds(run: Path, fitted_only: bool = False) -> list[RoundRow]:
    """The rows of ``run``'s rounds.csv in order; with ``fitted_only`` without
    round -1 (the loaded model's scores before any target label)."""
    path = run / ROUNDS_FILE
    if not path.exists():
        raise InputError(f"{run}: no {ROUNDS_FILE} (not a training run's folder, or no round has finished)")
    try:
        rows = [RoundRow.from_csv(row) for row in read_csv(path)]
    except (KeyError, ValueError) as error:
        raise InputError(f"{path}: not a rounds.csv this tool writes ({error!r})") from None
    return [row for row in rows if row.round >= 0] if fitted_only else rows


@dataclass(frozen=True)
class SavedRound:
    """What ``state.json`` says of a run: the last finished round and the round
    whose model is ``model.keras`` (None before any round kept one)."""

    round: int
    kept: int | None

    @classmethod
    def read(cls, run: Path) -> SavedRound | None:
        """The run's saved round, or None when no round has finished."""
        path = run / STATE_FILE
        if not path.exists():
            return None
        saved = json.loads(path.read_text(encoding="utf-8"))
        return cls(round=int(saved["round"]), kept=saved["best"]["round"])


def finished(run: Path, rounds: int) -> bool:
    """Whether ``run`` has finished round ``rounds`` or a later one."""
    saved = SavedRound.read(run)
    return saved is not None and saved.round >= rounds


@dataclass(frozen=True)
class LabelledTile:
    """One line of ``labelled.csv``: a labelled tile by its slide and
    level-0 position (the records' key), its label, and the round that added
    it (0: the initial set)."""

    slide: str
    x: int
    y: int
    label: int
    round: int

    @classmethod
    def columns(cls) -> list[str]:
        """The file's header, as :class:`utils.learning.run_state.RunState` writes it."""
        return [f.name for f in fields(cls)]


def read_labelled(run: Path) -> list[LabelledTile]:
    """The rows of ``run``'s labelled.csv in order. A killed run may list tiles
    of a round its state.json does not know yet: compare ``round`` with
    :class:`SavedRound` before counting them."""
    path = run / LABELLED_FILE
    if not path.exists():
        raise InputError(f"{run}: no {LABELLED_FILE} (not a training run's folder, or no round has finished)")
    try:
        return [LabelledTile(row["slide"], int(row["x"]), int(row["y"]), int(row["label"]), int(row["round"]))
                for row in read_csv(path)]
    except (KeyError, ValueError) as error:
        raise InputError(f"{path}: not a labelled.csv this tool writes ({error!r})") from None
