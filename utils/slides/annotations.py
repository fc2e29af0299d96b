"""Region annotations from QuPath GeoJSON, ASAP XML and Aperio ImageScope XML.

Every reader returns the same thing: a list of :class:`Region` (the
annotation's own class name and its polygons in level-0 pixels, holes kept).
Mapping names to the configured classes and rasterising happen elsewhere, so a
new annotation tool only needs a new reader here.

GeoJSON repeats a ring's first vertex at its end; ASAP and Aperio XML list each
vertex once. :class:`Polygon` closes every ring it is given, so whatever reads
a polygon (the fill, areas, GeoJSON written back) sees closed rings whatever
file it came from.
"""

from __future__ import annotations

import glob
import gzip
import json
import re
import warnings
import xml.etree.ElementTree as ET
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from utils.common.config import QUERY_SQUARE
from utils.common.errors import AnnotationError

#: Annotation files, in the order they are looked for beside a slide: QuPath's
#: GeoJSON, plain or compressed as QuPath writes it (gzip, or a zip of one or
#: more GeoJSON files), and ASAP or Aperio XML.
ANNOTATION_SUFFIXES = (".geojson", ".json", ".geojson.gz", ".json.gz", ".zip", ".xml")
#: Region annotations of a slide take kilobytes to a few megabytes; a larger
#: file is almost always an export with cell detections, which would be parsed
#: whole into memory, so it is refused with advice instead.
MAX_ANNOTATION_BYTES = 64 * 2**20


@dataclass
class Polygon:
    """An exterior ring and its holes, each an (n, 2) float array of level-0
    (x, y), closed (last vertex equal to the first) whatever was passed in."""

    exterior: np.ndarray
    holes: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.exterior = close_ring(self.exterior)
        self.holes = [close_ring(hole) for hole in self.holes]


def close_ring(ring: np.ndarray) -> np.ndarray:
    """The ring as float (n, 2), with its first vertex repeated at the end if it is not already."""
    ring = np.asarray(ring, np.float64)
    if len(ring) and not np.array_equal(ring[0], ring[-1]):
        ring = np.vstack([ring, ring[:1]])
    return ring


def points_in_ring(points: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """Which (m, 2) points lie inside a closed ring, by the even-odd rule."""
    starts, ends = ring[:-1], ring[1:]
    x, y = points[:, :1], points[:, 1:]
    crosses = (starts[:, 1] <= y) != (ends[:, 1] <= y)
    with np.errstate(divide="ignore", invalid="ignore"):
        at = starts[:, 0] + (y - starts[:, 1]) * (ends[:, 0] - starts[:, 0]) / (ends[:, 1] - starts[:, 1])
    return (np.count_nonzero(crosses & (x < at), axis=1) % 2).astype(bool)


def ring_area(ring: np.ndarray) -> float:
    """Area of a closed ring (shoelace formula)."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * abs(float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])))


@dataclass
class Region:
    name: str
    polygons: list[Polygon]
    #: A query square this tool wrote (its own name ``round k #n ...``), read
    #: back with whatever class the pathologist gave it: an answer about one tile.
    square: bool = False


def find_annotation_files(directory: str | Path, names: Sequence[str]) -> list[Path]:
    """Every annotation file of a slide in ``directory``: one of ``names``
    (the slide's name, its file's full name, its file's stem) followed by one
    of the known suffixes. All are returned, so that a second export beside
    the first is read too rather than silently shadowing it."""
    found = []
    for name in dict.fromkeys(names):
        for suffix in ANNOTATION_SUFFIXES:
            candidate = Path(directory) / f"{name}{suffix}"
            if candidate.is_file() and candidate not in found:
                found.append(candidate)
    return found


def near_misses(directory: str | Path, names: Sequence[str]) -> list[str]:
    """Files in ``directory`` that start with one of ``names`` but are not
    named as an annotation file is looked for (``slide.geojson.txt``,
    ``slide_annotations.xml``): named in the warning, since they are most
    likely the file meant."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted({p.name for name in names for p in directory.glob(f"{glob.escape(name)}*")
                   if p.is_file() and p.suffix.lower() in {".geojson", ".json", ".gz", ".zip", ".xml", ".txt"}})


def read_annotations(path: str | Path, qupath_origin: tuple[float, float] = (0.0, 0.0)) -> list[Region]:
    """Parse an annotation file of any supported format, in level-0 pixels.

    QuPath's GeoJSON counts from the corner of the slide's bounds, which is
    ``qupath_origin`` (:attr:`utils.slides.slide.Slide.bounds`); ASAP and Aperio XML
    count from the corner of the whole slide.

    Geometries without area (points, lines), rings of fewer than 3 points,
    rings with non-finite coordinates and QuPath objects that are not
    annotations (detections, cells, tiles) are skipped with one warning per
    file that counts each. XML that declares a DOCTYPE or entities is refused,
    so no entity is ever expanded or fetched.
    """
    path = Path(path)
    skipped: Counter = Counter()
    regions = []
    for text in _texts(path):
        try:
            if text.lstrip().startswith("<"):
                if re.search(r"<!\s*(DOCTYPE|ENTITY)", text, flags=re.IGNORECASE):
                    raise AnnotationError(f"{path}: XML with a DOCTYPE or entity declarations is refused (entities "
                                          f"are never expanded); remove the declarations")
                regions += _read_xml(ET.fromstring(text), path, skipped)
            else:
                regions += [_moved(r, qupath_origin) for r in _read_geojson(json.loads(text), path, skipped)]
        except (ET.ParseError, json.JSONDecodeError, KeyError, TypeError, ValueError, IndexError,
                AttributeError) as exc:
            raise AnnotationError(f"{path}: not a valid annotation file ({exc})") from None
    if skipped:
        details = ", ".join(f"{n} {what}" for what, n in sorted(skipped.items()))
        warnings.warn(f"{path}: skipped {details}", stacklevel=2)
    return regions


