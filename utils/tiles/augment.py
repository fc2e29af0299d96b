"""Training-time augmentation of a triplet: geometry and stain.

Every transform draws its random factors once per triplet and applies them to
all scales, so that the scales stay aligned around their shared centre and
look as if stained and scanned together.

Stain jitter follows Tellez et al. (Medical Image Analysis 2019), the most
effective single measure against a change of lab in their nine-lab study:
each pixel is deconvolved into haematoxylin, eosin and DAB concentrations
(Ruifrok & Johnston's colour deconvolution, scikit-image's ``rgb2hed``), each
concentration c becomes ``a * c + b`` with a in [1 - σ, 1 + σ] and b in
[-σ, σ] per stain, and the image is recomposed; brightness, contrast and
saturation are then jittered. The ranges are in the units of their group's
published transform (``custom_hed_transform.py`` of DIAG's HE-RandAugment),
which deconvolves the natural-log optical density of I + 2, I the intensity
in [0, 1]: there σ = 0.05 moves a real H&E tile by about 17 grey levels on
average and σ = 0.2 by about 58, five times what the same σ does to the
optical density of I itself, since the offset turns the scale factor into a
shift of every pixel. As there, σ = 0 gives back the image. All of it is
TensorFlow tensor operations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import tensorflow as tf

from utils.tiles.stain_jitter import STAIN_PRESETS, StainJitter

#: Rows: the optical density (R, G, B) of a unit of haematoxylin, eosin and
#: DAB (Ruifrok & Johnston 2001; scikit-image's ``rgb_from_hed``).
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
#: The darkest intensity the filter bank deconvolves, as a fraction of full scale (scikit-image's).
DENSITY_FLOOR = 1e-6
#: What the stain jitter adds to intensities in [0, 1] before taking their
#: optical density: Tellez et al.'s published transform, whose units the
#: presets' σ are in.
JITTER_OFFSET = 2.0


def hed_transform(rgb: tf.Tensor, scale: tf.Tensor, shift: tf.Tensor) -> tf.Tensor:
    """float32 RGB in 0..255 (any leading shape) with each stain concentration
    c replaced by ``scale * c + shift`` (one value per stain, H, E, D), in the
    units of Tellez et al.'s transform (the optical density of I + 2)."""
    density = -tf.math.log(rgb / 255.0 + JITTER_OFFSET)
    hed = tf.tensordot(density, tf.constant(HED_FROM_RGB, tf.float32), axes=1)
    hed = hed * scale + shift
    density = tf.tensordot(hed, tf.constant(RGB_FROM_HED, tf.float32), axes=1)
    return tf.clip_by_value(255.0 * (tf.exp(-density) - JITTER_OFFSET), 0.0, 255.0)


def jitter_stains(rgb: tf.Tensor, jitter: StainJitter) -> tf.Tensor:
    """One random stain and colour change for the whole of ``rgb`` (the
    stacked scales of one triplet, float32 0..255)."""
    scale = tf.random.uniform([3], 1.0 - jitter.sigma, 1.0 + jitter.sigma)
    shift = tf.random.uniform([3], -jitter.sigma, jitter.sigma)
    image = hed_transform(rgb, scale, shift) / 255.0
    image = image + tf.random.uniform([], -jitter.brightness, jitter.brightness)
    mean = tf.reduce_mean(image, axis=[-3, -2, -1], keepdims=True)
    image = mean + (image - mean) * tf.random.uniform([], 1.0 - jitter.contrast, 1.0 + jitter.contrast)
    grey = tf.reduce_mean(image, axis=-1, keepdims=True)
    image = grey + (image - grey) * tf.random.uniform([], 1.0 - jitter.saturation, 1.0 + jitter.saturation)
    return tf.clip_by_value(image * 255.0, 0.0, 255.0)


