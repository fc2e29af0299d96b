"""Head-only training on cached backbone features (``--freeze-backbone``).

With the backbones frozen, a tile's pooled features never change, so they are
computed once per run and the head (two dense layers and the softmax) trains
and predicts on them: a round then costs a fraction of a second instead of a
pass of every backbone over the labelled set, the pool and the evaluation
sets. The head trains in its own compiled loop (:meth:`EmbeddingCache.fit`),
since Keras's ``fit`` spends more on each epoch's set-up and validation than a
small head needs to learn from thousands of vectors. The price is that tiles
are seen without augmentation. Memory: one float32 vector
per tile (512 values per scale for VGG16, 1280 for MobileNetV2), e.g. 0.6 GB
for 100,000 VGG16 triplets.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from utils.errors import ModelError
from utils.log import progress
from utils.model import split_model


class EmbeddingCache:
    """Features of the records ``ids`` (global record ids) and the head that
    reads them; the head shares its layers with the full model."""

    def __init__(self, model: keras.Model, dataset: tf.data.Dataset, ids: np.ndarray, labels: np.ndarray,
                 strategy: tf.distribute.Strategy | None = None) -> None:
        self.strategy = strategy or tf.distribute.get_strategy()
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
        _, with_penultimate = split_model(model, with_penultimate=True)
        self._embed_head = tf.function(lambda h: with_penultimate(h, training=False), reduce_retracing=True)
        self._loss = keras.losses.SparseCategoricalCrossentropy(reduction="sum")
        self._step: Callable | None = None
        self._optimizer: keras.optimizers.Optimizer | None = None
        self._initial_state: list[np.ndarray] = []

    def of(self, ids: np.ndarray) -> np.ndarray:
        rows = self.row[ids]
        if (rows < 0).any():
            raise ModelError(f"{int((rows < 0).sum())} records without cached features were asked for: the head reads "
                             f"only the records of the run's split")
        return self.features[rows]

    def predict(self, ids: np.ndarray, batch_size: int, mc_passes: int = 0,
                embeddings: bool = False) -> dict[str, np.ndarray]:
        """The same dictionary as :func:`utils.training_data.predict`, in the order of ``ids``."""
        x = self.of(ids)

        def batched(head: Callable) -> np.ndarray:
            parts = [head(x[i : i + batch_size]).numpy() for i in range(0, len(x), batch_size)]
            return np.concatenate(parts) if parts else np.zeros((0, self.head.output.shape[-1]), np.float32)

        result = {"ids": np.asarray(ids), "labels": self.labels[ids]}
        if mc_passes:
            result["mc_probs"] = np.stack([batched(self._mc_head) for _ in range(mc_passes)])
            result["probs"] = result["mc_probs"].mean(axis=0)
        elif embeddings:
            parts = [self._embed_head(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
            result["embeddings"] = x
            result["penultimate"] = np.concatenate([p.numpy() for p, _ in parts])
            result["probs"] = np.concatenate([q.numpy() for _, q in parts])
        else:
            result["probs"] = batched(self._head)
        return result

    def fit(self, ids: np.ndarray, labels: np.ndarray, val_ids: np.ndarray,
            make_optimizer: Callable[[], keras.optimizers.Optimizer], batch_size: int, epochs: int, patience: int,
            seed: int) -> list[dict[str, float]]:
        """Train the head on the features of ``ids`` as ``labels``: shuffled mini-batches,
        early stopping on the validation loss with the best epoch's weights
        restored, or with ``patience`` 0 every epoch and the last weights kept.
        The optimizer starts afresh every call (its variables reset to their
        values when new), so the training step is compiled once per run.
        One row per epoch: loss, accuracy, val_loss, val_accuracy."""
        step = self._training_step(make_optimizer)
        x, y = self.of(ids), np.asarray(labels, np.int64)
        x_val, y_val = self.of(val_ids), self.labels[val_ids]
        rng = np.random.default_rng(seed)
        history, best, best_weights, waited = [], np.inf, self.head.get_weights(), 0
        for _ in range(epochs):
            order = rng.permutation(len(y))
            loss = correct = 0.0
            for i in range(0, len(order), batch_size):
                batch = order[i : i + batch_size]
                batch_loss, batch_correct = step(x[batch], y[batch])
                loss, correct = loss + float(batch_loss), correct + float(batch_correct)
            probs = np.concatenate([self._head(x_val[i : i + 4096]).numpy() for i in range(0, len(x_val), 4096)])
            val_loss = float(self._loss(y_val, probs)) / len(y_val)
            history.append({"loss": loss / len(y), "accuracy": correct / len(y), "val_loss": val_loss,
                            "val_accuracy": float((probs.argmax(axis=1) == y_val).mean())})
            if not patience:
                continue
            if val_loss < best:
                best, best_weights, waited = val_loss, self.head.get_weights(), 0
            else:
                waited += 1
                if waited >= patience:
                    break
        if patience:
            self.head.set_weights(best_weights)
        return history

    def _training_step(self, make_optimizer: Callable[[], keras.optimizers.Optimizer]) -> Callable:
        """One compiled step (summed loss and correct count of a batch) and its
        optimizer, reset to its initial state.

        The step runs on every replica of the strategy: each takes its share
        of the global batch, its loss is its share's sum over the global batch
        size, and the optimizer sums the gradients across replicas, so the
        update is the global batch's mean gradient. Under mixed precision the
        optimizer scales the loss (Keras's LossScaleOptimizer), as Keras's own
        ``fit`` does."""
        if self._step is None:
            strategy, head, weights = self.strategy, self.head, self.head.trainable_variables
            with strategy.scope():
                optimizer = make_optimizer()
                if keras.mixed_precision.global_policy().name == "mixed_float16":
                    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
                optimizer.build(weights)
            loss_of = self._loss
            signature = [tf.TensorSpec([None, self.features.shape[1]], tf.float32), tf.TensorSpec([None], tf.int64)]

            def replica_step(xb, yb):
                context = tf.distribute.get_replica_context()
                size, replicas = tf.shape(yb)[0], context.num_replicas_in_sync
                start = size * context.replica_id_in_sync_group // replicas
                end = size * (context.replica_id_in_sync_group + 1) // replicas
                xs, ys = xb[start:end], yb[start:end]
                with tf.GradientTape() as tape:
                    probs = head(xs, training=True)
                    loss = loss_of(ys, probs)
                    share = loss / tf.cast(size, loss.dtype)
                    scaled = optimizer.scale_loss(share)
                optimizer.apply_gradients(zip(tape.gradient(scaled, weights), weights))
                return loss, tf.reduce_sum(tf.cast(tf.argmax(probs, axis=1) == ys, tf.float32))

            @tf.function(input_signature=signature)
            def step(xb, yb):
                loss, correct = strategy.run(replica_step, args=(xb, yb))
                return (strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
                        strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None))

            self._step, self._optimizer = step, optimizer
            self._initial_state = [variable.numpy() for variable in optimizer.variables]
        for variable, value in zip(self._optimizer.variables, self._initial_state):
            variable.assign(value)
        return self._step
