"""Fine-tuning over active-learning rounds.

Round 0 fits the model on the initial labelled set; every later round asks a
strategy for ``budget`` more tiles from the pool, adds them, and fits again
from the best weights so far with a fresh optimizer (early stopping on the
validation loss, best epoch kept). After each round everything needed to
resume is on disk: the round's model, the labelled set as (slide, x, y) keys,
``rounds.csv`` and ``state.json``. With ``--weights``, round -1 scores the
source model first; ``--rounds -1`` stops there and keeps it
(:func:`keep_zero_label_model`).

:func:`run_training` reads as that story: the fixed data
(:class:`~utils.learning.training_data.TrainingData`), the state to start
from (:class:`~utils.learning.run_state.RunState`, resumed, or fresh from the
source model, :mod:`utils.learning.source_model`), the way the model learns
(:func:`~utils.learning.learners.make_learner`, chosen once), then
:func:`play_round` for each round, whose steps are
:func:`~utils.learning.queries.query` (choose; writes nothing),
:meth:`RunState.label`, the learner's fit,
:func:`~utils.learning.evaluation.evaluate` and :func:`record` (the only step
that writes). What the run prints about its data is
:mod:`utils.learning.round_report`'s; ``--repeats`` is
:mod:`utils.learning.repeats`.

Two modes:

* simulation (default, as in the paper): every candidate tile has a label; the
  strategy only decides which labels the model may see;
* annotation (``--query-only``): the labelled set is every labelled training
  tile in the data and the pool is the unlabelled (-1) tiles written with
  ``tfrecord_generator.py --unlabeled``; after fitting, the next batch to label
  is written to ``queries/round_<k>/`` and the run stops. A pathologist labels
  those places in QuPath, extraction is rerun, and ``--resume`` goes on.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from utils.common import plots
from utils.common.cli import prepare_output
from utils.common.config import Config
from utils.common.errors import InputError
from utils.common.io import atomic_write_json
from utils.common.log import info
from utils.learning.evaluation import evaluate, improves, metrics_row, test_set_scores
from utils.learning.learners import Learner, make_learner, steps_per_epoch
from utils.learning.pseudo_labels import PoolUse, pseudo_label
from utils.learning.queries import Selection, query, write_queries
from utils.learning.round_report import describe_data, describe_pseudo_labels, other_runs
from utils.learning.run_files import ROUNDS_FILE
from utils.learning.run_state import RunState
from utils.learning.source_model import adapt_to_pool, evaluate_source, load_source_weights, standardize_on_pool
from utils.learning.train_options import TrainOptions
from utils.learning.training_data import TrainingData
from utils.network.devices import describe, device_names, distribution_over
from utils.network.model import build_model, load_model, save_model
from utils.slides.qupath import classes_new_to_qupath, qupath_class_name


def reseed(model: keras.Model, seed: int) -> None:
    """Seed the global generators and the model's dropout generators, whose
    state otherwise carries over from everything the process did before."""
    keras.utils.set_random_seed(seed)
    for variable in model.variables:
        if variable.path.endswith("seed_generator_state"):
            variable.assign(np.array([seed, 0], dtype=variable.dtype))


def save_queries(options: TrainOptions, data: TrainingData, selection: Selection, round_number: int) -> None:
    """The round's queries in ``queries/round_<k>/``, with contact sheets unless ``--no-figures``."""
    triplets = data.triplets(selection.ids) if options.figures and len(selection.ids) else None
    write_queries(options.output / "queries" / f"round_{round_number}", selection, round_number, data.index,
                  data.config, data.strides, data.origins, triplets)


