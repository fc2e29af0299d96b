"""FixMatch (Sohn et al., NeurIPS 2020) for full fine-tuning (``--semi-supervised fixmatch``).

Every step adds ``μ`` times the labelled batch of unlabelled pool tiles. The
network's prediction on a weak view of each (flips and rotations) is the
target for a strong view of it (RandAugment and Cutout,
:mod:`utils.tiles.randaugment`) when its top probability is at least τ; the loss
is the labelled batch's cross-entropy plus λ times the strong views'
cross-entropy against those targets, averaged over all the unlabelled tiles
of the batch (so that a step with few confident tiles weighs little). The
targets are computed without gradient, in inference mode.

As in FixMatch, the network that is scored is an exponential moving average
of the trained weights (momentum 0.999), not the last of them. A round here
has hundreds of steps where FixMatch has a million, so the momentum ramps up
as TensorFlow's ``ExponentialMovingAverage`` does with a step count,
``min(m, (1 + t) / (10 + t))`` at step t: at 0.999 the average would
otherwise still be mostly the weights the round started from.

:class:`FixMatch` wraps the network for Keras's ``fit`` only: its own
weights are the averages, validation scores the network with them, and
:meth:`FixMatch.keep_average` puts them into the network, which is what is
saved. Each epoch's history also counts the confident unlabelled views
(``pseudo_used``) and those whose target matches the pool tile's true label
(``pseudo_correct``, meaningful in simulation only).
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf


class FixMatch(keras.Model):
    """The network, trained on labelled batches paired with unlabelled ones."""

    def __init__(self, network: keras.Model, threshold: float, weight: float, ema_momentum: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.network, self.threshold, self.weight, self.ema_momentum = network, threshold, weight, ema_momentum
        # One average per trained weight (none with momentum 0), the same on every replica; made from a
        # copy, since a Keras variable made from another's value would share its storage.
        self.averages = [keras.Variable(tf.identity(w.value), trainable=False, aggregation="only_first_replica",
                                        name=f"average_{k}") for k, w in enumerate(network.trainable_variables)
                         ] if ema_momentum else []
        # Built with the network: otherwise Keras, under several devices, would
        # build it by calling it on a training batch, (labelled, unlabelled) pairs.
        self.built = True
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
        if self.averages:
            step = tf.cast(self.optimizer.iterations, tf.float32)
            momentum = tf.minimum(self.ema_momentum, (1.0 + step) / (10.0 + step))
            for average, w in zip(self.averages, weights):
                average.assign(momentum * average + (1.0 - momentum) * w)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        self.loss_mean.update_state(loss * replicas)  # Keras's losses divide by the replicas; undone to report
        self.labelled_accuracy.update_state(y, y_pred)
        self.pseudo_used.update_state(tf.reduce_sum(confident))
        self.pseudo_correct.update_state(tf.reduce_sum(confident * tf.cast(target == truth, tf.float32)))
        return {metric.name: metric.result() for metric in
                (self.loss_mean, self.labelled_accuracy, self.pseudo_used, self.pseudo_correct)}

    def test_step(self, data: Any) -> dict[str, tf.Tensor]:
        """Validation: the loss and accuracy of the network with the averaged
        weights (or its own, with no average), as Keras's own step reports them."""
        x, y = data
        if self.averages:
            y_pred, _ = self.network.stateless_call([a.value for a in self.averages],
                                                    [w.value for w in self.network.non_trainable_variables],
                                                    x, training=False)
        else:
            y_pred = self.network(x, training=False)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        self.loss_mean.update_state(self.cross_entropy(y, y_pred) * replicas)
        self.labelled_accuracy.update_state(y, y_pred)
        return {metric.name: metric.result() for metric in (self.loss_mean, self.labelled_accuracy)}

    def keep_average(self) -> None:
        """Put the averaged weights into the network (nothing with no average)."""
        for average, w in zip(self.averages, self.network.trainable_variables):
            w.assign(average)
