"""GeoJSON that QuPath opens on top of a slide (File > Import objects).

Features carry ``objectType: "annotation"`` and ``classification {name, color}``
with the colour as an RGB list, as QuPath writes them. Coordinates are QuPath's:
level-0 pixels from the corner of the slide's bounds where the format has them
(QuPath crops Leica SCN, MIRAX and Ventana slides to their bounds). Cell masks become MultiPolygons whose edges lie exactly on cell borders
(holes kept), so the project's own reader rasterises them back to the same cells.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from utils.common.config import hex_to_rgb
from utils.common.io import atomic_write_text


#: QuPath's built-in classes (``PathClass.StandardPathClasses``). QuPath tells
#: classes apart by their exact name, so a configured class that differs from
#: one of these only in case ("stroma") is written in QuPath's spelling
#: ("Stroma"): an import reuses the built-in class instead of adding a second
#: one, and the project reads either spelling as the configured class.
QUPATH_CLASSES = ("Tumor", "Stroma", "Immune cells", "Necrosis", "Other", "Region*", "Ignore*", "Positive",
                  "Negative")


def qupath_class_name(name: str) -> str:
    """The name QuPath shows for a configured class: its built-in spelling, if it has one."""
    return next((builtin for builtin in QUPATH_CLASSES if builtin.casefold() == name.casefold()), name)


def classes_new_to_qupath(names: list[str]) -> list[str]:
    """Configured classes that QuPath has no built-in class for, in any case:
    importing squares of them adds them to its class list, beside its own
    (a configured "tumour" would sit beside QuPath's "Tumor")."""
    builtin = {name.casefold() for name in QUPATH_CLASSES}
    return [name for name in names if name.casefold() not in builtin]


def feature(coordinates: list, kind: str, class_name: str, color: str, **properties: Any) -> dict[str, Any]:
    """A QuPath annotation of the configured class ``class_name`` (written as :func:`qupath_class_name`)."""
    return {
        "type": "Feature",
        "geometry": {"type": kind, "coordinates": coordinates},
        "properties": {
            "objectType": "annotation",
            "classification": {"name": qupath_class_name(class_name), "color": list(hex_to_rgb(color))},
            **properties,
        },
    }


def square(x: float, y: float, side: float) -> list[list[list[float]]]:
    """Polygon coordinates of a square centred on (x, y)."""
    h = side / 2
    ring = [[x - h, y - h], [x + h, y - h], [x + h, y + h], [x - h, y + h], [x - h, y - h]]
    return [[[float(a), float(b)] for a, b in ring]]


def mask_polygons(mask: np.ndarray, cell_size: float) -> list[list[list[list[float]]]]:
    """MultiPolygon coordinates of a boolean cell mask, in level-0 pixels.

    Contours are traced on the mask upsampled by 2: there a boundary pixel at
    index u borders the cell edge at ceil(u / 2), for outer boundaries and holes
    alike, which puts every vertex exactly on a cell corner.
    """
    if not mask.any():
        return []
    doubled = np.kron(mask.astype(np.uint8), np.ones((2, 2), np.uint8))
    contours, hierarchy = cv2.findContours(doubled, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    hierarchy = hierarchy[0]

    def ring(contour: np.ndarray) -> list[list[float]]:
        points = np.ceil(contour[:, 0, :] / 2.0) * cell_size
        keep = np.ones(len(points), bool)
        keep[1:] = np.any(points[1:] != points[:-1], axis=1)
        points = points[keep]
        closed = np.vstack([points, points[:1]])
        return closed.tolist()

    polygons = []
    for i, contour in enumerate(contours):
        if hierarchy[i][3] != -1:
            continue  # a hole; added to its parent below
        rings = [ring(contour)]
        child = hierarchy[i][2]
        while child != -1:
            rings.append(ring(contours[child]))
            child = hierarchy[child][0]
        polygons.append(rings)
    return polygons


def write_feature_collection(path: str | Path, features: list[dict[str, Any]],
                             origin: tuple[float, float] = (0.0, 0.0)) -> None:
    """The features, given in level-0 pixels, written in QuPath's frame: less
    ``origin``, the slide's bounds corner (:attr:`utils.slides.slide.Slide.bounds`)."""
    if origin != (0, 0):
        features = [{**f, "geometry": {**f["geometry"], "coordinates": shifted(f["geometry"]["coordinates"],
                                                                               -origin[0], -origin[1])}}
                    for f in features]
    atomic_write_text(path, json.dumps({"type": "FeatureCollection", "features": features}))


def shifted(coordinates: Any, dx: float, dy: float) -> Any:
    """GeoJSON coordinates (nested lists of [x, y]) moved by (dx, dy)."""
    if coordinates and isinstance(coordinates[0], (int, float)):
        return [coordinates[0] + dx, coordinates[1] + dy, *coordinates[2:]]
    return [shifted(c, dx, dy) for c in coordinates]
