"""Whole-slide inference: every tissue tile of the extraction grid, predicted in
batches, stitched into a map with one cell per scale-0 tile.

Reading is what starves a GPU, so tiles come from block reads (one per scale
per 16x16 tiles) decoded in parallel threads and handed to the model through
``tf.data`` with prefetch, while the model works on the previous batch.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import tensorflow as tf

from utils.common import plots
from utils.common.config import Config, hex_to_rgb
from utils.common.io import atomic_path
from utils.maps.inference_options import InferenceOptions
from utils.network.model import Predictor
from utils.slides.geometry import read_triplets, slide_geometry
from utils.slides.qupath import feature, mask_polygons, write_feature_collection
from utils.slides.slide import Slide
from utils.slides.slide_files import SlideFile
from utils.slides.tissue import tile_fractions, tissue_grid
from utils.tiles.batch import Progress
from utils.tiles.provenance import UNCHANGED, keep_previous, normalised
from utils.tiles.summaries import DONE, ClassArea, MapSummary

OUTPUT_FILES = ("tissue_map.png", "tissue_map_legend.png", "overlay.png", "probabilities.npz",
                "tissue_map.geojson", "summary.json")
#: Longest side of the map and overlay images in pixels (cells are enlarged to it).
MAP_IMAGE_SIDE = 1600


#: A cell of no class: glass, when the configuration has no background class.
NO_CLASS = -1
#: How a cell of no class looks in the map pictures: white, like glass.
NO_CLASS_RGB = (255, 255, 255)


def classify(probs: np.ndarray, tissue: np.ndarray, config: Config) -> np.ndarray:
    """Class index per cell by the paper's rules; ``num_classes`` means
    undefined, :data:`NO_CLASS` no class at all.

    Non-tissue cells are background, or of no class when the configuration
    has no background class: glass is never "undefined". A tissue cell whose top probability is
    below ``undefined_threshold`` is undefined. Otherwise the most likely class
    is taken, except that ``damaged_class`` is kept only at
    ``damaged_threshold`` or more and otherwise yields to the next most likely
    class (the original code meant this but compared a tuple with an int).
    """
    background = config.background_index
    undefined = config.num_classes
    ranked = np.argsort(-probs, axis=-1, kind="stable")
    top, second = ranked[..., 0], ranked[..., 1] if probs.shape[-1] > 1 else ranked[..., 0]
    top_prob = np.take_along_axis(probs, top[..., None], axis=-1)[..., 0]
    classes = top.copy()
    if config.damaged_class in config.class_names:
        damaged = config.class_index(config.damaged_class)
        demote = (top == damaged) & (top_prob < config.damaged_threshold)
        classes[demote] = second[demote]
    classes[top_prob < config.undefined_threshold] = undefined
    classes[~tissue] = background if background is not None else NO_CLASS
    return classes


def smooth_classes(classes: np.ndarray, tissue: np.ndarray, num_labels: int) -> np.ndarray:
    """3x3 majority vote among tissue cells: removes isolated single-cell
    speckle at the cost of rounding off thin structures one cell wide."""
    votes = np.stack([cv2.boxFilter(((classes == c) & tissue).astype(np.float32), -1, (3, 3), normalize=False,
                                    borderType=cv2.BORDER_CONSTANT) for c in range(num_labels)])
    smoothed = votes.argmax(axis=0)
    return np.where(tissue, smoothed, classes)


def cell_colours(classes: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """RGB of every cell: its class's colour, white for a cell of no class."""
    return np.where((classes >= 0)[..., None], colours[np.maximum(classes, 0)], NO_CLASS_RGB).astype(np.uint8)


def label_colours(config: Config) -> np.ndarray:
    """RGB per class index, undefined last."""
    return np.array([hex_to_rgb(c["color"]) for c in [*config.classes, config.undefined]], np.uint8)


def label_names(config: Config) -> list[str]:
    return [*config.class_names, config.undefined["name"]]


