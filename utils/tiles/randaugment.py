"""FixMatch's strong view of a pool tile: RandAugment, then Cutout.

FixMatch (Sohn et al., NeurIPS 2020) trains the network to predict, on a
strongly changed view of an unlabelled tile, what it confidently predicts on a
weakly changed one. Its strong view is RandAugment (Cubuk et al. 2020) in the
form FixMatch used: two operations drawn at random from a list, each at a
magnitude drawn uniformly (not a fixed one), then Cutout, a square of up to
half the tile's side set to grey. The photometric operations follow PIL's
definitions (``ImageEnhance``, ``ImageOps``), on which RandAugment was
written; their ranges are FixMatch's (enhancement factors 0.1-1.9, rotations
up to 30°, shears up to 0.3).

For tissue the list leaves out what moves the tissue against its scales or
what no scanner makes: translations (a shift at 40× is a quarter of it at
10×, so the scales would no longer share their centre), solarize and
equalize. It adds what H&E-RandAugment (Faryna et al. 2021) and Tellez et
al.'s study found to be a change of lab: Tellez's HED-strong stain change, a
hue shift, a Gaussian blur and noise. Every operation and Cutout are drawn
once per triplet and applied alike to every scale (rotations and shears
about the tile's centre, so the scales stay aligned). All of it is TensorFlow
operations in the input pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import tensorflow as tf

from utils.tiles.augment import gaussian_blur, hed_transform

#: FixMatch's ranges: enhancement factors 1 ± 0.9, rotations up to 30°, shears up to 0.3.
FACTOR, DEGREES, SHEAR = 0.9, 30.0, 0.3
#: Tellez et al.'s HED-strong σ; hue as a fraction of the colour wheel; blur σ in px; noise of full scale.
STAIN_SIGMA, HUE, BLUR_SIGMA, NOISE = 0.2, 0.1, 1.5, 0.03
#: ITU-R 601-2 luma, as PIL's ``convert("L")``.
LUMA = (0.299, 0.587, 0.114)
#: PIL's SMOOTH filter, the degenerate image of ``ImageEnhance.Sharpness``.
SMOOTH = ((1.0, 1.0, 1.0), (1.0, 5.0, 1.0), (1.0, 1.0, 1.0))

Operation = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]


def _grey(x: tf.Tensor) -> tf.Tensor:
    """The luma of (S, T, T, 3) RGB, as (S, T, T, 1)."""
    return tf.tensordot(x, tf.constant(LUMA), axes=1)[..., None]


def _blend(degenerate: tf.Tensor, x: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL's ``ImageEnhance``: ``degenerate`` at factor 0, the image at 1, beyond it extrapolated."""
    return degenerate + (x - degenerate) * factor


def identity(x: tf.Tensor, magnitude: tf.Tensor, sign: tf.Tensor) -> tf.Tensor:
    return x


def autocontrast(x: tf.Tensor, magnitude: tf.Tensor, sign: tf.Tensor) -> tf.Tensor:
    """Each channel of each scale stretched from its darkest to its brightest value to 0..255."""
    low = tf.reduce_min(x, axis=[1, 2], keepdims=True)
    high = tf.reduce_max(x, axis=[1, 2], keepdims=True)
    stretched = (x - low) * 255.0 / tf.maximum(high - low, 1e-6)
    return tf.where(high > low, stretched, x)


def brightness(x: tf.Tensor, magnitude: tf.Tensor, sign: tf.Tensor) -> tf.Tensor:
    return _blend(tf.zeros_like(x), x, 1.0 + sign * FACTOR * magnitude)


def colour(x: tf.Tensor, magnitude: tf.Tensor, sign: tf.Tensor) -> tf.Tensor:
    return _blend(_grey(x), x, 1.0 + sign * FACTOR * magnitude)


def contrast(x: tf.Tensor, magnitude: tf.Tensor, sign: tf.Tensor) -> tf.Tensor:
    """Towards or away from each scale's mean grey (PIL rounds it to an integer)."""
    mean = tf.round(tf.reduce_mean(_grey(x), axis=[1, 2, 3], keepdims=True))
    return _blend(mean, x, 1.0 + sign * FACTOR * magnitude)


def sharpness(x: tf.Tensor, magnitude: tf.Tensor, sign: tf.Tensor) -> tf.Tensor:
    """Towards or away from PIL's smoothed image (whose one-pixel border is the image's own)."""
    kernel = tf.constant(SMOOTH) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "VALID")
    smooth = tf.pad(smooth, [[0, 0], [1, 1], [1, 1], [0, 0]])
    size = tf.shape(x)[1]
    inner = tf.pad(tf.ones([size - 2, size - 2, 1]), [[1, 1], [1, 1], [0, 0]])
    degenerate = inner * smooth + (1.0 - inner) * x
    return _blend(degenerate, x, 1.0 + sign * FACTOR * magnitude)


