"""Records from a folder of already-cut, labelled tiles (one sub-folder per class).

Public tile datasets such as Kather et al. 2016 come as image files sorted
into class folders rather than as slides with annotations. Each folder name is
mapped to a class by the configuration's rules, exactly like an annotation
name, and each image is cut with the slide geometry: every configured scale is
a ``tile_size`` window centred on the same point, resampled from the image's
own µm/px, so a record from a tile folder is interchangeable with one from a
slide. The coarsest scale's window must fit in the image; when a smaller one
fits several times, the image yields a grid of records.

The slide of a tile is the first group of ``slide_pattern`` found in its file
name, so training can split by slide; one shard per slide, with its summary.
Records get positions on a virtual canvas on which the images of a slide lie
side by side in name order, each as wide as the widest grid, so the
records of one image are neighbours (the diversity guard then spreads queries
across images); ``<slide>.index.csv`` maps every position back to its file.
"""

from __future__ import annotations

import hashlib
import re
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import tensorflow as tf

from utils.common.config import Config
from utils.common.errors import InputError
from utils.common.io import atomic_path, atomic_write_csv
from utils.common.log import progress
from utils.slides.geometry import SNAP_TOLERANCE, scale_factor
from utils.tiles.extract import shard_paths
from utils.tiles.extract_options import ExtractOptions
from utils.tiles.provenance import UNCHANGED, keep_previous, normalised
from utils.tiles.record_offsets import shard_offsets
from utils.tiles.records import encode_tile, make_example
from utils.tiles.summaries import DONE, ShardSummary

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}



def window_sides(config: Config, mpp: float) -> list[float]:
    """Side in image pixels of each scale's window (snapped to 1:1 within 2%)."""
    sides = []
    for magnification, target in zip(config.magnifications, config.scales.mpps):
        factor = scale_factor(config, magnification, target, mpp, "the tiles are")
        sides.append(config.tile_size * (1.0 if abs(factor - 1.0) <= SNAP_TOLERANCE else factor))
    return sides


