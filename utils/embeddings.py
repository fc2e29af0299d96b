"""Head-only training on cached backbone features (``--freeze-backbone``).

With the backbones frozen, a tile's pooled features never change, so they are
computed once per run and the head (two dense layers and the softmax) trains
and predicts on them: a round then costs milliseconds instead of a pass of
every backbone over the labelled set, the pool and the evaluation sets. The
price is that tiles are seen without augmentation. Memory: one float32 vector
per tile (512 values per scale for VGG16, 1280 for MobileNetV2), e.g. 0.6 GB
for 100,000 VGG16 triplets.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from utils.log import progress
from utils.model import split_model


class EmbeddingCache:
    """Features of the records ``ids`` (global record ids) and the head that
    reads them; the head shares its layers with the full model."""

    def __init__(self, model: keras.Model, dataset: tf.data.Dataset, ids: np.ndarray, labels: np.ndarray) -> None:
        features, self.head = split_model(model)
        extract = tf.function(lambda x: features(x, training=False), reduce_retracing=True)
        self.row = np.full(len(labels), -1, np.int64)
        self.row[ids] = np.arange(len(ids))
        self.labels = labels
        self.features = np.zeros((len(ids), features.output.shape[-1]), np.float32)
        with progress(total=len(ids), unit="tiles", desc="backbone features", leave=False) as bar:
            for inputs, _, gid in dataset:
                self.features[self.row[gid.numpy()]] = extract(inputs).numpy()
                bar.update(len(gid))
        self._head = tf.function(lambda h: self.head(h, training=False), reduce_retracing=True)
        self._mc_head = tf.function(lambda h: self.head(h, training=True), reduce_retracing=True)

    def of(self, ids: np.ndarray) -> np.ndarray:
        rows = self.row[ids]
        if (rows < 0).any():
            raise KeyError("records without cached features were asked for")
        return self.features[rows]

    def predict(self, ids: np.ndarray, batch_size: int, mc_passes: int = 0) -> dict[str, np.ndarray]:
        """The same dictionary as :func:`utils.training.predict`, in the order of ``ids``."""
        x = self.of(ids)

        def batched(head: Callable) -> np.ndarray:
            parts = [head(x[i : i + batch_size]).numpy() for i in range(0, len(x), batch_size)]
            return np.concatenate(parts) if parts else np.zeros((0, self.head.output.shape[-1]), np.float32)

        result = {"ids": np.asarray(ids), "labels": self.labels[ids]}
        if mc_passes:
            result["mc_probs"] = np.stack([batched(self._mc_head) for _ in range(mc_passes)])
            result["probs"] = result["mc_probs"].mean(axis=0)
        else:
            result["probs"] = batched(self._head)
        return result
