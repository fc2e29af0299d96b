"""Cut the labelled (and optionally unlabelled) tile triplets of one slide into
one TFRecord shard with a JSON summary beside it."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from utils.annotations import ANNOTATION_SUFFIXES, find_annotation_file, read_annotations
from utils.batch import Progress
from utils.config import Config, fingerprint, fingerprint_difference
from utils.errors import ConfigError, SlideError
from utils.geometry import read_triplets, slide_geometry
from utils.io import atomic_path
from utils.labels import (CellLabels, coverage, coverage_warnings, label_tiles, rasterize_regions,
                          report_unmatched)
from utils.options import option
from utils.record_offsets import shard_offsets
from utils.records import RECORD_SUFFIX, UNLABELED, encode_tile, make_example
from utils.provenance import UNCHANGED, file_digest, keep_previous, normalised
from utils.slide import MppOverride, Slide, check_readable
from utils.slide_files import SlideFile
from utils.summaries import DONE, ShardSummary
from utils.tissue import tile_fractions, tissue_grid

SUMMARY_SUFFIX = ".summary.json"
ENCODER_THREADS = 4


#: How tiles are stored in the records.
ENCODINGS = ("png", "jpeg")


@dataclass(frozen=True)
class ExtractOptions:
    """Settings of an extraction run, from slides or from tile folders. The
    fields declared with :func:`~utils.options.option` are also flags of
    ``tfrecord_generator.py`` and keys of a configuration file's
    ``extraction:`` section."""

    output: Path
    annotations: Path | None = None
    mpp: MppOverride = MppOverride()
    overwrite: bool = False
    encoding: str = option("png", "tile encoding: png is lossless; jpeg (quality 90) is about 3x faster to write and 5x smaller",
                           "extraction", choices=ENCODINGS)
    unlabeled: bool = option(False, "also write every unlabelled tissue tile (label -1), the active-learning pool; "
                                    "slides without annotation file are then pooled whole", "extraction")
    strict: bool = option(False, "fail a slide whose annotation names match no rule (with --tiles: stop on a class "
                                 "folder that matches no rule)", "extraction")
    slide_pattern: str = option(
        r"^(.+?)[._]", "with --tiles: regular expression whose first group, searched in a file name, is the tile's "
                       "slide (default: the name up to the first '.' or '_')", "extraction")
    workers: int = option(1, "slides processed in parallel", "slides")

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ConfigError(f"encoding must be one of {', '.join(ENCODINGS)}, not {self.encoding!r}")
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, not {self.workers}")


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
            warnings.warn(f"{output}: the shards of {len(left)} slide(s) not in this run ({', '.join(left[:5])}"
                          f"{', ...' if len(left) > 5 else ''}) keep another configuration; training on this folder "
                          f"stops until they are re-extracted with this one")
    if overwrite:
        return
    saved = output / "extraction_config.json"
    if not saved.exists() or not any(output.glob(f"*{SUMMARY_SUFFIX}")):
        return
    try:
        previous = fingerprint(json.loads(saved.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"{saved}: cannot read ({exc}); delete it to extract into this folder") from None
    difference = fingerprint_difference(previous, config.fingerprint())
    if difference:
        raise ConfigError(f"{output}: its shards were extracted with {difference.replace(' vs ', ', this run has ')}; "
                          f"pass the same --config, --magnifications and --tile-size, choose another --output, or "
                          f"pass --overwrite to redo the shards with the new configuration")


def _fingerprint_of(summary: Path) -> dict[str, Any] | None:
    try:
        return ShardSummary.read(summary).fingerprint
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def shard_paths(output: Path, stem: str) -> tuple[Path, Path]:
    return output / f"{stem}{RECORD_SUFFIX}", output / f"{stem}{SUMMARY_SUFFIX}"


def summary_path(output: Path, slide: SlideFile) -> Path:
    return shard_paths(output, slide.name)[1]


def annotation_file(slide: SlideFile, options: ExtractOptions) -> Path | None:
    return find_annotation_file(options.annotations, slide.name) if options.annotations else None


def extraction_settings(slide: SlideFile, *, config: Config, options: ExtractOptions,
                        annotation: Path | None = None) -> dict[str, Any]:
    """What a slide's shard depends on: configuration, µm/px override, the
    annotation file's content (``annotation``, else looked up), flags and the
    slide file."""
    annotation = annotation or annotation_file(slide, options)
    return normalised({
        "configuration": config.extraction_settings(),
        "mpp": options.mpp.for_slide(slide.name),
        "encoding": options.encoding,
        "unlabeled": options.unlabeled,
        "annotations": {"file": annotation.name, "sha256": file_digest(annotation)} if annotation else None,
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
    annotation_path = annotation_file(slide_file, options)
    made_with = extraction_settings(slide_file, config=config, options=options, annotation=annotation_path)
    if record_path.exists() and keep_previous(summary_path, made_with, options.overwrite,
                                              f"{stem}: its shard in {options.output}"):
        return ShardSummary(stem, UNCHANGED)
    if annotation_path is None and not options.unlabeled:
        check_readable(slide_path)  # a broken file is reported as broken, not as merely unannotated
        looked_for = ", ".join(f"{stem}{suffix}" for suffix in ANNOTATION_SUFFIXES)
        return ShardSummary(stem, "skipped (no annotation file; --unlabeled pools its tiles)",
                            warnings=[f"{slide_path}: no annotation file; looked for {looked_for} in "
                                      f"{options.annotations}"])

    with Slide(slide_path, mpp=options.mpp.for_slide(stem), name=stem) as slide:
        geometry = slide_geometry(slide, config)
        if 0 in geometry.grid_shape:
            raise SlideError(f"{slide_path}: {slide.dimensions[0]}x{slide.dimensions[1]} px is smaller than one "
                             f"{config.tile_size}-px tile at {config.magnifications[0]:g}x; nothing to extract")
        k = config.mask_cells_per_tile
        tissue = tissue_grid(slide, geometry, config.tissue_method, k)
        regions = read_annotations(annotation_path, slide.bounds) if annotation_path else []
        cells = rasterize_regions(regions, config, tissue.shape, geometry.stride / k)
        unmatched = report_unmatched(cells, stem, options.strict)
        warnings = [unmatched] if unmatched else []
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
        annotations=str(annotation_path) if annotation_path else None,
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
