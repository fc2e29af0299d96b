"""Tile geometry shared by extraction and inference.

A slide is covered by a grid of tiles of the highest magnification (scale 0).
Each grid cell has a centre in level-0 pixels; every scale's window is a
``tile_size`` square centred on that point, so the 10x and 2.5x windows see the
same tissue centre with more context. Windows that cross the slide edge are
padded with the background colour, never shifted (shifting would break the
alignment between scales).

Both scripts call :func:`slide_geometry` and :func:`read_triplets`, so a tile at
inference is cut exactly like a training tile.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from utils.common.config import Config
from utils.common.errors import MagnificationError
from utils.common.scales import MICRONS_PER_PIXEL_AT_1X
from utils.slides.slide import Slide, best_level

#: A scale factor within this relative distance of a pyramid level's downsample
#: is snapped to it, so e.g. a 0.2527 µm/px "40x" scan is read 1:1 at 40x.
SNAP_TOLERANCE = 0.02
#: Up to this much upsampling is accepted silently as "the same magnification".
UPSAMPLE_TOLERANCE = 0.15
#: Tiles per side of the blocks read at once: bounds memory (a 16x16 block of
#: 128-px tiles is 2048^2 px per scale) while amortising per-call overhead.
BLOCK_TILES = 16


@dataclass(frozen=True)
class Scale:
    magnification: float
    mpp: float  # µm/px of the output tile
    factor: float  # level-0 pixels per output pixel
    level: int  # pyramid level read
    level_downsample: float


@dataclass(frozen=True)
class Geometry:
    tile_size: int
    base_mpp: float
    scales: tuple[Scale, ...]
    dimensions: tuple[int, int]  # slide level-0 (width, height)

    @property
    def stride(self) -> float:
        """Level-0 pixels between neighbouring tile centres (one scale-0 tile)."""
        return self.tile_size * self.scales[0].factor

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(rows, cols) of whole scale-0 tiles that fit in the slide."""
        width, height = self.dimensions
        return int(height // self.stride), int(width // self.stride)

    def centres(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Level-0 (x, y) of the centres of grid cells."""
        x = np.round((np.asarray(cols) + 0.5) * self.stride).astype(np.int64)
        y = np.round((np.asarray(rows) + 0.5) * self.stride).astype(np.int64)
        return x, y


def scale_factor(config: Config, magnification: float, mpp: float, base_mpp: float, source: str,
                 fixed_by: str | None = None, subject: str = "") -> float:
    """Source pixels per output pixel of one scale (``mpp`` wanted, ``base_mpp``
    available). More than the tolerated upsampling is an error about
    ``subject`` (the file) naming ``source`` (e.g. "the slide was scanned at")
    and a fix the same command accepts: the magnifications the scan can give,
    or, when the scales are ``fixed_by`` a model that takes no others,
    resampling up. Unless ``allow_upsampling`` is set."""
    factor = mpp / base_mpp
    if factor < 1.0 - UPSAMPLE_TOLERANCE and not config.allow_upsampling:
        finest = MICRONS_PER_PIXEL_AT_1X / base_mpp
        problem = (f"{subject + ': ' if subject else ''}{magnification:g}x needs {mpp:.3g} µm/px but {source} "
                   f"{base_mpp:.3g} µm/px, so its finest level gives {finest:.3g}x at most")
        if fixed_by:
            scales = ", ".join(f"{m:g}x" for m in config.magnifications)
            raise MagnificationError(f"{problem}; {fixed_by} takes {scales} only: resample up with "
                                     f"--allow-upsampling, or pass the scan's µm/px with --mpp if {base_mpp:.3g} is "
                                     f"wrong")
        halvings = 0  # the asked magnifications halved until the scan gives them within the tolerance
        while config.magnifications[0] / 2**halvings > finest / (1.0 - UPSAMPLE_TOLERANCE):
            halvings += 1
        possible = " ".join(f"{m / 2**halvings:.3g}" for m in config.magnifications)
        raise MagnificationError(f"{problem}; pass magnifications it can give, in the same ratios: "
                                 f"--magnifications {possible}, or resample up with --allow-upsampling")
    return factor


def slide_geometry(slide: Slide, config: Config, fixed_by: str | None = None) -> Geometry:
    """Scales of the configuration resolved against one slide's µm/px and
    levels; ``fixed_by``: what fixes the scales (inference: the model)."""
    scales = []
    for magnification, mpp in zip(config.magnifications, config.scales.mpps):
        factor = scale_factor(config, magnification, mpp, slide.mpp, "the slide was scanned at", fixed_by,
                              str(slide.path))
        level = best_level(slide.level_downsamples, factor)
        downsample = slide.level_downsamples[level]
        if abs(factor / downsample - 1.0) <= SNAP_TOLERANCE:
            factor = downsample
        scales.append(Scale(magnification, factor * slide.mpp, factor, level, downsample))
    return Geometry(config.tile_size, slide.mpp, tuple(scales), slide.dimensions)


def read_triplets(
    slide: Slide, geometry: Geometry, rows: np.ndarray, cols: np.ndarray, threads: int = 1
) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
    """Yield ``(indices, [tiles of scale 0, 1, ...])`` for the given grid cells.

    Cells are grouped into blocks of ``BLOCK_TILES`` x ``BLOCK_TILES``; each
    block costs one read per scale, and tiles are sliced from it. ``indices``
    index into ``rows``/``cols``; each tile array is ``(n, T, T, 3)`` uint8.
    With ``threads`` > 1 blocks are read and decoded in parallel threads (the
    slide libraries release the GIL while decoding), at most two per thread
    ahead of the consumer so memory stays bounded.
    """
    rows, cols = np.asarray(rows), np.asarray(cols)
    if rows.size == 0:
        return
    block_ids = (rows // BLOCK_TILES) * (cols.max() // BLOCK_TILES + 1) + cols // BLOCK_TILES
    order = np.argsort(block_ids, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(block_ids[order])) + 1)

    def read_block(indices: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        x, y = geometry.centres(rows[indices], cols[indices])
        return indices, [_read_scale(slide, geometry, scale, x, y) for scale in geometry.scales]

    if threads <= 1:
        yield from map(read_block, groups)
        return
    with ThreadPoolExecutor(threads) as pool:
        pending: deque = deque()
        for group in groups:
            pending.append(pool.submit(read_block, group))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _read_scale(slide: Slide, geometry: Geometry, scale: Scale, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    size = geometry.tile_size
    # Window origins in output pixels of this scale.
    ox = np.round(x / scale.factor - size / 2).astype(np.int64)
    oy = np.round(y / scale.factor - size / 2).astype(np.int64)
    bx, by = int(ox.min()), int(oy.min())
    bw, bh = int(ox.max()) - bx + size, int(oy.max()) - by + size
    ratio = scale.factor / scale.level_downsample  # level pixels per output pixel
    level_w, level_h = int(round(bw * ratio)), int(round(bh * ratio))
    block = slide.read(
        scale.level, int(round(bx * scale.factor)), int(round(by * scale.factor)), level_w, level_h
    )
    if (level_w, level_h) != (bw, bh):
        block = cv2.resize(block, (bw, bh), interpolation=cv2.INTER_AREA)
    tiles = np.empty((len(x), size, size, 3), np.uint8)
    for i, (tx, ty) in enumerate(zip(ox - bx, oy - by)):
        tiles[i] = block[ty : ty + size, tx : tx + size]
    return tiles
