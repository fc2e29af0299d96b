#!/usr/bin/env python
"""Tile-triplet throughput per core: naive reader, block reader, inference, decode limit.

On one synthetic 40x-like pyramidal JPEG tiled TIFF (levels 1, 4, 16), each
measurement runs in its own single-threaded process and prints triplets/s:

  (a) naive: one OpenSlide read_region per tile per scale, from the best level;
  (b) the project's block reader (utils.slides.geometry.read_triplets), no model, with
      the default TIFF path (direct tile decoding, utils.slides.tiff_tiles) and with
      OpenSlide alone (the path of every non-TIFF format);
  (c) full inference (utils.maps.inference.predict_slide) with the small backbone;
  (d) decode limit: the slide's level-0 JPEG tiles decoded directly with
      libjpeg-turbo (imagecodecs), converted to triplets by the level-0 pixels
      a triplet costs, T^2 * (1 + 1/16 + 1/256);

then the ratios (b)/(a) and (d)/(b), and the block reader's peak memory on two
slide sizes (it must not grow with the slide).

    python benchmarks/reader_throughput.py [--size 8192] [--tile-size 128]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _single_thread() -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        os.environ[var] = "1"
    import cv2

    cv2.setNumThreads(1)


def _grid(slide_path: str, tile: int):
    import numpy as np

    from utils.common.config import load_config
    from utils.slides.geometry import slide_geometry
    from utils.slides.slide import Slide

    config = load_config(tile_size=tile)
    slide = Slide(slide_path, backend="tiffslide")
    geometry = slide_geometry(slide, config)
    rows, cols = np.indices(geometry.grid_shape).reshape(2, -1)
    return config, slide, geometry, rows, cols


def naive(slide_path: str, tile: int, limit: int) -> tuple[float, float]:
    _single_thread()
    import numpy as np
    import openslide

    _, _, geometry, rows, cols = _grid(slide_path, tile)
    handle = openslide.OpenSlide(slide_path)
    x, y = geometry.centres(rows[:limit], cols[:limit])
    started = time.process_time()
    for cx, cy in zip(x, y):
        for scale in geometry.scales:
            half = tile * scale.factor / 2
            region = handle.read_region((int(cx - half), int(cy - half)), scale.level, (tile, tile))
            np.asarray(region)
    return len(x) / (time.process_time() - started), _peak_mb()


def block(slide_path: str, tile: int, backend: str) -> tuple[float, float]:
    _single_thread()
    from utils.slides.geometry import read_triplets
    from utils.slides.slide import Slide

    _, _, geometry, rows, cols = _grid(slide_path, tile)
    slide = Slide(slide_path, backend=backend)
    started = time.process_time()
    count = sum(len(indices) for indices, _ in read_triplets(slide, geometry, rows, cols, threads=1))
    return count / (time.process_time() - started), _peak_mb()


def inference(slide_path: str, tile: int) -> tuple[float, float]:
    _single_thread()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from utils.maps.inference import predict_slide
    from utils.maps.inference_options import InferenceOptions
    from utils.network.model import Predictor, build_model
    from utils.network.model_spec import ModelSpec
    from utils.slides.slide import Slide

    config, _, _, _, _ = _grid(slide_path, tile)
    predictor = Predictor(build_model(config, ModelSpec("small"), None))
    slide = Slide(slide_path)
    options = InferenceOptions(output=Path("."), model_path=Path("."), batch_size=256, workers=1)
    started = time.process_time()
    result = predict_slide(slide, config, predictor, options, lambda n: None)
    return result["tiles"] / (time.process_time() - started), _peak_mb()


def decode_limit(slide_path: str, tile: int) -> tuple[float, float]:
    _single_thread()
    import imagecodecs
    import tifffile

    with tifffile.TiffFile(slide_path) as tif:
        page = tif.pages.first
        handle = tif.filehandle
        chunks = []
        for offset, count in zip(page.dataoffsets, page.databytecounts):
            handle.seek(offset)
            chunks.append(handle.read(count))
        tables = page.jpegtables
    started = time.process_time()
    pixels = 0
    for data in chunks:
        decoded = imagecodecs.jpeg8_decode(data, tables=tables)
        pixels += decoded.shape[0] * decoded.shape[1]
    seconds = time.process_time() - started
    return pixels / seconds / (tile * tile * (1 + 1 / 16 + 1 / 256)), _peak_mb()


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _make_slide(directory: str, size: int) -> str:
    from utils.tiles.synthetic import make_slide, random_layout

    path, _ = make_slide(directory, f"bench{size}", size, size, random_layout(size, size, 0))
    return str(path)


def in_child(function, *args):
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=8192, help="side of the synthetic slide (default 8192)")
    parser.add_argument("--tile-size", type=int, default=128)
    parser.add_argument("--naive-tiles", type=int, default=600, help="tiles timed for the naive reader")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        slide = in_child(_make_slide, tmp, args.size)
        small = in_child(_make_slide, tmp, args.size // 2)
        t = args.tile_size
        a, _ = in_child(naive, slide, t, args.naive_tiles)
        b, b_mem = in_child(block, slide, t, "tiffslide")
        b_os, _ = in_child(block, slide, t, "openslide")
        c, c_mem = in_child(inference, slide, t)
        d, _ = in_child(decode_limit, slide, t)
        _, small_mem = in_child(block, small, t, "tiffslide")
    print(f"synthetic {args.size}^2 JPEG tiled TIFF, 40x/10x/2.5x, {t} px tiles, one core")
    print(f"(a) naive, one OpenSlide read_region per tile per scale {a:10.0f} triplets/s")
    print(f"(b) block reader, direct TIFF tile decoding           {b:10.0f} triplets/s")
    print(f"    block reader, OpenSlide alone                     {b_os:10.0f} triplets/s")
    print(f"(c) full inference, small backbone                    {c:10.0f} triplets/s")
    print(f"(d) decode limit, libjpeg-turbo on level-0 tiles      {d:10.0f} triplets/s")
    print(f"(b)/(a) = {b / a:.1f}   OpenSlide blocks/(a) = {b_os / a:.1f}   (d)/(b) = {d / b:.2f}")
    print(f"peak memory of the block reader: {small_mem:.0f} MB on {args.size // 2}^2, {b_mem:.0f} MB on "
          f"{args.size}^2; inference {c_mem:.0f} MB")


if __name__ == "__main__":
    main()