def augment_triplet(images: list[tf.Tensor], flips: bool, colour_jitter: bool,
                    stains: StainJitter | None) -> list[tf.Tensor]:
    """The same flip and 90-degree rotation (``flips``), stain change and
    colour change for every scale of a triplet."""
    return tf.unstack(_augment_stacked(tf.stack(images), flips, colour_jitter, stains))


def _augment_stacked(stacked: tf.Tensor, flips: bool, colour_jitter: bool, stains: StainJitter | None) -> tf.Tensor:
    """:func:`augment_triplet` on the scales stacked as (scales, T, T, 3)."""
    if flips:
        flip = tf.random.uniform([]) < 0.5
        stacked = tf.cond(flip, lambda: tf.reverse(stacked, axis=[2]), lambda: stacked)
        stacked = tf.image.rot90(stacked, k=tf.random.uniform([], 0, 4, dtype=tf.int32))
    if stains is not None:
        stacked = jitter_stains(stacked, stains)
    if colour_jitter:
        stacked = tf.image.random_brightness(stacked, 0.1 * 255)
        stacked = tf.image.random_saturation(stacked, 0.8, 1.2)
        stacked = tf.image.random_hue(stacked, 0.04)
        stacked = tf.clip_by_value(stacked, 0.0, 255.0)
    return stacked


class StrongView(Protocol):
    """What changes the strong view of a triplet (stacked as (S, T, T, 3))."""

    def apply(self, stacked: tf.Tensor) -> tf.Tensor: ...


@dataclass(frozen=True)
class StrongAugment:
    """What a harsher lab and scanner would make of a tile (SimCLR's views):
    stain jitter, a Gaussian blur of up to ``blur_sigma`` px and Gaussian
    noise of up to ``noise`` of full scale."""

    stains: StainJitter = STAIN_PRESETS["strong"]
    blur_sigma: float = 1.5
    noise: float = 0.03

    def apply(self, stacked: tf.Tensor) -> tf.Tensor:
        view = jitter_stains(stacked, self.stains)
        view = gaussian_blur(view, tf.random.uniform([], 0.0, self.blur_sigma))
        view = view + tf.random.normal(tf.shape(view)) * tf.random.uniform([], 0.0, self.noise * 255.0)
        return tf.clip_by_value(view, 0.0, 255.0)


#: Half-width of the blur kernel: three standard deviations of the widest blur.
_BLUR_RADIUS = 5


def gaussian_blur(stacked: tf.Tensor, sigma: tf.Tensor | float) -> tf.Tensor:
    """(S, T, T, C) blurred by a Gaussian of ``sigma`` px (at most
    :data:`_BLUR_RADIUS` / 3), the tile reflected at its edges."""
    sigma = tf.maximum(tf.cast(sigma, tf.float32), 1e-3)
    offsets = tf.range(-_BLUR_RADIUS, _BLUR_RADIUS + 1, dtype=tf.float32)
    kernel = tf.exp(-(offsets**2) / (2.0 * sigma**2))
    kernel = kernel / tf.reduce_sum(kernel)
    channels = stacked.shape[-1]
    padded = tf.pad(stacked, [[0, 0], [_BLUR_RADIUS] * 2, [_BLUR_RADIUS] * 2, [0, 0]], mode="REFLECT")
    rows = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, channels, 1])
    columns = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, channels, 1])
    blurred = tf.nn.depthwise_conv2d(padded, rows, [1, 1, 1, 1], "VALID")
    return tf.nn.depthwise_conv2d(blurred, columns, [1, 1, 1, 1], "VALID")


def weak_and_strong_views(images: list[tf.Tensor], strong: StrongView) -> tuple[list[tf.Tensor], list[tf.Tensor]]:
    """Two views of one triplet: the weak one flipped and rotated only, the
    strong one flipped and rotated (independently) and changed by ``strong``
    (each scale alike within a view)."""
    stacked = tf.stack(images)
    weak = _augment_stacked(stacked, True, False, None)
    view = strong.apply(_augment_stacked(stacked, True, False, None))
    return tf.unstack(weak), tf.unstack(view)
