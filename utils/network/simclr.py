"""Self-supervised pretraining of a backbone on the lab's own tiles: SimCLR
(Chen et al., ICML 2020), ``active_learning_train.py --self-supervised simclr``.

Two views of each window are made with what a histologist accepts as the same
tissue (a crop of at least a third of it resized back, flips and 90° turns,
stain jitter in Tellez et al.'s HED-light range, blur, noise, JPEG-like
degradation); the encoder (the backbone and global average pooling) with a
small projection head is trained so that the two views of one window are
closer to each other than to any other window of the batch (NT-Xent). One
encoder is shared by the scales: every window of every magnification is a
sample of its own. Its backbone weights are what ``--backbone-weights PATH``
loads, for a source model, a fine-tuning run or head mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from utils.tiles.augment import StrongAugment, weak_and_strong_views
from utils.tiles.stain_jitter import STAIN_PRESETS

#: NT-Xent temperature of the held-out probe that motivated this (SimCLR's range).
TEMPERATURE = 0.2
#: Units of the projection head's two layers (SimCLR: a hidden layer, then the space the loss compares in).
PROJECTION_UNITS = (128, 64)
#: Smallest share of a window's area a view's crop keeps.
MIN_CROP_AREA = 0.35
#: What a view changes after the crop: a harsher lab and scanner, its stains
#: moved within Tellez et al.'s HED-light range (about 17 grey levels on real
#: H&E), not HED-strong (about 58), under which the suite's 6-epoch
#: pretraining stayed at chance.
VIEW = StrongAugment(stains=STAIN_PRESETS["light"])


def nt_xent(z1: tf.Tensor, z2: tf.Tensor, temperature: float = TEMPERATURE) -> tf.Tensor:
    """The normalised temperature-scaled cross-entropy of SimCLR, averaged over
    the 2N views: each view's positive is the other view of its window, its
    negatives the 2N - 2 views of the other windows."""
    z = tf.math.l2_normalize(tf.concat([z1, z2], axis=0), axis=1)
    n = tf.shape(z1)[0]
    logits = tf.matmul(z, z, transpose_b=True) / temperature
    logits = logits - 1e9 * tf.eye(2 * n, dtype=logits.dtype)  # a view is not its own negative
    positives = tf.concat([tf.range(n, 2 * n), tf.range(n)], axis=0)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(positives, logits))


def view(window: tf.Tensor, strong: StrongAugment = VIEW) -> tf.Tensor:
    """One random view of a float32 (T, T, 3) window in 0..255: a square crop
    of at least :data:`MIN_CROP_AREA` of it resized back, then ``strong``
    (flips, turns, stain jitter, blur, noise), then JPEG
    compression at a random quality from 60 to 100."""
    size = tf.shape(window)[0]
    side = tf.cast(tf.round(tf.cast(size, tf.float32) * tf.sqrt(tf.random.uniform([], MIN_CROP_AREA, 1.0))),
                   tf.int32)
    side = tf.clip_by_value(side, 1, size)
    crop = tf.image.random_crop(window, tf.stack([side, side, 3]))
    crop = tf.image.resize(crop, tf.stack([size, size]), method="bilinear")
    _, (changed,) = weak_and_strong_views([crop], strong)
    degraded = tf.image.random_jpeg_quality(changed / 255.0, 60, 100)
    return tf.reshape(degraded * 255.0, tf.shape(window))


def view_pairs(windows: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
    """Batches of two views of each window of ``windows`` (unbatched (T, T, 3))."""
    return windows.map(lambda w: (view(w), view(w)), num_parallel_calls=tf.data.AUTOTUNE) \
        .batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


class SimCLR(keras.Model):
    """An encoder (tiles to a feature vector) and its projection head, trained
    on pairs of views. The encoder is what is kept; the head is discarded."""

    def __init__(self, encoder: keras.Model, temperature: float = TEMPERATURE,
                 units: Sequence[int] = PROJECTION_UNITS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.encoder, self.temperature = encoder, temperature
        self.projection = keras.Sequential(
            [keras.layers.Dense(units[0], activation="relu"), keras.layers.Dense(units[1], dtype="float32")],
            name="projection")
        self.loss_mean = keras.metrics.Mean(name="loss")

    def call(self, inputs: tf.Tensor, training: bool = False) -> tf.Tensor:
        return self.projection(self.encoder(inputs, training=training), training=training)

    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        first, second = data
        with tf.GradientTape() as tape:
            loss = nt_xent(self(first, training=True), self(second, training=True), self.temperature)
            # Each replica's loss is over its own share of the batch; the
            # replicas' gradients are summed, so each is divided by their number.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = self.optimizer.scale_loss(loss / replicas)
        weights = self.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, weights), weights))
        self.loss_mean.update_state(loss)
        return {"loss": self.loss_mean.result()}

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return [self.loss_mean]

