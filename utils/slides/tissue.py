"""Tissue/background masks computed on a low-resolution view of the slide.

Two rules: the paper's (green channel above 250 is background, then a 4x4
closing), which assumes bright white glass, and the default Otsu threshold on
saturation (as HistoQC and CLAM do), which also works on grey or tinted glass
and on slides scanned with a dark background. The Otsu threshold is clipped to
a band: the floor keeps an empty slide from being split in two, the ceiling
keeps pale tissue (stroma, oedema) when strongly stained tissue dominates the
histogram and pulls Otsu's split above it.
"""

from __future__ import annotations

import cv2
import numpy as np

from utils.slides.geometry import Geometry
from utils.slides.slide import Slide

#: Band (0-255) the Otsu saturation threshold is clipped to.
SATURATION_THRESHOLD_RANGE = (20, 45)
#: Longest side of the view the mask is computed on (bounds memory on huge slides).
MAX_VIEW_SIDE = 4096


def tissue_mask_rgb(rgb: np.ndarray, method: str = "otsu") -> np.ndarray:
    """Boolean tissue mask of an RGB image."""
    if method == "green":
        background = rgb[..., 1] > 250
        tissue = (~background).astype(np.uint8)
        tissue = cv2.morphologyEx(tissue, cv2.MORPH_CLOSE, np.ones((4, 4), np.uint8))
        return tissue.astype(bool)
    saturation = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]
    saturation = cv2.medianBlur(saturation, 5)
    threshold, _ = cv2.threshold(saturation, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    low, high = SATURATION_THRESHOLD_RANGE
    tissue = saturation > min(max(threshold, low), high)
    tissue = cv2.morphologyEx(tissue.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    return tissue.astype(bool)


def tissue_grid(slide: Slide, geometry: Geometry, method: str, cells_per_tile: int) -> np.ndarray:
    """Tissue mask on the tile grid, ``cells_per_tile`` mask cells per tile side.

    Shape ``(rows * cells_per_tile, cols * cells_per_tile)``; cell ``(i, j)``
    covers level-0 pixels from ``(j, i) * stride / cells_per_tile``.
    """
    rows, cols = geometry.grid_shape
    out_shape = (rows * cells_per_tile, cols * cells_per_tile)
    if rows == 0 or cols == 0:
        return np.zeros(out_shape, bool)
    cell = geometry.stride / cells_per_tile
    factor = max(cell, max(slide.dimensions) / MAX_VIEW_SIDE)
    view, view_factor = slide.thumbnail(factor)
    mask = tissue_mask_rgb(view, method).astype(np.uint8)
    covered_w = int(round(cols * geometry.stride / view_factor))
    covered_h = int(round(rows * geometry.stride / view_factor))
    padded = np.zeros((max(covered_h, mask.shape[0]), max(covered_w, mask.shape[1])), np.uint8)
    padded[: mask.shape[0], : mask.shape[1]] = mask
    mask = padded[:covered_h, :covered_w]
    return cv2.resize(mask, (out_shape[1], out_shape[0]), interpolation=cv2.INTER_NEAREST).astype(bool)


def tile_fractions(cell_mask: np.ndarray, cells_per_tile: int) -> np.ndarray:
    """Fraction of each tile's cells that are set, shape ``(rows, cols)``."""
    rows, cols = cell_mask.shape[0] // cells_per_tile, cell_mask.shape[1] // cells_per_tile
    blocks = cell_mask[: rows * cells_per_tile, : cols * cells_per_tile]
    return blocks.reshape(rows, cells_per_tile, cols, cells_per_tile).mean(axis=(1, 3))
