"""Head-only training on cached backbone features (``--freeze-backbone``).

With the backbones frozen, a tile's pooled features never change, so they are
computed once per run and the head (two dense layers and the softmax) trains
and predicts on them: a round then costs a fraction of a second instead of a
pass of every backbone over the labelled set, the pool and the evaluation
sets. The head trains in its own compiled loop (:meth:`EmbeddingCache.fit`),
since Keras's ``fit`` spends more on each epoch's set-up and validation than a
small head needs to learn from thousands of vectors. The price is that tiles
are seen without augmentation.

The head trains on the features standardised by their mean and standard
deviation over the training split (labels unused), as a linear probe is
fitted: a learned backbone's pooled features differ in scale by orders of
magnitude, and with few labelled tiles a head fitted on them raw did not
converge in its steps (on the Kather harder lab, frozen SimCLR features,
mean of 3 seeds: test macro F1 0.40 raw against 0.55 standardised with 32
labelled tiles, 0.75 against 0.80 with all 1,976). A texture backbone's
statistics are left as its own standardisation gives them: standardised
again, its near-constant statistics (deviations of 10⁻⁵ to 10⁻² after its
layer, whose variance floor damps them) became unit-variance noise, and its
head lost 0.7 points of test F1 at 100% of that pool (one seed). The model
keeps the standardisation folded into its first dense layer, so the saved
model reads the raw features and is the same network as before;
:meth:`EmbeddingCache.fit` unfolds it to train and folds it back.

Memory: one float32 vector per tile (512 values per scale for VGG16, 1280
for MobileNetV2), e.g. 0.6 GB for 100,000 VGG16 triplets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import keras
import numpy as np
import tensorflow as tf

from utils.common.errors import ModelError
from utils.common.log import progress
from utils.network.model import HEAD_LAYERS, split_model
from utils.network.texture import standardized_columns

#: A feature whose standard deviation is at most this fraction of the largest
#: feature's (a ReLU channel that never fires) is centred, not divided by it.
CONSTANT = 1e-6


class EmbeddingCache:
    """Features of the records ``ids`` (global record ids) and the head that
    reads them; the head shares its layers with the full model. The
    features of the records ``reference`` give the standardisation the head
    trains with (none for those a texture backbone standardises itself)."""

    def __init__(self, model: keras.Model, dataset: tf.data.Dataset, ids: np.ndarray, labels: np.ndarray,
                 reference: np.ndarray, distribution: tf.distribute.Strategy | None = None) -> None:
        self.distribution = distribution or tf.distribute.get_strategy()
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
        reference_features = self.of(reference).astype(np.float64)
        deviation = reference_features.std(axis=0)
        given = standardized_columns(model)
        self.mean = np.where(given, 0.0, reference_features.mean(axis=0))
        largest = deviation[~given].max(initial=0.0)
        self.scale = np.where(given | (deviation <= CONSTANT * largest), 1.0, deviation)
        self.first = self.head.get_layer(HEAD_LAYERS[0])
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
        """The same dictionary as :func:`utils.learning.training_data.predict`, in the order of ``ids``."""
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
        """Train the head on the standardised features of ``ids`` as
        ``labels``: shuffled mini-batches, early stopping on the validation
        loss with the best epoch's weights restored, or with ``patience`` 0
        every epoch and the last weights kept. The optimizer starts afresh
        every call (its variables reset to their values when new), so the
        training step is compiled once per run. One row per epoch: loss,
        accuracy, val_loss, val_accuracy."""
        step = self._training_step(make_optimizer)
        x, y = self.standardized(ids), np.asarray(labels, np.int64)
        x_val, y_val = self.standardized(val_ids), self.labels[val_ids]
        with self._unfolded():
            rng = np.random.default_rng(seed)
            history, best, best_weights, waited = [], np.inf, self.head.get_weights(), 0
            for _ in range(epochs):
                order = rng.permutation(len(y))
                loss = correct = 0.0
                for i in range(0, len(order), batch_size):
                    batch = order[i : i + batch_size]
                    batch_loss, batch_correct = step(x[batch], y[batch])
                    loss, correct = loss + float(batch_loss), correct + float(batch_correct)
                probs = np.concatenate([self._head(x_val[i : i + 4096]).numpy()
                                        for i in range(0, len(x_val), 4096)])
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

    @contextmanager
    def _unfolded(self) -> Iterator[None]:
        """The head on standardised features inside, folded back on leaving (an error too)."""
        self._unfold()
        try:
            yield
        finally:
            self.fold()

    def standardized(self, ids: np.ndarray) -> np.ndarray:
        """The features of ``ids`` standardised as the head trains on them."""
        return ((self.of(ids) - self.mean) / self.scale).astype(np.float32)

    def _unfold(self) -> None:
        """Re-express the first dense layer on standardised features: kernel
        W·s, bias b + m·W, the same function of the raw features."""
        kernel, bias = (w.astype(np.float64) for w in self.first.get_weights())
        self.first.set_weights([(kernel * self.scale[:, None]).astype(np.float32),
                                (bias + self.mean @ kernel).astype(np.float32)])

    def fold(self) -> None:
        """Back to raw features (:meth:`_unfold` inverted): kernel W/s, bias b − (m/s)·W.
        Called once on a new head, it makes its random weights weights on
        standardised features, the inputs Keras's initialisers assume."""
        kernel, bias = (w.astype(np.float64) for w in self.first.get_weights())
        self.first.set_weights([(kernel / self.scale[:, None]).astype(np.float32),
                                (bias - (self.mean / self.scale) @ kernel).astype(np.float32)])

    def _training_step(self, make_optimizer: Callable[[], keras.optimizers.Optimizer]) -> Callable:
        """One compiled step (summed loss and correct count of a batch) and its
        optimizer, reset to its initial state.

        The step runs on every replica of the distribution: each takes its share
        of the global batch, its loss is its share's sum over the global batch
        size, and the optimizer sums the gradients across replicas, so the
        update is the global batch's mean gradient. Under mixed precision the
        optimizer scales the loss (Keras's LossScaleOptimizer), as Keras's own
        ``fit`` does."""
        if self._step is None:
            distribution, head, weights = self.distribution, self.head, self.head.trainable_variables
            with distribution.scope():
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
                loss, correct = distribution.run(replica_step, args=(xb, yb))
                return (distribution.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
                        distribution.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None))

            self._step, self._optimizer = step, optimizer
            self._initial_state = [variable.numpy() for variable in optimizer.variables]
        for variable, value in zip(self._optimizer.variables, self._initial_state):
            variable.assign(value)
        return self._step