def _moved(region: Region, offset: tuple[float, float]) -> Region:
    """``region`` moved by ``offset`` (x, y)."""
    if offset == (0, 0):
        return region
    shift = np.asarray(offset, np.float64)
    polygons = [Polygon(p.exterior + shift, [hole + shift for hole in p.holes]) for p in region.polygons]
    return Region(region.name, polygons, region.square)


def _texts(path: Path) -> list[str]:
    """The annotation text in ``path``: the file's, the gzip's content, or each
    GeoJSON member of a zip (QuPath reads every one). Sizes are checked after
    decompression, so a small archive cannot unpack into gigabytes."""
    def too_large(size: int) -> AnnotationError:
        return AnnotationError(f"{path}: {size / 2**20:.0f} MB is more than the {MAX_ANNOTATION_BYTES // 2**20} MB "
                               f"an annotation file may have; export the region annotations only "
                               f"(no detections) or split the file")

    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path) as stream:
                data = [stream.read(MAX_ANNOTATION_BYTES + 1)]
        elif path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                members = [m for m in archive.infolist() if not m.is_dir()
                           and m.filename.lower().endswith((".geojson", ".json"))]
                if not members:
                    raise AnnotationError(f"{path}: a zip without a .geojson or .json file; export the objects "
                                          f"from QuPath again")
                if sum(m.file_size for m in members) > MAX_ANNOTATION_BYTES:
                    raise too_large(sum(m.file_size for m in members))
                data = [archive.read(m) for m in members]
        else:
            if path.stat().st_size > MAX_ANNOTATION_BYTES:
                raise too_large(path.stat().st_size)
            data = [path.read_bytes()]
        if sum(len(d) for d in data) > MAX_ANNOTATION_BYTES:
            raise too_large(sum(len(d) for d in data))
        return [d.decode("utf-8-sig") for d in data]
    except (OSError, EOFError, UnicodeDecodeError, zipfile.BadZipFile, gzip.BadGzipFile) as exc:
        raise AnnotationError(f"{path}: cannot read annotation file: {exc}") from None


def _ring(points: Any, skipped: Counter) -> np.ndarray | None:
    """An (n, 2) float ring, or None (counted in ``skipped``) when unusable."""
    ring = np.asarray(points, np.float64)
    if ring.ndim != 2 or ring.shape[1] < 2:
        skipped["rings with fewer than 3 points"] += 1
        return None
    ring = ring[:, :2]
    if not np.isfinite(ring).all():
        skipped["rings with NaN or infinite coordinates"] += 1
        return None
    if len(np.unique(ring, axis=0)) < 3:
        skipped["rings with fewer than 3 points"] += 1
        return None
    return ring


#: GeoJSON geometry types; a bare geometry is a region without a name.
_GEOMETRY_TYPES = {"Polygon", "MultiPolygon", "GeometryCollection", "Point", "MultiPoint",
                   "LineString", "MultiLineString"}
#: QuPath objects that are not region annotations: QuPath 0.4+ names them in
#: ``objectType``, QuPath 0.2-0.3 in the feature's ``id``.
_NOT_ANNOTATIONS = {"detection", "cell", "tile", "pathdetectionobject", "pathcellobject", "pathtileobject"}


def _read_geojson(data: Any, path: Path, skipped: Counter) -> list[Region]:
    """Everything QuPath imports: a FeatureCollection, a Feature, a bare geometry,
    or (nested) lists of these."""
    if not isinstance(data, (dict, list)) or (isinstance(data, dict) and data.get("type") not in
                                               {"FeatureCollection", "Feature", *_GEOMETRY_TYPES}):
        raise AnnotationError(f"{path}: expected a GeoJSON FeatureCollection, Feature, geometry or list of them")
    regions: list[Region] = []
    pending = [data]
    while pending:
        item = pending.pop()
        kind = item.get("type") if isinstance(item, dict) else None
        if isinstance(item, list):
            pending.extend(reversed(item))
        elif kind == "FeatureCollection":
            pending.extend(reversed(item.get("features") or []))
        elif kind == "Feature":
            properties = item.get("properties") or {}
            object_type = str(properties.get("objectType") or item.get("id") or "").lower()
            if object_type in _NOT_ANNOTATIONS:
                skipped[f"QuPath {object_type.removeprefix('path').removesuffix('object')} objects "
                        f"(not annotations)"] += 1
                continue
            # QuPath writes an object's descendants inside it when exporting the hierarchy.
            children = properties.get("childObjects", properties.get("children"))
            if isinstance(children, list):
                pending.extend(reversed(children))
            polygons = _geojson_polygons(item.get("geometry") or {}, skipped)
            if polygons:
                own_name = str(properties.get("name") or "")
                regions.append(Region(_geojson_name(properties), polygons,
                                      re.fullmatch(QUERY_SQUARE, own_name.strip(), re.IGNORECASE) is not None))
        elif kind in _GEOMETRY_TYPES:
            polygons = _geojson_polygons(item, skipped)
            if polygons:
                regions.append(Region("", polygons))
        else:
            skipped["entries that are not GeoJSON features or geometries"] += 1
    return regions


