"""The records of a training run: read, checked against the configuration,
split by slide or block, capped as the options say, and turned into tf.data
pipelines and predictions. What the rounds do with them is
:mod:`utils.training`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import tensorflow as tf

from utils.config import Config, fingerprint, fingerprint_difference
from utils.data_split import (SPLITS, SlideGrid, assign_records, cap_per_class, cap_per_slide_and_class,
                              choose_split_by, read_split_file, split_blocks, split_slides)
from utils.embeddings import EmbeddingCache
from utils.errors import InputError, ModelError
from utils.model import Predictor
from utils.records import read_index, record_files, triplet_dataset

if TYPE_CHECKING:
    from utils.training import TrainOptions


class TrainingData:
    """The records a run trains on, split into the training candidates, the
    pool, and the validation and test sets, with the tf.data pipelines and
    the predictions over them (from cached features when the backbone is
    frozen)."""

    def __init__(self, options: "TrainOptions", config: Config) -> None:
        self.options, self.config = options, config
        self.out = options.output
        self.rng = np.random.default_rng(options.seed)
        files = record_files(options.data)
        if not files:
            raise InputError(f"{options.data}: no .tfrecord shards; run tfrecord_generator.py first")
        self.index = read_index(files)
        self.grids = _slide_grids(options.data, config)
        if (self.index.label >= config.num_classes).any():
            raise ModelError(f"records have labels up to {self.index.label.max()} but the configuration has "
                             f"{config.num_classes} classes; use the configuration the data was extracted with")
        self.split = self._split()
        codes, self.guard_dropped = assign_records(self.index, self.split, self.grids)
        in_split = {name: codes == code for code, name in enumerate(SPLITS)}
        labelled = self.index.label >= 0
        uncapped = [config.class_index(n) for n in config.uncapped_classes]
        cap = options.slide_class_cap or None
        evaluation = {}
        for name in ("val", "test"):
            ids = np.flatnonzero(in_split[name] & labelled)
            if options.cap_eval_per_slide:
                ids = cap_per_slide_and_class(ids, self.index, cap, uncapped, self.rng)
            evaluation[name] = cap_per_class(ids, self.index.label, options.eval_cap, self.rng)
        self.val_ids, self.test_ids = evaluation["val"], evaluation["test"]
        if len(self.val_ids) == 0:
            raise InputError(f"the validation {self.split['by']}s {self.split['val']} have no labelled tiles")
        if options.query_only:
            self.candidates = np.flatnonzero(in_split["train"] & labelled)
            self.pool_ids = np.flatnonzero(in_split["train"] & ~labelled)
        else:
            self.candidates = cap_per_slide_and_class(
                np.flatnonzero(in_split["train"] & labelled), self.index, cap, uncapped, self.rng)
            self.pool_ids = self.candidates
        self.keys = np.array([f"{s}\t{x}\t{y}" for s, x, y in zip(self.index.slide, self.index.x, self.index.y)])
        self.cache: EmbeddingCache | None = None

    @property
    def strides(self) -> dict[str, float]:
        """Level-0 tile stride per slide."""
        return {slide: grid.stride for slide, grid in self.grids.items()}

    def _split(self) -> dict[str, Any]:
        options = self.options
        if options.split_file:
            return read_split_file(options.split_file, sorted(set(self.index.slide)))
        if choose_split_by(options.split_by, self.index.slide) == "slide":
            return split_slides(self.index.slide, options.split_fractions, options.seed)
        missing = sorted(set(self.index.slide) - set(self.grids))
        if missing:
            raise InputError(f"{options.data}: no extraction summary for {missing}, so their tile grid is "
                             f"unknown; re-extract them to split them into blocks")
        return split_blocks(self.index, self.grids, self.config.num_classes, options.split_fractions, options.seed)

    # -- labelled set --------------------------------------------------------------
    def initial_labelled(self) -> np.ndarray:
        if self.options.query_only:
            return self.candidates
        chosen = []
        for c in range(self.config.num_classes):
            members = self.candidates[self.index.label[self.candidates] == c]
            chosen.append(self.rng.choice(members, size=min(self.options.initial, len(members)), replace=False))
        return np.sort(np.concatenate(chosen))

    def counts(self, ids: np.ndarray) -> dict[str, int]:
        bins = np.bincount(self.index.label[ids][self.index.label[ids] >= 0], minlength=self.config.num_classes)
        return {name: int(n) for name, n in zip(self.config.class_names, bins)}

    # -- data ----------------------------------------------------------------------
    def cache_features(self, model: keras.Model) -> None:
        """Frozen backbones: compute the features of every record the run uses once."""
        ids = np.unique(np.concatenate([self.candidates, self.pool_ids, self.val_ids, self.test_ids]))
        self.cache = EmbeddingCache(model, self.dataset(ids, with_ids=True), ids, self.index.label)

    def predict(self, predictor: Predictor, ids: np.ndarray, mc_passes: int = 0,
                embeddings: bool = False) -> dict[str, np.ndarray]:
        if self.cache is not None:
            return self.cache.predict(ids, self.options.batch_size, mc_passes, embeddings)
        return predict(predictor, self.dataset(ids, with_ids=True), mc_passes, embeddings)

    def dataset(self, ids: np.ndarray, train: bool = False, with_ids: bool = False) -> tf.data.Dataset:
        o = self.options
        return triplet_dataset(
            self.index, ids, self.config.magnifications, self.config.tile_size, o.batch_size,
            shuffle=train, augment=train and o.augment, colour_jitter=o.colour_jitter, seed=o.seed,
            with_ids=with_ids,
        )


def _slide_grids(data: Path, config: Config) -> dict[str, SlideGrid]:
    """Tile stride and coarsest window per slide, from the extraction summaries;
    also checks that every shard was cut with this configuration's classes,
    scales and tile size, so records of another configuration never train under
    wrong names."""
    grids = {}
    ours = config.fingerprint()
    for path in sorted(data.glob("*.summary.json")):
        summary = json.loads(path.read_text(encoding="utf-8"))
        if summary.get("status") != "done":
            continue
        theirs = summary.get("fingerprint") or (fingerprint(summary["config"]) if "config" in summary else
                                                {**ours, "magnifications": summary["magnifications"],
                                                 "tile_size": summary["tile_size"]})
        difference = fingerprint_difference(theirs, ours)
        if difference:
            raise ModelError(
                f"{path}: this shard was extracted with {difference.replace(' vs ', ', but the run uses ')}; "
                f"one data folder holds one configuration: re-extract it with the same --config, "
                f"--magnifications and --tile-size, or move it to another folder")
        stride = float(summary["stride_level0"])
        window = summary.get("window_level0") or (
            config.tile_size * summary["scale_mpp"][-1] / summary["base_mpp"] if "scale_mpp" in summary else stride)
        grids[summary["slide"]] = SlideGrid(stride, float(window))
    return grids


def predict(predictor: Predictor, dataset: tf.data.Dataset, mc_passes: int = 0,
            embeddings: bool = False) -> dict[str, np.ndarray]:
    """Probabilities of every record of a ``with_ids`` dataset; with
    ``mc_passes``, the Monte-Carlo dropout passes too (``mc_probs``); with
    ``embeddings``, the pooled backbone features (``embeddings``) and the last
    layer's input (``penultimate``)."""
    parts: dict[str, list[np.ndarray]] = {"ids": [], "labels": [], "probs": []}
    for inputs, label, gid in dataset:
        parts["ids"].append(gid.numpy())
        parts["labels"].append(label.numpy())
        if mc_passes:
            passes = predictor.mc_probabilities(inputs, mc_passes)
            parts.setdefault("mc_probs", []).append(passes)
            parts["probs"].append(passes.mean(axis=0))
        elif embeddings:
            features, penultimate, probs = predictor.embed(inputs)
            parts.setdefault("embeddings", []).append(features)
            parts.setdefault("penultimate", []).append(penultimate)
            parts["probs"].append(probs)
        else:
            parts["probs"].append(predictor.probabilities(inputs))
    if not parts["ids"]:
        return {"ids": np.zeros(0, np.int64), "labels": np.zeros(0, np.int64), "probs": np.zeros((0, 0))}
    return {key: np.concatenate(value, axis=1 if key == "mc_probs" else 0) for key, value in parts.items()}