def centres(width: int, height: int, pitch: float) -> list[tuple[float, float]]:
    """Centres of the grid of ``pitch``-px windows that fits the image, centred in it."""
    nx, ny = int(width // pitch), int(height // pitch)
    x0, y0 = (width - nx * pitch) / 2, (height - ny * pitch) / 2
    return [(x0 + (i + 0.5) * pitch, y0 + (j + 0.5) * pitch) for j in range(ny) for i in range(nx)]


def crop(image: np.ndarray, cx: float, cy: float, side: float, size: int) -> np.ndarray:
    """The ``side``-px window centred on (cx, cy), resampled to ``size`` px."""
    half = side / 2
    if side == size:
        x, y = int(round(cx - half)), int(round(cy - half))
        return image[y : y + size, x : x + size]
    scale = size / side
    if scale < 1:  # shrinking: area averaging over the window's pixels
        x0, y0 = int(np.floor(cx - half)), int(np.floor(cy - half))
        x1, y1 = int(np.ceil(cx + half)), int(np.ceil(cy + half))
        return cv2.resize(image[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_AREA)
    # Enlarging (within the upsampling tolerance): an affine map keeps the sub-pixel centre.
    matrix = np.array([[scale, 0, -(cx - half) * scale], [0, scale, -(cy - half) * scale]], np.float64)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def class_folders(root: Path, config: Config, strict: bool = False) -> list[tuple[Path, int]]:
    """(folder, class index) of every class folder; folders matching no rule are
    skipped with a warning, as unmatched annotation names are (an error when
    ``strict``)."""
    if not root.is_dir():
        raise InputError(f"{root}: not a folder of class folders")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    matched = [(f, config.class_for_annotation(f.name)) for f in folders]
    skipped = [f.name for f, c in matched if c is None]
    if skipped and strict:
        raise InputError(f"{root}: folders {skipped} match no class rule (--strict); add rules to the configuration")
    if skipped:
        warnings.warn(f"{root}: folders {skipped} match no class rule and are skipped", stacklevel=2)
    matched = [(f, c) for f, c in matched if c is not None]
    if not matched:
        raise InputError(f"{root}: no folder matches a class of the configuration "
                         f"({config.class_names}); add rules that map the folder names to classes")
    return matched


def extract_tile_folders(root: str | Path, mpp: float, config: Config, options: ExtractOptions) -> list[ShardSummary]:
    """Write ``<slide>.tfrecord``, ``<slide>.index.csv`` and ``<slide>.summary.json``
    for every slide the file names name, from images at ``mpp`` µm/px; return
    the summaries."""
    root = Path(root)
    sides = window_sides(config, mpp)
    pitch = max(sides)
    by_slide: dict[str, list[tuple[Path, int, str]]] = defaultdict(list)
    pattern = re.compile(options.slide_pattern)
    for folder, label in class_folders(root, config, options.strict):
        for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            match = pattern.search(path.name)
            if not match or not match.groups():
                raise InputError(f"{path}: the slide pattern {options.slide_pattern!r} finds no slide name "
                                 f"(its first group) in the file name")
            by_slide[match.group(1)].append((path, label, folder.name))
    if not by_slide:
        raise InputError(f"{root}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in the class folders")
    options.output.mkdir(parents=True, exist_ok=True)
    summaries = []
    with progress(total=sum(len(v) for v in by_slide.values()), unit="images", desc="tiles") as bar:
        for slide in sorted(by_slide):
            summaries.append(_write_slide(slide, sorted(by_slide[slide]), mpp, config, options, sides, pitch, bar))
    return summaries


def _write_slide(slide: str, images: list[tuple[Path, int, str]], mpp: float, config: Config,
                 options: ExtractOptions, sides: list[float], pitch: float, bar: Any) -> ShardSummary:
    started = time.perf_counter()
    record_path, summary_path = shard_paths(options.output, slide)
    made_with = normalised({
        "configuration": config.extraction_settings(), "mpp": mpp, "encoding": options.encoding,
        "images": hashlib.sha256("\n".join(f"{p.parent.name}/{p.name}\t{p.stat().st_size}"
                                           for p, _, _ in images).encode()).hexdigest(),
    })
    if record_path.exists() and keep_previous(summary_path, ShardSummary, made_with, options.overwrite,
                                              f"{slide}: its shard in {options.output}"):
        bar.update(len(images))
        return ShardSummary(slide, UNCHANGED)
    mpps = [mpp * side / config.tile_size for side in sides]
    counts: Counter = Counter()
    index_rows: list[list] = []
    # Images of a slide may differ in size: each gets a canvas cell as wide as the widest grid.
    across = 0
    cuts = []
    for path, label, name in images:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise InputError(f"{path}: cannot read this image")
        grid = centres(image.shape[1], image.shape[0], pitch)
        if not grid:
            raise InputError(f"{path}: {image.shape[1]}x{image.shape[0]} px is smaller than the "
                             f"{pitch:.0f}-px window of {config.magnifications[-1]:g}x; choose higher "
                             f"--magnifications or a smaller --tile-size")
        across = max(across, len({cx for cx, _ in grid}))
        cuts.append((path, label, name, image[..., ::-1], grid))
    cell = pitch * across
    with atomic_path(record_path) as tmp, tf.io.TFRecordWriter(str(tmp)) as writer:
        for k, (path, label, name, rgb, grid) in enumerate(cuts):
            origin_x, origin_y = grid[0][0] - pitch / 2, grid[0][1] - pitch / 2
            for cx, cy in grid:
                x = int(round(k * cell + cx - origin_x))
                y = int(round(cy - origin_y))
                tiles = [encode_tile(np.ascontiguousarray(crop(rgb, cx, cy, side, config.tile_size)),
                                     options.encoding) for side in sides]
                writer.write(make_example(slide, label, name, x, y, tiles, mpps))
                index_rows.append([x, y, path.relative_to(path.parents[1]), label])
                counts[config.class_names[label]] += 1
            bar.update(1)
    shard_offsets(record_path)  # the index training reads records by
    atomic_write_csv(options.output / f"{slide}.index.csv", ["x", "y", "file", "label"], index_rows)
    summary = ShardSummary(
        slide=slide, status=DONE, source="tile folder", images=len(images), tiles=sum(counts.values()),
        tiles_per_class=dict(sorted(counts.items())), fingerprint=config.fingerprint(), made_with=made_with,
        magnifications=config.magnifications, tile_size=config.tile_size, base_mpp=mpp, scale_mpps=mpps,
        stride_level0=pitch, window_level0=pitch, seconds=round(time.perf_counter() - started, 2),
    )
    summary.write(summary_path)
    return summary
