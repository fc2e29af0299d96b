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
(:class:`~utils.training_data.TrainingData`), the state to start from
(:class:`~utils.run_state.RunState`, fresh or resumed), the way the model
learns (:func:`~utils.learners.make_learner`, chosen once), then
:func:`play_round` for each round, whose steps are
:func:`~utils.queries.query` (choose; writes nothing),
:meth:`RunState.label`, the learner's fit, :func:`evaluate` and
:func:`record` (the only step that writes).

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

import json
import shutil
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from utils import plots
from utils.batch_norm import adapt_batch_norm, batch_norm_layers
from utils.cli import prepare_output
from utils.config import Config
from utils.data_split import SPLITS
from utils.devices import describe, device_names, distribution_over
from utils.errors import InputError, ModelError
from utils.io import atomic_write_json, read_csv, write_table
from utils.learners import Learner, make_learner, steps_per_epoch
from utils.log import info
from utils.model import build_model, load_model, load_weights_by_name, save_model
from utils.pseudo_labels import PoolUse, PseudoLabels, pseudo_label
from utils.queries import Selection, query, write_queries
from utils.qupath import classes_new_to_qupath, qupath_class_name
from utils.records import triplet_dataset
from utils.run_files import ROUNDS_FILE, STATE_FILE
from utils.run_state import RunState
from utils.texture import fit_standardization
from utils.train_options import TrainOptions
from utils.training_data import TrainingData


def reseed(model: keras.Model, seed: int) -> None:
    """Seed the global generators and the model's dropout generators, whose
    state otherwise carries over from everything the process did before."""
    keras.utils.set_random_seed(seed)
    for variable in model.variables:
        if variable.path.endswith("seed_generator_state"):
            variable.assign(np.array([seed, 0], dtype=variable.dtype))


def evaluate(learner: Learner, data: TrainingData, ids: np.ndarray) -> dict[str, Any]:
    """Accuracy, macro and per-class F1 (scikit-learn) and the confusion matrix."""
    num = data.config.num_classes
    if len(ids) == 0:
        return {"accuracy": float("nan"), "macro_f1": float("nan"), "per_class_f1": [float("nan")] * num,
                "loss": float("nan"), "confusion": np.zeros((num, num), np.int64), "misclassified": np.zeros(num)}
    result = learner.predict(ids)
    truth, predicted = result["labels"], result["probs"].argmax(axis=1)
    labels = list(range(num))
    present = sorted(set(truth.tolist()))
    per_class = f1_score(truth, predicted, labels=labels, average=None, zero_division=0)
    per_class[~np.isin(labels, present)] = np.nan  # a class absent from the set has no F1
    probs = result["probs"].astype(np.float64)
    probs /= probs.sum(axis=1, keepdims=True)
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        # Mean cross-entropy, the loss the model is fitted on (clipped as Keras clips it).
        "loss": float(-np.log(np.clip(probs[np.arange(len(truth)), truth], 1e-7, 1.0)).mean()),
        # Macro over the classes the set contains, so an absent class does not count as 0.
        "macro_f1": float(f1_score(truth, predicted, labels=present, average="macro", zero_division=0)),
        "per_class_f1": per_class.tolist(),
        "confusion": confusion_matrix(truth, predicted, labels=labels),
        "misclassified": np.bincount(truth[truth != predicted], minlength=num),
    }


