"""Tile labels from annotation regions.

Regions are rasterised on the tile grid's mask cells (``mask_cells_per_tile``
per tile side) in priority order, lowest first, so where regions of different
classes overlap the prioritised class wins; holes stay unlabelled, and so do the
cells under regions the configuration's ``exclude`` names. A tile takes
the class that covers at least ``region_fraction`` of its scale-0 window,
counting only tissue cells (a region drawn loosely over glass does not make
glass "muscle"); regions mapped to a class named ``background`` count as drawn.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from utils.common.config import Config
from utils.common.errors import AnnotationError
from utils.slides.annotations import Region
from utils.slides.tissue import tile_fractions

#: Mask rows processed together by the scanline fill (bounds its memory).
_ROWS_PER_PASS = 256


@dataclass
class CellLabels:
    """Annotation raster on mask cells: class index and annotation-name index (-1: none)."""

    classes: np.ndarray  # int16 (H, W)
    names: np.ndarray  # int16 (H, W), index into ``name_list``
    name_list: list[str]
    unmatched: Counter  # annotation names that no rule maps, with region counts
    ignored: Counter  # annotation names the configuration's ``ignore`` names, with region counts
    unreviewed: int = 0  # query squares read back without a class: nobody labelled them
    #: Query squares read back with a class: (tile row, tile column, class, name index) of the tile each is about.
    answers: list[tuple[int, int, int, int]] = field(default_factory=list)
    #: Tiles (row, column) whose query square was set to an ignored class (``Ignore*``): never to be asked again.
    ignored_tiles: list[tuple[int, int]] = field(default_factory=list)


def rasterize_regions(
    regions: list[Region], config: Config, grid_cells: tuple[int, int], cell_size: float
) -> CellLabels:
    """Paint regions onto a ``grid_cells`` (H, W) raster of ``cell_size`` level-0 px."""
    classes = np.full(grid_cells, -1, np.int16)
    names = np.full(grid_cells, -1, np.int16)
    name_list: list[str] = []
    unmatched: Counter = Counter()
    ignored: Counter = Counter()
    unreviewed = 0
    answers, ignored_tiles = [], []
    rank = {c: i for i, c in enumerate(config.paint_order())}
    mapped = []
    for region in regions:
        role = config.annotation_role(region.name)
        tile = _square_tile(region, cell_size, config.mask_cells_per_tile) if region.square else None
        if role == "ignore":
            ignored[region.name] += 1
            if tile is not None:
                ignored_tiles.append(tile)
        elif role == "unreviewed":
            unreviewed += 1
        elif role == "unmatched":
            unmatched[region.name] += 1
        elif role == "exclude":  # painted last, over every class
            mapped.append((len(rank), -1, -1, region))
        else:
            index = config.class_for_annotation(region.name)
            if region.name not in name_list:
                name_list.append(region.name)
            mapped.append((rank[index], index, name_list.index(region.name), region))
            if tile is not None:
                answers.append((*tile, index, name_list.index(region.name)))
    for _, index, name_index, region in sorted(mapped, key=lambda m: m[0]):
        for polygon in region.polygons:
            _paint(classes, names, polygon.exterior, polygon.holes, cell_size, index, name_index)
    return CellLabels(classes, names, name_list, unmatched, ignored, unreviewed, answers, ignored_tiles)


def _square_tile(region: Region, cell_size: float, cells_per_tile: int) -> tuple[int, int]:
    """(row, column) of the tile whose footprint a query square is: the tile under its centre."""
    points = np.concatenate([polygon.exterior for polygon in region.polygons])
    centre = (points.min(axis=0) + points.max(axis=0)) / 2 / cell_size
    return int(centre[1] // cells_per_tile), int(centre[0] // cells_per_tile)


def _paint(classes, names, exterior, holes, cell_size, index, name_index) -> None:
    rings = [ring / cell_size - 0.5 for ring in [exterior, *holes]]  # cell centres on integers
    height, width = classes.shape
    x0, y0 = np.maximum(np.floor(rings[0].min(axis=0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(rings[0].max(axis=0)).astype(int) + 1, (width, height))
    if x1 <= x0 or y1 <= y0:
        return
    inside = fill_rings(rings, (x0, y0, x1, y1))
    classes[y0:y1, x0:x1][inside] = index
    names[y0:y1, x0:x1][inside] = name_index


def fill_rings(rings: list[np.ndarray], box: tuple[int, int, int, int]) -> np.ndarray:
    """Pixels of ``box`` (x0, y0, x1, y1) whose centres lie inside the rings.

    Even-odd scanline fill: holes are just more rings. Unlike cv2.fillPoly,
    which also paints every pixel an edge touches, a pixel is in only when its
    centre is, so a polygon traced along cell borders maps back to exactly its
    cells, and areas are unbiased.
    """
    x0, y0, x1, y1 = box
    starts = np.concatenate([r[:-1] for r in rings])
    ends = np.concatenate([r[1:] for r in rings])
    out = np.zeros((y1 - y0, x1 - x0), bool)
    columns = np.arange(x0, x1)
    for top in range(y0, y1, _ROWS_PER_PASS):
        ys = np.arange(top, min(top + _ROWS_PER_PASS, y1), dtype=np.float64)[:, None]
        ya, yb = starts[:, 1][None, :], ends[:, 1][None, :]
        crosses = (ya <= ys) != (yb <= ys)  # half-open: a vertex on the line counts once
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (ys - ya) / (yb - ya)
        xs = np.where(crosses, starts[:, 0][None, :] + t * (ends[:, 0] - starts[:, 0])[None, :], np.inf)
        xs.sort(axis=1)
        for i, row_xs in enumerate(xs):
            row_xs = row_xs[np.isfinite(row_xs)]
            for left, right in zip(row_xs[0::2], row_xs[1::2]):
                out[top - y0 + i] |= (columns >= left) & (columns < right)
    return out


def counted_classes(cells: CellLabels, tissue: np.ndarray, config: Config) -> np.ndarray:
    """Cell classes that count towards labels: annotated tissue, and drawn background."""
    background = config.background_index
    drawn_background = cells.classes == background if background is not None else np.zeros_like(tissue)
    return np.where(tissue | drawn_background, cells.classes, -1)


def label_tiles(cells: CellLabels, tissue: np.ndarray, config: Config) -> tuple[np.ndarray, np.ndarray]:
    """Per-tile class (-1: none) and annotation-name index (-1: none), shape
    (rows, cols): the class covering ``region_fraction`` of a tile's cells, or
    the class a pathologist gave the tile's query square."""
    k = config.mask_cells_per_tile
    counted = counted_classes(cells, tissue, config)
    best_fraction = np.zeros(tile_fractions(tissue, k).shape)
    labels = np.full(best_fraction.shape, -1, np.int64)
    for index in range(config.num_classes):
        fraction = tile_fractions(counted == index, k)
        better = fraction > best_fraction
        best_fraction[better] = fraction[better]
        labels[better] = index
    labels[best_fraction < config.region_fraction - 1e-9] = -1
    names = _tile_names(cells, labels, k)
    # A pathologist's answer about a queried tile labels it whatever its tissue
    # fraction: the pool takes tiles from tissue_fraction, below region_fraction.
    for row, col, index, name in cells.answers:
        if 0 <= row < labels.shape[0] and 0 <= col < labels.shape[1]:
            labels[row, col], names[row, col] = index, name
    return labels, names