def predict_slide(slide: Slide, config: Config, predictor: Predictor, options: InferenceOptions,
                  progress: Progress) -> dict[str, Any]:
    """Probabilities on the cell grid (zeros outside tissue) and the tissue mask."""
    geometry = slide_geometry(slide, config, "the model")
    k = config.mask_cells_per_tile
    tissue_cells = tissue_grid(slide, geometry, config.tissue_method, k)
    tissue = tile_fractions(tissue_cells, k) >= config.tissue_fraction
    rows, cols = np.nonzero(tissue)
    probs = np.zeros((*tissue.shape, config.num_classes), np.float32)
    names, size = config.scales.names, config.tile_size

    def batches():
        buffer_idx, buffer_tiles = [], [[] for _ in names]
        for indices, tiles in read_triplets(slide, geometry, rows, cols, threads=options.workers):
            buffer_idx.append(indices)
            for s, t in enumerate(tiles):
                buffer_tiles[s].append(t)
            if sum(len(i) for i in buffer_idx) >= options.batch_size:
                yield np.concatenate(buffer_idx), {n: np.concatenate(t) for n, t in zip(names, buffer_tiles)}
                buffer_idx, buffer_tiles = [], [[] for _ in names]
        if buffer_idx:
            yield np.concatenate(buffer_idx), {n: np.concatenate(t) for n, t in zip(names, buffer_tiles)}

    signature = (tf.TensorSpec([None], tf.int64),
                 {n: tf.TensorSpec([None, size, size, 3], tf.uint8) for n in names})
    dataset = tf.data.Dataset.from_generator(batches, output_signature=signature).prefetch(2)
    started = time.perf_counter()
    for indices, inputs in dataset:
        batch = predictor.probabilities({n: tf.cast(v, tf.float32) for n, v in inputs.items()})
        idx = indices.numpy()
        probs[rows[idx], cols[idx]] = batch
        progress(len(idx))
    return {"geometry": geometry, "tissue": tissue, "probs": probs, "tiles": len(rows),
            "predict_seconds": time.perf_counter() - started}


def summary_path(output: Path, slide: SlideFile) -> Path:
    return output / slide.name / "summary.json"


def inference_settings(slide: SlideFile, *, config: Config, options: InferenceOptions) -> dict[str, Any]:
    """What a slide's maps depend on: configuration (thresholds included), the
    model file's content, the µm/px override, smoothing and the overlay style."""
    return normalised({"configuration": config.map_settings(), "model_sha256": options.model_sha256,
                       "mpp": options.mpp.for_slide(slide.name), "smooth": options.smooth,
                       "overlay": options.overlay})


