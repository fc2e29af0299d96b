"""FixMatch's strong view against PIL (on whose operations RandAugment was
written) and OpenCV, on real H&E tiles (Kather et al. 2016)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from tests.test_augment import he_tiles
from utils.tiles import randaugment
from utils.tiles.randaugment import FACTOR, OPERATIONS, RandAugment, cutout


def apply(operation, rgb: np.ndarray, magnitude: float, sign: float = 1.0) -> np.ndarray:
    """``operation`` on one tile stacked as a triplet of one scale."""
    out = operation(tf.constant(rgb[None], tf.float32), tf.constant(magnitude), tf.constant(sign))
    return out.numpy()[0]


@pytest.mark.parametrize("enhance", ["brightness", "colour", "contrast", "sharpness"])
@pytest.mark.parametrize("factor", [0.1, 0.6, 1.5, 1.9])
def test_enhancements_give_pils_image(enhance, factor):
    """PIL rounds its grey image (and the contrast's mean) to integers, and
    its result, so a pixel may differ by a grey level or two where the factor
    is far from 1, and by half of one on average."""
    pil = {"brightness": ImageEnhance.Brightness, "colour": ImageEnhance.Color,
           "contrast": ImageEnhance.Contrast, "sharpness": ImageEnhance.Sharpness}[enhance]
    sign = 1.0 if factor > 1 else -1.0
    for rgb in he_tiles():
        expected = np.asarray(pil(Image.fromarray(rgb)).enhance(factor), np.float32)
        ours = np.clip(apply(getattr(randaugment, enhance), rgb, abs(factor - 1) / FACTOR, sign), 0, 255)
        assert np.abs(ours - expected).max() <= 2.0 and np.abs(ours - expected).mean() < 0.75


@pytest.mark.parametrize("bits", [4, 5, 6, 8])
def test_posterize_and_autocontrast_give_pils_image(bits):
    for rgb in he_tiles():
        posterized = apply(randaugment.posterize, rgb, (8 - bits) / 4)
        np.testing.assert_array_equal(posterized, np.asarray(ImageOps.posterize(Image.fromarray(rgb), bits)))
        stretched = apply(randaugment.autocontrast, rgb, 0.0)
        assert np.abs(stretched - np.asarray(ImageOps.autocontrast(Image.fromarray(rgb)))).max() <= 1.0


@pytest.mark.parametrize(("operation", "magnitude", "sign"), [("rotate", 1.0, 1.0), ("rotate", 0.4, -1.0),
                                                             ("shear_x", 1.0, 1.0), ("shear_y", 0.5, -1.0)])
def test_rotations_and_shears_about_the_centre_give_opencvs_image(operation, magnitude, sign):
    """OpenCV's bilinear warp with the same map, built from the definition
    (a rotation by θ counter-clockwise on screen: cv2.getRotationMatrix2D;
    a shear: x reads x + k (y - c)), on the pixels whose source lies inside
    the tile (outside, the tile is reflected)."""
    rgb = he_tiles()[0][:96, :96]
    size = rgb.shape[0]
    centre = (size - 1) / 2
    if operation == "rotate":
        forward = cv2.getRotationMatrix2D((centre, centre), sign * randaugment.DEGREES * magnitude, 1.0)
        expected = cv2.warpAffine(rgb.astype(np.float32), forward, (size, size), flags=cv2.INTER_LINEAR)
        y, x = np.mgrid[:size, :size]
        inside = (x - centre) ** 2 + (y - centre) ** 2 < (centre - 1) ** 2
    else:
        k = sign * randaugment.SHEAR * magnitude
        inverse = np.array([[1, k, -k * centre], [0, 1, 0]]) if operation == "shear_x" else \
            np.array([[1, 0, 0], [k, 1, -k * centre]])
        expected = cv2.warpAffine(rgb.astype(np.float32), inverse, (size, size),
                                  flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        y, x = np.mgrid[:size, :size].astype(float)
        source = inverse @ np.stack([x.ravel(), y.ravel(), np.ones(x.size)])
        inside = ((source >= 1) & (source <= size - 2)).all(axis=0).reshape(size, size)
    ours = apply(getattr(randaugment, operation), rgb, magnitude, sign)
    assert inside.mean() > 0.5
    difference = np.abs(ours - expected)[inside]
    assert difference.mean() < 0.5 and difference.max() <= 4.0, "OpenCV interpolates in steps of 1/32 px"
    assert np.abs(ours - rgb)[inside].mean() > 5.0, "the tile moved"


@pytest.mark.parametrize("operation", [op for op in OPERATIONS if op is not randaugment.autocontrast])
def test_every_operation_at_magnitude_zero_gives_the_image_back(operation):
    tf.random.set_seed(0)
    rgb = he_tiles()[1][:64, :64]
    for sign in (-1.0, 1.0):
        assert np.abs(apply(operation, rgb, 0.0, sign) - rgb).max() <= 1.0


def test_cutout_greys_one_square_of_at_most_half_the_side_at_the_same_place_on_every_scale():
    tf.random.set_seed(0)
    stacked = tf.constant(np.stack([he_tiles()[0][:64, :64]] * 3).astype(np.float32))
    sides = []
    for _ in range(40):
        out = cutout(stacked, 0.5).numpy()
        grey = (out == 127.5).all(axis=-1)
        assert (grey == grey[0]).all(), "the same square on every scale"
        rows, columns = np.flatnonzero(grey[0].any(1)), np.flatnonzero(grey[0].any(0))
        if len(rows):
            assert grey[0][rows.min():rows.max() + 1, columns.min():columns.max() + 1].all(), "one rectangle"
            sides.append(max(len(rows), len(columns)))
        np.testing.assert_array_equal(out[:, ~grey[0]], stacked.numpy()[:, ~grey[0]])
    assert sides and max(sides) <= 32 and max(sides) > 16


def test_a_strong_view_changes_every_scale_alike_and_differs_every_draw(monkeypatch):
    """Noise is drawn pixel by pixel, so apart from it the scales of a triplet change alike."""
    monkeypatch.setattr(randaugment, "OPERATIONS", tuple(op for op in OPERATIONS if op is not randaugment.noise))
    tf.random.set_seed(1)
    tile = he_tiles()[2][:64, :64].astype(np.float32)
    stacked = tf.constant(np.stack([tile] * 3))
    views = [RandAugment().apply(stacked).numpy() for _ in range(20)]
    for view in views:
        assert view.shape == (3, 64, 64, 3) and 0 <= view.min() and view.max() <= 255
        assert (view == view[0]).all(), "one draw for the whole triplet"
    moved = [np.abs(v[0] - tile).mean() for v in views]
    assert min(np.abs(a[0] - b[0]).mean() for a, b in zip(views, views[1:])) > 0
    assert np.median(moved) > 5.0, "strong: the median view moves the tile by several grey levels"
    assert math.isfinite(sum(moved))
