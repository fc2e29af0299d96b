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
import sys
from dataclasses import replace
from pathlib import Path

from utils.common.cli import add_config_arguments, add_message_arguments, make_parser, resolve_config, start
from utils.common.config import Config, read_config_file
from utils.common.errors import InputError
from utils.common.failures import exit_on_input_error
from utils.common.log import info
from utils.common.options import add_option_arguments, origin, resolve_options
from utils.common.setup import setup_process
from utils.learning.train_options import TrainOptions
from utils.network.model_spec import check_fits_source, source_metadata, source_spec


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    paths = parser.add_argument_group("input and output")
    paths.add_argument("--data", type=Path, nargs="+", required=True,
                       help="folder of TFRecord shards (several with --self-supervised)")
    paths.add_argument("--output", type=Path, required=True, help="run folder")
    paths.add_argument("--resume", action="store_true", help="continue the run in --output after its last round")
    paths.add_argument("--compare", type=Path, nargs="+", default=[], metavar="RUN_DIR",
                       help="also draw these runs' curves in learning_curve.png (e.g. a random baseline)")
    add_config_arguments(parser, defaults_from="the data's extraction_config.json, else the --weights model's",
                         section="training")
    groups = {name: parser.add_argument_group(name) for name in ("model", "active learning", "fitting", "data")}
    add_option_arguments(parser, TrainOptions, groups)
    groups["data"].add_argument("--uncapped", nargs="*", metavar="CLASS",
                                help="classes exempt from the per-slide cap (default: the configuration's "
                                     "uncapped_classes, blood)")
    add_message_arguments(parser)
    return parser.parse_args(argv)


def resolve(args: argparse.Namespace) -> tuple[TrainOptions, Config]:
    """The run's options and configuration. Options: their defaults < the
    --config file's training: section < flags. Configuration: the defaults <
    the --weights model's < the data's extraction_config.json < --config <
    flags. The architecture is the flags', else the source model's."""
    file_keys, section = start(args, "training")
    options = resolve_options(TrainOptions, args, section, f"{args.config}: training", data=args.data[0],
                              output=args.output, resume=args.resume, compare=tuple(args.compare),
                              more_data=tuple(args.data[1:]))
    if options.more_data and options.self_supervised == "none":
        raise InputError("--data takes one folder, except with --self-supervised")
    source = source_metadata(options.weights)
    extraction = options.data / "extraction_config.json"
    base = dict(source["config"]) if source and "config" in source else {}
    base.update(read_config_file(extraction) if extraction.exists() else {})
    config = resolve_config(args, file_keys, base=base, uncapped_classes=args.uncapped)
    options = replace(options, spec=source_spec(source, options.backbone, options.head_units, options.input_scaling))
    where = {name: origin(TrainOptions, name, args, section, str(args.config)) for name in ("optimizer", "learning_rate")}
    notes = [] if (options.optimizer, options.learning_rate) == ("sgd", 1.5e-5) else \
        ["the paper's is sgd at 1.5e-5 (--config presets/original.yaml)"]
    if options.weights:
        notes.append("the --weights model brings its architecture, not its optimizer")
    info(f"fitting with {options.optimizer} ({where['optimizer']}) at learning rate {options.learning_rate:g} "
         f"({where['learning_rate']}); " + "; ".join(notes))
    if source and not options.allow_partial_weights:
        check_fits_source(options.weights, source, options.spec, config)
    return options, config


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    options, config = resolve(parse_args(argv))
    setup_process()
    # Loaded once the arguments are read, so that --help and argument errors answer before TensorFlow loads.
    from utils.learning.evaluation import test_set_scores
    from utils.learning.repeats import run_repeats
    from utils.learning.training import run_training

    if options.self_supervised == "simclr":
        from utils.learning.pretraining import run_pretraining

        run_pretraining(options, config)
        return 0
    if options.repeats > 1:
        run_repeats(options, config)
        return 0
    last = run_training(options, config).rows[-1]
    scores = test_set_scores({"accuracy": last["test_accuracy"], "macro_f1": last["test_macro_f1"]})
    info(f"done: round {last['round']}, {scores}; model: {options.output / 'model.keras'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