def posterize(x: tf.Tensor, magnitude: tf.Tensor, sign: tf.Tensor) -> tf.Tensor:
    """Only the top 8 to 4 bits of each (rounded) value kept."""
    step = tf.pow(2.0, tf.round(4.0 * magnitude))
    return tf.floor(tf.round(x) / step) * step


def _warp(x: tf.Tensor, a: tf.Tensor, b: tf.Tensor, c: tf.Tensor, d: tf.Tensor) -> tf.Tensor:
    """Each output pixel read, bilinearly, at ``[[a, b], [c, d]]`` times its
    offset from the tile's centre, plus the centre; outside the tile the image
    is reflected."""
    centre = (tf.cast(tf.shape(x)[1], tf.float32) - 1.0) / 2.0
    transform = tf.stack([a, b, centre - a * centre - b * centre, c, d, centre - c * centre - d * centre, 0.0, 0.0])
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=x, transforms=tf.tile(transform[None], [tf.shape(x)[0], 1]), output_shape=tf.shape(x)[1:3],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")


def rotate(x: tf.Tensor, magnitude: tf.Tensor, sign: tf.Tensor) -> tf.Tensor:
    angle = sign * DEGREES * magnitude * math.pi / 180.0
    return _warp(x, tf.cos(angle), -tf.sin(angle), tf.sin(angle), tf.cos(angle))


def shear_x(x: tf.Tensor, magnitude: tf.Tensor, sign: tf.Tensor) -> tf.Tensor:
    return _warp(x, tf.constant(1.0), sign * SHEAR * magnitude, tf.constant(0.0), tf.constant(1.0))


def shear_y(x: tf.Tensor, magnitude: tf.Tensor, sign: tf.Tensor) -> tf.Tensor:
    return _warp(x, tf.constant(1.0), tf.constant(0.0), sign * SHEAR * magnitude, tf.constant(1.0))


def stains(x: tf.Tensor, magnitude: tf.Tensor, sign: tf.Tensor) -> tf.Tensor:
    """Tellez et al.'s stain change, each stain's scale and shift within ± σ times the magnitude."""
    spread = STAIN_SIGMA * magnitude
    return hed_transform(x, 1.0 + tf.random.uniform([3], -1.0, 1.0) * spread,
                         tf.random.uniform([3], -1.0, 1.0) * spread)


def hue(x: tf.Tensor, magnitude: tf.Tensor, sign: tf.Tensor) -> tf.Tensor:
    return tf.image.adjust_hue(x / 255.0, sign * HUE * magnitude) * 255.0


def blur(x: tf.Tensor, magnitude: tf.Tensor, sign: tf.Tensor) -> tf.Tensor:
    return gaussian_blur(x, BLUR_SIGMA * magnitude)


def noise(x: tf.Tensor, magnitude: tf.Tensor, sign: tf.Tensor) -> tf.Tensor:
    return x + tf.random.normal(tf.shape(x)) * NOISE * 255.0 * magnitude


#: The operations RandAugment draws from.
OPERATIONS: tuple[Operation, ...] = (identity, autocontrast, brightness, colour, contrast, sharpness, posterize,
                                     rotate, shear_x, shear_y, stains, hue, blur, noise)


def cutout(x: tf.Tensor, fraction: float) -> tf.Tensor:
    """A grey square, of side up to ``fraction`` of the tile's, at a random
    place (the same on every scale); it may reach past the tile's edge."""
    size = tf.shape(x)[1]
    side = tf.cast(tf.round(tf.random.uniform([], 0.0, fraction) * tf.cast(size, tf.float32)), tf.int32)
    centre = tf.random.uniform([2], 0, size, dtype=tf.int32)
    rows, columns = tf.range(size)[:, None], tf.range(size)[None, :]
    inside = ((rows >= centre[0] - side // 2) & (rows < centre[0] - side // 2 + side)
              & (columns >= centre[1] - side // 2) & (columns < centre[1] - side // 2 + side))
    return tf.where(inside[None, :, :, None], 127.5, x)


@dataclass(frozen=True)
class RandAugment:
    """FixMatch's strong view: ``operations`` drawn from :data:`OPERATIONS`,
    each at a uniform random magnitude and direction, then :func:`cutout`."""

    operations: int = 2
    cutout: float = 0.5

    def apply(self, stacked: tf.Tensor) -> tf.Tensor:
        """The view of a triplet's scales stacked as float32 (S, T, T, 3) in 0..255."""
        for _ in range(self.operations):
            which = tf.random.uniform([], 0, len(OPERATIONS), dtype=tf.int32)
            magnitude = tf.random.uniform([])
            sign = tf.where(tf.random.uniform([]) < 0.5, -1.0, 1.0)
            branches = [lambda op=op, x=stacked: op(x, magnitude, sign) for op in OPERATIONS]
            stacked = tf.clip_by_value(tf.switch_case(which, branches), 0.0, 255.0)
        return cutout(stacked, self.cutout)
