"""Cut the labelled (and optionally unlabelled) tile triplets of one slide into
one TFRecord shard with a JSON summary beside it."""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from utils.common.config import Config, fingerprint, read_config_file
from utils.common.errors import ConfigError, SlideError
from utils.common.io import atomic_path
from utils.common.log import first_few
from utils.common.scales import check_same_data
from utils.slides.annotations import ANNOTATION_SUFFIXES, find_annotation_files, near_misses, read_annotations
from utils.slides.geometry import read_triplets, slide_geometry
from utils.slides.labels import (CellLabels, coverage, coverage_warnings, label_tiles, rasterize_regions,
                                 report_unmatched)
from utils.slides.slide import Slide, check_readable
from utils.slides.slide_files import SlideFile
from utils.slides.tissue import tile_fractions, tissue_grid
from utils.tiles.batch import Progress
from utils.tiles.extract_options import ExtractOptions
from utils.tiles.provenance import UNCHANGED, file_digest, keep_previous, normalised
from utils.tiles.record_offsets import shard_offsets
from utils.tiles.records import RECORD_SUFFIX, UNLABELED, encode_tile, make_example
from utils.tiles.summaries import DONE, ShardSummary

SUMMARY_SUFFIX = ".summary.json"
ENCODER_THREADS = 4


def check_output_configuration(output: Path, config: Config, overwrite: bool,
                               slides: Sequence[SlideFile] | None = None) -> None:
    """One data folder, one configuration: extracting into a folder whose shards
    were cut with other classes, scales or tile size would mix label meanings.
    With ``--overwrite`` the ``slides`` of this run are redone (None: every
    slide of the source); shards of other slides that keep the old
    configuration are named in a warning, since training refuses them until
    they are re-extracted."""
    if overwrite and slides is not None:
        ours, redone = config.fingerprint(), {s.name for s in slides}
        left = sorted(path.name[: -len(SUMMARY_SUFFIX)] for path in output.glob(f"*{SUMMARY_SUFFIX}")
                      if path.name[: -len(SUMMARY_SUFFIX)] not in redone and _fingerprint_of(path) not in (None, ours))
        if left:
            warnings.warn(f"{output}: the shards of {len(left)} slide(s) not in this run ({first_few(left)}) keep "
                          f"another configuration; training on this folder stops until they are re-extracted with "
                          f"this one")
    if overwrite:
        return
    saved = output / "extraction_config.json"
    if not saved.exists() or not any(output.glob(f"*{SUMMARY_SUFFIX}")):
        return
    try:
        previous = fingerprint(read_config_file(saved))
    except ConfigError as exc:
        raise ConfigError(f"{exc}; delete it to extract into this folder") from None
    check_same_data(previous, config.fingerprint(), ConfigError, f"{output}: its shards were extracted with",
                    "pass the same --config, --magnifications and --tile-size, choose another --output, or pass "
                    "--overwrite to redo the shards with the new configuration")


def _fingerprint_of(summary: Path) -> dict[str, Any] | None:
    try:
        return ShardSummary.read(summary).fingerprint
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def shard_paths(output: Path, stem: str) -> tuple[Path, Path]:
    return output / f"{stem}{RECORD_SUFFIX}", output / f"{stem}{SUMMARY_SUFFIX}"


def summary_path(output: Path, slide: SlideFile) -> Path:
    return shard_paths(output, slide.name)[1]


def annotation_names(slide: SlideFile) -> list[str]:
    """What a slide's annotation file may be named after: the slide's name,
    its file's full name (QuPath's ``slide.svs.geojson``) and, for a DICOM
    series named after its folder, the stem of the file OpenSlide opens."""
    return list(dict.fromkeys([slide.name, slide.path.name, slide.path.stem]))


def annotation_files(slide: SlideFile, options: ExtractOptions) -> list[Path]:
    return find_annotation_files(options.annotations, annotation_names(slide)) if options.annotations else []


