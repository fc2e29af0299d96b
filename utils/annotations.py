"""Region annotations from QuPath GeoJSON, ASAP XML and Aperio ImageScope XML.

Every reader returns the same thing: a list of :class:`Region` (the
annotation's own class name and its polygons in level-0 pixels, holes kept).
Mapping names to the configured classes and rasterising happen elsewhere, so a
new annotation tool only needs a new reader here.
"""

from __future__ import annotations

import json
import re
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from utils.errors import AnnotationError

ANNOTATION_SUFFIXES = (".geojson", ".json", ".xml")
#: Region annotations of a slide take kilobytes to a few megabytes; a larger
#: file is almost always an export with cell detections, which would be parsed
#: whole into memory, so it is refused with advice instead.
MAX_ANNOTATION_BYTES = 64 * 2**20


@dataclass
class Polygon:
    exterior: np.ndarray  # (n, 2) float level-0 (x, y)
    holes: list[np.ndarray] = field(default_factory=list)


@dataclass
class Region:
    name: str
    polygons: list[Polygon]


def find_annotation_file(directory: str | Path, stem: str) -> Path | None:
    """The annotation file of a slide: same stem, one of the known suffixes."""
    for suffix in ANNOTATION_SUFFIXES:
        candidate = Path(directory) / f"{stem}{suffix}"
        if candidate.exists():
            return candidate
    return None


def read_annotations(path: str | Path) -> list[Region]:
    """Parse an annotation file of any supported format.

    Geometries without area (points, lines), rings of fewer than 3 points and
    rings with non-finite coordinates are skipped with one warning per file.
    XML that declares a DOCTYPE or entities is refused, so no entity is ever
    expanded or fetched.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_ANNOTATION_BYTES:
            raise AnnotationError(
                f"{path}: {size / 2**20:.0f} MB is more than the {MAX_ANNOTATION_BYTES // 2**20} MB an annotation "
                f"file may have; export the region annotations only (no detections) or split the file")
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"{path}: cannot read annotation file: {exc}") from None
    skipped: Counter = Counter()
    try:
        if text.lstrip().startswith("<"):
            if re.search(r"<!\s*(DOCTYPE|ENTITY)", text, flags=re.IGNORECASE):
                raise AnnotationError(f"{path}: XML with a DOCTYPE or entity declarations is refused (entities "
                                      f"are never expanded); remove the declarations")
            regions = _read_xml(ET.fromstring(text), path, skipped)
        else:
            regions = _read_geojson(json.loads(text), path, skipped)
    except (ET.ParseError, json.JSONDecodeError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise AnnotationError(f"{path}: not a valid annotation file ({type(exc).__name__}: {exc})") from None
    if skipped:
        details = ", ".join(f"{n} {what}" for what, n in sorted(skipped.items()))
        warnings.warn(f"{path}: skipped {details}", stacklevel=2)
    return regions


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


def _read_geojson(data: Any, path: Path, skipped: Counter) -> list[Region]:
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data["features"]
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, list):
        features = data
    else:
        raise AnnotationError(f"{path}: expected a GeoJSON FeatureCollection, Feature or list of Features")
    regions = []
    for feature in features:
        polygons = _geojson_polygons(feature.get("geometry") or {}, skipped)
        if polygons:
            regions.append(Region(_geojson_name(feature.get("properties") or {}), polygons))
    return regions


def _geojson_name(properties: dict[str, Any]) -> str:
    classification = properties.get("classification")
    if isinstance(classification, dict) and classification.get("name"):
        return str(classification["name"])
    if isinstance(classification, str):
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
        return [p for g in geometry.get("geometries", []) for p in _geojson_polygons(g, skipped)]
    skipped[f"{kind or 'empty'} geometries (no area)"] += 1
    return []


def _read_xml(root: ET.Element, path: Path, skipped: Counter) -> list[Region]:
    if root.tag == "ASAP_Annotations":
        return _read_asap(root, skipped)
    if root.tag == "Annotations":
        return _read_aperio(root, skipped)
    raise AnnotationError(f"{path}: unknown XML root <{root.tag}>; expected ASAP_Annotations or Annotations")


def _read_asap(root: ET.Element, skipped: Counter) -> list[Region]:
    regions = []
    for annotation in root.iter("Annotation"):
        coords = sorted(annotation.iter("Coordinate"), key=lambda c: int(c.get("Order", 0)))
        points = _ring([[float(c.get("X")), float(c.get("Y"))] for c in coords], skipped)
        if points is None:
            continue
        group = annotation.get("PartOfGroup") or ""
        name = group if group and group != "None" else annotation.get("Name", "")
        regions.append(Region(name, [Polygon(points)]))
    return regions


def _read_aperio(root: ET.Element, skipped: Counter) -> list[Region]:
    """One region per annotation layer, named by the layer's Name, else its first
    attribute's value, else that attribute's name (ImageScope keeps class names
    in either); negative regions (NegativeROA=1) are holes."""
    regions = []
    for annotation in root.iter("Annotation"):
        name = annotation.get("Name") or ""
        if not name:
            attribute = annotation.find("Attributes/Attribute")
            if attribute is not None:
                name = attribute.get("Value") or attribute.get("Name", "")
        positive, negative = [], []
        for region in annotation.iter("Region"):
            points = _ring([[float(v.get("X")), float(v.get("Y"))] for v in region.iter("Vertex")], skipped)
            if points is None:
                continue
            (negative if region.get("NegativeROA") == "1" else positive).append(points)
            if not name and region.get("Text"):
                name = region.get("Text", "")
        if positive:
            regions.append(Region(name, [Polygon(p, list(negative)) for p in positive]))
    return regions
