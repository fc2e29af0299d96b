#!/usr/bin/env python
"""Extraction throughput: tile triplets written per second, one worker.

Runs the whole per-slide extraction (tissue mask, labels, block reads, PNG
encoding, TFRecord writing) on a synthetic 40x pyramidal JPEG TIFF with every
tile pooled (--unlabeled) and, when ../shared/data is present, on the real
CMU-1-Small-Region.svs at 20x/5x/1.25x. Prints tiles/s and peak memory.

    python benchmarks/extraction_throughput.py [--size 8192]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.common.config import load_config  # noqa: E402
from utils.slides.slide_files import SlideFile  # noqa: E402
from utils.tiles.extract import extract_slide  # noqa: E402
from utils.tiles.extract_options import ExtractOptions  # noqa: E402
from utils.tiles.synthetic import make_slide, random_layout  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def run(slide: Path, annotations: Path | None, output: Path, config, unlabeled: bool, encoding: str) -> tuple[int, float]:
    options = ExtractOptions(annotations=annotations, output=output, encoding=encoding, unlabeled=unlabeled,
                             overwrite=True)
    started = time.perf_counter()
    summary = extract_slide(SlideFile(slide.stem, slide), lambda n: None, config=config, options=options)
    return summary.tiles, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=8192, help="side of the synthetic slide in pixels")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        slide, _ = make_slide(tmp, "synthetic", args.size, args.size, random_layout(args.size, args.size, 0))
        rows = []
        for encoding in ("png", "jpeg"):
            tiles, seconds = run(slide, tmp, tmp / f"out-{encoding}", load_config(), True, encoding)
            rows.append((f"synthetic {args.size}^2 40x/10x/2.5x, 128 px, {encoding}", tiles, seconds))
        cmu = SHARED / "slides" / "CMU-1-Small-Region.svs"
        if cmu.exists():
            config = load_config(magnifications=[20, 5, 1.25])
            tiles, seconds = run(cmu, None, tmp / "out-cmu", config, True, "png")
            rows.append(("CMU-1-Small-Region.svs 20x/5x/1.25x, 128 px, png", tiles, seconds))
    print(f"{'slide':55s} {'tiles':>7s} {'seconds':>8s} {'tiles/s':>8s}")
    for name, tiles, seconds in rows:
        print(f"{name:55s} {tiles:7d} {seconds:8.2f} {tiles / seconds:8.0f}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory: {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
