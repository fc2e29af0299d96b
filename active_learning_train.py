#!/usr/bin/env python
"""Fine-tune the multiscale TRI-CNN on target-domain tiles over active-learning rounds.

Reads the TFRecord shards of tfrecord_generator.py (--data), splits them by
slide into train/val/test, fits the model on an initial labelled set (round 0),
then for each round lets a strategy choose --budget more tiles to label and
fits again from the best weights so far. Everything lands in --output: the
model (model.keras, which carries its configuration for inference), rounds.csv,
learning and training curves, the test confusion matrix and the queried tiles
of every round (queries/round_<k>/ with a contact sheet, a CSV and per-slide
QuPath GeoJSON).

    python active_learning_train.py --data tiles/ --output runs/exp1 --weights source_model.keras

A source model saved by this project brings its architecture (backbone, head,
classes, magnifications, tile size): flags that contradict it stop the run,
and so does any layer that would receive no weights, unless
--allow-partial-weights asks for loading by name into another architecture.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from utils.active_learning import STRATEGIES
from utils.cli import add_config_arguments, add_message_arguments, make_parser, resolve_config
from utils.data_split import SPLIT_BY
from utils.failures import exit_on_input_error
from utils.log import info
from utils.model import BACKBONES, INPUT_SCALINGS, check_fits_source, source_metadata, source_spec
from utils.training import MODEL_SELECTIONS, TrainOptions, run_repeats, run_training


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    paths = parser.add_argument_group("input and output")
    paths.add_argument("--data", type=Path, required=True, help="folder of TFRecord shards")
    paths.add_argument("--output", type=Path, required=True, help="run folder")
    add_config_arguments(parser, defaults_from="the data's extraction_config.json, else the --weights model's")
    model = parser.add_argument_group("model")
    model.add_argument("--backbone", choices=BACKBONES,
                       help="per-scale backbone (default: the --weights model's, else vgg16)")
    model.add_argument("--backbone-weights", default="imagenet",
                       help="imagenet (download), none, or a local backbone weights file; "
                            "not used with --weights, whose model replaces them")
    model.add_argument("--head-units", type=int,
                       help="units of each dense layer (default: the --weights model's, else 4096)")
    model.add_argument("--input-scaling", choices=INPUT_SCALINGS,
                       help="how 0-255 tiles are scaled before the backbone (default: the --weights model's, else "
                            "the backbone's own: caffe for vgg16, tf for mobilenetv2); raw feeds 0-255 unchanged, "
                            "as the original code did")
    model.add_argument("--weights", type=Path,
                       help="source-domain model (.keras) to fine-tune, or a matching .weights.h5")
    model.add_argument("--allow-partial-weights", action="store_true",
                       help="load --weights by layer name into a different architecture; layers that get no "
                            "weights are listed and start from scratch")
    model.add_argument("--freeze-backbone", action="store_true", help="train the head only")
    al = parser.add_argument_group("active learning")
    al.add_argument("--strategy", choices=STRATEGIES, default="class_ratio", help="query strategy (class_ratio is the paper's)")
    al.add_argument("--rounds", type=int, default=4, help="rounds after the initial fit; 0 = initial fit only")
    al.add_argument("--budget", type=int, default=20000, help="tiles labelled per round")
    al.add_argument("--initial", type=int, default=25000, help="initial labelled tiles per class")
    al.add_argument("--pool-sample", type=int, help="score only a random sample of this many pool tiles")
    al.add_argument("--mc-passes", type=int, default=10, help="Monte-Carlo dropout passes for bald")
    al.add_argument("--spacing", type=int, default=2,
                    help="diversity guard: at most one uncertainty pick per SxS tiles of a slide")
    al.add_argument("--query-only", action="store_true",
                    help="annotation mode: fit on all labelled tiles, write the next queries for the pool and stop")
    al.add_argument("--resume", action="store_true", help="continue the run in --output after its last round")
    al.add_argument("--compare", type=Path, nargs="+", default=[], metavar="RUN_DIR",
                    help="also draw these runs' curves in learning_curve.png (e.g. a random baseline)")
    fit = parser.add_argument_group("fitting")
    fit.add_argument("--epochs", type=int, default=10, help="maximum epochs per round")
    fit.add_argument("--batch-size", type=int, default=128, help="tiles per training step")
    fit.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd",
                     help="sgd: the paper's (momentum 0.9, Nesterov); adam for training from scratch")
    fit.add_argument("--learning-rate", type=float, default=1.5e-5, help="the paper's for fine-tuning with sgd")
    fit.add_argument("--patience", type=int, default=3, help="early-stopping patience on validation loss")
    fit.add_argument("--model-selection", choices=MODEL_SELECTIONS, default="val_f1",
                     help="the round whose model is kept as model.keras: the best validation macro F1, or the "
                          "lowest validation loss (the original code's)")
    fit.add_argument("--no-augment", action="store_true", help="no flips or 90-degree rotations")
    fit.add_argument("--colour-jitter", action="store_true", help="also jitter brightness, saturation and hue")
    data = parser.add_argument_group("data")
    data.add_argument("--seed", type=int, default=0, help="seed of the split, the samples, shuffles and dropout")
    data.add_argument("--repeats", type=int, default=1,
                      help="run N times with seeds seed, seed+1, ... into OUTPUT/repeat_<k>/ and report the mean "
                           "and spread of the kept models' test macro F1 (the original reported 4 runs)")
    data.add_argument("--split-by", choices=SPLIT_BY,
                      help="slide: whole slides to train, validation and test (needs 3 slides); block: square "
                           "blocks of each slide, several lowest-magnification windows wide, with no window "
                           "shared across splits (default: slide with 3 slides or more, else block)")
    data.add_argument("--split", type=Path,
                      help="split file: a split.json of an earlier run, JSON {train,val,test: [slides]} or CSV "
                           "slide,split")
    data.add_argument("--slide-class-cap", type=int, default=1000,
                      help="at most this many tiles per slide and class (0 = no cap)")
    data.add_argument("--uncapped", nargs="*", default=["blood"], help="classes exempt from that cap")
    data.add_argument("--eval-cap", type=int, help="at most this many validation/test tiles per class")
    data.add_argument("--strict", action="store_true",
                      help="stop when a configured class has no training or validation tiles")
    add_message_arguments(parser)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    source = source_metadata(args.weights)
    extraction = args.data / "extraction_config.json"
    base = dict(source["config"]) if source and "config" in source else {}
    base.update(json.loads(extraction.read_text(encoding="utf-8")) if extraction.exists() else {})
    config = resolve_config(args, base=base)
    spec = source_spec(source, args.backbone, args.head_units, args.input_scaling)
    if source and not args.allow_partial_weights:
        check_fits_source(args.weights, source, spec, config)
    weights = None if args.backbone_weights.lower() == "none" else args.backbone_weights
    options = TrainOptions(
        data=args.data, output=args.output, spec=spec, backbone_weights=weights, weights=args.weights,
        allow_partial_weights=args.allow_partial_weights, strict=args.strict,
        freeze_backbone=args.freeze_backbone, strategy=args.strategy, rounds=args.rounds, budget=args.budget,
        initial=args.initial, epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
        learning_rate=args.learning_rate, patience=args.patience, model_selection=args.model_selection,
        seed=args.seed, split_file=args.split, split_by=args.split_by,
        slide_class_cap=args.slide_class_cap or None, uncapped_classes=tuple(args.uncapped),
        eval_cap=args.eval_cap, pool_sample=args.pool_sample, mc_passes=args.mc_passes, spacing=args.spacing,
        augment=not args.no_augment, colour_jitter=args.colour_jitter, query_only=args.query_only,
        resume=args.resume, compare=tuple(args.compare),
    )
    if args.repeats > 1:
        run_repeats(options, config, args.repeats)
        return 0
    last = run_training(options, config)
    info(f"done: round {last['round']}, test macro F1 {last['test_macro_f1']:.3f}; model: {args.output / 'model.keras'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
