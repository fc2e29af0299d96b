"""The multiscale network (MONO-, DI- or TRI-CNN) and how it is saved and loaded.

One backbone per scale (inputs named after the scales), global average
pooling, concatenation, then the paper's head: Dense 4096 ReLU, Dropout 0.4,
Dense 4096 ReLU, Dropout 0.4, softmax. Preprocessing that matches the backbone
is a layer of the model, so inference feeds raw 0-255 RGB and cannot forget it.

A saved model is a normal ``.keras`` archive with one extra member,
``tissue_al.json``: the resolved configuration (classes, colours,
magnifications, tile size, thresholds) and the backbone, so ``--model
RUN_DIR/model.keras`` alone is enough for inference.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from utils.common.config import Config
from utils.common.errors import ModelError
from utils.common.io import atomic_path
from utils.network.model_spec import BACKBONES, INPUT_SCALINGS, METADATA_MEMBER, ModelSpec
from utils.network.texture import texture_backbone

_IMAGENET_FILES = {
    "vgg16": "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "mobilenetv2": "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_<size>_no_top.h5",
}


@keras.saving.register_keras_serializable(package="tissue_al")
class Preprocess(keras.layers.Layer):
    """Raw RGB 0-255 to what a backbone was trained on.

    ``caffe``: RGB to BGR minus the ImageNet channel means (VGG16);
    ``tf``: scaled to [-1, 1] (MobileNetV2); ``unit``: scaled to [0, 1];
    ``raw``: unchanged, as the original code fed its VGG16.
    """

    def __init__(self, mode: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, x):
        if self.mode == "caffe":
            return x[..., ::-1] - keras.ops.convert_to_tensor([103.939, 116.779, 123.68], dtype=x.dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "raw":
            return x
        return x / 255.0

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}


def build_model(
    config: Config, spec: ModelSpec, backbone_weights: str | None = "imagenet", freeze_backbone: bool = False
) -> keras.Model:
    """Build the network for ``config``'s scales, tile size and classes.

    ``backbone_weights``: "imagenet" (Keras download), a local weights file for
    the backbone, or None for random initialisation.
    """
    if spec.backbone not in BACKBONES:
        raise ModelError(f"unknown backbone {spec.backbone!r}; choose one of {BACKBONES}")
    if spec.input_scaling not in (None, *INPUT_SCALINGS):
        raise ModelError(f"unknown input scaling {spec.input_scaling!r}; choose one of {INPUT_SCALINGS}")
    if spec.backbone.startswith("texture") and spec.scaling != "unit":
        raise ModelError(f"the {spec.backbone} backbone filters RGB scaled to [0, 1]; leave --input-scaling out")
    size = config.tile_size
    inputs, features = [], []
    for name in config.scales.names:
        x = keras.Input((size, size, 3), name=name)
        inputs.append(x)
        h = Preprocess(spec.scaling, name=f"preprocess_{name}")(x)
        backbone = build_backbone(spec.backbone, size, backbone_weights, name=f"backbone_{name}")
        backbone.trainable = not freeze_backbone
        h = backbone(h, training=False if freeze_backbone else None)
        features.append(keras.layers.GlobalAveragePooling2D(name=f"pool_{name}")(h))
    h = features[0] if len(features) == 1 else keras.layers.Concatenate(name="concat")(features)
    # fc1 computes in float32 under mixed precision too: head mode folds the
    # features' standardisation into it (utils/learning/embeddings.py), and weights
    # divided by a feature's deviation, times raw features, overflow float16.
    h = keras.layers.Dense(spec.head_units, activation="relu", name="fc1", dtype="float32")(h)
    h = keras.layers.Dropout(spec.dropout, name="dropout1")(h)
    h = keras.layers.Dense(spec.head_units, activation="relu", name="fc2")(h)
    h = keras.layers.Dropout(spec.dropout, name="dropout2")(h)
    outputs = keras.layers.Dense(config.num_classes, activation="softmax", name="predictions", dtype="float32")(h)
    names = {1: "mono_cnn", 2: "di_cnn", 3: "tri_cnn"}
    return keras.Model(inputs, outputs, name=names[len(inputs)])


def build_backbone(kind: str, size: int, weights: str | None, name: str) -> keras.Model:
    """One scale's backbone. ``weights``: "imagenet" (VGG16, MobileNetV2),
    None, or a local file: ImageNet weights, or for ``small`` and the small
    CNN of ``texture+small`` the ``backbone.weights.h5`` of a
    ``--self-supervised simclr`` pretraining."""
    shape = (size, size, 3)
    try:
        if kind == "vgg16":
            model = keras.applications.VGG16(include_top=False, weights=weights, input_shape=shape)
        elif kind == "mobilenetv2":
            model = keras.applications.MobileNetV2(include_top=False, weights=weights, input_shape=shape, alpha=0.35)
            if weights in (None, "none"):
                _forget_faster(model)
        elif kind == "texture" and weights not in (None, "none"):
            raise ModelError("the 'texture' backbone has nothing to learn or load; use --backbone-weights none")
        elif weights == "imagenet":
            raise ModelError(f"the {kind!r} backbone has no ImageNet weights; use --backbone-weights none, or the "
                             f"backbone.weights.h5 of a --self-supervised simclr pretraining")
        else:
            small = None if kind == "texture" else _small_cnn(shape)
            if small is not None and weights not in (None, "none"):
                small.load_weights(weights)
            model = small if kind == "small" else texture_backbone(shape, small)
    except ModelError:
        raise
    except Exception as exc:  # download errors surface as several unrelated types
        if weights == "imagenet":
            raise ModelError(
                f"cannot get ImageNet weights for {kind} ({exc}); without internet, "
                f"download {_IMAGENET_FILES[kind]} elsewhere and pass --backbone-weights PATH, "
                f"or train from scratch with --backbone-weights none"
            ) from None
        raise ModelError(f"cannot build the {kind} backbone with weights {weights!r}: {exc}") from None
    model.name = name
    return model


#: Batch-norm momentum of a backbone trained from scratch (PyTorch's default).
SCRATCH_BN_MOMENTUM = 0.9


def _forget_faster(model: keras.Model) -> None:
    """Keras' MobileNetV2 keeps 0.999 of its moving statistics a step, made for
    fine-tuning ImageNet statistics that hardly move. From scratch the weights
    change fast and the statistics start at mean 0 and variance 1, so inference
    normalises with stale statistics: on the Kather source lab (70 steps an
    epoch) the validation accuracy stayed at one class's share, 0.22, for 7
    epochs while the training accuracy rose to 0.66, at 0.999 and at Keras'
    usual 0.99 alike. At 0.9 it followed: 0.44, 0.56, 0.61 in the first three
    epochs."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = SCRATCH_BN_MOMENTUM