def missing_annotation_warning(slide: SlideFile, options: ExtractOptions) -> str:
    """The names looked for, and any file that nearly matches them."""
    names = annotation_names(slide)
    looked_for = ", ".join(f"{name}{ANNOTATION_SUFFIXES[0]}" for name in names)
    close = near_misses(options.annotations, names)
    hint = f"; found {', '.join(close)}: rename it to one of those names" if close else ""
    pooled = "; its tissue tiles are pooled unlabelled" if options.unlabeled else ""
    return (f"{slide.path}: no annotation file in {options.annotations}; looked for {looked_for} (or "
            f"{', '.join(ANNOTATION_SUFFIXES[1:])} in place of {ANNOTATION_SUFFIXES[0]}){hint}{pooled}")


def extraction_settings(slide: SlideFile, *, config: Config, options: ExtractOptions,
                        annotations: list[Path] | None = None) -> dict[str, Any]:
    """What a slide's shard depends on: configuration, µm/px override, the
    annotation files' content (``annotations``, else looked up), flags and the
    slide file."""
    files = annotation_files(slide, options) if annotations is None else annotations
    digests = [{"file": path.name, "sha256": file_digest(path)} for path in files]
    return normalised({
        "configuration": config.extraction_settings(),
        "mpp": options.mpp.for_slide(slide.name),
        "encoding": options.encoding,
        "unlabeled": options.unlabeled,
        "annotations": (digests[0] if len(digests) == 1 else digests) or None,
        "slide": {"file": slide.path.name, "bytes": slide.path.stat().st_size},
    })


def extract_slide(slide_file: SlideFile, progress: Progress, *, config: Config,
                  options: ExtractOptions) -> ShardSummary:
    """Write ``<name>.tfrecord`` and ``<name>.summary.json``; return the summary.

    The shard is written under a temporary name and renamed when complete; the
    summary is written last, so its presence marks a finished slide. A
    finished slide made with the same settings is skipped; one made with
    other settings is redone only with ``--overwrite``.
    """
    started = time.perf_counter()
    stem, slide_path = slide_file.name, slide_file.path
    record_path, summary_path = shard_paths(options.output, stem)
    annotation_paths = annotation_files(slide_file, options)
    made_with = extraction_settings(slide_file, config=config, options=options, annotations=annotation_paths)
    if record_path.exists() and keep_previous(summary_path, ShardSummary, made_with, options.overwrite,
                                              f"{stem}: its shard in {options.output}"):
        return ShardSummary(stem, UNCHANGED)
    missing = [missing_annotation_warning(slide_file, options)] if options.annotations and not annotation_paths \
        else []
    if missing and not options.unlabeled:
        check_readable(slide_path)  # a broken file is reported as broken, not as merely unannotated
        return ShardSummary(stem, "skipped (no annotation file; --unlabeled pools its tiles)", warnings=missing)

    with Slide(slide_path, mpp=options.mpp.for_slide(stem), name=stem) as slide:
        geometry = slide_geometry(slide, config)
        if 0 in geometry.grid_shape:
            raise SlideError(f"{slide_path}: {slide.dimensions[0]}x{slide.dimensions[1]} px is smaller than one "
                             f"{config.tile_size}-px tile at {config.magnifications[0]:g}x; nothing to extract")
        k = config.mask_cells_per_tile
        tissue = tissue_grid(slide, geometry, config.tissue_method, k)
        per_file = [read_annotations(path, slide.bounds) for path in annotation_paths]
        cells = rasterize_regions([r for regions in per_file for r in regions], config, tissue.shape,
                                  geometry.stride / k)
        unmatched = report_unmatched(cells, stem, options.strict)
        warnings = missing + ([unmatched] if unmatched else [])
        if len(per_file) > 1:
            warnings.append(disagreement(annotation_paths, per_file, config, tissue.shape, geometry.stride / k,
                                         slide.mpp))
        if not tissue.any():
            warnings.append(f"{stem}: no tissue found; check the slide, or try tissue_method 'green' in --config")
        labels, name_index = label_tiles(cells, tissue, config)
        cell_mm = geometry.stride / k * slide.mpp / 1000
        class_coverage = coverage(cells, tissue, labels, config, cell_mm)
        warnings += coverage_warnings(class_coverage, config, stem, config.tile_size * geometry.scales[0].mpp)
        selected = labels >= 0
        if options.unlabeled:
            pool = tile_fractions(tissue, k) >= config.tissue_fraction
            for row, col in cells.ignored_tiles:  # set to Ignore*: never asked again
                if 0 <= row < pool.shape[0] and 0 <= col < pool.shape[1]:
                    pool[row, col] = False
            selected |= pool
        rows, cols = np.nonzero(selected)
        counts = _write_shard(slide, geometry, rows, cols, labels, name_index, cells, options, record_path, progress)
        shard_offsets(record_path)  # the index training reads records by

    summary = ShardSummary(
        slide=stem,
        status=DONE,
        slide_path=str(slide_path),
        annotations=", ".join(map(str, annotation_paths)) or None,
        tiles=int(sum(counts.values())),
        tiles_per_class={(config.class_names[c] if c >= 0 else "unlabeled"): n for c, n in sorted(counts.items())},
        base_mpp=slide.mpp,
        mpp_source=slide.mpp_source.origin,
        fingerprint=config.fingerprint(),
        made_with=made_with,
        reader={"vendor": slide.vendor, "backend": slide.backend},
        magnifications=config.magnifications,
        scale_mpps=[s.mpp for s in geometry.scales],
        scale_levels=[s.level for s in geometry.scales],
        tile_size=config.tile_size,
        stride_level0=geometry.stride,
        bounds_level0=list(slide.bounds),
        window_level0=config.tile_size * geometry.scales[-1].mpp / slide.mpp,
        grid_shape=list(geometry.grid_shape),
        encoding=options.encoding,
        unmatched_annotations=dict(cells.unmatched),
        ignored_annotations=dict(cells.ignored),
        unreviewed_queries=cells.unreviewed,
        ignored_queries=len(cells.ignored_tiles),
        coverage=class_coverage,
        warnings=warnings,
        seconds=round(time.perf_counter() - started, 2),
        config=config.to_dict(),
    )
    summary.write(summary_path)
    return summary


