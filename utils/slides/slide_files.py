"""Which files are slides, as the readers say, and what each slide is called.

A suffix list misses formats (``.czi``, ``.qptiff``, ``.bif``) and miscounts
others, so every file of a folder is shown to OpenSlide's format detection
(cheap: it reads headers), and TIFF-family files it does not recognise are
left to tiffslide. A DICOM whole-slide image is a series of files (levels,
label, overview) sharing a SeriesInstanceUID, opened by OpenSlide from any of
them: the files of a series make one slide, named after its folder when the
folder holds that series alone, else after the series' UID. Sub-folders are
searched for DICOM series only (an ``.mrxs`` companion folder holds no slide).
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from utils.common.errors import InputError

#: Files no reader opens, not even shown to OpenSlide: annotations, MIRAX data
#: files and index, NDPI annotations, tables and notes.
NOT_SLIDES = frozenset({".dat", ".ini", ".ndpa", ".xml", ".geojson", ".json", ".csv", ".txt", ".md", ".yaml",
                        ".yml", ".log", ".npz", ".py", ".keras", ".tfrecord"})
#: TIFF files that OpenSlide does not recognise may still be read by tiffslide.
TIFF_SUFFIXES = frozenset({".tif", ".tiff", ".svs", ".qptiff"})
#: Inside sub-folders only these may be DICOM files (DICOM files often have no suffix).
DICOM_SUFFIXES = frozenset({".dcm", ""})
DICOM_SERIES_PROPERTY = "dicom.SeriesInstanceUID"


@dataclass(frozen=True, order=True)
class SlideFile:
    """A slide to process: the file a reader opens, and the name its outputs take."""

    name: str
    path: Path


def detect_vendor(path: str | Path) -> str | None:
    """OpenSlide's name for the file's format (``aperio``, ``generic-tiff``,
    ``philips``, ``dicom``, ...), or None if OpenSlide does not read it."""
    import openslide

    try:
        return openslide.OpenSlide.detect_format(str(path))
    except Exception:  # unreadable file: not a slide OpenSlide knows
        return None


def find_slides(paths: Sequence[str | Path]) -> list[SlideFile]:
    """Slides among files and folders as given, sorted by name, one per DICOM series."""
    found: set[SlideFile] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            dicom: dict[Path, list[Path]] = defaultdict(list)
            for entry in sorted(path.iterdir()):
                if entry.is_dir():
                    dicom[entry] += [f for f in _files(entry) if f.suffix.lower() in DICOM_SUFFIXES
                                     and detect_vendor(f) == "dicom"]
                elif entry.is_file() and entry.suffix.lower() not in NOT_SLIDES:
                    vendor = detect_vendor(entry)
                    if vendor == "dicom":
                        dicom[path].append(entry)
                    elif vendor or entry.suffix.lower() in TIFF_SUFFIXES:
                        found.add(SlideFile(entry.stem, entry))
            for folder, files in dicom.items():
                found.update(dicom_series(folder, files))
        elif path.is_file():
            if detect_vendor(path) == "dicom":
                series = dicom_series(path.parent, [f for f in _files(path.parent) if detect_vendor(f) == "dicom"])
                found.update(slide for slide, members in series.items() if path in members)
            else:  # given by name: a file no reader opens fails later with the reader's message
                found.add(SlideFile(path.stem, path))
        else:
            raise InputError(f"{path}: no such slide file or folder")
    return sorted(found)


def _files(folder: Path) -> Iterable[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def dicom_series(folder: Path, files: Iterable[Path]) -> dict[SlideFile, list[Path]]:
    """The slides of the DICOM files of one folder, with their member files.

    Each slide's path is its largest file (the full-resolution level);
    OpenSlide opens the series from it."""
    import openslide

    groups: dict[str, list[Path]] = defaultdict(list)
    unopened = []
    for path in sorted(files):
        try:
            with openslide.OpenSlide(str(path)) as handle:
                uid = handle.properties.get(DICOM_SERIES_PROPERTY) or path.stem
        except Exception:  # e.g. a label or overview stored as a series of its own
            unopened.append(path.name)
            continue
        groups[uid].append(path)
    if unopened:
        warnings.warn(f"{folder}: skipped DICOM file(s) {', '.join(unopened)}: OpenSlide opens no slide from them "
                      f"(a label or overview in a series without image levels, or a damaged file)")
    slides = {}
    for uid, members in groups.items():
        name = folder.name if len(groups) == 1 else uid
        slides[SlideFile(name, max(members, key=lambda p: (p.stat().st_size, p.name)))] = members
    return slides
