"""The records of a training run: read, checked against the configuration,
split by slide or block, capped as the options say, and turned into tf.data
pipelines. This is what stays fixed over a run; what changes from round to
round (the labelled set, the random generator) is :mod:`utils.learning.run_state`, how
the model fits and predicts is :mod:`utils.learning.learners`, and what the rounds do
with them is :mod:`utils.learning.training`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from utils.common.config import Config
from utils.common.errors import InputError, ModelError
from utils.common.log import first_few, info
from utils.common.scales import check_same_data
from utils.learning.data_split import (SPLITS, SlideGrid, assign_records, cap_per_class, cap_per_slide_and_class,
                                       choose_split_by, extend_split, read_split_file, split_blocks,
                                       split_slides, unlisted_slides)
from utils.learning.train_options import TrainOptions
from utils.tiles.randaugment import RandAugment
from utils.tiles.records import read_index, record_files, triplet_dataset
from utils.tiles.stain_jitter import stain_jitter_of
from utils.tiles.summaries import ShardSummary


class TrainingData:
    """The records a run trains on, split into the training candidates, the
    pool, and the validation and test sets, with the tf.data pipelines over
    them. ``rng`` draws the capped subsets here; the run's state goes on
    drawing from it, so that one seed fixes the whole sequence."""

    def __init__(self, options: TrainOptions, config: Config, rng: np.random.Generator) -> None:
        self.config = config
        self.batch_size, self.augment, self.colour_jitter = options.batch_size, options.augment, options.colour_jitter
        self.stains = stain_jitter_of(options.stain_jitter, options.stain_sigma)
        self.seed = options.seed
        files = record_files(options.data)
        if not files:
            raise InputError(f"{options.data}: no .tfrecord shards; run tfrecord_generator.py first")
        self.index = read_index(files)
        self.grids = _slide_grids(options.data, config)
        if (self.index.label >= config.num_classes).any():
            raise ModelError(f"records have labels up to {self.index.label.max()} but the configuration has "
                             f"{config.num_classes} classes; use the configuration the data was extracted with")
        #: Slides or blocks that the resumed run's split did not list: they joined training.
        self.joined: list[str] = []
        self.split = self._split(options)
        codes, self.guard_dropped = assign_records(self.index, self.split, self.grids)
        in_split = {name: codes == code for code, name in enumerate(SPLITS)}
        labelled = self.index.label >= 0
        uncapped = [config.class_index(n) for n in config.uncapped_classes]
        cap = options.slide_class_cap or None
        evaluation = {}
        for name in ("val", "test"):
            ids = np.flatnonzero(in_split[name] & labelled)
            if options.cap_eval_per_slide:
                ids = cap_per_slide_and_class(ids, self.index, cap, uncapped, rng)
            evaluation[name] = cap_per_class(ids, self.index.label, options.eval_cap, rng)
        self.val_ids, self.test_ids = evaluation["val"], evaluation["test"]
        for name, ids in (("validation", self.val_ids), ("test", self.test_ids)):
            listed = self.split["val" if name == "validation" else "test"]
            if len(ids) == 0 and (listed or name == "validation"):
                raise InputError(f"the {name} {self.split['by']}s {[str(s) for s in listed]} have no labelled "
                                 f"tiles; annotate them, or name others in --split FILE")
        if options.query_only:
            self.candidates = np.flatnonzero(in_split["train"] & labelled)
            self.pool_ids = np.flatnonzero(in_split["train"] & ~labelled)
        else:
            self.candidates = cap_per_slide_and_class(
                np.flatnonzero(in_split["train"] & labelled), self.index, cap, uncapped, rng)
            self.pool_ids = self.candidates
        self.keys = np.array([f"{s}\t{x}\t{y}" for s, x, y in zip(self.index.slide, self.index.x, self.index.y)])

    @property
    def strides(self) -> dict[str, float]:
        """Level-0 tile stride per slide."""
        return {slide: grid.stride for slide, grid in self.grids.items()}

    @property
    def origins(self) -> dict[str, tuple[float, float]]:
        """Origin of QuPath's coordinates per slide (the corner of its bounds)."""
        return {slide: grid.origin for slide, grid in self.grids.items()}

    def _split(self, options: TrainOptions) -> dict[str, Any]:
        """The split of the run: kept in its ``split.json`` once drawn and
        reused by every ``--resume``; else read from ``--split FILE``; else
        drawn with the data seed."""
        kept = options.output / "split.json"
        if options.resume and kept.exists():
            return self._kept_split(kept, options)
        if options.split_file:
            slides = sorted(set(self.index.slide))
            split = read_split_file(options.split_file, slides)
            left_out = unlisted_slides(split, slides)
            if left_out:
                info(f"--split {options.split_file} lists {len(slides) - len(left_out)} of the {len(slides)} slides "
                     f"in {options.data}; the other {len(left_out)} are in no split and not used: "
                     f"{first_few(left_out)}")
            return split
        annotated = sorted(set(self.index.slide[self.index.label >= 0]))
        if not annotated:
            raise InputError(f"{options.data}: no labelled tiles; annotate regions of every class on some slides "
                             f"first (see the README's 'What to annotate first')")
        if choose_split_by(options.split_by, annotated) == "slide":
            return split_slides(self.index.slide, options.split_fractions, options.draw_seed, annotated)
        missing = sorted(set(self.index.slide) - set(self.grids))
        if missing:
            raise InputError(f"{options.data}: no extraction summary for {missing}, so their tile grid is "
                             f"unknown; re-extract them to split them into blocks")
        return split_blocks(self.index, self.grids, self.config.num_classes, options.split_fractions,
                            options.draw_seed)

    def _kept_split(self, kept: Path, options: TrainOptions) -> dict[str, Any]:
        """The resumed run's own split, grown by what the data gained (new
        slides and blocks join training, see :func:`extend_split`)."""
        slides = sorted(set(self.index.slide))
        try:
            split = read_split_file(kept, slides)
        except InputError as exc:
            raise InputError(f"{exc}: the run in {options.output} keeps the split it started with; put the "
                             f"missing slides' shards back in {options.data}, or start a new run in another "
                             f"--output") from None
        if options.split_file and not _agrees(read_split_file(options.split_file, slides), split):
            raise InputError(f"--split {options.split_file} differs from the split of the run being resumed "
                             f"({kept}); a run keeps its split: drop --split, or start a new run in another --output")
        split, self.joined = extend_split(split, self.index)
        if self.joined:
            info(f"kept the split of {kept}; {len(self.joined)} {split['by']}(s) new since it was drawn join "
                 f"training: {first_few(self.joined)}")
        return split

    def counts(self, ids: np.ndarray) -> dict[str, int]:
        bins = np.bincount(self.index.label[ids][self.index.label[ids] >= 0], minlength=self.config.num_classes)
        return {name: int(n) for name, n in zip(self.config.class_names, bins)}

    def used_ids(self) -> np.ndarray:
        """Every record the run may fit on, query or evaluate."""
        return np.unique(np.concatenate([self.candidates, self.pool_ids, self.val_ids, self.test_ids]))

    def dataset(self, ids: np.ndarray, train: bool = False, with_ids: bool = False, endless: bool = False,
                labels: np.ndarray | None = None, seed: int | None = None) -> tf.data.Dataset:
        """The records ``ids`` in batches; shuffled (by ``seed``, the run's by
        default) and augmented for training; ``endless``: repeated, every batch
        full (see :func:`triplet_dataset`); ``labels``: what each of ``ids`` is
        trained as, when not its record's label."""
        table = None
        if labels is not None:
            table = self.index.label.copy()
            table[ids] = labels
        return triplet_dataset(
            self.index, ids, self.config.scales, self.batch_size,
            shuffle=train, augment=train and self.augment, colour_jitter=train and self.colour_jitter,
            seed=self.seed if seed is None else seed,
            with_ids=with_ids, endless=endless, stains=self.stains if train else None, labels=table,
        )

    def unlabelled_pool(self, trained: np.ndarray) -> np.ndarray:
        """The pool tiles a round does not train on with a label (FixMatch's unlabelled data)."""
        return np.setdiff1d(self.pool_ids, trained)

    def pool_views(self, ids: np.ndarray, batch_size: int) -> tf.data.Dataset:
        """Endless shuffled batches of ``ids`` as FixMatch reads them: a weak
        view (flips and turns) and a strong one (RandAugment and Cutout) of
        each triplet, with its label (-1 when unknown)."""
        return triplet_dataset(self.index, ids, self.config.scales, batch_size,
                               shuffle=True, seed=self.seed + 1, endless=True, two_views=RandAugment())

    def triplets(self, ids: np.ndarray) -> list[list[np.ndarray]]:
        """The uint8 tiles of every scale of the records ``ids``, in that order."""
        position = {int(i): k for k, i in enumerate(ids)}
        triplets: list[list[np.ndarray]] = [[] for _ in ids]
        for inputs, _, gid in self.dataset(ids, with_ids=True):
            arrays = [inputs[name].numpy().astype(np.uint8) for name in inputs]
            for j, i in enumerate(gid.numpy()):
                triplets[position[int(i)]] = [a[j] for a in arrays]
        return triplets


