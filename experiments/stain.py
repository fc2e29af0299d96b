"""A reproducible stain change in haematoxylin-eosin-DAB space.

Colour deconvolution after Ruifrok & Johnston (2001): optical density
OD = -log10(I / 255) is the product of the stain concentrations and the stain
vectors, so the concentrations are OD times the inverse stain matrix. The
target lab is simulated by scaling and shifting the concentrations and
recomposing the image; a scanner or protocol change moves stains in much this
way, and unlike a hue rotation it keeps unstained glass white.

A second, harder lab also scans differently: :func:`scan_again` blurs and
JPEG-compresses the re-stained image, which changes texture as well as colour.
"""

from __future__ import annotations

import cv2
import numpy as np

from utils.tiles.augment import HED_FROM_RGB, RGB_FROM_HED


def shift_stains(rgb: np.ndarray, scale: tuple[float, float, float], shift: tuple[float, float, float]) -> np.ndarray:
    """uint8 RGB with each stain's concentration c replaced by ``scale * c + shift``
    where the pixel holds any stain (glass stays glass)."""
    od = -np.log10(np.maximum(rgb.astype(np.float64), 1.0) / 255.0)
    hed = od @ HED_FROM_RGB
    stained = od.sum(axis=-1, keepdims=True) > 0.15
    hed = np.where(stained, hed * np.asarray(scale) + np.asarray(shift), hed)
    out = 255.0 * np.power(10.0, -(hed @ RGB_FROM_HED))
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def scan_again(rgb: np.ndarray, blur_sigma: float, jpeg_quality: int) -> np.ndarray:
    """uint8 RGB as a softer-focused scanner with lossy compression would give
    it: a Gaussian blur of ``blur_sigma`` px, then JPEG at ``jpeg_quality``."""
    blurred = cv2.GaussianBlur(rgb, (0, 0), blur_sigma)
    ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(blurred[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1]


def rotate_eosin(rgb: np.ndarray, degrees: float) -> np.ndarray:
    """uint8 RGB recomposed with the eosin vector turned by ``degrees`` towards
    red (about the axis normal to eosin and pure red), haematoxylin and DAB
    kept: another eosin dye's hue, which no scaling of the three standard
    stain concentrations can produce."""
    od = -np.log10(np.maximum(rgb.astype(np.float64), 1.0) / 255.0)
    hed = od @ HED_FROM_RGB
    eosin = RGB_FROM_HED[1] / np.linalg.norm(RGB_FROM_HED[1])
    axis = np.cross(eosin, [1.0, 0.0, 0.0])
    axis /= np.linalg.norm(axis)
    angle = np.radians(degrees)
    turned = (eosin * np.cos(angle) + np.cross(axis, eosin) * np.sin(angle)
              + axis * np.dot(axis, eosin) * (1 - np.cos(angle)))
    matrix = RGB_FROM_HED.copy()
    matrix[1] = turned * np.linalg.norm(RGB_FROM_HED[1])
    out = 255.0 * np.power(10.0, -(hed @ matrix))
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def gamma(rgb: np.ndarray, exponent: float) -> np.ndarray:
    """uint8 RGB with a display gamma: each value v becomes 255 (v / 255) ** exponent."""
    return np.clip(np.round(255.0 * (rgb / 255.0) ** exponent), 0, 255).astype(np.uint8)


def resample(rgb: np.ndarray, factor: float) -> np.ndarray:
    """uint8 RGB scanned ``factor`` times coarser and brought back to its size:
    the detail of a lower-resolution scanner at the same µm/px."""
    height, width = rgb.shape[:2]
    small = cv2.resize(rgb, (round(width / factor), round(height / factor)), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
