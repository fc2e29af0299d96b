"""The source model before any target label: its weights loaded, its
normalisation statistics taken from the target pool, and its score (round -1).

These steps decide what a fine-tuning run starts from, so each says in one
line what it did, and a source model that would leave layers without weights
stops the run unless ``--allow-partial-weights`` asks for it.
"""

from __future__ import annotations

import warnings
from typing import Any

import keras
import numpy as np

from utils.common.errors import ModelError
from utils.common.log import info
from utils.learning.evaluation import evaluate, metrics_row, test_set_scores
from utils.learning.learners import Learner
from utils.learning.pseudo_labels import PoolUse
from utils.learning.train_options import TrainOptions
from utils.learning.training_data import TrainingData
from utils.network.batch_norm import adapt_batch_norm, batch_norm_layers
from utils.network.model import load_weights_by_name
from utils.network.texture import fit_standardization
from utils.tiles.records import triplet_dataset


def load_source_weights(model: keras.Model, options: TrainOptions) -> None:
    """The source-domain weights to fine-tune, with every layer covered unless
    --allow-partial-weights says otherwise."""
    if not options.weights:
        return
    missing = load_weights_by_name(model, options.weights)
    if missing and not options.allow_partial_weights:
        raise ModelError(f"{options.weights}: layers {', '.join(missing)} of the model to fine-tune would "
                         f"receive no weights (another backbone, head or class list); fine-tune with the "
                         f"source model's architecture, or pass --allow-partial-weights")
    info(f"loaded source weights from {options.weights}")
    if missing:
        info(f"layers that received no weights (--allow-partial-weights): {', '.join(missing)}")


#: Training tiles whose statistics ``--adapt-bn`` and the texture backbone's
#: standardisation average: enough for stable means and variances, few
#: enough to take seconds.
ADAPT_TILES = 4096


def pool_sample(data: TrainingData, seed: int) -> np.ndarray:
    """A seeded sample of the training split's tiles, labelled or not (their labels unused)."""
    tiles = np.union1d(data.candidates, data.pool_ids)
    return np.sort(np.random.default_rng(seed).permutation(tiles)[:ADAPT_TILES])


def standardize_on_pool(model: keras.Model, data: TrainingData, options: TrainOptions) -> None:
    """A texture backbone built here (not loaded) standardises its filter
    statistics by their means and variances over the training split."""
    count = fit_standardization(model, data.dataset(pool_sample(data, options.seed)))
    if count:
        info(f"texture backbone: filter statistics standardised on {count} training tiles")


def adapt_to_pool(model: keras.Model, data: TrainingData, options: TrainOptions) -> None:
    """``--adapt-bn``: the backbones' batch-norm statistics, and a texture
    backbone's standardisation, from a seeded sample of the pool, or a warning
    that there is neither. Batch-norm statistics are averaged over batches,
    so the batches are drawn in random order: in stored order most batches
    hold one class, and their variances miss the variance between classes."""
    sample = pool_sample(data, options.seed)
    shuffled = triplet_dataset(data.index, sample, data.config.scales, data.batch_size, shuffle=True, seed=options.seed)
    batches = adapt_batch_norm(model, shuffled, data.config.scales)
    tiles = fit_standardization(model, data.dataset(sample))
    if batches == 0 and tiles == 0:
        warnings.warn(f"--adapt-bn: the {options.spec.backbone} backbone has no batch normalisation and no filter "
                      f"bank, so nothing was adapted; it applies to mobilenetv2 and the texture backbones",
                      stacklevel=2)
        return
    if batches:
        info(f"--adapt-bn: batch-norm statistics of {len(batch_norm_layers(model))} layers re-estimated on "
             f"{len(sample)} pool tiles ({batches} shuffled batches), before any target label")
    if tiles:
        info(f"--adapt-bn: texture statistics standardised on {tiles} pool tiles, before any target label")


def evaluate_source(learner: Learner, run: TrainingData) -> dict[str, Any]:
    """Round -1: the source-domain model on the target data, before any target label."""
    val, test = evaluate(learner, run, run.val_ids), evaluate(learner, run, run.test_ids)
    info(f"source weights before fine-tuning: val macro F1 {val['macro_f1']:.3f}, {test_set_scores(test)}")
    return metrics_row(run, -1, np.zeros(0, np.int64), val, test, 0, 0, 0.0, 0.0, 0.0, PoolUse(0, None))
