"""Which records train, validate and test a model: by slide, or by blocks of a
slide when there are too few slides, never by tile.

Tiles of one slide are strongly correlated, so a tile-level split would leak
the test set into training. With three slides or more, slides are shuffled with
a seed and cut 80/10/10 (the paper's). With one or two slides, each slide's
tile grid is cut into square blocks assigned whole to train, validation and
test, stratified by class; the blocks are several lowest-magnification windows
wide, and tiles whose window would overlap a window of another split are
dropped (from training first), so no pixel of a validation or test window is
ever seen in training. A split file lists slides, blocks, or both.
Per-slide, per-class caps (the paper: 1000, none for blood) keep a few huge
slides from dominating.
"""

from __future__ import annotations

import csv
import json
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from utils.common.errors import InputError

if TYPE_CHECKING:  # records load TensorFlow; the options name SPLIT_BY before it loads
    from utils.tiles.records import RecordIndex

SPLITS = ("train", "val", "test")
SPLIT_BY = ("slide", "block")
#: A block is this many lowest-magnification windows wide: wider blocks lose
#: less to the guard band at their borders, narrower ones stratify better.
BLOCK_WINDOWS = 4
#: Slides needed for a split by slide (one each for train, validation and test).
MIN_SLIDES = 3
_BLOCK = re.compile(r"^(?P<slide>.+):(?P<col>\d+),(?P<row>\d+)$")


@dataclass(frozen=True)
class SlideGrid:
    """Where a slide's records sit: the tile stride and the side of the
    lowest-magnification window, both in level-0 pixels, and the origin of
    QuPath's coordinates on the slide (the corner of its bounds)."""

    stride: float
    window: float
    origin: tuple[float, float] = (0.0, 0.0)

    @property
    def window_tiles(self) -> int:
        """Grid steps within which two tiles' coarsest windows overlap."""
        return max(1, math.ceil(self.window / self.stride - 1e-6))

    @property
    def block_side(self) -> float:
        return BLOCK_WINDOWS * self.window_tiles * self.stride


def choose_split_by(requested: str | None, slides: Sequence[str]) -> str:
    """``slide`` with three annotated slides (``slides``) or more, else
    ``block`` with one warning line."""
    count = len(set(slides))
    if requested == "slide" and count < MIN_SLIDES:
        raise InputError(f"a split by slide needs at least {MIN_SLIDES} slides with labelled tiles, the data has "
                         f"{count}; use --split-by block, annotate more slides, or pass --split FILE")
    if requested:
        return requested
    if count >= MIN_SLIDES:
        return "slide"
    warnings.warn(f"{count} slide(s) with labelled tiles: splitting each slide into blocks for train, validation and test "
                  f"(--split-by block); scores then come from the same slides as training and overstate "
                  f"how the model does on new slides")
    return "block"


def split_slides(slides: Sequence[str], fractions: Sequence[float], seed: int,
                 labelled: Sequence[str] | None = None) -> dict[str, Any]:
    """Shuffle the names of the slides with labelled tiles (``labelled``,
    default all) with ``seed`` and cut them by ``fractions``; val and test get
    at least one slide each, train the rest. Slides without a labelled tile
    (taken whole by ``--unlabeled``) are pool only: they join train, since a
    validation or test slide without labels would score nothing."""
    names = sorted(set(labelled if labelled is not None else slides))
    pool_only = sorted(set(slides) - set(names))
    choose_split_by("slide", names)
    order = list(np.random.default_rng(seed).permutation(names))
    n_val = max(1, int(round(fractions[1] * len(names))))
    n_test = max(1, int(round(fractions[2] * len(names))))
    n_train = len(names) - n_val - n_test
    if n_train < 1:
        raise InputError(f"{len(names)} annotated slides are too few for the split {list(fractions)}")
    return {"by": "slide", "train": sorted([*order[:n_train], *pool_only]),
            "val": sorted(order[n_train : n_train + n_val]), "test": sorted(order[n_train + n_val :])}