def _agrees(given: dict[str, Any], kept: dict[str, Any]) -> bool:
    """Whether a ``--split`` file puts every entry it lists where the run's
    kept split has it (the kept split may have grown since, by
    :func:`extend_split`), with the same block sides."""
    where = {entry: name for name in SPLITS for entry in kept[name]}
    return given.get("block_side_level0", {}) == kept.get("block_side_level0", {}) and all(
        where.get(entry) == name for name in SPLITS for entry in given[name])


def _slide_grids(data: Path, config: Config) -> dict[str, SlideGrid]:
    """Tile stride and coarsest window per slide, from the extraction summaries;
    also checks that every shard was cut with this configuration's classes,
    scales and tile size, so records of another configuration never train under
    wrong names."""
    grids = {}
    ours = config.fingerprint()
    for path in sorted(data.glob("*.summary.json")):
        summary = ShardSummary.read(path)
        if not summary.done:
            continue
        # Summaries that recorded neither fingerprint nor configuration can only be checked on scales and size.
        theirs = summary.fingerprint or {**ours, "magnifications": summary.magnifications,
                                         "tile_size": summary.tile_size}
        check_same_data(theirs, ours, ModelError, f"{path}: this shard was extracted with",
                        "one data folder holds one configuration: re-extract it with the same --config, "
                        "--magnifications and --tile-size, or move it to another folder")
        origin = tuple(float(v) for v in summary.bounds_level0 or (0, 0))
        grids[summary.slide] = SlideGrid(float(summary.stride_level0), float(summary.window_level0), origin)
    return grids
