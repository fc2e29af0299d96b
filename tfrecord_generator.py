#!/usr/bin/env python
"""Cut multiscale tile triplets out of annotated slides into TFRecords.

For each slide: resolve its µm/px, compute a tissue mask, rasterise the
annotation regions (QuPath GeoJSON, ASAP or Aperio XML found by slide stem in
--annotations), label every tile of the 40x grid whose window is covered by one
class, and write the triplets (same centre at every magnification) to
OUTPUT/<slide>.tfrecord with OUTPUT/<slide>.summary.json beside it. Finished
slides are skipped on a rerun; a failing slide is reported and the rest go on.

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
from pathlib import Path

from utils.batch import expand_slides, parse_shard, report, run_per_slide
from utils.cli import add_config_arguments, exit_on_input_error, prepare_output, resolve_config
from utils.config import Config, save_config
from utils.extract import ExtractOptions, check_output_configuration, extract_slide
from utils.tile_folders import TileFolderOptions, extract_tile_folders


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--slides", nargs="+", help="slide files and/or folders of slides")
    source.add_argument("--tiles", type=Path, help="folder of labelled tiles, one sub-folder per class")
    parser.add_argument("--annotations", type=Path, help="folder of annotation files named like the slides")
    parser.add_argument("--output", type=Path, required=True, help="folder for the TFRecord shards")
    add_config_arguments(parser)
    parser.add_argument("--mpp", type=float,
                        help="base µm/px of level 0, overriding the slide's metadata; required with --tiles")
    parser.add_argument("--slide-pattern", default=TileFolderOptions.slide_pattern,
                        help="with --tiles: regular expression whose first group, searched in a file name, "
                             "is the tile's slide (default: the name up to the first '.' or '_')")
    parser.add_argument("--workers", type=int, default=1, help="slides processed in parallel (default 1)")
    parser.add_argument("--encoding", choices=["png", "jpeg"], default="png", help="tile encoding (default png)")
    parser.add_argument("--unlabeled", action="store_true",
                        help="also write every unlabelled tissue tile (label -1), the active-learning pool; "
                             "slides without annotation file are then pooled whole")
    parser.add_argument("--strict", action="store_true", help="fail a slide whose annotation names match no rule")
    parser.add_argument("--allow-upsampling", action="store_true",
                        help="allow magnifications above the scan's by resampling up")
    parser.add_argument("--overwrite", action="store_true", help="redo slides that already have a shard")
    parser.add_argument("--shard", help="process only share I of N of the sorted slides (I/N, 0 <= I < N)")
    args = parser.parse_args(argv)
    if args.tiles is not None:
        if args.mpp is None:
            parser.error("--tiles needs --mpp, the µm/px of the tiles")
    elif args.annotations is None and not args.unlabeled:
        parser.error("--annotations is required unless --unlabeled is given")
    return args


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = resolve_config(args, allow_upsampling=args.allow_upsampling or None)
    if args.tiles is not None:
        return extract_tiles(args, config)
    slides = expand_slides(args.slides, parse_shard(args.shard))
    if not slides:
        print("no slides to process")
        return 0
    prepare_output(args.output)
    check_output_configuration(args.output, config, args.overwrite)
    save_config(config, args.output / "extraction_config.json")
    options = ExtractOptions(
        annotations=args.annotations, output=args.output, mpp=args.mpp, encoding=args.encoding,
        unlabeled=args.unlabeled, strict=args.strict, overwrite=args.overwrite,
    )
    task = functools.partial(extract_slide, config=config, options=options)
    outcomes = run_per_slide(task, slides, args.workers, unit="tiles")
    for outcome in outcomes:
        if outcome.result:
            print_summary(outcome.result)
    return report(outcomes)


def extract_tiles(args: argparse.Namespace, config: Config) -> int:
    prepare_output(args.output)
    check_output_configuration(args.output, config, args.overwrite)
    save_config(config, args.output / "extraction_config.json")
    options = TileFolderOptions(output=args.output, mpp=args.mpp, slide_pattern=args.slide_pattern,
                                encoding=args.encoding, overwrite=args.overwrite)
    for summary in extract_tile_folders(args.tiles, config, options):
        print_summary(summary)
    return 0


def print_summary(summary: dict) -> None:
    detail = f"{summary['tiles']} tiles {summary['tiles_per_class']}" if summary["status"] == "done" else ""
    print(f"{summary['slide']}: {summary['status']} {detail}".rstrip())
    for line in summary.get("warnings", []):
        print(f"warning: {line}")


if __name__ == "__main__":
    sys.exit(main())