def block_ids(slides: np.ndarray, x: np.ndarray, y: np.ndarray, sides: Mapping[str, float]) -> np.ndarray:
    """``slide:col,row`` of the block holding each centre, for blocks of
    ``sides[slide]`` level-0 pixels."""
    side = np.array([sides[s] for s in slides], float)
    return np.array([f"{s}:{c},{r}" for s, c, r in zip(slides, (x // side).astype(np.int64),
                                                       (y // side).astype(np.int64))], dtype=object)


def split_blocks(index: RecordIndex, grids: Mapping[str, SlideGrid], num_classes: int,
                 fractions: Sequence[float], seed: int) -> dict[str, Any]:
    """Assign whole blocks to train, validation and test, stratified by class.

    Blocks are visited rarest class first (ties in a seeded random order) and
    each goes to the split furthest, relative to its target, from its share of
    the block's classes (ties to train, then validation): a class found in
    three blocks reaches all three splits, one in two blocks train and
    validation. Validation and test get at least one labelled block each.
    """
    sides = {slide: grid.block_side for slide, grid in grids.items() if slide in set(index.slide)}
    ids = block_ids(index.slide, index.x, index.y, sides)
    names, inverse = np.unique(ids.astype(str), return_inverse=True)
    labelled = index.label >= 0
    counts = np.zeros((len(names), num_classes))
    np.add.at(counts, (inverse[labelled], index.label[labelled]), 1)
    totals = np.maximum(counts.sum(axis=0), 1)
    has_labels = counts.sum(axis=1) > 0
    if has_labels.sum() < len(SPLITS):
        sizes = ", ".join(f"{s}: {side:.0f} px" for s, side in sorted(sides.items()))
        raise InputError(f"the labelled tiles fill {int(has_labels.sum())} block(s) of {BLOCK_WINDOWS} "
                         f"lowest-magnification windows a side ({sizes} at level 0); a split needs one each for "
                         f"train, validation and test: annotate more of the slide(s) or add slides")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(names))
    rarest = np.where(counts > 0, totals, np.inf).min(axis=1)
    order = order[np.argsort(rarest[order], kind="stable")]
    wanted = np.asarray(fractions, float)[:, None] * totals[None, :]
    assigned = np.zeros_like(wanted)
    choice = np.zeros(len(names), np.int64)
    for b in order:
        if not has_labels[b]:
            continue  # pool tiles only: training is the only split that queries them
        share = counts[b] / totals
        desire = ((wanted - assigned) / np.maximum(wanted, 1e-9) * share).sum(axis=1)
        choice[b] = int(np.argmax(desire))
        assigned[choice[b]] += counts[b]
    for split in (1, 2):
        if not (has_labels & (choice == split)).any():
            donors = np.flatnonzero(has_labels & (choice == 0))
            smallest = donors[np.argmin(counts[donors].sum(axis=1))]
            choice[smallest] = split
    result: dict[str, Any] = {"by": "block", "block_side_level0": {s: round(v, 3) for s, v in sorted(sides.items())}}
    for split, name in enumerate(SPLITS):
        result[name] = sorted(names[choice == split].tolist())
    return result


def read_split_file(path: str | Path, slides: Sequence[str]) -> dict[str, Any]:
    """JSON ``{"train": [...], "val": [...], "test": [...]}`` or CSV rows
    ``slide,split``; an entry is a slide, or ``slide:col,row``, a block of the
    side given for that slide in ``block_side_level0`` (as split.json writes)."""
    path = Path(path)
    sides: dict[str, float] = {}
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            sides = {str(k): float(v) for k, v in data.get("block_side_level0", {}).items()}
            split = {k: list(v) for k, v in data.items() if k not in ("by", "block_side_level0")}
        else:
            split = {name: [] for name in SPLITS}
            with path.open(encoding="utf-8", newline="") as handle:
                for row in csv.reader(handle):
                    if row and row[0] != "slide":
                        split.setdefault(row[1].strip(), []).append(row[0].strip())
    except (OSError, ValueError, IndexError, AttributeError, TypeError) as exc:
        raise InputError(f"{path}: cannot read split file ({exc})") from None
    unknown = set(split) - set(SPLITS)
    if unknown:
        raise InputError(f"{path}: unknown split names {sorted(unknown)}; use train, val and test")
    listed = [str(s) for names in split.values() for s in names]
    for entry in listed:
        block = _BLOCK.match(entry)
        if block and block["slide"] not in sides:
            raise InputError(f"{path}: {entry!r} names a block, but block_side_level0 gives no block side for "
                             f"{block['slide']!r}")
    missing = sorted({_entry_slide(e, sides) for e in listed} - set(slides))
    if missing:
        raise InputError(f"{path}: slides {missing} have no records in the data folder")
    if len(listed) != len(set(listed)):
        raise InputError(f"{path}: an entry is listed in more than one split")
    result: dict[str, Any] = {"by": "block" if sides else "slide"}
    if sides:
        result["block_side_level0"] = sides
    result.update({name: sorted(str(s) for s in split.get(name, [])) for name in SPLITS})
    return result


def extend_split(split: Mapping[str, Any], index: RecordIndex) -> tuple[dict[str, Any], list[str]]:
    """A run's split, kept for good, over data that may have grown since it
    was drawn: the slides it does not list (and, on a slide split by blocks,
    the blocks it does not list) join training, so that a label added between
    rounds lands in the split its slide or block already has and no tile ever
    moves between training, validation and test. Returns the split and the
    entries added."""
    sides = {str(k): float(v) for k, v in split.get("block_side_level0", {}).items()}
    listed = {str(e) for name in SPLITS for e in split.get(name, [])}
    blocked = np.isin(index.slide, list(sides))
    entries = set(np.unique(index.slide[~blocked]).tolist())
    if blocked.any():
        entries |= set(block_ids(index.slide[blocked], index.x[blocked], index.y[blocked], sides).tolist())
    added = sorted(entries - listed)
    extended = {**split, "train": sorted([*split.get("train", []), *added])}
    return extended, added


def unlisted_slides(split: Mapping[str, Any], slides: Sequence[str]) -> list[str]:
    """The slides of ``slides`` that no split of ``split`` names, whole or by a block."""
    sides = {str(k): float(v) for k, v in split.get("block_side_level0", {}).items()}
    listed = {_entry_slide(str(e), sides) for name in SPLITS for e in split.get(name, [])}
    return sorted(set(slides) - listed)


def _entry_slide(entry: str, sides: Mapping[str, float]) -> str:
    block = _BLOCK.match(entry)
    return block["slide"] if block and block["slide"] in sides else entry


def assign_records(index: RecordIndex, split: Mapping[str, Any],
                   grids: Mapping[str, SlideGrid]) -> tuple[np.ndarray, dict[str, int]]:
    """Split index per record (0 train, 1 val, 2 test, -1 none) and how many
    records each split lost to the guard band.

    A slide listed whole puts all its records in one split. Records of listed
    blocks go to their block's split, except those whose lowest-magnification
    window overlaps a window of test (dropped from val and train) or of
    validation (dropped from train)."""
    sides = {str(k): float(v) for k, v in split.get("block_side_level0", {}).items()}
    entries = {str(e): code for code, name in enumerate(SPLITS) for e in split.get(name, [])}
    codes = np.array([entries.get(s, -1) for s in index.slide], np.int8)
    blocked = np.isin(index.slide, list(sides))
    if blocked.any():
        ids = block_ids(index.slide[blocked], index.x[blocked], index.y[blocked], sides)
        codes[blocked] = [entries.get(b, -1) for b in ids]
    dropped = np.zeros(len(SPLITS), np.int64)
    for slide in sides:
        rows = np.flatnonzero(index.slide == slide)
        if len(rows):
            lost = rows[_guard(index, rows, codes[rows], grids[slide])]
            dropped += np.bincount(codes[lost], minlength=len(SPLITS))
            codes[lost] = -1
    return codes, {name: int(n) for name, n in zip(SPLITS, dropped) if n}


def _guard(index: RecordIndex, rows: np.ndarray, codes: np.ndarray, grid: SlideGrid) -> np.ndarray:
    """Records of one slide whose coarsest window overlaps one of a split that
    outranks theirs (test > val > train)."""
    reach = grid.window_tiles - 1
    cols = np.floor(index.x[rows] / grid.stride).astype(np.int64)
    rws = np.floor(index.y[rows] / grid.stride).astype(np.int64)
    cols, rws = cols - cols.min(), rws - rws.min()
    if reach == 0:
        return np.zeros(len(rows), bool)
    kept = codes.copy()
    kernel = np.ones((2 * reach + 1, 2 * reach + 1), np.uint8)
    shape = (int(rws.max()) + 1, int(cols.max()) + 1)
    for higher in (2, 1):
        occupied = np.zeros(shape, np.uint8)
        occupied[rws[kept == higher], cols[kept == higher]] = 1
        near = cv2.dilate(occupied, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
        kept[(kept >= 0) & (kept < higher) & near[rws, cols]] = -1
    return kept != codes

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
