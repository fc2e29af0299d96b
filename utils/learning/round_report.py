"""What a run tells its user about its data and its rounds besides the
scores: the class counts of each split (``class_counts.json``, printed), the
classes without tiles, the pseudo-labels of a round, and the earlier runs
that ``--compare`` draws beside this one.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from utils.common.errors import InputError
from utils.common.io import atomic_write_json
from utils.common.log import info
from utils.learning.data_split import SPLITS
from utils.learning.pseudo_labels import PseudoLabels
from utils.learning.run_files import read_rounds
from utils.learning.run_state import RunState
from utils.learning.train_options import TrainOptions
from utils.learning.training_data import TrainingData


def describe_data(options: TrainOptions, run: TrainingData, state: RunState) -> None:
    """class_counts.json and split.json, printed too, with the guard band's
    losses and a warning (an error with --strict) for classes without tiles."""
    class_counts = {"train_candidates": run.counts(run.candidates), "initial_labelled": run.counts(state.labelled),
                    "val": run.counts(run.val_ids), "test": run.counts(run.test_ids)}
    atomic_write_json(options.output / "class_counts.json", class_counts)
    atomic_write_json(options.output / "split.json", run.split)
    _print_counts(class_counts)
    if run.split["by"] == "block":
        blocks = ", ".join(f"{len(run.split[name])} {name}" for name in SPLITS)
        dropped = ", ".join(f"{n} {name}" for name, n in run.guard_dropped.items()) or "none"
        info(f"split by block: {blocks} blocks; tiles left out because their lowest-magnification window "
             f"overlaps one of another split: {dropped}")
    report_missing_classes(class_counts, options.strict)


def _print_counts(counts: dict[str, dict[str, int]]) -> None:
    names = list(next(iter(counts.values())))
    info(f"{'':18s}" + "".join(f"{n:>12s}" for n in names))
    for split, row in counts.items():
        info(f"{split:18s}" + "".join(f"{row[n]:12d}" for n in names))


def report_missing_classes(counts: dict[str, dict[str, int]], strict: bool) -> None:
    """One warning (an error with --strict) naming the configured classes that
    have no training or no validation tiles: the model cannot learn or be
    judged on them, and the macro F1 silently leaves them out."""
    gaps = [f"no {what} tiles: {', '.join(names)}"
            for what, key in (("training", "train_candidates"), ("validation", "val"))
            if (names := [name for name, n in counts[key].items() if n == 0])]
    if not gaps:
        return
    message = (f"configured classes with {'; '.join(gaps)}; check the annotation names and rules, or drop "
               f"these classes from the configuration")
    if strict:
        raise InputError(message + " (--strict)")
    warnings.warn(message, stacklevel=2)


def describe_pseudo_labels(data: TrainingData, pseudo: PseudoLabels, round_number: int,
                           options: TrainOptions) -> None:
    """One line: how many pool tiles train as which class this round, and how many of them are right."""
    if len(pseudo.ids) == 0:
        info(f"round {round_number}: no pseudo-labels" + (" (before the first fit on target labels)"
                                                         if round_number == 0 else
                                                         f" (no pool tile at confidence {options.pseudo_threshold})"))
        return
    counts = np.bincount(pseudo.labels, minlength=data.config.num_classes)
    per_class = ", ".join(f"{n} {name}" for name, n in zip(data.config.class_names, counts) if n)
    right = f"; {pseudo.accuracy:.1%} match the true labels (simulation)" if pseudo.accuracy is not None else ""
    info(f"round {round_number}: {len(pseudo.ids)} pool tiles pseudo-labelled at confidence >= "
         f"{options.pseudo_threshold} ({per_class}){right}")


def other_runs(folders: tuple[Path, ...]) -> dict[str, list[tuple[int, float]]]:
    """The (labelled tiles, test macro F1) points of earlier runs to draw
    beside this one, named by folder and query strategy."""
    runs = {}
    for folder in folders:
        rows = read_rounds(folder)
        made = folder / "config.json"
        strategy = json.loads(made.read_text(encoding="utf-8")).get("options", {}).get("strategy", "?") \
            if made.exists() else "?"
        runs[f"{folder.name} ({strategy})"] = [(row.labelled, row.test_macro_f1) for row in rows]
    return runs
