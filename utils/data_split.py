"""Which records train, validate and test a model: split by slide, never by tile.

Tiles of one slide are strongly correlated, so a tile-level split would leak
the test set into training. Slides are shuffled with a seed and cut 80/10/10
(the paper's), or read from a split file. Per-slide, per-class caps (the paper:
1000, none for blood) keep a few huge slides from dominating.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from utils.errors import InputError
from utils.records import RecordIndex

SPLITS = ("train", "val", "test")


def split_slides(slides: Sequence[str], fractions: Sequence[float], seed: int) -> dict[str, list[str]]:
    """Shuffle slide names with ``seed`` and cut them by ``fractions``; val and
    test get at least one slide each, train the rest."""
    names = sorted(set(slides))
    if len(names) < 3:
        raise InputError(f"a split by slide needs at least 3 slides, the data has {len(names)}; "
                         f"extract more slides or pass --split FILE")
    order = list(np.random.default_rng(seed).permutation(names))
    n_val = max(1, int(round(fractions[1] * len(names))))
    n_test = max(1, int(round(fractions[2] * len(names))))
    n_train = len(names) - n_val - n_test
    if n_train < 1:
        raise InputError(f"{len(names)} slides are too few for the split {list(fractions)}")
    return {"train": sorted(order[:n_train]), "val": sorted(order[n_train : n_train + n_val]),
            "test": sorted(order[n_train + n_val :])}


def read_split_file(path: str | Path, slides: Sequence[str]) -> dict[str, list[str]]:
    """JSON ``{"train": [...], "val": [...], "test": [...]}`` or CSV rows ``slide,split``."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".json":
            split = {k: list(v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}
        else:
            split = {name: [] for name in SPLITS}
            with path.open(encoding="utf-8", newline="") as handle:
                for row in csv.reader(handle):
                    if row and row[0] != "slide":
                        split.setdefault(row[1].strip(), []).append(row[0].strip())
    except (OSError, ValueError, IndexError) as exc:
        raise InputError(f"{path}: cannot read split file ({exc})") from None
    unknown = set(split) - set(SPLITS)
    if unknown:
        raise InputError(f"{path}: unknown split names {sorted(unknown)}; use train, val and test")
    listed = [s for names in split.values() for s in names]
    missing = sorted(set(listed) - set(slides))
    if missing:
        raise InputError(f"{path}: slides {missing} have no records in the data folder")
    if len(listed) != len(set(listed)):
        raise InputError(f"{path}: a slide is listed in more than one split")
    return {name: sorted(split.get(name, [])) for name in SPLITS}


def cap_per_slide_and_class(
    ids: np.ndarray, index: RecordIndex, cap: int | None, uncapped: Sequence[int], rng: np.random.Generator
) -> np.ndarray:
    """At most ``cap`` random records per (slide, class); classes in ``uncapped`` keep all."""
    if cap is None or len(ids) == 0:
        return np.sort(ids)
    kept = []
    keys = np.array([f"{s}\x00{c}" for s, c in zip(index.slide[ids], index.label[ids])])
    for key in np.unique(keys):
        members = ids[keys == key]
        label = int(index.label[members[0]])
        if label in uncapped or len(members) <= cap:
            kept.append(members)
        else:
            kept.append(rng.choice(members, size=cap, replace=False))
    return np.sort(np.concatenate(kept))


def cap_per_class(ids: np.ndarray, labels: np.ndarray, cap: int | None, rng: np.random.Generator) -> np.ndarray:
    """At most ``cap`` random records per class (validation and test sets)."""
    if cap is None:
        return np.sort(ids)
    kept = [rng.choice(ids[labels[ids] == c], size=min(cap, int((labels[ids] == c).sum())), replace=False)
            for c in np.unique(labels[ids])]
    return np.sort(np.concatenate(kept)) if kept else ids