def _geojson_name(properties: dict[str, Any]) -> str:
    """The class name as QuPath shows it: a string, ``{name}``, or ``{names}`` of a
    derived class joined with ": "; else the object's name."""
    classification = properties.get("classification")
    if isinstance(classification, dict):
        if classification.get("name"):
            return str(classification["name"])
        if isinstance(classification.get("names"), list) and classification["names"]:
            return ": ".join(str(n) for n in classification["names"])
    if isinstance(classification, str) and classification:
        return classification
    return str(properties.get("name") or "")


def _geojson_polygons(geometry: dict[str, Any], skipped: Counter) -> list[Polygon]:
    kind = geometry.get("type")
    if kind == "Polygon":
        rings = [_ring(r, skipped) for r in geometry["coordinates"]]
        if not rings or rings[0] is None:
            return []
        return [Polygon(rings[0], [h for h in rings[1:] if h is not None])]
    if kind == "MultiPolygon":
        return [p for coords in geometry["coordinates"]
                for p in _geojson_polygons({"type": "Polygon", "coordinates": coords}, skipped)]
    if kind == "GeometryCollection":
        return [p for g in geometry.get("geometries") or [] for p in _geojson_polygons(g, skipped)]
    skipped[f"{kind or 'empty'} geometries (no area)"] += 1
    return []


def _read_xml(root: ET.Element, path: Path, skipped: Counter) -> list[Region]:
    if root.tag == "ASAP_Annotations":
        return _read_asap(root, skipped)
    if root.tag == "Annotations":
        return _read_aperio(root, skipped)
    raise AnnotationError(f"{path}: unknown XML root <{root.tag}>; expected ASAP_Annotations or Annotations")


def _xml_number(value: str | None) -> float:
    """An XML coordinate; ASAP on a decimal-comma locale writes "1234,5"."""
    return float((value or "").replace(",", "."))


def _read_asap(root: ET.Element, skipped: Counter) -> list[Region]:
    """One region per annotation, named by its group (ASAP's class), else its name."""
    regions = []
    for annotation in root.iter("Annotation"):
        if annotation.get("Type") in ("Dot", "PointSet"):
            skipped[f"{annotation.get('Type')} geometries (no area)"] += 1
            continue
        coords = sorted(annotation.iter("Coordinate"), key=lambda c: int(c.get("Order", 0)))
        points = _ring([[_xml_number(c.get("X")), _xml_number(c.get("Y"))] for c in coords], skipped)
        if points is None:
            continue
        group = annotation.get("PartOfGroup") or ""
        name = group if group and group != "None" else annotation.get("Name", "")
        regions.append(Region(name, [Polygon(points)]))
    return regions


def _read_aperio(root: ET.Element, skipped: Counter) -> list[Region]:
    """One region per annotation layer, named by the layer's Name, else its first
    attribute's value, else that attribute's name (ImageScope keeps class names
    in either). A negative region (NegativeROA=1) is a hole of the smallest
    positive region of its layer that contains it."""
    regions = []
    for annotation in root.iter("Annotation"):
        name = annotation.get("Name") or ""
        if not name:
            attribute = annotation.find("Attributes/Attribute")
            if attribute is not None:
                name = attribute.get("Value") or attribute.get("Name", "")
        positive: list[Polygon] = []
        negative: list[np.ndarray] = []
        for region in annotation.iter("Region"):
            points = _ring([[_xml_number(v.get("X")), _xml_number(v.get("Y"))] for v in region.iter("Vertex")],
                           skipped)
            if points is None:
                continue
            if region.get("NegativeROA") == "1":
                negative.append(close_ring(points))
            else:
                positive.append(Polygon(points))
            if not name and region.get("Text"):
                name = region.get("Text", "")
        for hole in negative:
            owner = _smallest_container(positive, hole)
            if owner is None:
                skipped["negative regions outside every positive region of their layer"] += 1
            else:
                owner.holes.append(hole)
        if positive:
            regions.append(Region(name, positive))
    return regions


def _smallest_container(polygons: list[Polygon], ring: np.ndarray) -> Polygon | None:
    """The smallest polygon whose exterior holds most of the ring's vertices."""
    holders = [p for p in polygons if points_in_ring(ring[:-1], p.exterior).mean() > 0.5]
    return min(holders, key=lambda p: ring_area(p.exterior), default=None)