def _small_cnn(shape: tuple[int, int, int]) -> keras.Model:
    """Four conv-ReLU-pool blocks: a backbone cheap enough for CPUs and tests."""
    x = inputs = keras.Input(shape)
    for i, filters in enumerate((16, 32, 64, 128)):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i + 1}")(x)
        x = keras.layers.MaxPooling2D(name=f"pool{i + 1}")(x)
    return keras.Model(inputs, x)


def load_weights_by_name(model: keras.Model, path: str | Path) -> list[str]:
    """Copy weights from a saved model into ``model`` layer by layer, matching
    top-level layer names and weight shapes. Returns the names of the layers
    (with weights) that received none, as the original code listed them."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such weights file")
    if path.name.endswith(".weights.h5"):
        try:
            model.load_weights(path)
        except Exception as exc:
            raise ModelError(f"{path}: weights do not fit this architecture ({exc}); "
                             f"pass a whole model (.keras) to load layers by name") from None
        return []
    source = load_model(path)
    missing = []
    for layer in model.layers:
        if not layer.weights:
            continue
        try:
            other = source.get_layer(layer.name)
        except ValueError:
            missing.append(layer.name)
            continue
        shapes = [tuple(w.shape) for w in layer.weights]
        if shapes != [tuple(w.shape) for w in other.weights]:
            missing.append(layer.name)
            continue
        layer.set_weights(other.get_weights())
    if all(layer.name in missing for layer in model.layers if layer.weights):
        raise ModelError(f"{path}: no layer of this model matches a layer of the weights file by name and shape; "
                         f"pass a model trained with the same --backbone and --head-units")
    return missing


def save_model(model: keras.Model, path: str | Path, metadata: dict[str, Any]) -> None:
    """Save atomically as ``.keras`` with the metadata inference needs."""
    path = Path(path)
    with atomic_path(path) as tmp:
        keras_tmp = tmp.with_name(tmp.name + ".keras")  # Keras insists on the suffix
        model.save(keras_tmp)
        with zipfile.ZipFile(keras_tmp, "a") as archive:
            archive.writestr(METADATA_MEMBER, json.dumps(metadata, indent=2))
        keras_tmp.rename(tmp)


def load_model(path: str | Path) -> keras.Model:
    """Load in Keras's safe mode: a model file that would run arbitrary code
    (a Lambda layer) is refused. The model computes in this process's
    precision (:func:`in_process_precision`)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    if not zipfile.is_zipfile(path):
        raise ModelError(f"{path}: not a .keras model archive (truncated or another format); "
                         f"pass the model.keras of a training run")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelError(f"{path}: cannot load model ({first})") from None
    return in_process_precision(model)


