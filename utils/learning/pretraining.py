"""The pretraining job of ``active_learning_train.py --self-supervised simclr``:
every window of the record folders given to ``--data``, at every
magnification, through :mod:`utils.network.simclr`, for ``--epochs`` epochs, on the
devices of ``--devices`` (the same ``tf.distribute`` code as fine-tuning), from the
backbone weights ``--backbone-weights`` names (``none``: from scratch).

Records are read by byte offset in a fresh random order every pass, so an
epoch costs what it reads. After every epoch the run folder gets
``backbone.weights.h5`` (what ``--backbone-weights PATH`` loads), the whole
model and its optimizer state (``simclr.weights.h5``, ``simclr_optimizer.npz``)
and, last, ``pretraining.json`` (epochs done, the loss of each, the settings);
``--resume`` goes on from the last finished epoch with the same weights and
optimizer state (the order of the windows is drawn afresh).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from utils.common.cli import prepare_output
from utils.common.config import Config
from utils.common.errors import InputError
from utils.common.io import atomic_write_arrays, atomic_write_json, read_arrays
from utils.common.log import info
from utils.learning.learners import RoundTimeEstimate, new_optimizer
from utils.learning.train_options import TrainOptions
from utils.network.devices import describe, distribution_over
from utils.network.model import Preprocess, build_backbone
from utils.network.simclr import SimCLR, view_pairs
from utils.tiles.records import RecordIndex, read_index, record_files, triplet_dataset
from utils.tiles.summaries import ShardSummary

BACKBONE_FILE = "backbone.weights.h5"
STATE_FILE = "pretraining.json"
#: Windows mixed across scales and shards before views are made.
SHUFFLE_WINDOWS = 2048


def run_pretraining(options: TrainOptions, config: Config) -> list[dict[str, Any]]:
    """Pretrain, or go on with ``--resume``; returns the loss of every epoch."""
    out = options.output
    prepare_output(out)
    keras.utils.set_random_seed(options.seed)
    index = read_index(_shards(options, config))
    windows = len(index) * len(config.magnifications)
    steps = windows // options.batch_size
    if steps == 0:
        raise InputError(f"{windows} windows are fewer than one batch of --batch-size {options.batch_size}")
    distribution = distribution_over(options.devices)
    info(describe(distribution, options.batch_size))
    with distribution.scope():
        backbone = build_backbone(options.spec.backbone, config.tile_size, options.backbone_weights_source,
                                  "backbone")
        encoder = keras.Sequential([keras.Input((config.tile_size, config.tile_size, 3)),
                                    Preprocess(options.spec.scaling), backbone,
                                    keras.layers.GlobalAveragePooling2D()], name="encoder")
        model = SimCLR(encoder)
        model.compile(optimizer=new_optimizer(options))
        model(tf.zeros((1, config.tile_size, config.tile_size, 3)))
        model.optimizer.build(model.trainable_variables)
    history = _resume(out, model) if options.resume else []
    if not history and (out / STATE_FILE).exists():
        raise InputError(f"{out} already holds a pretraining; pass --resume to continue it or choose another --output")
    info(f"SimCLR on {windows} windows ({len(index)} triplets x {len(config.magnifications)} magnifications of "
         f"{', '.join(str(p) for p in options.data_folders)}): {steps} steps of {options.batch_size} an epoch, "
         f"epochs {len(history) + 1} to {options.epochs}")
    pairs = view_pairs(_windows(index, config, options), options.batch_size)
    saving = _SaveEachEpoch(out, model, backbone, history, options)
    model.fit(pairs, epochs=options.epochs, initial_epoch=len(history), steps_per_epoch=steps, verbose=2,
              callbacks=[RoundTimeEstimate(steps, options.epochs - len(history)), saving])
    info(f"backbone weights: {out / BACKBONE_FILE} (pass them with --backbone {options.spec.backbone} "
         f"--backbone-weights {out / BACKBONE_FILE})")
    return saving.history


def _shards(options: TrainOptions, config: Config) -> list[Path]:
    """The shards of every ``--data`` folder; each must have the run's magnifications and tile size."""
    files = []
    for folder in options.data_folders:
        found = record_files(folder)
        if not found:
            raise InputError(f"{folder}: no .tfrecord shards; run tfrecord_generator.py first")
        for shard in found:
            summary = shard.with_name(shard.name.removesuffix(".tfrecord") + ".summary.json")
            if not summary.exists():
                continue
            made = ShardSummary.read(summary)
            if made.scales != config.scales:
                raise InputError(f"{shard}: {made.scales}, not the {config.scales} of the first --data folder; "
                                 f"pretrain on folders extracted at the same scales")
        files += found
    return files


def _windows(index: RecordIndex, config: Config, options: TrainOptions) -> tf.data.Dataset:
    """Every window of every record, each scale a sample, endlessly, in a random order."""
    batches = triplet_dataset(index, np.arange(len(index)), config.scales, options.batch_size, shuffle=True,
                              seed=options.seed, endless=True)
    names = list(batches.element_spec[0])
    return batches.map(lambda inputs, _: tf.concat([inputs[n] for n in names], axis=0)).unbatch() \
        .shuffle(SHUFFLE_WINDOWS, seed=options.seed)


def _resume(out: Path, model: SimCLR) -> list[dict[str, Any]]:
    """The epochs a killed or finished pretraining already did, with its weights and optimizer state restored."""
    state_file = out / STATE_FILE
    if not state_file.exists():
        info(f"nothing to resume in {out}; starting at epoch 1")
        return []
    state = json.loads(state_file.read_text(encoding="utf-8"))
    model.load_weights(out / "simclr.weights.h5")
    for variable, value in zip(model.optimizer.variables, read_arrays(out / "simclr_optimizer.npz"), strict=True):
        variable.assign(value)
    info(f"resuming {out} after epoch {len(state['history'])}")
    return state["history"]


class _SaveEachEpoch(keras.callbacks.Callback):
    """The checkpoint of every finished epoch, ``pretraining.json`` written last."""

    def __init__(self, out: Path, model: SimCLR, backbone: keras.Model, history: list[dict[str, Any]],
                 options: TrainOptions) -> None:
        super().__init__()
        self.out, self.simclr, self.backbone, self.history = out, model, backbone, list(history)
        self.settings = {"backbone": options.spec.backbone, "input_scaling": options.spec.scaling,
                         "data": [str(p) for p in options.data_folders], "batch_size": options.batch_size,
                         "optimizer": options.optimizer, "learning_rate": options.learning_rate,
                         "seed": options.seed}
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        _save_weights(self.simclr, self.out / "simclr.weights.h5")
        _save_weights(self.backbone, self.out / BACKBONE_FILE)
        atomic_write_arrays(self.out / "simclr_optimizer.npz",
                            [keras.ops.convert_to_numpy(v) for v in self.simclr.optimizer.variables])
        self.history.append({"epoch": epoch + 1, "loss": float((logs or {})["loss"]),
                             "seconds": round(time.perf_counter() - self.started, 1)})
        self.started = time.perf_counter()
        atomic_write_json(self.out / STATE_FILE, {"history": self.history, "settings": self.settings})


def _save_weights(model: keras.Model, path: Path) -> None:
    """``save_weights`` under a temporary name Keras accepts, then renamed."""
    tmp = path.with_name(f".{os.getpid()}.{path.name}")
    model.save_weights(tmp)
    os.replace(tmp, path)
