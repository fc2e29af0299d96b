"""Region annotations from QuPath GeoJSON, ASAP XML and Aperio ImageScope XML.

Every reader returns the same thing: a list of :class:`Region` (the
annotation's own class name and its polygons in level-0 pixels, holes kept).
Mapping names to the configured classes and rasterising happen elsewhere, so a
new annotation tool only needs a new reader here.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from utils.errors import AnnotationError

ANNOTATION_SUFFIXES = (".geojson", ".json", ".xml")


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
    """Parse an annotation file of any supported format."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read annotation file: {exc}") from None
    try:
        if text.lstrip().startswith("<"):
            return _read_xml(ET.fromstring(text), path)
        return _read_geojson(json.loads(text), path)
    except (ET.ParseError, json.JSONDecodeError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise AnnotationError(f"{path}: not a valid annotation file ({type(exc).__name__}: {exc})") from None


def _read_geojson(data: Any, path: Path) -> list[Region]:
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
        polygons = _geojson_polygons(feature.get("geometry") or {})
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


def _geojson_polygons(geometry: dict[str, Any]) -> list[Polygon]:
    kind = geometry.get("type")
    if kind == "Polygon":
        rings = [np.asarray(r, np.float64)[:, :2] for r in geometry["coordinates"]]
        return [Polygon(rings[0], rings[1:])] if rings else []
    if kind == "MultiPolygon":
        return [p for coords in geometry["coordinates"] for p in _geojson_polygons({"type": "Polygon", "coordinates": coords})]
    if kind == "GeometryCollection":
        return [p for g in geometry.get("geometries", []) for p in _geojson_polygons(g)]
    return []  # points and lines carry no area


def _read_xml(root: ET.Element, path: Path) -> list[Region]:
    if root.tag == "ASAP_Annotations":
        return _read_asap(root)
    if root.tag == "Annotations":
        return _read_aperio(root)
    raise AnnotationError(f"{path}: unknown XML root <{root.tag}>; expected ASAP_Annotations or Annotations")


def _read_asap(root: ET.Element) -> list[Region]:
    regions = []
    for annotation in root.iter("Annotation"):
        coords = sorted(annotation.iter("Coordinate"), key=lambda c: int(c.get("Order", 0)))
        points = np.array([[float(c.get("X")), float(c.get("Y"))] for c in coords], np.float64)
        if len(points) < 3:
            continue
        group = annotation.get("PartOfGroup") or ""
        name = group if group and group != "None" else annotation.get("Name", "")
        regions.append(Region(name, [Polygon(points)]))
    return regions


def _read_aperio(root: ET.Element) -> list[Region]:
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
            points = np.array(
                [[float(v.get("X")), float(v.get("Y"))] for v in region.iter("Vertex")], np.float64
            )
            if len(points) < 3:
                continue
            (negative if region.get("NegativeROA") == "1" else positive).append(points)
            if not name and region.get("Text"):
                name = region.get("Text", "")
        if positive:
            regions.append(Region(name, [Polygon(p, list(negative)) for p in positive]))
    return regions
