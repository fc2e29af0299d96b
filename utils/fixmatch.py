"""FixMatch (Sohn et al., NeurIPS 2020) for full fine-tuning (``--semi-supervised fixmatch``).

Every step adds ``μ`` times the labelled batch of unlabelled pool tiles. The
network's prediction on a weak view of each (flips and rotations) is the
target for a strong view of it (strong stain jitter, blur, noise) when its top
probability is at least τ; the loss is the labelled batch's cross-entropy plus
λ times the strong views' cross-entropy against those targets, averaged over
all the unlabelled tiles of the batch (so that a step with few confident tiles
weighs little). The targets are computed without gradient, in inference mode.

:class:`FixMatch` wraps the network for Keras's ``fit`` only: it owns no
weights of its own, validation runs the network as usual, and the network is
what is saved. Each epoch's history also counts the confident unlabelled
views (``pseudo_used``) and those whose target matches the pool tile's true
label (``pseudo_correct``, meaningful in simulation only).
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf


class FixMatch(keras.Model):
    """The network, trained on labelled batches paired with unlabelled ones."""

    def __init__(self, network: keras.Model, threshold: float, weight: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.network, self.threshold, self.weight = network, threshold, weight
        self.cross_entropy = keras.losses.SparseCategoricalCrossentropy()
        self.loss_mean = keras.metrics.Mean(name="loss")
        self.labelled_accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self.pseudo_used = keras.metrics.Sum(name="pseudo_used")
        self.pseudo_correct = keras.metrics.Sum(name="pseudo_correct")

    def call(self, inputs: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        return self.network(inputs, training=training)

    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        (x, y), ((weak, strong), truth) = data
        guess = tf.stop_gradient(self.network(weak, training=False))
        confident = tf.cast(tf.reduce_max(guess, axis=-1) >= self.threshold, tf.float32)
        target = tf.argmax(guess, axis=-1)
        with tf.GradientTape() as tape:
            y_pred = self.network(x, training=True)
            strong_pred = self.network(strong, training=True)
            supervised = self.cross_entropy(y, y_pred)
            # Masked tiles count in the mean: the confident share sets the weight.
            unsupervised = self.cross_entropy(target, strong_pred, sample_weight=confident)
            loss = supervised + self.weight * unsupervised
            scaled = self.optimizer.scale_loss(loss)
        weights = self.network.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, weights), weights))
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        self.loss_mean.update_state(loss * replicas)  # Keras's losses divide by the replicas; undone to report
        self.labelled_accuracy.update_state(y, y_pred)
        self.pseudo_used.update_state(tf.reduce_sum(confident))
        self.pseudo_correct.update_state(tf.reduce_sum(confident * tf.cast(target == truth, tf.float32)))
        return {metric.name: metric.result() for metric in
                (self.loss_mean, self.labelled_accuracy, self.pseudo_used, self.pseudo_correct)}

    def test_step(self, data: Any) -> dict[str, tf.Tensor]:
        """Validation: the network's loss and accuracy, as Keras's own step reports them."""
        x, y = data
        y_pred = self.network(x, training=False)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        self.loss_mean.update_state(self.cross_entropy(y, y_pred) * replicas)
        self.labelled_accuracy.update_state(y, y_pred)
        return {metric.name: metric.result() for metric in (self.loss_mean, self.labelled_accuracy)}