def disagreement(paths: list[Path], per_file: list[list], config: Config, cells: tuple[int, int],
                 cell_size: float, mpp: float) -> str:
    """One line for a slide with several annotation files, all read: which
    they are, and how much tissue they give different classes (where the
    class higher in the configuration's priority wins)."""
    rasters = [rasterize_regions(regions, config, cells, cell_size).classes for regions in per_file]
    stack = np.stack(rasters)
    labelled = stack >= 0
    first = np.where(labelled, stack, np.iinfo(stack.dtype).max).min(axis=0)
    last = np.where(labelled, stack, -1).max(axis=0)
    area = float(((labelled.sum(axis=0) > 1) & (first != last)).sum()) * (cell_size * mpp / 1000) ** 2
    names = " and ".join(path.name for path in paths)
    if area == 0:
        return f"{paths[0].parent}: read {names} together (no area labelled differently by them)"
    return (f"{paths[0].parent}: read {names} together; they give different classes to {area:.4g} mm2 of the "
            f"slide, where the class higher in the configuration's priority wins")


def _write_shard(slide, geometry, rows, cols, labels, name_index, cells: CellLabels, options, path, progress) -> Counter:
    import tensorflow as tf  # only the writer needs it; keeps the module light to import

    mpps = [s.mpp for s in geometry.scales]
    counts: Counter = Counter()
    # Encoding dominates the cost; OpenCV releases the GIL, so threads overlap it.
    with atomic_path(path) as tmp, ThreadPoolExecutor(ENCODER_THREADS) as encoders:
        with tf.io.TFRecordWriter(str(tmp)) as writer:
            for indices, tiles in read_triplets(slide, geometry, rows, cols):
                xs, ys = geometry.centres(rows[indices], cols[indices])
                encoded = list(encoders.map(
                    lambda j: [encode_tile(scale_tiles[j], options.encoding) for scale_tiles in tiles],
                    range(len(indices)),
                ))
                for j, i in enumerate(indices):
                    label = int(labels[rows[i], cols[i]])
                    name = cells.name_list[name_index[rows[i], cols[i]]] if label != UNLABELED else ""
                    writer.write(make_example(slide.stem, label, name, xs[j], ys[j], encoded[j], mpps))
                    counts[label] += 1
                progress(len(indices))
    return counts
