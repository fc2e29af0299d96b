#!/usr/bin/env python
"""Predict every tissue tile of whole slides and stitch a tissue map.

For each slide: tissue mask, every tissue tile of the extraction grid cut at
the model's magnifications (the same geometry code as extraction), predicted in
batches, and the paper's class rules (background off tissue, "undefined" below
0.6, "damaged" only at 0.9 or more). Outputs in OUTPUT/<slide>/: tissue_map.png
(+ _legend), overlay.png, probabilities.npz, tissue_map.geojson (opens in
QuPath) and summary.json (areas in mm² and % of tissue, and the settings that
made them). On a rerun, slides whose maps were made with the same model and
settings are skipped; maps made otherwise stop the run unless --overwrite. A
failing slide is reported and the rest go on.

    python active_learning_inference.py --slides new_slides/ --model runs/exp1/model.keras --output maps/
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from utils.common.cli import (add_config_arguments, add_message_arguments, add_slide_arguments, add_upsampling_argument,
                              make_parser, prepare_output, resolve_config, start)
from utils.common.failures import exit_on_input_error
from utils.common.log import info
from utils.common.options import add_option_arguments, resolve_options
from utils.common.setup import setup_process
from utils.maps.inference_options import InferenceOptions
from utils.network.model_spec import read_metadata
from utils.tiles.batch import report, run_per_slide, slides_to_process
from utils.tiles.provenance import check_stale, file_digest
from utils.tiles.summaries import MapSummary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    paths = parser.add_argument_group("input and output")
    paths.add_argument("--slides", nargs="+", required=True, help="slide files and/or folders of slides")
    paths.add_argument("--model", type=Path, required=True, help="model.keras saved by active_learning_train.py")
    paths.add_argument("--output", type=Path, required=True, help="folder for one sub-folder per slide")
    add_upsampling_argument(add_config_arguments(parser, defaults_from="the model's", section="inference"))
    add_option_arguments(parser, InferenceOptions, {"slides": add_slide_arguments(parser)})
    add_message_arguments(parser)
    return parser.parse_args(argv)


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    file_keys, section = start(args, "inference")
    setup_process()
    # Loaded once the arguments are read, so that --help and argument errors answer before TensorFlow loads.
    from utils.maps.inference import infer_slide, inference_settings, summary_path
    from utils.network.model import Predictor, check_compatible, load_model

    metadata = read_metadata(args.model)
    config = resolve_config(args, file_keys, base=metadata["config"], allow_upsampling=args.allow_upsampling)
    slides, mpp = slides_to_process(args.slides, args.shard, args.mpp)
    options = resolve_options(InferenceOptions, args, section, f"{args.config}: inference", output=args.output,
                              model_path=args.model, model_sha256=file_digest(args.model), mpp=mpp,
                              overwrite=args.overwrite)
    check_stale(slides, functools.partial(summary_path, args.output), MapSummary,
                functools.partial(inference_settings, config=config, options=options), args.overwrite, args.output)
    model = load_model(args.model)
    check_compatible(model, config)
    prepare_output(args.output)
    model_info = {"backbone": metadata.get("backbone"), "spec": metadata.get("spec")}
    task = functools.partial(infer_slide, config=config, predictor=Predictor(model), options=options,
                             model_info=model_info)
    outcomes = run_per_slide(task, slides, workers=1, unit="tiles")
    for outcome in outcomes:
        summary: MapSummary | None = outcome.result
        if summary and summary.done:
            listing = ", ".join(f"{name} {pct:.1f}%" for name, pct in summary.tissue_shares(config.background_class))
            info(f"{summary.slide}: {summary.tissue_mm2:.2f} mm² tissue ({listing}); "
                 f"{summary.tiles_per_second} tiles/s -> {args.output / summary.slide}")
        elif summary:
            info(f"{summary.slide}: {summary.status}")
    return report(outcomes)


if __name__ == "__main__":
    sys.exit(main())
