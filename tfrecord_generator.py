#!/usr/bin/env python
r"""Cut multiscale tile triplets out of annotated slides into TFRecords.

For each slide: resolve its µm/px, compute a tissue mask, rasterise the
annotation regions (QuPath GeoJSON, ASAP or Aperio XML found by slide stem in
--annotations), label every tile of the 40x grid whose window is covered by one
class, and write the triplets (same centre at every magnification) to
OUTPUT/<slide>.tfrecord with OUTPUT/<slide>.summary.json beside it. On a
rerun, slides extracted with the same settings and annotations are skipped;
shards made otherwise stop the run unless --overwrite. A failing slide is
reported and the rest go on.

    python tfrecord_generator.py --slides slides/ --annotations annotations/ --output tiles/

A folder of already-cut tiles, one sub-folder per class (e.g. Kather et al.),
is read with --tiles instead: folder names are mapped to classes by the
configuration's rules, --mpp gives the tiles' µm/px, --slide-pattern finds the
slide in each file name, and every scale is cut centred in the tile (a grid
of records where the coarsest window fits several times).

    python tfrecord_generator.py --tiles kather/ --mpp 0.495 --slide-pattern "(CRC-Prim-HE-\d+)" \
        --config kather.yaml --output tiles/
"""

from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import replace
from pathlib import Path

from utils.common.cli import (add_config_arguments, add_message_arguments, add_slide_arguments, add_upsampling_argument,
                              make_parser, prepare_output, resolve_config, start)
from utils.common.config import Config, save_config
from utils.common.errors import InputError
from utils.common.failures import exit_on_input_error
from utils.common.log import info, warn
from utils.common.options import add_option_arguments, resolve_options
from utils.common.setup import setup_process
from utils.slides.slide import parse_mpp
from utils.tiles.batch import report, run_per_slide, slides_to_process
from utils.tiles.extract_options import ExtractOptions
from utils.tiles.provenance import check_stale
from utils.tiles.summaries import ShardSummary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    paths = parser.add_argument_group("input and output")
    source = paths.add_mutually_exclusive_group(required=True)
    source.add_argument("--slides", nargs="+", help="slide files and/or folders of slides")
    source.add_argument("--tiles", type=Path, help="folder of labelled tiles, one sub-folder per class (needs --mpp, one value)")
    paths.add_argument("--annotations", type=Path, help="folder of annotation files named like the slides")
    paths.add_argument("--output", type=Path, required=True, help="folder for the TFRecord shards")
    configuration = add_config_arguments(parser, section="extraction")
    add_upsampling_argument(configuration)
    add_option_arguments(parser, ExtractOptions, {"slides": add_slide_arguments(parser)})
    add_message_arguments(parser)
    args = parser.parse_args(argv)
    if args.tiles is not None:
        if args.mpp is None:
            parser.error("--tiles needs --mpp, the µm/px of the tiles")
        if args.shard or args.workers not in (None, 1) or args.unlabeled or args.annotations:
            parser.error("--shard, --workers, --unlabeled and --annotations apply to --slides only")
    return args


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    file_keys, section = start(args, "extraction")
    setup_process()
    # Loaded once the arguments are read, so that --help and argument errors answer before TensorFlow loads.
    from utils.tiles.extract import check_output_configuration, extract_slide, extraction_settings, summary_path

    config = resolve_config(args, file_keys, allow_upsampling=args.allow_upsampling)
    options = resolve_options(ExtractOptions, args, section, f"{args.config}: extraction", output=args.output,
                              annotations=args.annotations, overwrite=args.overwrite)
    if args.tiles is not None:
        mpp = parse_mpp(args.mpp).value
        if mpp is None:
            raise InputError("--tiles needs one µm/px for all tiles, not a file")
        return extract_tiles(args.tiles, mpp, config, options)
    slides, mpp = slides_to_process(args.slides, args.shard, args.mpp)
    options = replace(options, mpp=mpp)
    if options.annotations is None and not options.unlabeled:
        raise InputError("--annotations is required unless --unlabeled is given")
    check_output_configuration(args.output, config, args.overwrite, slides)
    check_stale(slides, functools.partial(summary_path, args.output), ShardSummary,
                functools.partial(extraction_settings, config=config, options=options), args.overwrite, args.output)
    prepare_output(args.output)
    save_config(config, args.output / "extraction_config.json")
    task = functools.partial(extract_slide, config=config, options=options)
    outcomes = run_per_slide(task, slides, options.workers, unit="tiles")
    for outcome in outcomes:
        if outcome.result:
            print_summary(outcome.result)
    return report(outcomes)


def extract_tiles(tiles: Path, mpp: float, config: Config, options: ExtractOptions) -> int:
    from utils.tiles.extract import check_output_configuration
    from utils.tiles.tile_folders import extract_tile_folders

    prepare_output(options.output)
    check_output_configuration(options.output, config, options.overwrite)
    save_config(config, options.output / "extraction_config.json")
    for summary in extract_tile_folders(tiles, mpp, config, options):
        print_summary(summary)
    return 0


def print_summary(summary: ShardSummary) -> None:
    detail = f"{summary.tiles} tiles {summary.tiles_per_class}" if summary.done else ""
    if summary.unreviewed_queries:
        detail += (f"; {summary.unreviewed_queries} query square(s) without a class (not reviewed), "
                   f"left unlabelled")
    if summary.ignored_queries:
        detail += f"; {summary.ignored_queries} query square(s) set to be ignored, their tiles out of the pool"
    info(f"{summary.slide}: {summary.status} {detail}".rstrip())
    for line in summary.warnings:
        warn(line)


if __name__ == "__main__":
    sys.exit(main())
