"""Synthetic whole-slide images with known regions, for tests, the demo and benchmarks.

A slide is a pyramidal tiled TIFF (tifffile) that OpenSlide and tiffslide open
as a generic TIFF, with its µm/px in the resolution tags, plus a QuPath GeoJSON
of its regions under the real annotation names of the paper's database
("Blood", "Lamina propria", "Grade 2 High", ...). Each tissue class has its own
colour and a texture with detail at fine and coarse scale, so the classes are
distinguishable at 40x, 10x and 2.5x. A ``stain`` (per-channel gain and
offset) gives a second domain with a different colour cast, as between labs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from utils.common.io import atomic_path

GLASS = (236, 236, 238)
#: Base colour and texture parameters per tissue class.
TEXTURES: dict[str, dict] = {
    "blood": {"colour": (176, 36, 52), "period": 14, "blobs": 1.0},
    "damaged": {"colour": (88, 58, 78), "period": 48, "blobs": 0.0},  # dark, smeared, little detail
    "muscle": {"colour": (214, 106, 136), "period": 20, "blobs": 0.0},
    "stroma": {"colour": (226, 170, 204), "period": 36, "blobs": 0.0},
    "urothelium": {"colour": (128, 72, 168), "period": 10, "blobs": 1.0},
}
#: Annotation names as a pathologist of the paper's dataset would write them.
ANNOTATION_NAMES = {
    "blood": ["Blood"],
    "damaged": ["Cauterized", "Folding", "Blurry"],
    "muscle": ["Muscle"],
    "stroma": ["Lamina propria", "Lamina"],
    "urothelium": ["Grade 2 High", "CIS", "Urothelium"],
}
SOURCE_STAIN = ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
TARGET_STAIN = ((0.72, 0.8, 1.1), (8.0, -4.0, 22.0))  # a bluer, paler lab: source muscle drifts towards urothelium


@dataclass
class SyntheticRegion:
    tissue: str  # key of TEXTURES
    name: str  # annotation name written to the GeoJSON
    exterior: list[tuple[float, float]]
    holes: list[list[tuple[float, float]]] = field(default_factory=list)


def rectangle(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]


def render(width: int, height: int, regions: list[SyntheticRegion], seed: int = 0,
           stain: tuple = SOURCE_STAIN) -> np.ndarray:
    """Level-0 RGB pixels: glass, then each region's texture (later regions on top)."""
    index = _texture_index(width, height, regions)
    image = np.empty((height, width, 3), np.uint8)
    rng = np.random.default_rng(seed)
    for top in range(0, height, _STRIP):  # strips bound memory on large slides
        rows = slice(top, min(top + _STRIP, height))
        image[rows] = _texture(index[rows], top, rng, stain)
    return image


_STRIP = 512


def _texture_index(width: int, height: int, regions: list[SyntheticRegion]) -> np.ndarray:
    """Level-0 raster of TEXTURES positions (-1: glass); later regions on top."""
    tissue_names = list(TEXTURES)
    index = np.full((height, width), -1, np.int8)
    for region in regions:
        mask = np.zeros((height, width), np.uint8)
        cv2.fillPoly(mask, [np.round(np.asarray(region.exterior)).astype(np.int32)], 1)
        for hole in region.holes:
            cv2.fillPoly(mask, [np.round(np.asarray(hole)).astype(np.int32)], 0)
        index[mask.astype(bool)] = tissue_names.index(region.tissue)
    return index


def truth_grid(width: int, height: int, regions: list[SyntheticRegion], cell: int,
               purity: float = 0.85) -> np.ndarray:
    """What a perfect tissue map shows, per ``cell`` x ``cell`` px cell:
    "background" where there is no tissue at all, the tissue drawn there where
    one covers at least ``purity`` of the cell, "" (not scored) otherwise."""
    rows, cols = height // cell, width // cell
    index = _texture_index(width, height, regions)[: rows * cell, : cols * cell]
    blocks = index.reshape(rows, cell, cols, cell)
    out = np.full((rows, cols), "", dtype=object)
    out[(blocks < 0).all(axis=(1, 3))] = "background"
    for t, name in enumerate(TEXTURES):
        out[(blocks == t).mean(axis=(1, 3)) >= purity] = name
    return out


def _texture(index: np.ndarray, top: int, rng: np.random.Generator, stain: tuple) -> np.ndarray:
    height, width = index.shape
    yy, xx = np.mgrid[top : top + height, 0:width].astype(np.float32)
    coarse = np.sin(xx / 230.0) * np.cos(yy / 170.0)  # visible at 2.5x
    image = np.empty((height, width, 3), np.float32)
    image[:] = GLASS
    for t, name in enumerate(TEXTURES):
        where = index == t
        if not where.any():
            continue
        spec = TEXTURES[name]
        p = spec["period"]
        fine = np.sin(xx[where] / p + 0.7 * np.sin(yy[where] / (3 * p))) * np.cos(yy[where] / (1.3 * p))
        pattern = 18.0 * fine + 10.0 * coarse[where]
        if spec["blobs"]:
            pattern -= 30.0 * (fine > 0.75)
        image[where] = np.asarray(spec["colour"], np.float32) + pattern[:, None]
    image += rng.normal(0.0, 4.0, image.shape).astype(np.float32)
    gain, offset = (np.asarray(v, np.float32) for v in stain)
    tissue = index >= 0
    image[tissue] = image[tissue] * gain + offset
    return np.clip(image, 0, 255).astype(np.uint8)


