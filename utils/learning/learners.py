"""The two ways a round fits and predicts, behind one interface.

* :class:`FullNetwork` fits the whole network with Keras on the streamed
  triplets, augmented, and predicts by running every backbone.
* :class:`HeadOnFeatures` (``--freeze-backbone``) computes each record's
  pooled backbone features once (:class:`utils.learning.embeddings.EmbeddingCache`)
  and fits and predicts the head alone on them.

:func:`make_learner` chooses once per run; the rounds, the queries and the
evaluation then call :meth:`Learner.fit` and :meth:`Learner.predict` without
knowing which they have.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

import keras
import numpy as np
import tensorflow as tf

from utils.common.errors import InputError
from utils.common.io import atomic_write_arrays, read_arrays
from utils.common.log import info, quiet
from utils.learning.embeddings import EmbeddingCache
from utils.learning.fixmatch import FixMatch
from utils.learning.train_options import TrainOptions
from utils.learning.training_data import TrainingData
from utils.network.model import Predictor


class Learner(Protocol):
    """What a round needs of the model: fit on labelled records, predict any."""

    def fit(self, ids: np.ndarray, labels: np.ndarray, val_ids: np.ndarray, seed: int) -> list[dict[str, float]]:
        """Fit the records ``ids`` as the classes ``labels`` (their own labels,
        or predicted ones for pseudo-labelled pool tiles) from the current
        weights (the head's first ones with ``--head-from start``), with a
        fresh optimizer and early stopping on the validation loss (best epoch
        restored; none with ``--patience 0``); one row per epoch: loss,
        accuracy, val_loss, val_accuracy."""

    def predict(self, ids: np.ndarray, mc_passes: int = 0, embeddings: bool = False) -> dict[str, np.ndarray]:
        """``ids``, ``labels`` and ``probs`` of the records (with ``mc_probs``,
        or ``embeddings`` and ``penultimate``, when asked), in a consistent order."""


def new_optimizer(options: TrainOptions) -> keras.optimizers.Optimizer:
    """A new optimizer every round: state from an earlier round must not leak in."""
    if options.optimizer == "sgd":
        return keras.optimizers.SGD(options.learning_rate, momentum=0.9, nesterov=True)
    if options.optimizer == "adam":
        return keras.optimizers.Adam(options.learning_rate)
    raise InputError(f"unknown optimizer {options.optimizer!r}; choose sgd or adam")


def steps_per_epoch(options: TrainOptions, trained: int, unlabelled: int) -> int:
    """Steps of an epoch: one pass over the ``trained`` tiles, or with FixMatch
    over the ``unlabelled`` pool tiles too (``--fixmatch-ratio`` times a batch a
    step), whichever is longer: FixMatch's schedule is counted over the
    unlabelled data, which a new lab has far more of than labels."""
    steps = -(-trained // options.batch_size)
    if options.semi_supervised == "fixmatch" and unlabelled:
        steps = max(steps, -(-unlabelled // (options.fixmatch_ratio * options.batch_size)))
    return steps


class FullNetwork:
    """Every layer that is trainable, fitted with Keras on augmented triplets.
    The model must have been built in ``distribution``'s scope; Keras's ``fit``
    then splits each global batch across its replicas."""

    def __init__(self, model: keras.Model, data: TrainingData, options: TrainOptions,
                 distribution: tf.distribute.Strategy) -> None:
        self.model, self.data, self.options, self.distribution = model, data, options, distribution
        self.predictor = Predictor(model)

    def fit(self, ids: np.ndarray, labels: np.ndarray, val_ids: np.ndarray, seed: int) -> list[dict[str, float]]:
        o = self.options
        fixmatch = o.semi_supervised == "fixmatch"
        pool = self.data.unlabelled_pool(ids) if fixmatch else np.zeros(0, np.int64)
        with self.distribution.scope():  # the optimizer's and the metrics' variables are mirrored too
            if len(pool):
                trained = FixMatch(self.model, o.pseudo_threshold, o.fixmatch_weight, o.fixmatch_ema)
                trained.compile(optimizer=new_optimizer(o))
            else:
                trained = self.model
                trained.compile(optimizer=new_optimizer(o), loss="sparse_categorical_crossentropy",
                                metrics=["accuracy"])
        stop = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=o.patience, restore_best_weights=True)] \
            if o.patience else []
        steps = steps_per_epoch(o, len(ids), len(pool))
        estimate = RoundTimeEstimate(steps, o.epochs)
        # One endless iteration, reshuffled every pass, cut into epochs of the
        # set's number of batches: every batch is full (the last of a pass is
        # completed from the next), as several replicas need, since TensorFlow
        # may leave one an empty share of a partial batch, whose batch-norm
        # statistics are NaN; and FixMatch pairs every batch with pool tiles.
        train = self.data.dataset(ids, train=True, endless=True, labels=labels, seed=seed)
        if len(pool):
            train = tf.data.Dataset.zip((train, self.data.pool_views(pool, o.fixmatch_ratio * o.batch_size)))
        history = trained.fit(train, steps_per_epoch=steps, validation_data=self.data.dataset(val_ids),
                              epochs=o.epochs, callbacks=[*stop, estimate], verbose=0 if quiet() else 2).history
        if len(pool):
            trained.keep_average()
        return [{k: float(v[e]) for k, v in history.items()} for e in range(len(history["loss"]))]

    def predict(self, ids: np.ndarray, mc_passes: int = 0, embeddings: bool = False) -> dict[str, np.ndarray]:
        return predict(self.predictor, self.data.dataset(ids, with_ids=True), mc_passes, embeddings)


class RoundTimeEstimate(keras.callbacks.Callback):
    """One line, after the first steps of a round, saying how long an epoch
    and the whole round will take at that pace: on a CPU a VGG16 round can
    take days, and a user should know that before the first epoch ends. The
    first step is not timed (it includes tracing the graph)."""

    #: Steps timed before the estimate (after the untimed first).
    TIMED_STEPS = 5

    def __init__(self, steps_per_epoch: int, epochs: int) -> None:
        super().__init__()
        self.steps_per_epoch, self.epochs = steps_per_epoch, epochs
        self.started: float | None = None
        self.said = steps_per_epoch <= self.TIMED_STEPS + 1  # a round this short needs no estimate

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.said:
            return
        if batch == 0:
            self.started = time.perf_counter()
        elif batch == self.TIMED_STEPS and self.started is not None:
            per_epoch = (time.perf_counter() - self.started) / self.TIMED_STEPS * self.steps_per_epoch
            info(f"about {duration(per_epoch)} per epoch of {self.steps_per_epoch} steps at this pace, so at most "
                 f"{duration(per_epoch * self.epochs)} for {self.epochs} epochs (early stopping may end sooner; "
                 f"validation adds to it)")
            self.said = True


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3.5 h`` or ``2.1 days``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


#: ``--head-from start``: the head's weights before round 0, kept in the run folder for ``--resume``.
HEAD_START = "head_start.npz"


class HeadOnFeatures:
    """The head alone, on features computed once for every record the run uses.

    With ``--head-from start`` every round refits the head from its weights
    before round 0, written to the run folder when the run starts and read
    back when it resumes (the model it resumes with holds the last round's).

    The head trains on features standardised over the training split's
    tiles, labelled or not (:class:`EmbeddingCache`); a new head (no
    ``--weights``, not resumed) has its random weights taken as weights on
    standardised features."""

    def __init__(self, model: keras.Model, data: TrainingData, options: TrainOptions,
                 distribution: tf.distribute.Strategy, resumed: bool = False) -> None:
        self.options = options
        ids = data.used_ids()
        self.cache = EmbeddingCache(model, data.dataset(ids, with_ids=True), ids, data.index.label,
                                    np.union1d(data.candidates, data.pool_ids), distribution)
        if options.weights is None and not resumed:
            self.cache.fold()
        self.start = self._start(options.output / HEAD_START, resumed)

    def _start(self, path: Path, resumed: bool) -> list[np.ndarray] | None:
        """The weights every round starts from, or None (the previous round's).
        A resumed run keeps the way it started: rounds fitted both ways would
        make one curve of two recipes."""
        refit = self.options.head_from == "start"
        if resumed:
            if path.exists() != refit:
                started = "start" if path.exists() else "last"
                raise InputError(f"{path.parent} started with --head-from {started}; resume it with --head-from "
                                 f"{started}")
            return read_arrays(path) if refit else None
        if not refit:
            path.unlink(missing_ok=True)  # a run started afresh over one killed before its first round
            return None
        weights = self.cache.head.get_weights()
        atomic_write_arrays(path, weights)
        return weights

    def fit(self, ids: np.ndarray, labels: np.ndarray, val_ids: np.ndarray, seed: int) -> list[dict[str, float]]:
        o = self.options
        if self.start is not None:
            self.cache.head.set_weights(self.start)
        return self.cache.fit(ids, labels, val_ids, lambda: new_optimizer(o), o.batch_size, o.epochs, o.patience,
                              seed)

    def predict(self, ids: np.ndarray, mc_passes: int = 0, embeddings: bool = False) -> dict[str, np.ndarray]:
        return self.cache.predict(ids, self.options.batch_size, mc_passes, embeddings)


def make_learner(model: keras.Model, data: TrainingData, options: TrainOptions,
                 distribution: tf.distribute.Strategy, resumed: bool = False) -> Learner:
    """The head on cached features when the backbone is frozen, else the whole
    network; ``model`` was built in ``distribution``'s scope and, when ``resumed``,
    holds the last round's weights."""
    if options.freeze_backbone:
        return HeadOnFeatures(model, data, options, distribution, resumed)
    return FullNetwork(model, data, options, distribution)


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
