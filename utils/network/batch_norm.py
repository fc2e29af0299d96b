"""Target batch-norm statistics before any target label (``--adapt-bn``).

AdaBN (Li et al., 2016): a network trained on one lab normalises each layer
with that lab's feature means and variances; re-estimating them on the target
lab's unlabelled tiles aligns the features without a single label. Only
backbones with batch normalisation have something to adapt: MobileNetV2 does,
VGG16 and the small backbone do not.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from utils.common.scales import Scales


def batch_norm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every batch-normalisation layer, those of the nested backbones included."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found += batch_norm_layers(layer)
    return found


def adapt_batch_norm(model: keras.Model, dataset: tf.data.Dataset, scales: Scales) -> int:
    """Replace the moving means and variances of every batch-norm layer of the
    backbones by their averages over the batches of ``dataset`` (tiles
    without labels are fine); returns the number of batches read, 0 when the
    model has no batch norm. The k-th batch is given weight 1/(k+1) through
    the layer's momentum, so the result is the plain mean over batches,
    whatever the layers' own momentum (restored afterwards). Frozen layers
    are unfrozen meanwhile: Keras runs a frozen batch norm in inference mode."""
    layers = batch_norm_layers(model)
    if not layers:
        return 0
    saved = [(layer.momentum, layer.trainable) for layer in layers]
    stages = [(name, model.get_layer(f"preprocess_{name}"), model.get_layer(f"backbone_{name}"))
              for name in scales.names]
    batches = 0
    try:
        for layer in layers:
            layer.trainable = True
        for inputs, *_ in dataset:
            for layer in layers:
                layer.momentum = batches / (batches + 1)
            for name, preprocess, backbone in stages:
                backbone(preprocess(inputs[name]), training=True)
            batches += 1
    finally:
        for layer, (momentum, trainable) in zip(layers, saved):
            layer.momentum, layer.trainable = momentum, trainable
    return batches