def record(options: TrainOptions, data: TrainingData, model: keras.Model, state: RunState, round_number: int,
           val: dict, test: dict, selection: Selection | None, pool_use: PoolUse, epoch_steps: int,
           seconds: dict[str, float]) -> None:
    """The round's row, its checkpoint, the kept model (or a return to it),
    the queries it answered, the figures and the state, in that order: the
    state written last marks the round finished. ``epoch_steps``: the steps
    of each epoch (:func:`utils.learning.learners.steps_per_epoch`)."""
    out, config = options.output, data.config
    epochs = sum(1 for h in state.history if h["round"] == round_number)
    steps = epochs * epoch_steps
    row = metrics_row(data, round_number, state.labelled, val, test, epochs, steps, seconds["query"],
                       seconds["fit"], seconds["round"], pool_use)
    state.rows.append(row)
    state.misclassified = val["misclassified"]
    absent = [n for n, f in zip(config.class_names, test["per_class_f1"]) if np.isnan(f)]
    info(f"round {round_number}: val macro F1 {val['macro_f1']:.3f}, {test_set_scores(test)} ({row['seconds']:.0f} s)"
         + (f"; absent from the test set, so not in its macro F1: {', '.join(absent)}"
            if absent and len(absent) < config.num_classes else ""))
    if selection is not None and selection.pool_size:
        save_queries(options, data, selection, round_number)
    checkpoint = Path("rounds") / f"round_{round_number}.keras"
    save_model(model, out / checkpoint, model_metadata(options, config))
    if improves(val, state.best, options.model_selection):
        state.best = {"round": round_number, "val_macro_f1": val["macro_f1"], "val_loss": val["loss"]}
        shutil.copyfile(out / checkpoint, out / "model.tmp.keras")
        (out / "model.tmp.keras").replace(out / "model.keras")
        if options.figures:
            plots.confusion_matrix_plot(test["confusion"], config.class_names, out / "confusion_matrix.png",
                                        f"test set, round {round_number}")
    else:
        model.set_weights(load_model(out / "model.keras").get_weights())
    if options.figures:
        plots.learning_curve({options.strategy: [(row["labelled"], row["test_macro_f1"]) for row in state.rows],
                             **other_runs(options.compare)},
                             out / "learning_curve.png")
        plots.training_curves(state.history, out / "training_curves.png")
    state.round = round_number
    state.save(out, data.index)


def play_round(options: TrainOptions, data: TrainingData, model: keras.Model, learner: Learner, state: RunState,
               round_number: int) -> None:
    """Query, label, fit, evaluate, record. Each round's shuffles and dropout
    depend only on (seed, round), and the query generator's state is saved
    with the round: a resumed run repeats exactly what the uninterrupted run
    would have done."""
    started = time.perf_counter()
    round_seed = int(np.random.SeedSequence([options.seed, round_number]).generate_state(1)[0])
    reseed(model, round_seed)
    selection = None
    if round_number > 0 and not options.query_only:
        selection = query(data, learner, options, state)
        state.label(selection.ids, round_number)
        info(f"round {round_number}: {selection.strategy} chose {len(selection.ids)} of {selection.pool_size} "
             f"pool tiles -> {len(state.labelled)} labelled")
    seconds = {"query": time.perf_counter() - started}
    if len(state.labelled) == 0:
        raise InputError("the labelled training set is empty; check the split and the class counts")
    pseudo = pseudo_label(learner, data, state, options)
    if options.semi_supervised == "pseudo":
        describe_pseudo_labels(data, pseudo, round_number, options)
    seconds["pseudo"] = time.perf_counter() - started - seconds["query"]
    ids = np.concatenate([state.labelled, pseudo.ids])
    labels = np.concatenate([data.index.label[state.labelled], pseudo.labels])
    epochs = learner.fit(ids, labels, data.val_ids, round_seed)
    state.history += [{"round": round_number, **row} for row in epochs]
    seconds["fit"] = time.perf_counter() - started - seconds["query"] - seconds["pseudo"]
    pool_use = PoolUse.of_fixmatch(epochs, not options.query_only) if options.semi_supervised == "fixmatch" \
        else pseudo.use
    unlabelled = len(data.unlabelled_pool(ids)) if options.semi_supervised == "fixmatch" else 0
    if options.semi_supervised == "fixmatch":
        right = f", {pool_use.accuracy:.1%} right (simulation)" if pool_use.accuracy is not None else ""
        info(f"round {round_number}: FixMatch trained on {pool_use.count} confident views of {unlabelled} "
             f"unlabelled pool tiles{right}")
    val, test = evaluate(learner, data, data.val_ids), evaluate(learner, data, data.test_ids)
    seconds["round"] = time.perf_counter() - started
    record(options, data, model, state, round_number, val, test, selection, pool_use,
           steps_per_epoch(options, len(ids), unlabelled), seconds)