def write_pyramid_tiff(path: str | Path, image: np.ndarray, mpp: float, downsamples=(1, 4, 16),
                       tile: int = 256, compression: str | None = "jpeg") -> None:
    """A generic tiled pyramidal TIFF whose levels are successive pages."""
    import tifffile

    resolution = (1e4 / mpp, 1e4 / mpp)  # pixels per centimetre
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=image.nbytes > 2**31) as tif:
            for i, ds in enumerate(downsamples):
                level = image if ds == 1 else cv2.resize(
                    image, (image.shape[1] // ds, image.shape[0] // ds), interpolation=cv2.INTER_AREA)
                tif.write(
                    level, tile=(tile, tile), photometric="rgb", compression=compression,
                    compressionargs={"level": 90} if compression == "jpeg" else None,
                    resolution=resolution, resolutionunit="CENTIMETER", subfiletype=0 if i == 0 else 1,
                )


def write_geojson(path: str | Path, regions: list[SyntheticRegion]) -> None:
    """QuPath-style FeatureCollection of the regions, in level-0 pixels."""
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [region.exterior, *region.holes]},
            "properties": {"objectType": "annotation", "classification": {"name": region.name}},
        }
        for region in regions
    ]
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"type": "FeatureCollection", "features": features}))


def random_layout(width: int, height: int, seed: int, margin: int = 256) -> list[SyntheticRegion]:
    """A slide-like arrangement: a grid of tissue patches of random classes and
    annotation names, with glass between and around them."""
    rng = np.random.default_rng(seed)
    names = list(TEXTURES)
    cells = 3
    cell_w, cell_h = (width - 2 * margin) / cells, (height - 2 * margin) / cells
    regions = []
    for r in range(cells):
        for c in range(cells):
            tissue = names[(r * cells + c + seed) % len(names)]
            x0 = margin + c * cell_w + rng.uniform(0.02, 0.08) * cell_w
            y0 = margin + r * cell_h + rng.uniform(0.02, 0.08) * cell_h
            x1 = margin + (c + 1) * cell_w - rng.uniform(0.02, 0.08) * cell_w
            y1 = margin + (r + 1) * cell_h - rng.uniform(0.02, 0.08) * cell_h
            name = str(rng.choice(ANNOTATION_NAMES[tissue]))
            regions.append(SyntheticRegion(tissue, name, rectangle(x0, y0, x1, y1)))
    return regions


def make_slide(directory: str | Path, stem: str, width: int, height: int, regions: list[SyntheticRegion],
               mpp: float = 0.25, seed: int = 0, stain: tuple = SOURCE_STAIN, compression: str | None = "jpeg",
               annotations_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``<stem>.tiff`` and its ``<stem>.geojson``; return both paths."""
    directory = Path(directory)
    slide_path = directory / f"{stem}.tiff"
    geojson_path = Path(annotations_dir or directory) / f"{stem}.geojson"
    write_pyramid_tiff(slide_path, render(width, height, regions, seed, stain), mpp, compression=compression)
    write_geojson(geojson_path, regions)
    return slide_path, geojson_path


def write_record_shards(folder: str | Path, slides: int, per_slide: int, tile_size: int = 16, scales: int = 3,
                        classes: int = 5, seed: int = 0) -> Path:
    """``slides`` TFRecord shards of ``per_slide`` records each, written
    directly (no slide, no extraction) from a few random JPEG tiles: a pool of
    any size in seconds, for the reader's tests and benchmarks. Labels cycle
    through ``classes``; records lie on a grid, ``tile_size`` px apart."""
    import tensorflow as tf

    from utils.tiles.records import encode_tile, make_example

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tiles = [encode_tile(rng.integers(0, 256, (tile_size, tile_size, 3), dtype=np.uint8), "jpeg") for _ in range(8)]
    mpps = [0.25 * 4**s for s in range(scales)]
    side = int(np.ceil(np.sqrt(per_slide)))
    for s in range(slides):
        with atomic_path(folder / f"slide{s:05d}.tfrecord") as tmp, tf.io.TFRecordWriter(str(tmp)) as writer:
            for k in range(per_slide):
                label = (s + k) % classes
                writer.write(make_example(f"slide{s:05d}", label, f"class{label}", (k % side) * tile_size,
                                          (k // side) * tile_size, [tiles[(s + k + j) % 8] for j in range(scales)],
                                          mpps))
    return folder
