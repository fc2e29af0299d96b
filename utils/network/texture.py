"""The ``texture`` backbone: QuPath's multi-scale filter bank as Keras layers.

What a pathologist already has is QuPath's pixel classifier: Gaussian,
gradient magnitude, Laplacian of Gaussian, structure tensor and Hessian
responses at a few scales, on the colour and stain channels, fed to a random
forest. On a few hundred labels that beats a network learned from them,
because nothing in it has to be learned. Here the same bank is a backbone: a
tile's RGB and its haematoxylin and eosin optical densities are filtered at
each σ, and each response map is summarised by its mean, standard deviation
and percentiles. Made of Keras layers, it is saved inside ``model.keras``, so
inference, head-mode caching and the embedding strategies see it as any other
backbone, and it needs no download and no GPU.

The filters are Gaussian derivatives computed as scipy's ``gaussian_filter``
computes them (sampled kernels truncated at 4 σ, symmetric padding), so that
``scipy.ndimage`` is an independent oracle for every response map.

The statistics span very different ranges (a Hessian determinant at σ 1 is
10⁻⁴ of a Gaussian), so the backbone ends in :class:`Standardize`, whose
means and variances are estimated on the unlabelled pool of the run that
builds the model (:func:`fit_standardization`), and again on the target
pool under ``--adapt-bn``. The random-forest anchor of the experiments reads
the same statistics before standardisation (:func:`feature_model`).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from utils.common.errors import ModelError
from utils.tiles.augment import DENSITY_FLOOR, HED_FROM_RGB

#: Scales of the filters, in px of the tile's own magnification (QuPath's defaults go 1, 2, 4, 8).
SIGMAS = (1.0, 2.0, 4.0)
#: Filter responses per channel and σ, in output order.
FILTERS = ("gaussian", "gradient_magnitude", "laplacian_of_gaussian", "coherence", "hessian_determinant")
#: Channels filtered: RGB in [0, 1] and haematoxylin and eosin optical density (natural log).
CHANNELS = ("red", "green", "blue", "haematoxylin", "eosin")
#: Percentiles of each response map, besides its mean and standard deviation.
PERCENTILES = (10, 50, 90)
STATISTICS = ("mean", "std", *(f"p{p}" for p in PERCENTILES))
#: Percentiles are read from at most about this many rows (and columns) of
#: each map, every k-th pixel: a sort of every pixel of a 128-px tile's 75
#: maps costs more on a CPU than VGG16's whole pass, and a smooth map's
#: percentiles move little between neighbours. Tiles up to 127 px use every pixel.
PERCENTILE_GRID = 64
#: Kernels are truncated at this many σ (scipy's default).
TRUNCATE = 4.0
#: Added to the structure tensor's trace so that flat regions have coherence 0, not 0/0.
COHERENCE_EPSILON = 1e-8


def kernel_radius(sigma: float) -> int:
    return int(TRUNCATE * sigma + 0.5)


def gaussian_kernel(sigma: float, order: int) -> np.ndarray:
    """The sampled Gaussian (``order`` 0) or its first or second derivative,
    as correlation weights: correlating with it equals scipy's
    ``gaussian_filter1d(..., order=order)``."""
    radius = kernel_radius(sigma)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 * x**2 / sigma**2)
    phi /= phi.sum()
    derivative = {0: phi, 1: -x / sigma**2 * phi, 2: (x**2 / sigma**4 - 1 / sigma**2) * phi}[order]
    return derivative[::-1].copy()  # convolution kernel -> correlation weights


def percentile_stride(size: int) -> int:
    """Every how many pixels a ``size``-px map's percentiles are read."""
    return max(1, size // PERCENTILE_GRID)


def feature_names() -> list[str]:
    """Names of :class:`MapStatistics`' outputs for :class:`FilterResponses`' maps, in order."""
    return [f"{statistic}_{name}_sigma{sigma:g}_{channel}" for statistic in STATISTICS for sigma in SIGMAS
            for name in FILTERS for channel in CHANNELS]


def feature_count() -> int:
    return len(STATISTICS) * len(SIGMAS) * len(FILTERS) * len(CHANNELS)


def smallest_tile() -> int:
    """Symmetric padding may not reach past the far edge: the tile must be
    wider than the largest kernel's radius."""
    return kernel_radius(max(SIGMAS)) + 1


@keras.saving.register_keras_serializable(package="tissue_al")
class FilterResponses(keras.layers.Layer):
    """RGB in [0, 1], shape (N, H, W, 3), to the response maps (N, H, W, K),
    ordered by σ, then filter, then channel (:data:`FILTERS`, :data:`CHANNELS`).
    Computed in float32 whatever the mixed-precision policy: the Hessian
    determinant of a smooth tile is too small for float16."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self._kernels = {s: [tf.constant(gaussian_kernel(s, k), tf.float32) for k in range(3)] for s in SIGMAS}

    def call(self, rgb):
        rgb = tf.cast(rgb, tf.float32)
        density = -tf.math.log(tf.maximum(rgb, DENSITY_FLOOR))
        stains = tf.maximum(tf.tensordot(density, tf.constant(HED_FROM_RGB[:, :2], tf.float32), axes=1), 0.0)
        image = tf.concat([rgb, stains], axis=-1)
        maps = []
        for sigma in SIGMAS:
            g0, g1, g2 = self._kernels[sigma]
            rows = [_correlate(image, kernel, axis=1) for kernel in (g0, g1, g2)]  # along y
            smooth = _correlate(rows[0], g0, axis=2)
            dx, dxx = _correlate(rows[0], g1, axis=2), _correlate(rows[0], g2, axis=2)
            dy, dxy = _correlate(rows[1], g0, axis=2), _correlate(rows[1], g1, axis=2)
            dyy = _correlate(rows[2], g0, axis=2)
            gradient = tf.sqrt(dx * dx + dy * dy)
            laplacian = dxx + dyy
            sxx, syy, sxy = (_gaussian(t, g0) for t in (dx * dx, dy * dy, dx * dy))
            coherence = tf.sqrt((sxx - syy) ** 2 + 4.0 * sxy * sxy) / (sxx + syy + COHERENCE_EPSILON)
            determinant = dxx * dyy - dxy * dxy
            maps += [smooth, gradient, laplacian, coherence, determinant]
        return tf.concat(maps, axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], len(SIGMAS) * len(FILTERS) * len(CHANNELS))


def _correlate(image: tf.Tensor, weights: tf.Tensor, axis: int) -> tf.Tensor:
    """Each channel correlated with the 1-D ``weights`` along ``axis`` (1: y,
    2: x), with symmetric padding (scipy's ``reflect`` mode)."""
    radius = (int(weights.shape[0]) - 1) // 2
    padding = [[0, 0], [0, 0], [0, 0], [0, 0]]
    padding[axis] = [radius, radius]
    padded = tf.pad(image, padding, mode="SYMMETRIC")
    channels = int(image.shape[-1])
    shape = [-1, 1] if axis == 1 else [1, -1]
    kernel = tf.tile(tf.reshape(weights, [*shape, 1, 1]), [1, 1, channels, 1])
    return tf.nn.depthwise_conv2d(padded, kernel, [1, 1, 1, 1], "VALID")


def _gaussian(image: tf.Tensor, g0: tf.Tensor) -> tf.Tensor:
    return _correlate(_correlate(image, g0, axis=1), g0, axis=2)


@keras.saving.register_keras_serializable(package="tissue_al")
class MapStatistics(keras.layers.Layer):
    """Response maps (N, H, W, K) to (N, 1, 1, S·K): per map its mean and
    standard deviation over every pixel and :data:`PERCENTILES` (the
    ``lower`` sample, as ``numpy.percentile(method="lower")``) over every
    :func:`percentile_stride`-th pixel of each row and column; statistic-major."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)

    def call(self, maps):
        mean = tf.reduce_mean(maps, axis=[1, 2])
        std = tf.sqrt(tf.reduce_mean(tf.square(maps - mean[:, None, None, :]), axis=[1, 2]))
        stride = percentile_stride(maps.shape[1])  # tiles have a fixed size
        sampled = maps[:, ::stride, ::stride, :]
        count = sampled.shape[1] * sampled.shape[2]
        ordered = tf.sort(tf.transpose(tf.reshape(sampled, [-1, count, maps.shape[-1]]), [0, 2, 1]), axis=-1)
        picks = [ordered[..., int(np.floor(p / 100 * (count - 1)))] for p in PERCENTILES]
        return tf.concat([mean, std, *picks], axis=-1)[:, None, None, :]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1, 1, len(STATISTICS) * input_shape[-1])


@keras.saving.register_keras_serializable(package="tissue_al")
class Standardize(keras.layers.Layer):
    """``(x - mean) / sqrt(variance + 1e-6)`` with the mean and variance of the
    tiles it was fitted on (:func:`fit_standardization`): saved with the
    model, never trained by gradient."""

    def build(self, input_shape):
        width = input_shape[-1]
        self.mean = self.add_weight(shape=(width,), initializer="zeros", trainable=False, name="mean")
        self.variance = self.add_weight(shape=(width,), initializer="ones", trainable=False, name="variance")

    def call(self, x):
        return (x - tf.cast(self.mean, x.dtype)) / tf.sqrt(tf.cast(self.variance, x.dtype) + 1e-6)


#: The name of the standardisation layer inside a texture backbone.
STANDARDIZE = "texture_standardize"


def texture_backbone(shape: tuple[int, int, int], cnn: keras.Model | None = None) -> keras.Model:
    """The filter bank's standardised statistics as a (1, 1, F) map; with
    ``cnn``, the learned backbone's pooled features concatenated after them."""
    if min(shape[:2]) < smallest_tile():
        raise ModelError(f"the texture backbone needs tiles of at least {smallest_tile()} px (its widest filter "
                         f"reaches {kernel_radius(max(SIGMAS))} px), not {shape[0]}")
    inputs = keras.Input(shape)
    statistics = MapStatistics(name="texture_statistics")(FilterResponses(name="texture_filters")(inputs))
    x = Standardize(name=STANDARDIZE)(statistics)
    if cnn is not None:
        learned = keras.layers.GlobalAveragePooling2D(keepdims=True, name="cnn_pool")(cnn(inputs))
        x = keras.layers.Concatenate(name="texture_and_cnn")([x, learned])
    return keras.Model(inputs, x)


def standardizers(model: keras.Model) -> dict[str, tuple[keras.Model, Standardize]]:
    """Per scale name whose backbone has the filter bank: the sub-model from
    the scale's raw input to the raw statistics, and its standardisation layer."""
    found = {}
    for tensor in model.inputs:
        name = tensor.name.split(":")[0]
        backbone = model.get_layer(f"backbone_{name}")
        layer = _filter_bank_standardizer(backbone)
        if layer is None:
            continue
        preprocess = model.get_layer(f"preprocess_{name}")
        raw = keras.Input(tensor.shape[1:])
        statistics = keras.Model(backbone.inputs, backbone.get_layer("texture_statistics").output)
        found[name] = (keras.Model(raw, statistics(preprocess(raw))), layer)
    return found


def standardized_columns(model: keras.Model) -> np.ndarray:
    """Which of the model's pooled features (the head's input: each scale's
    backbone output in the order of the inputs) a filter bank's
    standardisation layer already gives: a texture backbone's statistics,
    ahead of the small CNN's features in ``texture+small``."""
    columns = []
    for tensor in model.inputs:
        name = tensor.name.split(":")[0]
        backbone = model.get_layer(f"backbone_{name}")
        mask = np.zeros(model.get_layer(f"pool_{name}").output.shape[-1], bool)
        if _filter_bank_standardizer(backbone) is not None:
            mask[: feature_count()] = True
        columns.append(mask)
    return np.concatenate(columns)


def _filter_bank_standardizer(backbone: keras.Model) -> Standardize | None:
    """A scale's backbone's standardisation layer, or None without a filter bank."""
    try:
        return backbone.get_layer(STANDARDIZE)
    except ValueError:
        return None


def fit_standardization(model: keras.Model, dataset: tf.data.Dataset) -> int:
    """Set every texture backbone's means and variances to those of the
    statistics over ``dataset`` (inputs first; labels unused), accumulated
    as sums of x and x² in float64 over all its tiles, so the order of the
    tiles does not matter. Returns the number of tiles read (0 when the
    model has no texture backbone)."""
    stages = standardizers(model)
    if not stages:
        return 0
    functions = {name: tf.function(sub, reduce_retracing=True) for name, (sub, _) in stages.items()}
    sums = {name: [0.0, 0.0] for name in stages}
    count = 0
    for inputs, *_ in dataset:
        for name, function in functions.items():
            values = function(inputs[name]).numpy().reshape(len(inputs[name]), -1).astype(np.float64)
            sums[name][0] = sums[name][0] + values.sum(axis=0)
            sums[name][1] = sums[name][1] + (values**2).sum(axis=0)
        count += len(next(iter(inputs.values())))
    if count == 0:
        return 0
    for name, (_, layer) in stages.items():
        mean = sums[name][0] / count
        variance = np.maximum(sums[name][1] / count - mean**2, 0.0)
        layer.set_weights([mean.astype(np.float32), variance.astype(np.float32)])
    return count


def feature_model(tile_size: int, scale_names: list[str]) -> keras.Model:
    """The raw statistics of every scale, concatenated, from raw 0-255 RGB
    inputs named after the scales: the random-forest anchor's features."""
    inputs, outputs = [], []
    for name in scale_names:
        x = keras.Input((tile_size, tile_size, 3), name=name)
        inputs.append(x)
        maps = FilterResponses(name=f"filters_{name}")(keras.layers.Rescaling(1 / 255, name=f"unit_{name}")(x))
        outputs.append(keras.layers.Flatten(name=f"flat_{name}")(MapStatistics(name=f"statistics_{name}")(maps)))
    return keras.Model(inputs, outputs[0] if len(outputs) == 1 else keras.layers.Concatenate()(outputs))