def infer_slide(slide_file: SlideFile, progress: Progress, *, config: Config, predictor: Predictor,
                options: InferenceOptions, model_info: dict[str, Any]) -> MapSummary:
    """Write every output of one slide into ``OUTPUT/<name>/``; summary.json
    last. Finished maps made with the same settings are skipped; maps made
    with other settings are redone only with ``--overwrite``."""
    started = time.perf_counter()
    folder = options.output / slide_file.name
    made_with = inference_settings(slide_file, config=config, options=options)
    if keep_previous(folder / "summary.json", MapSummary, made_with, options.overwrite,
                     f"{slide_file.name}: its map in {options.output}"):
        return MapSummary(slide_file.name, UNCHANGED)
    with Slide(slide_file.path, mpp=options.mpp.for_slide(slide_file.name), name=slide_file.name) as slide:
        result = predict_slide(slide, config, predictor, options, progress)
        geometry, tissue, probs = result["geometry"], result["tissue"], result["probs"]
        classes = classify(probs, tissue, config)
        if options.smooth:
            classes = smooth_classes(classes, tissue, config.num_classes + 1)
        scale = max(1, MAP_IMAGE_SIDE // max(1, max(tissue.shape)))
        thumbnail = _map_aligned_thumbnail(slide, geometry.stride, tissue.shape, scale)
        write_outputs(folder, slide, config, geometry, tissue, probs, classes, scale, thumbnail, options.overlay)
    seconds = time.perf_counter() - started
    summary = _summary(slide_file.path, slide, config, geometry, tissue, classes, result, seconds, model_info,
                       options)
    summary.made_with = made_with
    summary.write(folder / "summary.json")
    return summary


def _map_aligned_thumbnail(slide: Slide, stride: float, grid: tuple[int, int], scale: int) -> np.ndarray:
    """The slide area covered by the cell grid, at ``scale`` pixels per cell."""
    thumbnail, factor = slide.thumbnail(stride / scale)
    rows, cols = grid
    covered = thumbnail[: int(round(rows * stride / factor)), : int(round(cols * stride / factor))]
    if covered.size == 0:
        return np.full((rows * scale, cols * scale, 3), 255, np.uint8)
    return cv2.resize(covered, (cols * scale, rows * scale), interpolation=cv2.INTER_AREA)


def write_outputs(folder, slide, config, geometry, tissue, probs, classes, scale, thumbnail, style="fill") -> None:
    colours = label_colours(config)
    names = label_names(config)
    rgb = cell_colours(classes, colours)
    big = np.kron(rgb, np.ones((scale, scale, 1), np.uint8)) if scale > 1 else rgb
    _write_png(folder / "tissue_map.png", big)
    microns_per_pixel = geometry.stride * slide.mpp / scale
    used = set(np.unique(classes[classes >= 0]).tolist())
    listed = sorted(used | set(range(len(names) - 1)))  # undefined only when used
    _write_png(folder / "tissue_map_legend.png", plots.framed_map(
        big, f"{slide.stem}: tissue map", microns_per_pixel, [(names[i], tuple(colours[i])) for i in listed]))
    overlay = overlay_image(thumbnail, classes, tissue, colours, scale, style)
    _write_png(folder / "overlay.png", plots.framed_map(
        overlay, f"{slide.stem}: tissue map ({style})", microns_per_pixel,
        [(names[i], tuple(colours[i])) for i in np.unique(classes[tissue])]))
    with atomic_path(folder / "probabilities.npz") as tmp:
        with tmp.open("wb") as handle:
            np.savez_compressed(
                handle, probabilities=probs.astype(np.float16), tissue=tissue, classes=classes.astype(np.int16),
                class_names=np.array(config.class_names), cell_size_level0=geometry.stride, mpp=slide.mpp,
                magnifications=np.array(config.magnifications),
            )
    features = []
    for index, entry in enumerate([*config.classes, config.undefined]):
        if index == config.background_index:
            continue
        polygons = mask_polygons(classes == index, geometry.stride)
        if polygons:
            features.append(feature(polygons, "MultiPolygon", entry["name"], entry["color"],
                                    name=entry["name"], isLocked=True))
    write_feature_collection(folder / "tissue_map.geojson", features, slide.bounds)


def overlay_image(thumbnail: np.ndarray, classes: np.ndarray, tissue: np.ndarray, colours: np.ndarray,
                  scale: int, style: str) -> np.ndarray:
    """The slide with its tissue map on top: ``fill`` blends each tissue
    cell's class colour in at 40%; ``outline`` leaves the slide as it is and
    draws the boundary of each class's cells in its colour."""
    cells = np.ones((scale, scale), np.uint8)
    overlay = thumbnail.copy()
    if style == "fill":
        tissue_big = np.kron(tissue, cells).astype(bool)
        coloured = np.kron(cell_colours(classes, colours), cells[..., None])
        overlay[tissue_big] = (0.6 * thumbnail[tissue_big] + 0.4 * coloured[tissue_big]).astype(np.uint8)
        return overlay
    width = max(1, min(3, scale // 2))
    for index in np.unique(classes[tissue]):
        mask = np.kron((classes == index) & tissue, cells).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(overlay, contours, -1, tuple(int(v) for v in colours[index]), width)
    return overlay


def _write_png(path: Path, rgb: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))[1].tobytes())


def _summary(slide_path, slide, config, geometry, tissue, classes, result, seconds, model_info,
             options) -> MapSummary:
    names = label_names(config)
    cell_mm2 = (geometry.stride * slide.mpp / 1000.0) ** 2
    counts = np.bincount(classes[classes >= 0], minlength=len(names))  # cells of no class (glass) count nowhere
    tissue_cells = int(tissue.sum())
    areas = {}
    for index, name in enumerate(names):
        cells = int(counts[index])
        areas[name] = ClassArea(
            cells=cells,
            mm2=round(cells * cell_mm2, 6),
            percent_of_tissue=round(100.0 * int(((classes == index) & tissue).sum()) / tissue_cells, 3)
            if tissue_cells else 0.0,
        )
    return MapSummary(
        slide=slide.stem,
        status=DONE,
        slide_path=str(slide_path),
        base_mpp=slide.mpp,
        mpp_source=slide.mpp_source.origin,
        grid_shape=list(tissue.shape),
        cell_size_level0=geometry.stride,
        cell_area_mm2=cell_mm2,
        tissue_tiles=tissue_cells,
        tissue_mm2=round(tissue_cells * cell_mm2, 6),
        classes=areas,
        model=str(options.model_path),
        reader={"vendor": slide.vendor, "backend": slide.backend},
        model_info=model_info,
        smoothing=options.smooth,
        config=config.to_dict(),
        seconds=round(seconds, 2),
        predict_seconds=round(result["predict_seconds"], 2),
        tiles_per_second=round(result["tiles"] / result["predict_seconds"], 1) if result["tiles"] else None,
    )