def run_training(options: TrainOptions, config: Config) -> RunState:
    """The whole run, or its rest with ``--resume``; returns the final state.
    The fixed data, the state to start from (saved, or fresh from the source
    model), the way the model learns, the rounds, and in annotation mode the
    tiles to label next."""
    out = options.output
    other_runs(options.compare)  # a --compare folder that holds no run stops here, not after the first fit
    prepare_output(out)
    keras.utils.set_random_seed(options.seed)
    rng = np.random.default_rng(options.draw_seed)
    data = TrainingData(options, config, rng)
    if data.joined:
        atomic_write_json(out / "split.json", data.split)
    saved = saved_state(options, data, rng)
    distribution = distribution_over(options.devices)
    info(describe(distribution, options.batch_size))
    # Saved weights replace the backbone's: downloading ImageNet ones would be wasted (or fail offline).
    backbone_weights = None if saved or options.weights else options.backbone_weights_source
    with distribution.scope():
        model = build_model(config, options.spec, backbone_weights, options.freeze_backbone)
    state = resume(options, model, saved, distribution) if saved else start(options, data, model, rng)
    check_the_pool_lasts(options, data, state)
    state.devices = device_names(distribution) or ["default"]
    learner = make_learner(model, data, options, distribution, saved is not None)
    if state.round == -1 and options.weights and not state.rows:
        state.rows.append(evaluate_source(learner, data))
    atomic_write_json(out / "config.json", {**model_metadata(options, config), "options": asdict(options)})
    if options.rounds == -1 and state.best["round"] is None:  # scored just now, not resumed
        keep_zero_label_model(options, config, data, model, state)
    last_round = state.round + 1 if options.query_only else options.rounds
    for round_number in range(state.round + 1, last_round + 1):
        play_round(options, data, model, learner, state, round_number)
    if options.query_only:
        ask_for_labels(options, data, learner, state, last_round + 1)
    return state


def saved_state(options: TrainOptions, data: TrainingData, rng: np.random.Generator) -> RunState | None:
    """The state ``--resume`` continues from, or None for a fresh run; an
    output folder that holds a run stops a fresh one, and one that holds a
    zero-label score stops a resumed fine-tuning run."""
    out = options.output
    state = RunState.load(out, data, options.query_only, rng) if options.resume else None
    if options.resume and state is None:
        info(f"nothing to resume in {out}; starting at round 0")
    if state and state.round == -1 and options.rounds >= 0:
        raise InputError(f"{out} holds a zero-label score (--rounds -1), not a fine-tuning run: fine-tune into "
                         f"another --output, with --weights {out / 'model.keras'} to start from its model")
    if state is None and (out / ROUNDS_FILE).exists() and not options.resume:
        raise InputError(f"{out} already holds a run; pass --resume to continue it or choose another --output")
    return state


def resume(options: TrainOptions, model: keras.Model, state: RunState, distribution: tf.distribute.Strategy) -> RunState:
    """The saved run's model, and a note when its replicas differ from this session's."""
    model.set_weights(load_model(options.output / "model.keras").get_weights())
    info(f"resuming {options.output} at round {state.round + 1} with {len(state.labelled)} labelled tiles")
    if state.devices and len(state.devices) != distribution.num_replicas_in_sync:
        info(f"its earlier rounds ran on {len(state.devices)} replica(s) ({', '.join(state.devices)}), this "
             f"one on {distribution.num_replicas_in_sync}: the global batch stays --batch-size "
             f"{options.batch_size}, so the rounds fit the same way up to floating-point order and dropout")
    return state


