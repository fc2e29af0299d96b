"""Slide access: one reader for every format, µm/px resolution, block reads.

Slides that OpenSlide identifies as Aperio or generic tiled TIFF are read by
decoding their tiles directly (``utils.slides.tiff_tiles``), with tiffslide for what
that cannot handle; both give OpenSlide's pixels several times faster for
block reads. Every other vendor goes through OpenSlide whatever the file's
suffix: Philips TIFF (sparse tiles), Ventana (overlapping tiles) and the
other vendor TIFFs need its rules to give the right pixels. A TIFF OpenSlide
does not recognise is left to tiffslide. Both readers expose the same
``read_region`` API, wrapped here by :class:`Slide`, which always returns RGB
numpy arrays composited on the slide's background colour and pads reads that
cross the slide edge with that colour instead of shifting them.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from utils.common.config import hex_to_rgb
from utils.common.errors import ConfigError, MppError, SlideError
from utils.common.log import debugging
from utils.common.scales import MICRONS_PER_PIXEL_AT_1X
from utils.slides.slide_files import TIFF_SUFFIXES, detect_vendor
from utils.slides.tiff_tiles import TiffTiles


#: Suffixes stripped from slide names in an --mpp file (a row may give the file name).
_SLIDE_FILE_SUFFIXES = frozenset({".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu",
                                  ".svslide", ".czi", ".qptiff", ".dcm"})
#: OpenSlide vendors whose files the direct tile decoder reads exactly.
DIRECT_TIFF_VENDORS = frozenset({"aperio", "generic-tiff"})
#: Base µm/px outside this range is treated as wrong metadata. A slide's own
#: low-resolution image (a DICOM series' coarsest instance, say) can be tens
#: of µm/px and is what it says; its magnification is then refused, by name.
PLAUSIBLE_MPP = (0.05, 100.0)
#: Resolutions that image software writes by default rather than a scanner
#: measures (72, 96, 150, 200, 300 and 600 dpi): µm/px at any of them is
#: treated as wrong metadata (a 96 dpi tag reads as 264.6 µm/px).
DEFAULT_DPI = (72, 96, 150, 200, 300, 600)
#: Level rows read per strip when building a thumbnail.
THUMBNAIL_STRIP_ROWS = 2048


@dataclass(frozen=True)
class MppSource:
    value: float
    origin: str


def open_reader(path: Path, backend: str = "auto") -> tuple[str, str, Any]:
    """(vendor, backend, handle) of a slide file whose header and metadata
    read, or :class:`SlideError` saying why not: missing, a folder, empty,
    truncated or unreadable, or no whole-slide format."""
    if not path.exists():
        raise SlideError(f"{path}: no such slide file")
    if path.is_dir():
        raise SlideError(f"{path}: a folder, not a slide file; pass the slide file itself")
    if path.stat().st_size == 0:
        raise SlideError(f"{path}: the file is empty (0 bytes); copy the slide again")
    vendor = detect_vendor(path)
    if backend == "auto":
        backend = choose_reader(path, vendor)
    try:
        if backend == "tiffslide":
            import tiffslide

            handle = tiffslide.TiffSlide(str(path))
        else:
            import openslide

            handle = openslide.OpenSlide(str(path))
        try:  # a truncated file can open and fail only on its metadata, with any exception type
            dict(handle.properties), tuple(handle.dimensions), list(handle.level_dimensions)
        except Exception:
            handle.close()
            raise
    except Exception as exc:  # both libraries raise several unrelated types
        said = f" ({exc})" if debugging() else "; --debug shows the reader's own message"
        raise SlideError(f"{path}: cannot open slide: the file is truncated or unreadable (copy it again), or not a "
                         f"whole-slide format this tool reads (OpenSlide's formats, tiled TIFF){said}") from None
    return vendor, backend, handle


def check_readable(path: Path) -> None:
    """Raise :class:`SlideError` for a slide file that cannot be read, as
    :class:`Slide` would, without resolving its scale."""
    open_reader(path)[2].close()


class Slide:
    """An open whole-slide image with its base µm/px.

    Coordinates are level-0 pixels ``(x, y)``. The handle is not shared across
    processes: each worker opens its own.
    """

    def __init__(self, path: str | Path, mpp: float | None = None, backend: str = "auto",
                 name: str | None = None) -> None:
        self.path = Path(path)
        self.stem = name or self.path.stem
        self.vendor, self.backend, self._handle = open_reader(self.path, backend)
        self.properties = dict(self._handle.properties)
        self.dimensions: tuple[int, int] = tuple(self._handle.dimensions)  # type: ignore[assignment]
        self.level_dimensions = [tuple(d) for d in self._handle.level_dimensions]
        self.level_downsamples = [float(d) for d in self._handle.level_downsamples]
        self.background = _background_colour(self.properties)
        #: Level-0 corner of the scanned region (``openslide.bounds-x/-y``; 0, 0
        #: when the format has none): the origin of QuPath's coordinates, since
        #: QuPath crops such slides to their bounds (Leica SCN, MIRAX, Ventana).
        self.bounds: tuple[int, int] = (int(self.properties.get("openslide.bounds-x", 0)),
                                        int(self.properties.get("openslide.bounds-y", 0)))
        self._tiles = _direct_tiles(self.path, self.level_dimensions) if self.backend == "tiffslide" else None
        self.mpp_source = resolve_mpp(self, override=mpp)
        self.mpp = self.mpp_source.value

    def close(self) -> None:
        if self._tiles is not None:
            self._tiles.close()
        self._handle.close()

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """RGB pixels of a ``width`` x ``height`` region of ``level`` whose top-left
        corner is level-0 pixel ``(x, y)``. Parts outside the slide are background."""
        ds = self.level_downsamples[level]
        level_w, level_h = self.level_dimensions[level]
        # Intersect the request with the level, in level pixels.
        lx, ly = int(round(x / ds)), int(round(y / ds))
        x0, y0 = max(lx, 0), max(ly, 0)
        x1, y1 = min(lx + width, level_w), min(ly + height, level_h)
        if (x0, y0, x1, y1) == (lx, ly, lx + width, ly + height):
            return self._read_inside(level, x0, y0, width, height)
        out = np.empty((height, width, 3), np.uint8)
        out[:] = self.background
        if x1 > x0 and y1 > y0:
            out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = self._read_inside(level, x0, y0, x1 - x0, y1 - y0)
        return out

    def _read_inside(self, level: int, lx: int, ly: int, width: int, height: int) -> np.ndarray:
        """A region inside ``level``, top-left corner in level pixels."""
        if self._tiles is not None:
            region = self._tiles.read(level, lx, ly, width, height)
            if region is not None:
                return region
        # Both libraries map level-0 to level pixels by truncating x / downsample:
        # rounding up keeps a non-integer downsample from landing one pixel short.
        ds = self.level_downsamples[level]
        x, y = int(math.ceil(lx * ds - 1e-6)), int(math.ceil(ly * ds - 1e-6))
        try:
            if self.backend == "tiffslide":  # straight to numpy, no PIL round trip
                region = self._handle.read_region((x, y), level, (width, height), as_array=True)
            else:
                region = np.asarray(self._handle.read_region((x, y), level, (width, height)))
        except Exception as exc:
            raise SlideError(f"{self.path}: cannot read region at ({x}, {y}) level {level}: {exc}") from None
        if region.ndim == 2:
            region = np.repeat(region[..., None], 3, axis=2)
        if region.shape[2] == 4:
            return composite(region, self.background)
        return region[..., :3]

    def thumbnail(self, factor: float) -> tuple[np.ndarray, float]:
        """The whole slide at ``factor`` level-0 pixels per pixel (at least 1).

        Read from the best level in strips that are shrunk one by one, so memory
        stays bounded even on a slide without a pyramid. Returns the image and
        the factor actually achieved."""
        factor = max(factor, 1.0)
        level = best_level(self.level_downsamples, factor)
        ds = self.level_downsamples[level]
        level_w, level_h = self.level_dimensions[level]
        shrink = ds / factor  # output pixels per level pixel
        out_w = max(1, int(round(level_w * shrink)))
        strip = THUMBNAIL_STRIP_ROWS
        parts = []
        for top in range(0, level_h, strip):
            height = min(strip, level_h - top)
            pixels = self.read(level, 0, int(round(top * ds)), level_w, height)
            out_h = max(1, int(round((top + height) * shrink)) - int(round(top * shrink)))
            parts.append(cv2.resize(pixels, (out_w, out_h), interpolation=cv2.INTER_AREA))
        return np.concatenate(parts), level_w * ds / out_w


def _direct_tiles(path: Path, level_dimensions: list[tuple[int, int]]) -> TiffTiles | None:
    """Direct tile decoding where tifffile understands the file, else None."""
    try:
        return TiffTiles(path, level_dimensions)
    except Exception:  # any parsing trouble: the general reader still works
        return None


def choose_reader(path: Path, vendor: str | None) -> str:
    """``tiffslide`` (with the direct decoder) for Aperio and generic tiled TIFF,
    and for TIFF files OpenSlide does not recognise; ``openslide`` otherwise."""
    if vendor in DIRECT_TIFF_VENDORS or (vendor is None and path.suffix.lower() in TIFF_SUFFIXES):
        return "tiffslide"
    return "openslide"


def composite(rgba: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """Blend an RGBA image over a solid background colour."""
    if rgba[..., 3].min() == 255:  # the common case inside the scanned area
        return np.ascontiguousarray(rgba[..., :3])
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32)
    bg = np.asarray(background, np.float32)
    return np.round(rgb * alpha + bg * (1.0 - alpha)).astype(np.uint8)


def best_level(downsamples: list[float], factor: float) -> int:
    """The coarsest level whose downsample does not exceed ``factor`` (1% slack)."""
    candidates = [i for i, d in enumerate(downsamples) if d <= factor * 1.01]
    return max(candidates, key=lambda i: downsamples[i]) if candidates else 0


def _background_colour(properties: dict[str, str]) -> tuple[int, int, int]:
    value = properties.get("openslide.background-color") or properties.get("tiffslide.background-color")
    try:
        return hex_to_rgb(value) if value else (255, 255, 255)
    except (ConfigError, ValueError):  # malformed metadata: assume white glass
        return (255, 255, 255)


@dataclass(frozen=True)
class MppOverride:
    """``--mpp``: one base µm/px for every slide, or a CSV file of ``slide,mpp``
    rows for a cohort that mixes scanners (slides it does not list use their
    metadata)."""

    value: float | None = None
    per_slide: Mapping[str, float] = field(default_factory=dict)
    file: Path | None = None

    def for_slide(self, name: str) -> float | None:
        return self.per_slide.get(name, self.value)

    def unknown(self, names: Iterable[str]) -> list[str]:
        """Slides the file lists that are not among ``names``."""
        return sorted(set(self.per_slide) - set(names))


def parse_mpp(text: str | None) -> MppOverride:
    """A positive number, or the path of a CSV file with columns slide and mpp
    (a header row is optional; a slide may be given by name or file name)."""
    if text is None:
        return MppOverride()
    try:
        return MppOverride(value=_positive_mpp(text, "--mpp"))
    except ValueError:
        pass
    path = Path(text)
    if not path.is_file():
        raise MppError(f"--mpp {text}: neither a number nor a CSV file of slide,mpp rows")
    per_slide: dict[str, float] = {}
    with path.open(encoding="utf-8-sig", newline="") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            cells = [c.strip() for c in row]
            if not any(cells) or (number == 1 and cells[:2] == ["slide", "mpp"]):
                continue
            if len(cells) < 2:
                raise MppError(f"{path}, line {number}: expected slide,mpp, found {row}")
            try:
                value = _positive_mpp(cells[1], f"{path}, line {number}")
            except ValueError:
                raise MppError(f"{path}, line {number}: {cells[1]!r} is not a µm/px value") from None
            name = Path(cells[0]).stem if Path(cells[0]).suffix.lower() in _SLIDE_FILE_SUFFIXES else cells[0]
            if per_slide.get(name, value) != value:
                raise MppError(f"{path}, line {number}: {name} is listed twice with different values")
            per_slide[name] = value
    if not per_slide:
        raise MppError(f"{path}: no slide,mpp rows")
    return MppOverride(per_slide=per_slide, file=path)


def _positive_mpp(text: str, where: str) -> float:
    value = float(text)
    if not value > 0 or not math.isfinite(value):
        raise MppError(f"{where}: µm/px must be a positive number, not {text}")
    return value


def resolve_mpp(slide: Slide, override: float | None = None) -> MppSource:
    """Base µm/px: ``--mpp``, then the vendor's mpp, then TIFF resolution tags,
    then the objective power. Implausible values are skipped; if nothing
    trustworthy remains, raise :class:`MppError` saying how to pass ``--mpp``."""
    if override is not None:
        if not override > 0:
            raise MppError(f"--mpp must be positive, not {override}")
        return MppSource(float(override), "--mpp")
    rejected: list[str] = []
    for source in _mpp_candidates(slide):
        default_dpi = any(abs(source.value * dpi / 25400.0 - 1.0) < 1e-3 for dpi in DEFAULT_DPI)
        if PLAUSIBLE_MPP[0] <= source.value <= PLAUSIBLE_MPP[1] and not default_dpi:
            return source
        rejected.append(f"{source.origin} gives {source.value:.4g} µm/px"
                        + (f" ({25400.0 / source.value:.0f} dpi, a software default)" if default_dpi else ""))
    found = "; ".join(rejected) if rejected else "no µm/px, resolution tags or objective power"
    raise MppError(
        f"{slide.path}: cannot trust the slide's scale ({found}); "
        f"pass the true base µm/px of level 0, as the scanner recorded it, with --mpp, or a CSV file of "
        f"slide,mpp rows with --mpp FILE"
    )


def _mpp_candidates(slide: Slide) -> list[MppSource]:
    props = slide.properties
    found: list[MppSource] = []
    for key in ("openslide.mpp-x", "tiffslide.mpp-x", "aperio.MPP"):
        value = _float(props.get(key))
        if value:
            found.append(MppSource(value, key))
            break
    tags = _tiff_resolution_mpp(slide)
    if tags:
        found.append(MppSource(tags, "TIFF resolution tags"))
    for key in ("openslide.objective-power", "tiffslide.objective-power", "aperio.AppMag"):
        power = _float(props.get(key))
        if power:
            found.append(MppSource(MICRONS_PER_PIXEL_AT_1X / power, f"{key} = {power:g}"))
            break
    return found


def _tiff_resolution_mpp(slide: Slide) -> float | None:
    """µm/px from the first page's XResolution/ResolutionUnit, if it is a TIFF."""
    props = slide.properties
    x_res, unit = _float(props.get("tiff.XResolution")), props.get("tiff.ResolutionUnit")
    if x_res is None and slide.backend == "tiffslide":
        try:
            import tifffile

            with tifffile.TiffFile(slide.path) as tif:
                page_tags = tif.pages.first.tags
                if "XResolution" in page_tags:
                    num, den = page_tags["XResolution"].value
                    x_res = num / den if den else None
                    unit_tag = page_tags.get("ResolutionUnit")
                    unit = {2: "inch", 3: "centimeter"}.get(int(unit_tag.value) if unit_tag else 2, "inch")
        except Exception:
            return None
    if not x_res:
        return None
    microns_per_unit = {"centimeter": 1e4, "inch": 25400.0}.get((unit or "inch").lower())
    return microns_per_unit / x_res if microns_per_unit else None


def _float(value: str | None) -> float | None:
    try:
        result = float(value) if value is not None else None
    except ValueError:
        return None
    return result if result and result > 0 else None