def _tile_names(cells: CellLabels, labels: np.ndarray, k: int) -> np.ndarray:
    """Most frequent annotation name among the cells of each tile's own class."""
    rows, cols = labels.shape
    blocks_cls = cells.classes[: rows * k, : cols * k].reshape(rows, k, cols, k).transpose(0, 2, 1, 3)
    blocks_name = cells.names[: rows * k, : cols * k].reshape(rows, k, cols, k).transpose(0, 2, 1, 3)
    out = np.full(labels.shape, -1, np.int64)
    for r, c in zip(*np.nonzero(labels >= 0)):
        own = blocks_name[r, c][blocks_cls[r, c] == labels[r, c]]
        out[r, c] = np.bincount(own).argmax()
    return out


def report_unmatched(cells: CellLabels, slide_name: str, strict: bool) -> str | None:
    """One message per slide for annotation names no rule maps (an error if strict)."""
    if not cells.unmatched:
        return None
    listing = ", ".join(f"{name or '(no name)'!r} x{count}" for name, count in sorted(cells.unmatched.items()))
    message = f"{slide_name}: skipped annotations whose names match no class rule: {listing}"
    if strict:
        raise AnnotationError(message + " (--strict); add rules to the configuration")
    return message


def coverage(cells: CellLabels, tissue: np.ndarray, labels: np.ndarray, config: Config,
             cell_mm: float) -> dict[str, dict[str, float]]:
    """Per annotated class: its annotated area on tissue, the area of the tiles
    labelled with it, and how much of the annotated area lies in those tiles (mm²).

    ``cell_mm`` is the side of a mask cell in millimetres. A class whose
    annotated area mostly falls outside its labelled tiles lost its annotation
    somewhere between the file and the records; :func:`coverage_warnings` says so.
    """
    k = config.mask_cells_per_tile
    rows, cols = labels.shape
    counted = counted_classes(cells, tissue, config)[: rows * k, : cols * k]
    tile_labels = np.repeat(np.repeat(labels, k, axis=0), k, axis=1)
    cell_area = cell_mm**2
    report = {}
    for index, name in enumerate(config.class_names):
        annotated = counted == index
        if not annotated.any():
            continue
        report[name] = {
            "annotated_mm2": round(float(annotated.sum() * cell_area), 6),
            "labelled_tiles_mm2": round(float((labels == index).sum() * k * k * cell_area), 6),
            "annotated_in_labelled_tiles_mm2": round(float((annotated & (tile_labels == index)).sum() * cell_area), 6),
            "largest_tile_fraction": round(float(tile_fractions(annotated, k).max()), 4),
        }
    return report


def coverage_warnings(report: dict[str, dict[str, float]], config: Config, slide_name: str,
                      tile_um: float) -> list[str]:
    """One line per class of which less than half the annotated area ended up in
    tiles labelled with it, with the likely reason."""
    lines = []
    for name, entry in report.items():
        kept = entry["annotated_in_labelled_tiles_mm2"] / entry["annotated_mm2"]
        if kept >= 0.5:
            continue
        if entry["largest_tile_fraction"] < config.region_fraction:
            reason = (f"no tile is covered to region_fraction {config.region_fraction:g}: its regions are narrower "
                      f"than a {config.tile_size}-px tile at {config.magnifications[0]:g}x ({tile_um:.0f} µm); "
                      f"draw them wider or lower region_fraction")
        else:
            reason = (f"most of its tiles are covered less than region_fraction {config.region_fraction:g} (narrow "
                      f"regions or overlaps with other classes); lower region_fraction or draw wider regions")
        lines.append(f"{slide_name}: only {kept:.0%} of the {entry['annotated_mm2']:.3f} mm² annotated as "
                     f"{name!r} on tissue is in tiles labelled {name!r}; {reason}")
    return lines
