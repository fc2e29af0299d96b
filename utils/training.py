"""Fine-tuning over active-learning rounds.

Round 0 fits the model on the initial labelled set; every later round asks a
strategy for ``budget`` more tiles from the pool, adds them, and fits again
from the best weights so far with a fresh optimizer (early stopping on the
validation loss, best epoch kept). After each round everything needed to
resume is on disk: the round's model, the labelled set as (slide, x, y) keys,
``rounds.csv`` and ``state.json``.

:func:`run_training` reads as that story: the data (:class:`TrainingData`),
the state to start from (:class:`RunState`, fresh or resumed), then
:func:`play_round` for each round, whose steps are :func:`query` (choose;
writes nothing), :meth:`RunState.label`, :func:`fit`, :func:`evaluate` and
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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from utils import plots
from utils.active_learning import STRATEGIES, Pool, get_strategy, select
from utils.cli import prepare_output
from utils.config import Config
from utils.data_split import SPLIT_BY, SPLITS
from utils.errors import InputError, ModelError
from utils.io import atomic_write_csv, atomic_write_json, read_csv
from utils.log import info, quiet
from utils.model import (
    BACKBONES,
    INPUT_SCALINGS,
    ModelSpec,
    Predictor,
    build_model,
    load_model,
    load_weights_by_name,
    save_model,
)
from utils.options import option
from utils.queries import Selection, score_ranks, write_queries
from utils.training_data import TrainingData

#: How the kept model is chosen among the rounds (see :func:`improves`).
MODEL_SELECTIONS = ("val_f1", "val_loss")


@dataclass
class TrainOptions:
    """Every setting of a training run. The fields declared with
    :func:`~utils.options.option` are also the flags of
    ``active_learning_train.py`` and the keys of a configuration file's
    ``training:`` section: their defaults (the paper's) are written here only."""

    data: Path
    output: Path
    #: The architecture, resolved from ``backbone``, ``head_units``,
    #: ``input_scaling`` and the source model (:func:`utils.model.source_spec`).
    spec: ModelSpec = field(default_factory=ModelSpec)
    resume: bool = False
    compare: tuple[Path, ...] = ()
    backbone: str | None = option(None, "per-scale backbone (default: the --weights model's, else vgg16)", "model",
                                  choices=BACKBONES)
    head_units: int | None = option(None, "units of each dense layer (default: the --weights model's, else 4096)",
                                    "model")
    input_scaling: str | None = option(
        None, "how 0-255 tiles are scaled before the backbone (default: the --weights model's, else the backbone's "
              "own: caffe for vgg16, tf for mobilenetv2); raw feeds 0-255 unchanged, as the original code did",
        "model", choices=INPUT_SCALINGS)
    backbone_weights: str | None = option(
        "imagenet", "imagenet (download), none, or a local backbone weights file; not used with --weights, whose "
                    "model replaces them", "model", metavar="imagenet|none|PATH")
    weights: Path | None = option(None, "source-domain model (.keras) to fine-tune, or a matching .weights.h5",
                                  "model", metavar="FILE")
    allow_partial_weights: bool = option(
        False, "load --weights by layer name into a different architecture; layers that get no weights are listed "
               "and start from scratch", "model")
    freeze_backbone: bool = option(False, "train the head only", "model")
    strategy: str = option("class_ratio", "query strategy (class_ratio is the paper's)", "active learning",
                           choices=tuple(STRATEGIES))
    rounds: int = option(4, "rounds after the initial fit; 0 = initial fit only", "active learning")
    budget: int = option(20000, "tiles labelled per round", "active learning")
    initial: int = option(25000, "initial labelled tiles per class", "active learning")
    pool_sample: int | None = option(None, "score only a random sample of this many pool tiles", "active learning",
                                     metavar="N")
    mc_passes: int = option(10, "Monte-Carlo dropout passes for bald", "active learning")
    spacing: int = option(2, "diversity guard: at most one uncertainty pick per SxS tiles of a slide",
                          "active learning", metavar="S")
    query_only: bool = option(
        False, "annotation mode: fit on all labelled tiles, write the next queries for the pool and stop",
        "active learning")
    warm_start: float = option(
        0.0, "until this fraction of the training tiles is labelled, draw at random with equal shares per predicted "
             "class, then the query strategy (against the cold start of uncertainty strategies)", "active learning",
        metavar="F")
    oracle_classes: bool = option(
        False, "simulation only: split class budgets by the pool tiles' true labels, as the original code did, "
               "instead of by their predicted classes as real use must", "active learning")
    epochs: int = option(10, "maximum epochs per round", "fitting")
    batch_size: int = option(128, "tiles per training step", "fitting")
    optimizer: str = option("sgd", "sgd: the paper's (momentum 0.9, Nesterov); adam for training from scratch",
                            "fitting", choices=("sgd", "adam"))
    learning_rate: float = option(1.5e-5, "the paper's for fine-tuning with sgd", "fitting")
    patience: int = option(3, "early-stopping patience on validation loss", "fitting")
    model_selection: str = option(
        "val_f1", "the round whose model is kept as model.keras: the best validation macro F1, or the lowest "
                  "validation loss (the original code's)", "fitting", choices=MODEL_SELECTIONS)
    augment: bool = option(True, "no flips or 90-degree rotations", "fitting", flag="--no-augment")
    colour_jitter: bool = option(False, "also jitter brightness, saturation and hue", "fitting")
    figures: bool = option(
        True, "no figures after each round (learning and training curves, confusion matrix, contact sheets): for "
              "many simulated runs, read from rounds.csv", "output", flag="--no-figures")
    seed: int = option(0, "seed of the split, the samples, shuffles and dropout", "data")
    repeats: int = option(
        1, "run N times with seeds seed, seed+1, ... into OUTPUT/repeat_<k>/ and report the mean and spread of the "
           "kept models' test macro F1 (the original reported 4 runs)", "data", metavar="N")
    split_by: str | None = option(
        None, "slide: whole slides to train, validation and test (needs 3 slides); block: square blocks of each "
              "slide, several lowest-magnification windows wide, with no window shared across splits (default: "
              "slide with 3 slides or more, else block)", "data", choices=SPLIT_BY)
    split_file: Path | None = option(
        None, "split file: a split.json of an earlier run, JSON {train,val,test: [slides]} or CSV slide,split",
        "data", flag="--split", metavar="FILE")
    split_fractions: tuple[float, ...] = option((0.8, 0.1, 0.1), "fractions of train, validation and test", "data",
                                                nargs=3, metavar=("TRAIN", "VAL", "TEST"))
    slide_class_cap: int | None = option(
        1000, "at most this many training tiles per slide and class (0 = no cap; the configuration's "
              "uncapped_classes are exempt)", "data")
    cap_eval_per_slide: bool = option(
        False, "apply that cap to the validation and test tiles too (the original code's)", "data")
    eval_cap: int | None = option(None, "at most this many validation/test tiles per class", "data")
    strict: bool = option(False, "stop when a configured class has no training or validation tiles", "data")

    def __post_init__(self) -> None:
        for name in ("rounds", "budget", "initial", "epochs", "batch_size", "patience", "repeats", "mc_passes",
                     "spacing"):
            least = 0 if name in ("rounds", "budget") else 1  # budget 0 refits the same set (a ceiling)
            if getattr(self, name) < least:
                raise InputError(f"{name.replace('_', '-')} must be at least {least}, not {getattr(self, name)}")
        if not 0 <= self.warm_start <= 1:
            raise InputError(f"warm-start is a fraction of the training tiles, from 0 to 1, not {self.warm_start}")
        if self.oracle_classes and self.query_only:
            raise InputError("--oracle-classes needs the pool's labels, which --query-only does not have")
        if len(self.split_fractions) != 3 or abs(sum(self.split_fractions) - 1) > 1e-6 or min(self.split_fractions) < 0:
            raise InputError(f"split fractions must be three non-negative numbers summing to 1, not "
                             f"{list(self.split_fractions)}")

    @property
    def backbone_weights_source(self) -> str | None:
        """What ``build_model`` loads into the backbones: "none" means nothing."""
        if self.backbone_weights is None or self.backbone_weights.lower() == "none":
            return None
        return self.backbone_weights


def reseed(model: keras.Model, seed: int) -> None:
    """Seed the global generators and the model's dropout generators, whose
    state otherwise carries over from everything the process did before."""
    keras.utils.set_random_seed(seed)
    for variable in model.variables:
        if variable.path.endswith("seed_generator_state"):
            variable.assign(np.array([seed, 0], dtype=variable.dtype))


def gpu_devices() -> tf.distribute.Strategy:
    """MirroredStrategy over several GPUs, else the default placement."""
    gpus = tf.config.list_physical_devices("GPU")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()


def new_optimizer(options: TrainOptions) -> keras.optimizers.Optimizer:
    """A new optimizer every round: state from an earlier round must not leak in."""
    if options.optimizer == "sgd":
        return keras.optimizers.SGD(options.learning_rate, momentum=0.9, nesterov=True)
    if options.optimizer == "adam":
        return keras.optimizers.Adam(options.learning_rate)
    raise InputError(f"unknown optimizer {options.optimizer!r}; choose sgd or adam")


def evaluate(predictor: Predictor, run: TrainingData, ids: np.ndarray) -> dict[str, Any]:
    """Accuracy, macro and per-class F1 (scikit-learn) and the confusion matrix."""
    num = run.config.num_classes
    if len(ids) == 0:
        return {"accuracy": float("nan"), "macro_f1": float("nan"), "per_class_f1": [float("nan")] * num,
                "loss": float("nan"), "confusion": np.zeros((num, num), np.int64), "misclassified": np.zeros(num)}
    result = run.predict(predictor, ids)
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


#: What ``--warm-start`` draws with: the class-ratio rule with equal shares, by predicted class.
WARM_START = "class-balanced random (warm start)"


def query(run: TrainingData, predictor: Predictor, labelled: np.ndarray, misclassified: np.ndarray) -> Selection:
    """Choose the next ``budget`` tiles from the pool. Writes nothing
    (:func:`write_queries` does); draws from ``run.rng`` only.

    Class budgets (``class_ratio``, the warm start) go by the model's
    predicted class of each pool tile, as they must in real use; only
    ``--oracle-classes`` lets a simulation use the true labels."""
    o = run.options
    pool_ids = np.setdiff1d(run.pool_ids, labelled)
    warm = len(labelled) < o.warm_start * len(np.union1d(run.pool_ids, labelled))
    if o.pool_sample and len(pool_ids) > o.pool_sample:
        pool_ids = np.sort(run.rng.choice(pool_ids, size=o.pool_sample, replace=False))
    if len(pool_ids) == 0:
        return Selection(pool_ids, None, None, 0)
    name = "class_ratio" if warm else o.strategy
    strategy = get_strategy(name)
    needs_model = strategy.needs_predictions or strategy.class_ratio and not o.oracle_classes or o.query_only
    scored = run.predict(predictor, pool_ids, o.mc_passes if strategy.mc_passes else 0,
                         embeddings=strategy.embeddings or strategy.gradients) if needs_model else None
    pool = Pool(run.index.slide[pool_ids], run.index.x[pool_ids], run.index.y[pool_ids], run.index.label[pool_ids])
    if scored is not None:
        order = np.argsort(scored["ids"])
        pool_ids = scored["ids"][order]
        pool = Pool(run.index.slide[pool_ids], run.index.x[pool_ids], run.index.y[pool_ids],
                    run.index.label[pool_ids] if o.oracle_classes else scored["probs"][order].argmax(axis=1),
                    **{key: (scored[key][:, order] if key == "mc_probs" else scored[key][order])
                       for key in ("probs", "mc_probs", "embeddings", "penultimate") if key in scored})
    if strategy.embeddings and len(labelled):
        pool.labelled_embeddings = run.predict(predictor, labelled, embeddings=True)["embeddings"]
    stride = float(np.median(list(run.strides.values()))) if run.strides else 1.0
    shares = np.zeros(run.config.num_classes) if warm else misclassified
    positions, scores = select(name, o.budget, pool, run.rng, shares, run.config.num_classes,
                               stride=stride, spacing=o.spacing)
    probs = pool.probs[positions] if pool.probs is not None else None
    return Selection(pool_ids[positions], strategy.score_sign * scores[positions] if scores is not None else None,
                     probs.argmax(axis=1) if probs is not None else None, len(pool_ids),
                     WARM_START if warm else o.strategy, probs,
                     score_ranks(scores)[positions] if scores is not None else None, strategy.score_name or "score")


@dataclass
class RunState:
    """What a run carries from one round to the next, saved after every round
    (:meth:`save`) and read back by ``--resume`` (:meth:`load`), here only:
    the labelled set in ``labelled.csv`` (slide, x, y, label, round added),
    the rest, with the query generator's state, in ``state.json``."""

    round: int  # the last finished round; -1 before round 0
    labelled: np.ndarray  # record ids, sorted
    added: dict[int, int]  # record id -> round that labelled it (0: the initial set)
    best: dict[str, Any]  # the kept round, with its validation macro F1 and loss
    misclassified: np.ndarray  # validation errors per true class of the last round: class_ratio's input
    rows: list[dict[str, Any]] = field(default_factory=list)  # rounds.csv
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch of every round

    @classmethod
    def initial(cls, run: TrainingData) -> RunState:
        return cls(round=-1, labelled=run.initial_labelled(), added={}, best={"round": None, "val_macro_f1": -1.0},
                   misclassified=np.zeros(run.config.num_classes))

    @classmethod
    def load(cls, run: TrainingData) -> RunState | None:
        """The state after the last finished round, or None when there is none.
        A run killed after writing labelled.csv but before state.json must not
        count a round twice, so only rows up to the saved round are taken."""
        path = run.out / "state.json"
        if not path.exists():
            return None
        saved = json.loads(path.read_text(encoding="utf-8"))
        lookup = {k: i for i, k in enumerate(run.keys)}
        added = {}
        for row in read_csv(run.out / "labelled.csv"):
            i = lookup.get(f"{row['slide']}\t{row['x']}\t{row['y']}")
            if i is not None and int(row["round"]) <= saved["round"]:
                added[i] = int(row["round"])
        labelled = np.array(sorted(added), np.int64)
        if run.options.query_only:  # labels came back through extraction: those not listed yet belong to this round
            labelled = run.initial_labelled()
            added = {int(i): added.get(int(i), saved["round"] + 1) for i in labelled}
        if "rng" in saved:  # runs saved before the generator state was kept resume with a fresh one
            run.rng.bit_generator.state = saved["rng"]
        return cls(saved["round"], labelled, added, saved["best"], np.asarray(saved["misclassified"]),
                   saved["rows"], saved["history"])

    def save(self, run: TrainingData) -> None:
        """labelled.csv and rounds.csv, then state.json, the file that says the round is finished."""
        index = run.index
        atomic_write_csv(run.out / "labelled.csv", ["slide", "x", "y", "label", "round"],
                         ([index.slide[i], index.x[i], index.y[i], index.label[i], self.added.get(int(i), 0)]
                          for i in self.labelled))
        _write_table(run.out / "rounds.csv", self.rows)
        atomic_write_json(run.out / "state.json", {
            "round": self.round, "best_model": "model.keras", "best": self.best, "rows": self.rows,
            "history": self.history, "rng": run.rng.bit_generator.state,
            "misclassified": np.asarray(self.misclassified).tolist()})

    def label(self, new: np.ndarray, round_number: int) -> None:
        """Add the tiles a query chose (in simulation their labels are known)."""
        for i in new:
            self.added[int(i)] = round_number
        self.labelled = np.union1d(self.labelled, new)


def fit(model: keras.Model, run: TrainingData, labelled: np.ndarray, round_number: int, seed: int) -> list[dict]:
    """Fit from the current weights with a fresh optimizer and early stopping
    on the validation loss (best epoch restored); one history row per epoch."""
    o = run.options
    if run.cache is not None:
        epochs = run.cache.fit(labelled, run.val_ids, lambda: new_optimizer(o), o.batch_size, o.epochs, o.patience, seed)
        return [{"round": round_number, **row} for row in epochs]
    model.compile(optimizer=new_optimizer(o), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=o.patience, restore_best_weights=True)
    history = model.fit(run.dataset(labelled, train=True), validation_data=run.dataset(run.val_ids),
                        epochs=o.epochs, callbacks=[stop], verbose=0 if quiet() else 2).history
    return [{"round": round_number, **{k: float(v[e]) for k, v in history.items()}}
            for e in range(len(history["loss"]))]


def record(run: TrainingData, model: keras.Model, state: RunState, round_number: int, val: dict, test: dict,
           selection: Selection | None, seconds: dict[str, float]) -> None:
    """The round's row, its checkpoint, the kept model (or a return to it),
    the queries it answered, the figures and the state, in that order: the
    state written last marks the round finished."""
    out, options, config = run.out, run.options, run.config
    epochs = sum(1 for h in state.history if h["round"] == round_number)
    steps = epochs * -(-len(state.labelled) // options.batch_size)
    row = _metrics_row(run, round_number, state.labelled, val, test, epochs, steps, seconds["query"],
                       seconds["fit"], seconds["round"])
    state.rows.append(row)
    state.misclassified = val["misclassified"]
    absent = [n for n, f in zip(config.class_names, test["per_class_f1"]) if np.isnan(f)]
    info(f"round {round_number}: val macro F1 {val['macro_f1']:.3f}, test macro F1 {test['macro_f1']:.3f}, "
         f"test accuracy {test['accuracy']:.3f} ({row['seconds']:.0f} s)"
         + (f"; absent from the test set, so not in its macro F1: {', '.join(absent)}" if absent else ""))
    if selection is not None and selection.pool_size:
        write_queries(run, selection, round_number)
    checkpoint = Path("rounds") / f"round_{round_number}.keras"
    save_model(model, out / checkpoint, model_metadata(run))
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
    state.save(run)


def play_round(run: TrainingData, model: keras.Model, predictor: Predictor, state: RunState, round_number: int) -> None:
    """Query, label, fit, evaluate, record. Each round's shuffles and dropout
    depend only on (seed, round), and the query generator's state is saved
    with the round: a resumed run repeats exactly what the uninterrupted run
    would have done."""
    started = time.perf_counter()
    round_seed = int(np.random.SeedSequence([run.options.seed, round_number]).generate_state(1)[0])
    reseed(model, round_seed)
    selection = None
    if round_number > 0 and not run.options.query_only:
        selection = query(run, predictor, state.labelled, state.misclassified)
        state.label(selection.ids, round_number)
        info(f"round {round_number}: {selection.strategy} chose {len(selection.ids)} of {selection.pool_size} "
             f"pool tiles -> {len(state.labelled)} labelled")
    seconds = {"query": time.perf_counter() - started}
    if len(state.labelled) == 0:
        raise InputError("the labelled training set is empty; check the split and the class counts")
    state.history += fit(model, run, state.labelled, round_number, round_seed)
    seconds["fit"] = time.perf_counter() - started - seconds["query"]
    val, test = evaluate(predictor, run, run.val_ids), evaluate(predictor, run, run.test_ids)
    seconds["round"] = time.perf_counter() - started
    record(run, model, state, round_number, val, test, selection, seconds)


def run_training(options: TrainOptions, config: Config) -> RunState:
    """The whole run, or its rest with ``--resume``; returns the final state."""
    out = options.output
    prepare_output(out)
    keras.utils.set_random_seed(options.seed)
    run = TrainingData(options, config)
    state = RunState.load(run) if options.resume else None
    if options.resume and state is None:
        info(f"nothing to resume in {out}; starting at round 0")
    if state is None and (out / "rounds.csv").exists() and not options.resume:
        raise InputError(f"{out} already holds a run; pass --resume to continue it or choose another --output")
    # Saved weights replace the backbone's: downloading ImageNet ones would be wasted (or fail offline).
    backbone_weights = None if state or options.weights else options.backbone_weights_source
    with gpu_devices().scope():
        model = build_model(config, options.spec, backbone_weights, options.freeze_backbone)
    if state:
        model.set_weights(load_model(out / "model.keras").get_weights())
        info(f"resuming {out} at round {state.round + 1} with {len(state.labelled)} labelled tiles")
    else:
        load_source_weights(model, options)
        state = RunState.initial(run)
        describe_data(run, state)
    predictor = Predictor(model)
    if options.freeze_backbone:
        run.cache_features(model)
    if state.round == -1 and options.weights and not state.rows:
        state.rows.append(evaluate_source(run, predictor))
    atomic_write_json(out / "config.json", {**model_metadata(run), "options": asdict(options)})
    last_round = state.round + 1 if options.query_only else options.rounds
    for round_number in range(state.round + 1, last_round + 1):
        play_round(run, model, predictor, state, round_number)
    if options.query_only:
        write_queries(run, query(run, predictor, state.labelled, state.misclassified), last_round + 1)
        info(f"next tiles to label: {out / 'queries' / f'round_{last_round + 1}'}")
    return state


def model_metadata(run: TrainingData) -> dict[str, Any]:
    """What every saved model carries: the configuration and the architecture."""
    return {"config": run.config.to_dict(), "backbone": run.options.spec.backbone, "spec": asdict(run.options.spec)}


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


def describe_data(run: TrainingData, state: RunState) -> None:
    """class_counts.json and split.json, printed too, with the guard band's
    losses and a warning (an error with --strict) for classes without tiles."""
    class_counts = {"train_candidates": run.counts(run.candidates), "initial_labelled": run.counts(state.labelled),
                    "val": run.counts(run.val_ids), "test": run.counts(run.test_ids)}
    atomic_write_json(run.out / "class_counts.json", class_counts)
    atomic_write_json(run.out / "split.json", run.split)
    _print_counts(class_counts)
    if run.split["by"] == "block":
        blocks = ", ".join(f"{len(run.split[name])} {name}" for name in SPLITS)
        dropped = ", ".join(f"{n} {name}" for name, n in run.guard_dropped.items()) or "none"
        info(f"split by block: {blocks} blocks; tiles left out because their lowest-magnification window "
             f"overlaps one of another split: {dropped}")
    report_missing_classes(class_counts, run.options.strict)


def evaluate_source(run: TrainingData, predictor: Predictor) -> dict[str, Any]:
    """Round -1: the source-domain model on the target data, before any target label."""
    val, test = evaluate(predictor, run, run.val_ids), evaluate(predictor, run, run.test_ids)
    info(f"source weights before fine-tuning: val macro F1 {val['macro_f1']:.3f}, "
         f"test macro F1 {test['macro_f1']:.3f}, test accuracy {test['accuracy']:.3f}")
    return _metrics_row(run, -1, np.zeros(0, np.int64), val, test, 0, 0, 0.0, 0.0, 0.0)


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
                         resume=options.resume and (out / "state.json").exists())
        state = run_training(repeat, config)
        kept = next(row for row in state.rows if row["round"] == state.best["round"])
        results.append({"repeat": k, "seed": repeat.seed, "kept_round": kept["round"], "labelled": kept["labelled"],
                        "test_macro_f1": kept["test_macro_f1"], "test_accuracy": kept["test_accuracy"],
                        "last_round_test_macro_f1": state.rows[-1]["test_macro_f1"]})
    _write_table(options.output / "repeats.csv", results)
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
                 query_seconds: float, fit_seconds: float, seconds: float) -> dict[str, Any]:
    return {"round": round_number, "labelled": len(labelled),
            **{f"labelled_{k}": v for k, v in run.counts(labelled).items()},
            "val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"], "val_loss": val["loss"],
            "test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"],
            **{f"test_f1_{n}": f for n, f in zip(run.config.class_names, test["per_class_f1"])},
            "epochs": epochs, "steps": steps, "query_seconds": round(query_seconds, 2), "fit_seconds": round(fit_seconds, 2),
            "seconds": round(seconds, 2)}


def _other_runs(folders: tuple[Path, ...]) -> dict[str, list[dict]]:
    """Rows of earlier runs to draw beside this one, labelled by folder and strategy."""
    runs = {}
    for folder in folders:
        if not (folder / "rounds.csv").exists():
            raise InputError(f"{folder}: no rounds.csv to compare with")
        strategy = json.loads((folder / "config.json").read_text())["options"]["strategy"]
        runs[f"{folder.name} ({strategy})"] = read_rounds(folder / "rounds.csv")
    return runs


def _write_table(path: Path, rows: list[dict]) -> None:
    """Rows of metrics as CSV, floats to 4 decimals."""
    columns = list(rows[0])
    atomic_write_csv(path, columns,
                     ([round(row[c], 4) if isinstance(row[c], float) else row[c] for c in columns] for row in rows))


def _print_counts(counts: dict[str, dict[str, int]]) -> None:
    names = list(next(iter(counts.values())))
    info(f"{'':18s}" + "".join(f"{n:>12s}" for n in names))
    for split, row in counts.items():
        info(f"{split:18s}" + "".join(f"{row[n]:12d}" for n in names))


def read_rounds(path: str | Path) -> list[dict[str, str]]:
    return read_csv(path)