def test_set_scores(test: dict[str, Any]) -> str:
    """The test set's macro F1 and accuracy, or that there is no test set (a
    split file with an empty test list), never a NaN."""
    if np.isnan(test["accuracy"]):
        return "no test set (the split's test list is empty)"
    return f"test macro F1 {test['macro_f1']:.3f}, test accuracy {test['accuracy']:.3f}"


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
    of each epoch (:func:`utils.learners.steps_per_epoch`)."""
    out, config = options.output, data.config
    epochs = sum(1 for h in state.history if h["round"] == round_number)
    steps = epochs * epoch_steps
    row = _metrics_row(data, round_number, state.labelled, val, test, epochs, steps, seconds["query"],
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
        plots.learning_curve({options.strategy: state.rows, **_other_runs(options.compare)},
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


def run_training(options: TrainOptions, config: Config) -> RunState:
    """The whole run, or its rest with ``--resume``; returns the final state."""
    out = options.output
    prepare_output(out)
    keras.utils.set_random_seed(options.seed)
    rng = np.random.default_rng(options.draw_seed)
    data = TrainingData(options, config, rng)
    if data.joined:
        atomic_write_json(out / "split.json", data.split)
    state = RunState.load(out, data, options.query_only, rng) if options.resume else None
    if options.resume and state is None:
        info(f"nothing to resume in {out}; starting at round 0")
    if state and state.round == -1 and options.rounds >= 0:
        raise InputError(f"{out} holds a zero-label score (--rounds -1), not a fine-tuning run: fine-tune into "
                         f"another --output, with --weights {out / 'model.keras'} to start from its model")
    if state is None and (out / ROUNDS_FILE).exists() and not options.resume:
        raise InputError(f"{out} already holds a run; pass --resume to continue it or choose another --output")
    # Saved weights replace the backbone's: downloading ImageNet ones would be wasted (or fail offline).
    backbone_weights = None if state or options.weights else options.backbone_weights_source
    distribution = distribution_over(options.devices)
    info(describe(distribution, options.batch_size))
    with distribution.scope():
        model = build_model(config, options.spec, backbone_weights, options.freeze_backbone)
    resumed = state is not None
    if resumed:
        model.set_weights(load_model(out / "model.keras").get_weights())
        info(f"resuming {out} at round {state.round + 1} with {len(state.labelled)} labelled tiles")
        if state.devices and len(state.devices) != distribution.num_replicas_in_sync:
            info(f"its earlier rounds ran on {len(state.devices)} replica(s) ({', '.join(state.devices)}), this "
                 f"one on {distribution.num_replicas_in_sync}: the global batch stays --batch-size "
                 f"{options.batch_size}, so the rounds fit the same way up to floating-point order and dropout")
    else:
        load_source_weights(model, options)
        state = RunState.initial(data, 0 if options.rounds == -1 else options.initial, options.query_only, rng)
        describe_data(options, data, state)
        if options.adapt_bn:
            adapt_to_pool(model, data, options)
        elif not options.weights:
            standardize_on_pool(model, data, options)
    check_the_pool_lasts(options, data, state)
    state.devices = device_names(distribution) or ["default"]
    learner = make_learner(model, data, options, distribution, resumed)
    if state.round == -1 and options.weights and not state.rows:
        state.rows.append(evaluate_source(learner, data))
    atomic_write_json(out / "config.json", {**model_metadata(options, config), "options": asdict(options)})
    if options.rounds == -1 and state.best["round"] is None:  # scored just now, not resumed
        keep_zero_label_model(options, config, data, model, state)
    last_round = state.round + 1 if options.query_only else options.rounds
    for round_number in range(state.round + 1, last_round + 1):
        play_round(options, data, model, learner, state, round_number)
    if options.query_only:
        save_queries(options, data, query(data, learner, options, state), last_round + 1)
        info(f"next tiles to label: {out / 'queries' / f'round_{last_round + 1}'}")
        new = classes_new_to_qupath(config.class_names)
        if new:
            info(f"QuPath has no built-in class {', '.join(new)}: importing the squares adds them to its class "
                 f"list; set each square to one of {', '.join(map(qupath_class_name, config.class_names))}, or "
                 f"Ignore*")
    return state


def keep_zero_label_model(options: TrainOptions, config: Config, data: TrainingData, model: keras.Model,
                          state: RunState) -> None:
    """``--rounds -1``: the source model as scored at round -1 (with its
    batch-norm statistics from the pool under ``--adapt-bn``) becomes the run's
    model, for inference with no target label; no tile is labelled."""
    save_model(model, options.output / "model.keras", model_metadata(options, config))
    row = state.rows[-1]
    state.best = {"round": -1, "val_macro_f1": row["val_macro_f1"], "val_loss": row["val_loss"]}
    state.save(options.output, data.index)


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
    shuffled = triplet_dataset(data.index, sample, data.config.magnifications, data.config.tile_size,
                               data.batch_size, shuffle=True, seed=options.seed)
    batches = adapt_batch_norm(model, shuffled, data.config.magnifications)
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


def evaluate_source(learner: Learner, run: TrainingData) -> dict[str, Any]:
    """Round -1: the source-domain model on the target data, before any target label."""
    val, test = evaluate(learner, run, run.val_ids), evaluate(learner, run, run.test_ids)
    info(f"source weights before fine-tuning: val macro F1 {val['macro_f1']:.3f}, {test_set_scores(test)}")
    return _metrics_row(run, -1, np.zeros(0, np.int64), val, test, 0, 0, 0.0, 0.0, 0.0, PoolUse(0, None))


def run_repeats(options: TrainOptions, config: Config) -> list[dict[str, Any]]:
    """The same run ``options.repeats`` times with seeds seed, seed + 1, ... (the
    original code reported 4 runs), each in ``OUTPUT/repeat_<k>/``; returns
    and writes to ``OUTPUT/repeats.csv`` the kept round of each, and prints
    the mean and standard deviation of its test macro F1."""
    if options.query_only:
        raise InputError("--repeats simulates rounds; it cannot be combined with --query-only")
    results, repeats = [], options.repeats
    for k in range(repeats):
        info(f"== repeat {k + 1} of {repeats} (seed {options.seed + k})")
        out = options.output / f"repeat_{k}"
        repeat = replace(options, output=out, seed=options.seed + k,
                         data_seed=options.seed if options.repeats_share_data else None,
                         resume=options.resume and (out / STATE_FILE).exists())
        state = run_training(repeat, config)
        kept = next(row for row in state.rows if row["round"] == state.best["round"])
        results.append({"repeat": k, "seed": repeat.seed, "kept_round": kept["round"], "labelled": kept["labelled"],
                        "test_macro_f1": kept["test_macro_f1"], "test_accuracy": kept["test_accuracy"],
                        "last_round_test_macro_f1": state.rows[-1]["test_macro_f1"]})
    write_table(options.output / "repeats.csv", results)
    scores = np.array([r["test_macro_f1"] for r in results], float)
    spread = f" ± {scores.std(ddof=1):.3f} (mean ± sd)" if len(scores) > 1 else ""
    info(f"{repeats} repeat(s): test macro F1 of the kept models {np.nanmean(scores):.3f}{spread}; "
         f"{options.output / 'repeats.csv'}")
    return results


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


def improves(val: dict[str, Any], best: dict[str, Any], model_selection: str) -> bool:
    """Whether this round's model replaces the best so far: a higher validation
    macro F1 (``val_f1``), or a lower validation loss (``val_loss``, the
    original code's rule)."""
    if best["round"] is None:
        return True
    if model_selection == "val_loss":
        return val["loss"] < best.get("val_loss", float("inf"))
    return val["macro_f1"] > best["val_macro_f1"]


def _metrics_row(run: TrainingData, round_number: int, labelled: np.ndarray, val: dict, test: dict, epochs: int, steps: int,
                 query_seconds: float, fit_seconds: float, seconds: float, pool_use: PoolUse) -> dict[str, Any]:
    return {"round": round_number, "labelled": len(labelled),
            **{f"labelled_{k}": v for k, v in run.counts(labelled).items()},
            "pseudo_labelled": pool_use.count, "pseudo_accuracy": pool_use.accuracy,
            "val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"], "val_loss": val["loss"],
            "test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"],
            **{f"test_f1_{n}": f for n, f in zip(run.config.class_names, test["per_class_f1"])},
            "epochs": epochs, "steps": steps, "query_seconds": round(query_seconds, 2), "fit_seconds": round(fit_seconds, 2),
            "seconds": round(seconds, 2)}


def _other_runs(folders: tuple[Path, ...]) -> dict[str, list[dict]]:
    """Rows of earlier runs to draw beside this one, labelled by folder and strategy."""
    runs = {}
    for folder in folders:
        if not (folder / ROUNDS_FILE).exists():
            raise InputError(f"{folder}: no {ROUNDS_FILE} to compare with")
        strategy = json.loads((folder / "config.json").read_text())["options"]["strategy"]
        runs[f"{folder.name} ({strategy})"] = read_csv(folder / ROUNDS_FILE)
    return runs


def _print_counts(counts: dict[str, dict[str, int]]) -> None:
    names = list(next(iter(counts.values())))
    info(f"{'':18s}" + "".join(f"{n:>12s}" for n in names))
    for split, row in counts.items():
        info(f"{split:18s}" + "".join(f"{row[n]:12d}" for n in names))