def in_process_precision(model: keras.Model) -> keras.Model:
    """The model with its mixed-precision layers in this process's policy.

    A model trained on GPUs in mixed precision is saved with each layer's
    policy, and Keras would run it in float16 wherever it is loaded: slowly,
    on a CPU without half-precision kernels. Its weights are float32 either
    way, so the same network is rebuilt in the process's policy (float32 on a
    CPU, mixed on a GPU) and given them. Layers saved with an explicit dtype
    (the float32 softmax) keep it."""
    policy = keras.mixed_precision.global_policy().name

    def differs(layer: keras.layers.Layer) -> bool:
        return layer.dtype_policy.name.startswith("mixed_") and layer.dtype_policy.name != policy

    if not any(differs(layer) for layer in _all_layers(model)):
        return model

    def rebuild(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        if differs(layer):
            config["dtype"] = policy
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(model, clone_function=rebuild, recursive=True)
    clone.set_weights(model.get_weights())
    return clone


def _all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer, those of the nested backbones included."""
    layers = []
    for layer in model.layers:
        layers.append(layer)
        if isinstance(layer, keras.Model):
            layers += _all_layers(layer)
    return layers


def check_compatible(model: keras.Model, config: Config) -> None:
    """A clear error, not a shape exception, when the model does not fit the configuration."""
    names = config.scales.names
    inputs = {tensor.name.split(":")[0]: tuple(tensor.shape[1:]) for tensor in model.inputs}
    if len(inputs) != len(names):
        raise ModelError(f"the model has {len(inputs)} scale input(s) {sorted(inputs)}, the configuration "
                         f"{len(names)} ({config.magnifications}); pass the model's magnifications")
    for name in names:
        if name not in inputs:
            raise ModelError(f"the model has no input {name!r} (it has {sorted(inputs)}); pass its magnifications")
        if inputs[name][:2] != (config.tile_size, config.tile_size):
            raise ModelError(f"the model expects {inputs[name][0]} px tiles at {name}, "
                             f"the configuration gives {config.tile_size} px")
    classes = model.outputs[0].shape[-1]
    if classes != config.num_classes:
        raise ModelError(f"the model predicts {classes} classes, the configuration has {config.num_classes} "
                         f"({config.class_names})")


HEAD_LAYERS = ("fc1", "dropout1", "fc2", "dropout2", "predictions")


def split_model(model: keras.Model, with_penultimate: bool = False) -> tuple[keras.Model, keras.Model]:
    """(backbones up to the pooled features, head from features to probabilities;
    with ``with_penultimate`` the head also returns the last layer's input).

    Both share the model's layers, so training the head trains the model's
    head. ``head(h, training=True)`` keeps dropout on (Monte-Carlo passes).
    """
    if len(model.inputs) > 1:
        feature_layer = model.get_layer("concat")
    else:
        feature_layer = model.get_layer(f"pool_{model.inputs[0].name.split(':')[0]}")
    features = keras.Model(model.inputs, feature_layer.output, name="features")
    h = inputs = keras.Input(feature_layer.output.shape[1:], name="features")
    for name in HEAD_LAYERS:
        penultimate = h
        h = model.get_layer(name)(h)
    return features, keras.Model(inputs, [penultimate, h] if with_penultimate else h, name="head")


class Predictor:
    """Class probabilities, and Monte-Carlo dropout passes for BALD.

    MC dropout runs the backbones once per batch (in inference mode, so batch
    statistics stay frozen) and only the head ``passes`` times with dropout on:
    the head holds every dropout layer, so this equals full MC dropout at a
    fraction of the cost.
    """

    def __init__(self, model: keras.Model) -> None:
        self.model = model
        # One graph for every batch size: a graph traced for one fixed size
        # (the first batch) can round differently from the general one, and a
        # tile's probabilities must not depend on which slide came first.
        signature = {t.name.split(":")[0]: tf.TensorSpec([None, *t.shape[1:]], tf.float32) for t in model.inputs}
        self._predict = tf.function(lambda x: model(x, training=False), input_signature=[signature])
        self._mc = self._embed = None

    def _build_mc(self):
        features, head = split_model(self.model)
        return (tf.function(lambda x: features(x, training=False), reduce_retracing=True),
                tf.function(lambda h: head(h, training=True), reduce_retracing=True))

    def probabilities(self, inputs: dict[str, tf.Tensor]) -> np.ndarray:
        return self._predict(inputs).numpy()

    def embed(self, inputs: dict[str, tf.Tensor]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pooled backbone features, the last layer's input, probabilities), in inference mode."""
        if self._embed is None:
            features, head = split_model(self.model, with_penultimate=True)

            @tf.function(reduce_retracing=True)
            def embed(x):
                h = features(x, training=False)
                penultimate, probs = head(h, training=False)
                return h, penultimate, probs

            self._embed = embed
        return tuple(t.numpy() for t in self._embed(inputs))

    def mc_probabilities(self, inputs: dict[str, tf.Tensor], passes: int) -> np.ndarray:
        """Shape (passes, batch, classes)."""
        if self._mc is None:
            self._mc = self._build_mc()
        extract, head_pass = self._mc
        features = extract(inputs)
        return np.stack([head_pass(features).numpy() for _ in range(passes)])
