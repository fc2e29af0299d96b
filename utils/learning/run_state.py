"""What a training run carries from one round to the next, and where it is kept.

After every round the state is written to the run folder (:meth:`RunState.save`)
and ``--resume`` reads it back (:meth:`RunState.load`): the labelled set in
``labelled.csv`` (slide, x, y, label, round added), rounds.csv, and the rest,
with the random generator's state, in ``state.json``, written last so that its
presence marks a finished round.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from utils.common.io import atomic_write_csv, atomic_write_json, write_table
from utils.learning.run_files import LABELLED_FILE, ROUNDS_FILE, STATE_FILE, LabelledTile, read_labelled
from utils.learning.training_data import TrainingData
from utils.tiles.records import RecordIndex


@dataclass
class RunState:
    """The labelled set, the kept round, the metrics so far and the random
    generator that every later draw (initial set, pool samples, queries)
    comes from, so that a resumed run draws exactly what the uninterrupted
    run would have drawn."""

    round: int  # the last finished round; -1 before round 0
    labelled: np.ndarray  # record ids, sorted
    added: dict[int, int]  # record id -> round that labelled it (0: the initial set)
    best: dict[str, Any]  # the kept round, with its validation macro F1 and loss
    misclassified: np.ndarray  # validation errors per true class of the last round: class_ratio's input
    rng: np.random.Generator
    rows: list[dict[str, Any]] = field(default_factory=list)  # rounds.csv
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch of every round
    devices: list[str] = field(default_factory=list)  # the replicas of the last session ("default": one, placed by TF)

    @classmethod
    def initial(cls, data: TrainingData, per_class: int, query_only: bool, rng: np.random.Generator) -> RunState:
        """Before round 0: in annotation mode every labelled candidate, in
        simulation ``per_class`` candidates of each class drawn at random."""
        return cls(round=-1, labelled=initial_labelled(data, per_class, query_only, rng), added={},
                   best={"round": None, "val_macro_f1": -1.0}, misclassified=np.zeros(data.config.num_classes),
                   rng=rng)

    @classmethod
    def load(cls, folder: Path, data: TrainingData, query_only: bool, rng: np.random.Generator) -> RunState | None:
        """The state after the last finished round, or None when there is none.
        A run killed after writing labelled.csv but before state.json must not
        count a round twice, so only rows up to the saved round are taken."""
        path = folder / STATE_FILE
        if not path.exists():
            return None
        saved = json.loads(path.read_text(encoding="utf-8"))
        lookup = {k: i for i, k in enumerate(data.keys)}
        added = {}
        for tile in read_labelled(folder):
            i = lookup.get(f"{tile.slide}\t{tile.x}\t{tile.y}")
            if i is not None and tile.round <= saved["round"]:
                added[i] = tile.round
        labelled = np.array(sorted(added), np.int64)
        if query_only:  # labels came back through extraction: those not listed yet belong to this round
            labelled = data.candidates
            added = {int(i): added.get(int(i), saved["round"] + 1) for i in labelled}
        if "rng" in saved:  # runs saved before the generator state was kept resume with a fresh one
            rng.bit_generator.state = saved["rng"]
        return cls(saved["round"], labelled, added, saved["best"], np.asarray(saved["misclassified"]), rng,
                   saved["rows"], saved["history"], saved.get("devices", []))

    def save(self, folder: Path, index: RecordIndex) -> None:
        """labelled.csv and rounds.csv, then state.json, the file that says the round is finished."""
        atomic_write_csv(folder / LABELLED_FILE, LabelledTile.columns(),
                         ([index.slide[i], index.x[i], index.y[i], index.label[i], self.added.get(int(i), 0)]
                          for i in self.labelled))
        write_table(folder / ROUNDS_FILE, self.rows)
        atomic_write_json(folder / STATE_FILE, {
            "round": self.round, "best_model": "model.keras", "best": self.best, "rows": self.rows,
            "history": self.history, "rng": self.rng.bit_generator.state, "devices": self.devices,
            "misclassified": np.asarray(self.misclassified).tolist()})

    def label(self, new: np.ndarray, round_number: int) -> None:
        """Add the tiles a query chose (in simulation their labels are known)."""
        for i in new:
            self.added[int(i)] = round_number
        self.labelled = np.union1d(self.labelled, new)


def initial_labelled(data: TrainingData, per_class: int, query_only: bool, rng: np.random.Generator) -> np.ndarray:
    """The labelled set of round 0."""
    if query_only:
        return data.candidates
    chosen = []
    for c in range(data.config.num_classes):
        members = data.candidates[data.index.label[data.candidates] == c]
        chosen.append(rng.choice(members, size=min(per_class, len(members)), replace=False))
    return np.sort(np.concatenate(chosen))