def start(options: TrainOptions, data: TrainingData, model: keras.Model, rng: np.random.Generator) -> RunState:
    """A fresh run: the source weights, the initial labelled set (none with
    ``--rounds -1``), the data described, and the model's normalisation
    statistics from the pool where asked (or where a texture backbone is new)."""
    load_source_weights(model, options)
    state = RunState.initial(data, 0 if options.rounds == -1 else options.initial, options.query_only, rng)
    describe_data(options, data, state)
    if options.adapt_bn:
        adapt_to_pool(model, data, options)
    elif not options.weights:
        standardize_on_pool(model, data, options)
    return state


def ask_for_labels(options: TrainOptions, data: TrainingData, learner: Learner, state: RunState,
                   round_number: int) -> None:
    """Annotation mode's last step: the next tiles to label, written as the
    queries of ``round_number``, and the QuPath classes the squares will add."""
    save_queries(options, data, query(data, learner, options, state), round_number)
    info(f"next tiles to label: {options.output / 'queries' / f'round_{round_number}'}")
    new = classes_new_to_qupath(data.config.class_names)
    if new:
        info(f"QuPath has no built-in class {', '.join(new)}: importing the squares adds them to its class "
             f"list; set each square to one of {', '.join(map(qupath_class_name, data.config.class_names))}, or "
             f"Ignore*")


def keep_zero_label_model(options: TrainOptions, config: Config, data: TrainingData, model: keras.Model,
                          state: RunState) -> None:
    """``--rounds -1``: the source model as scored at round -1 (with its
    batch-norm statistics from the pool under ``--adapt-bn``) becomes the run's
    model, for inference with no target label; no tile is labelled."""
    save_model(model, options.output / "model.keras", model_metadata(options, config))
    row = state.rows[-1]
    state.best = {"round": -1, "val_macro_f1": row["val_macro_f1"], "val_loss": row["val_loss"]}
    state.save(options.output, data.index)


def check_the_pool_lasts(options: TrainOptions, data: TrainingData, state: RunState) -> None:
    """Stop before any fit when the rounds asked for would find the pool empty:
    later rounds would choose nothing and refit the same set, and their rows
    would read as active learning. A budget of 0 (refitting the same set on
    purpose, as a ceiling) is exempt."""
    left = len(np.setdiff1d(data.pool_ids, state.labelled))
    if options.query_only:
        if left == 0:
            raise InputError(f"{options.data}: no unlabelled tissue tiles in the training split to ask about; "
                             f"extract the target slides with --unlabeled")
        return
    first = max(state.round, 0) + 1
    query_rounds = options.rounds - first + 1
    if query_rounds <= 0 or options.budget_of(first) == 0:
        return
    if left == 0:
        raise InputError(f"the initial set takes all {len(state.labelled)} labelled training tiles (--initial "
                         f"{options.initial} per class): nothing is left to query in {query_rounds} round(s); "
                         f"lower --initial, or pass --rounds 0 to fit once on everything")
    lasting, taken = 0, 0
    while taken < left:
        taken += options.budget_of(first + lasting)
        lasting += 1
    if lasting < query_rounds:
        what = f"--budgets {' '.join(map(str, options.budgets))}" if options.budgets else f"--budget {options.budget}"
        smaller = f" or --budget to {left // query_rounds}" if left >= query_rounds and not options.budgets else ""
        raise InputError(f"the pool's {left} tiles last {lasting} round(s) of {what}, not the "
                         f"{query_rounds} asked for; lower --rounds to {options.rounds - query_rounds + lasting}"
                         f"{smaller}")


def model_metadata(options: TrainOptions, config: Config) -> dict[str, Any]:
    """What every saved model carries: the configuration and the architecture."""
    return {"config": config.to_dict(), "backbone": options.spec.backbone, "spec": asdict(options.spec)}
