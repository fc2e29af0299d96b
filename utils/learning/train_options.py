"""Every setting of a training run, declared once.

The fields declared with :func:`~utils.common.options.option` are the flags of
``active_learning_train.py`` and the keys of a configuration file's
``training:`` section; their defaults (the paper's) stand here only. The
module imports nothing of the training itself, so that the data, the state,
the queries and the learners can all read the options without a loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from utils.common.errors import InputError
from utils.common.options import option
from utils.learning.active_learning import STRATEGIES
from utils.learning.data_split import SPLIT_BY
from utils.network.model_spec import BACKBONES, INPUT_SCALINGS, ModelSpec
from utils.tiles.stain_jitter import STAIN_PRESETS

#: Tiles labelled per simulated round: the paper's.
SIMULATION_BUDGET = 20000
#: Tiles a pathologist is asked to review per round by default: two contact
#: sheet pages (:data:`utils.learning.queries.SHEET_CELLS` tiles each).
REVIEW_BATCH = 48

#: How the kept model is chosen among the rounds (see :func:`improves`).
MODEL_SELECTIONS = ("val_f1", "val_loss")


@dataclass
class TrainOptions:
    """Every setting of a training run. The fields declared with
    :func:`~utils.common.options.option` are also the flags of
    ``active_learning_train.py`` and the keys of a configuration file's
    ``training:`` section: their defaults (the paper's) are written here only."""

    data: Path
    output: Path
    #: The architecture, resolved from ``backbone``, ``head_units``,
    #: ``input_scaling`` and the source model (:func:`utils.network.model.source_spec`).
    spec: ModelSpec = field(default_factory=ModelSpec)
    resume: bool = False
    compare: tuple[Path, ...] = ()
    #: The ``--data`` folders after the first: only ``--self-supervised`` pretraining reads several.
    more_data: tuple[Path, ...] = ()
    backbone: str | None = option(None, "per-scale backbone (default: the --weights model's, else vgg16)", "model",
                                  choices=BACKBONES)
    head_units: int | None = option(None, "units of each dense layer (default: the --weights model's, else 4096)",
                                    "model")
    input_scaling: str | None = option(
        None, "how 0-255 tiles are scaled before the backbone (default: the --weights model's, else the backbone's "
              "own: caffe for vgg16, tf for mobilenetv2); raw feeds 0-255 unchanged, as the original code did",
        "model", choices=INPUT_SCALINGS)
    backbone_weights: str | None = option(
        "imagenet", "imagenet (download), none, or a local backbone weights file (ImageNet's, or for small and "
                    "texture+small the backbone.weights.h5 of --self-supervised simclr); not used with --weights, "
                    "whose model replaces them", "model", metavar="imagenet|none|PATH")
    weights: Path | None = option(None, "source-domain model (.keras) to fine-tune, or a matching .weights.h5",
                                  "model", metavar="FILE")
    allow_partial_weights: bool = option(
        False, "load --weights by layer name into a different architecture; layers that get no weights are listed "
               "and start from scratch", "model")
    freeze_backbone: bool = option(False, "train the head only", "model")
    adapt_bn: bool = option(
        False, "before round 0, re-estimate the backbones' batch-norm statistics on the unlabelled pool (AdaBN; "
               "mobilenetv2 has batch norm, vgg16 and small have none) and the texture backbones' standardisation",
        "model")
    strategy: str = option("random", "query strategy: random, which no rule beat in the README's experiment; "
                                      "class_ratio is the paper's", "active learning",
                           choices=tuple(STRATEGIES))
    rounds: int = option(4, "rounds after the initial fit; 0 = initial fit only; -1 = no fit: score the --weights "
                         "model before any label (after --adapt-bn) and save it", "active learning")
    budget: int | None = option(
        None, f"tiles labelled per round (default: {SIMULATION_BUDGET}, the paper's, in simulation; {REVIEW_BATCH}, "
              f"what a pathologist reviews in one sitting, with --query-only)", "active learning")
    budgets: tuple[int, ...] = option(
        (), "tiles labelled in rounds 1, 2, ... in turn, the last repeating (replaces --budget): growing budgets "
            "measure a learning curve at the fractions of the pool that matter, such as 2, 5, 10, 20, 50 and 100%",
        "active learning", metavar="N")
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
    self_supervised: str = option(
        "none", "simclr: pretrain the backbone without labels on every window of the --data folders (one or more) "
                "for --epochs, writing backbone.weights.h5 for --backbone-weights; --rounds and the split unused",
        "pretraining", choices=("none", "simclr"))
    semi_supervised: str = option(
        "none", "also learn from the unlabelled pool: pseudo adds the pool tiles predicted with confidence at least "
                "--pseudo-threshold to each round's training with their predicted class (never to the labelled set); "
                "fixmatch (full mode) trains a strong view of pool tiles towards the confident prediction on a weak one",
        "active learning", choices=("none", "pseudo", "fixmatch"))
    pseudo_threshold: float = option(
        0.95, "top probability a pool tile's prediction needs to become a pseudo-label or a FixMatch target "
              "(FixMatch's)", "active learning", metavar="T")
    pseudo_ratio: float = option(
        1.0, "at most this many pseudo-labelled tiles per labelled tile of the same class", "active learning",
        metavar="K")
    fixmatch_ratio: int = option(7, "fixmatch: unlabelled pool tiles per labelled tile in each batch (FixMatch's mu)",
                                 "active learning", metavar="MU")
    fixmatch_weight: float = option(1.0, "fixmatch: weight of the unlabelled loss (FixMatch's lambda)",
                                    "active learning", metavar="LAMBDA")
    fixmatch_ema: float = option(
        0.999, "fixmatch: momentum of the moving average of the weights that validation scores and each round "
               "keeps (FixMatch's); it ramps up as (1 + t) / (10 + t) over a round's first steps t; 0: the last "
               "weights", "active learning", metavar="M")
    epochs: int = option(10, "maximum epochs per round", "fitting")
    batch_size: int = option(128, "tiles per training step: the global batch, split across --devices", "fitting")
    devices: str = option(
        "all", "what to train on: all (every visible GPU; several train in parallel), a count of GPUs, or device "
               "names such as GPU:0,GPU:2", "fitting", metavar="all|N|NAMES")
    optimizer: str = option(
        "adam", "adam learns in a few epochs from ImageNet, source or random weights; sgd (momentum 0.9, Nesterov) at "
                "1.5e-5 is the paper's, in presets/original.yaml, and barely moves a small model in a few epochs",
        "fitting", choices=("sgd", "adam"))
    learning_rate: float = option(1e-4, "step size (the paper's: 1.5e-5 with sgd)", "fitting")
    head_from: str = option(
        "last", "head mode: where each round's head starts: last (the previous round's head) or start (the head "
                "before round 0: the source model's, or its initial weights), so that a round's model depends on "
                "its labelled set, not on the order the labels came in (warm-started networks generalise worse: "
                "Ash and Adams 2020)", "fitting", choices=("last", "start"))
    patience: int = option(
        3, "early-stopping patience on validation loss (the best epoch's weights kept); 0 trains every --epochs "
           "epoch and keeps the last: on a small validation set the lowest loss comes before the best F1",
        "fitting")
    model_selection: str = option(
        "val_f1", "the round whose model is kept as model.keras: the best validation macro F1, or the lowest "
                  "validation loss (the original code's)", "fitting", choices=MODEL_SELECTIONS)
    augment: bool = option(True, "no flips or 90-degree rotations", "fitting", flag="--no-augment")
    colour_jitter: bool = option(False, "also jitter brightness, saturation and hue", "fitting")
    stain_jitter: str = option(
        "none", "stain augmentation in haematoxylin-eosin-DAB space (Tellez et al. 2019) with brightness, contrast "
                "and saturation jitter: light or strong; full mode only (the head mode's features are computed once)",
        "fitting", choices=tuple(["none", *STAIN_PRESETS]))
    stain_sigma: float | None = option(
        None, "range of the stain jitter: each stain's concentration scaled by [1-S, 1+S] and shifted by [-S, S] "
              "(default: the preset's, 0.05 light, 0.2 strong)", "fitting", metavar="S")
    figures: bool = option(
        True, "no figures after each round (learning and training curves, confusion matrix, contact sheets): for "
              "many simulated runs, read from rounds.csv", "output", flag="--no-figures")
    seed: int = option(0, "seed of the split, the samples, shuffles and dropout", "data")
    repeats: int = option(
        1, "run N times with seeds seed, seed+1, ... into OUTPUT/repeat_<k>/ and report the mean and spread of the "
           "kept models' test macro F1 (the original reported 4 runs)", "data", metavar="N")
    repeats_share_data: bool = option(
        False, "with --repeats: draw the split, the initial set and the pool order once, with --seed, and repeat "
               "only the training with seeds seed, seed+1, ..., as the original code did", "data")
    #: The seed of the split, the caps, the initial set and the queries, when
    #: it is not ``seed``: a repeat that shares its data sets it (``run_repeats``).
    data_seed: int | None = None
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
        if self.budget is None:
            self.budget = REVIEW_BATCH if self.query_only else SIMULATION_BUDGET
        for name in ("rounds", "budget", "initial", "epochs", "batch_size", "patience", "repeats", "mc_passes",
                     "spacing"):
            # budget 0 refits the same set (a ceiling); rounds -1 only scores the source model; patience 0 never stops
            least = {"rounds": -1, "budget": 0, "patience": 0}.get(name, 1)
            if getattr(self, name) < least:
                raise InputError(f"{name.replace('_', '-')} must be at least {least}, not {getattr(self, name)}")
        if any(b < 1 for b in self.budgets):
            raise InputError(f"budgets must be at least 1 tile each, not {list(self.budgets)}")
        if self.rounds == -1 and (self.weights is None or self.query_only):
            raise InputError("--rounds -1 scores the --weights model on the labelled validation and test tiles "
                             "before any label; it needs --weights, and cannot be combined with --query-only")
        if not 0 <= self.warm_start <= 1:
            raise InputError(f"warm-start is a fraction of the training tiles, from 0 to 1, not {self.warm_start}")
        if self.head_from == "start" and not self.freeze_backbone:
            raise InputError("--head-from start refits the head alone from its first weights each round; it needs "
                             "--freeze-backbone")
        if self.semi_supervised == "fixmatch" and self.freeze_backbone:
            raise InputError("--semi-supervised fixmatch trains the whole network on augmented views, which "
                             "--freeze-backbone's cached features cannot give; use --semi-supervised pseudo with it")
        if not 0 <= self.fixmatch_ema < 1:
            raise InputError(f"fixmatch-ema must be at least 0 and below 1, not {self.fixmatch_ema}")
        if self.fixmatch_ratio < 1 or self.fixmatch_weight < 0:
            raise InputError(f"fixmatch-ratio must be at least 1 and fixmatch-weight at least 0, not "
                             f"{self.fixmatch_ratio} and {self.fixmatch_weight}")
        if not 0 < self.pseudo_threshold <= 1 or self.pseudo_ratio < 0:
            raise InputError(f"pseudo-threshold is a probability above 0 and pseudo-ratio at least 0, not "
                             f"{self.pseudo_threshold} and {self.pseudo_ratio}")
        if self.stain_sigma is not None and not 0 <= self.stain_sigma < 1:
            raise InputError(f"stain-sigma is a fraction from 0 to below 1, not {self.stain_sigma}")
        if self.stain_sigma is not None and self.stain_jitter == "none":
            raise InputError("--stain-sigma sets the range of --stain-jitter; pass --stain-jitter light or strong too")
        if self.oracle_classes and self.query_only:
            raise InputError("--oracle-classes needs the pool's labels, which --query-only does not have")
        if self.self_supervised != "none" and self.backbone in ("texture", "texture+small"):
            raise InputError("the filter bank has nothing to learn: pretrain --backbone small, and pass its weights "
                             "to --backbone texture+small")
        if self.self_supervised != "none" and (self.weights or self.query_only or self.repeats > 1):
            raise InputError("--self-supervised pretrains a backbone from nothing, without labels: it takes no "
                             "--weights, --query-only or --repeats")
        if len(self.split_fractions) != 3 or abs(sum(self.split_fractions) - 1) > 1e-6 or min(self.split_fractions) < 0:
            raise InputError(f"split fractions must be three non-negative numbers summing to 1, not "
                             f"{list(self.split_fractions)}")

    @property
    def data_folders(self) -> tuple[Path, ...]:
        """Every ``--data`` folder, the first first."""
        return (self.data, *self.more_data)

    def budget_of(self, round_number: int) -> int:
        """Tiles labelled in round ``round_number`` (from 1)."""
        if not self.budgets:
            return self.budget
        return self.budgets[min(round_number, len(self.budgets)) - 1]

    @property
    def draw_seed(self) -> int:
        """The seed of every draw of data (split, caps, initial set, queries)."""
        return self.seed if self.data_seed is None else self.data_seed

    @property
    def backbone_weights_source(self) -> str | None:
        """What ``build_model`` loads into the backbones: "none" means nothing."""
        if self.backbone_weights is None or self.backbone_weights.lower() == "none":
            return None
        return self.backbone_weights
