#!/usr/bin/env python
"""Predict every tissue tile of whole slides and stitch a tissue map.

For each slide: tissue mask, every tissue tile of the extraction grid cut at
the model's magnifications (the same geometry code as extraction), predicted in
batches, and the paper's class rules (background off tissue, "undefined" below
0.6, "damaged" only at 0.9 or more). Outputs in OUTPUT/<slide>/: tissue_map.png
(+ _legend), overlay.png, probabilities.npz, tissue_map.geojson (opens in
QuPath) and summary.json (areas in mm² and % of tissue). Slides whose outputs
are complete are skipped; a failing slide is reported and the rest go on.

    python active_learning_inference.py --slides new_slides/ --model runs/exp1/model.keras --output maps/
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

from utils.batch import expand_slides, parse_shard, report, run_per_slide
from utils.cli import add_config_arguments, exit_on_input_error, prepare_output, resolve_config
from utils.config import save_config
from utils.inference import InferenceOptions, infer_slide
from utils.model import Predictor, check_compatible, load_model, make_deterministic, read_metadata


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slides", nargs="+", required=True, help="slide files and/or folders of slides")
    parser.add_argument("--model", type=Path, required=True, help="model.keras saved by active_learning_train.py")
    parser.add_argument("--output", type=Path, required=True, help="folder for one sub-folder per slide")
    add_config_arguments(parser, defaults_from="the model's")
    parser.add_argument("--mpp", type=float, help="base µm/px of level 0, overriding the slide's metadata")
    parser.add_argument("--batch-size", type=int, default=512, help="tiles per model call (default 512)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="threads reading and decoding slide blocks (default: cores, at most 8)")
    parser.add_argument("--smooth", action="store_true", help="3x3 majority smoothing of the map (off by default)")
    parser.add_argument("--overwrite", action="store_true", help="redo slides whose outputs are complete")
    parser.add_argument("--shard", help="process only share I of N of the sorted slides (I/N, 0 <= I < N)")
    return parser.parse_args(argv)


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    metadata = read_metadata(args.model)
    config = resolve_config(args, base=metadata["config"])
    slides = expand_slides(args.slides, parse_shard(args.shard))
    make_deterministic()
    model = load_model(args.model)
    check_compatible(model, config)
    prepare_output(args.output)
    save_config(config, args.output / "inference_config.json")
    options = InferenceOptions(output=args.output, model_path=args.model, mpp=args.mpp, batch_size=args.batch_size,
                               threads=args.workers, overwrite=args.overwrite, smooth=args.smooth)
    model_info = {"backbone": metadata.get("backbone"), "spec": metadata.get("spec")}
    task = functools.partial(infer_slide, config=config, predictor=Predictor(model), options=options,
                             model_info=model_info)
    outcomes = run_per_slide(task, slides, workers=1, unit="tiles")
    for outcome in outcomes:
        result = outcome.result
        if result and result["status"] == "done":
            tissue = result["classes"]
            top = sorted(((v["percent_of_tissue"], k) for k, v in tissue.items() if k != "background"), reverse=True)
            listing = ", ".join(f"{name} {pct:.1f}%" for pct, name in top if pct > 0)
            print(f"{result['slide']}: {result['tissue_mm2']:.2f} mm² tissue ({listing}); "
                  f"{result['tiles_per_second']} tiles/s -> {args.output / result['slide']}")
        elif result:
            print(f"{result['slide']}: {result['status']}")
    return report(outcomes)


if __name__ == "__main__":
    sys.exit(main())
