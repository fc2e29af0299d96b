"""Learning from the unlabelled pool: pseudo-labels chosen by confidence,
capped per class, never counted as labels; batch-norm statistics of the
target tiles (--adapt-bn); FixMatch's loss against numpy."""

from __future__ import annotations

import csv
import re
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf

import active_learning_train
from tests.conftest import FAST, RECORD_TILE
from utils.common.config import load_config
from utils.common.scales import Scales
from utils.learning.fixmatch import FixMatch
from utils.learning.pseudo_labels import pseudo_label
from utils.learning.train_options import TrainOptions
from utils.network.batch_norm import adapt_batch_norm, batch_norm_layers
from utils.network.model import build_model
from utils.network.model_spec import ModelSpec
from utils.tiles.records import read_index, record_files, triplet_dataset


class FixedPredictions:
    """A learner whose predictions are given: probabilities per record id."""

    def __init__(self, probs: dict[int, list[float]], labels: np.ndarray) -> None:
        self.probs, self.labels = probs, labels

    def predict(self, ids: np.ndarray, mc_passes: int = 0, embeddings: bool = False) -> dict[str, np.ndarray]:
        order = np.asarray(ids)[::-1]  # any order: the choice must follow the returned ids
        return {"ids": order, "labels": self.labels[order], "probs": np.array([self.probs[int(i)] for i in order])}


def test_pseudo_labels_are_the_most_confident_pool_tiles_capped_per_class():
    # Records 0-2 labelled (two of class 0, one of class 1); 3-9 are the pool.
    labels = np.array([0, 0, 1, 0, 0, 0, 1, 1, 1, 0])
    probs = {3: [0.99, 0.01], 4: [0.97, 0.03], 5: [0.96, 0.04], 6: [0.02, 0.98],
             7: [0.94, 0.06], 8: [0.5, 0.5], 9: [0.01, 0.99]}
    data = SimpleNamespace(pool_ids=np.arange(10), index=SimpleNamespace(label=labels),
                           config=SimpleNamespace(num_classes=2))
    state = SimpleNamespace(labelled=np.array([0, 1, 2]), best={"round": 0})
    options = TrainOptions(data=".", output=".", semi_supervised="pseudo", pseudo_threshold=0.95, pseudo_ratio=1.0)
    chosen = pseudo_label(FixedPredictions(probs, labels), data, state, options)
    # Class 0 may take 2 (its labelled count): 3 and 4, the most confident of 3, 4, 5.
    # Class 1 may take 1: 9 (0.99) before 6 (0.98); 7 is below the threshold and predicted 0.
    assert dict(zip(chosen.ids.tolist(), chosen.labels.tolist())) == {3: 0, 4: 0, 9: 1}
    assert chosen.accuracy == 2 / 3, "9 is truly class 0"
    assert len(pseudo_label(FixedPredictions(probs, labels), data, SimpleNamespace(
        labelled=state.labelled, best={"round": None}), options).ids) == 0, "none before the first target fit"
    annotation = TrainOptions(data=".", output=".", semi_supervised="pseudo", query_only=True)
    assert pseudo_label(FixedPredictions(probs, labels), data, state, annotation).accuracy is None


def rounds(run) -> list[dict[str, str]]:
    with (run / "rounds.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_pseudo_labelled_tiles_train_but_never_count_as_labels(tiles, tmp_path, capsys):
    common = ["--data", str(tiles), "--seed", "2", *FAST, "--rounds", "2", "--freeze-backbone", "--epochs", "10",
              "--learning-rate", "1e-2"]
    plain, pseudo = tmp_path / "plain", tmp_path / "pseudo"
    assert active_learning_train.main([*common, "--output", str(plain)]) == 0
    assert active_learning_train.main([*common, "--output", str(pseudo), "--semi-supervised", "pseudo",
                                       "--pseudo-threshold", "0.5"]) == 0
    log = capsys.readouterr().out
    assert (pseudo / "labelled.csv").read_text() == (plain / "labelled.csv").read_text()
    rows = rounds(pseudo)
    assert rows[0]["pseudo_labelled"] == "0" and rows[0]["pseudo_accuracy"] == ""
    assert "round 0: no pseudo-labels (before the first fit on target labels)" in log
    used = {int(r["round"]): int(r["pseudo_labelled"]) for r in rows[1:]}
    assert any(used.values()) and all(n <= int(r["labelled"]) for n, r in zip(used.values(), rows[1:])), \
        "some, at most one per labelled tile"
    for row in rows[1:]:
        assert (row["pseudo_accuracy"] == "") == (row["pseudo_labelled"] == "0")
    first = min(k for k, n in used.items() if n)
    assert f"round {first}: {used[first]} pool tiles pseudo-labelled at confidence >= 0.5" in log
    assert all(r["pseudo_labelled"] == "0" for r in rounds(plain))


def test_full_mode_reads_each_pseudo_label_in_place_of_the_records_own(tiles):
    index = read_index(record_files(tiles))
    pool = np.flatnonzero(index.label < 0)[:20]
    table = index.label.copy()
    table[pool] = np.arange(len(pool)) % 3
    config = load_config(tile_size=RECORD_TILE)
    seen = {}
    for _, label, gid in triplet_dataset(index, pool, Scales(config.magnifications, RECORD_TILE), 8, labels=table,
                                         with_ids=True):
        seen.update(zip(gid.numpy().tolist(), label.numpy().tolist()))
    assert seen == {int(i): int(table[i]) for i in pool}


def test_adapt_bn_sets_each_batch_norm_to_the_target_tiles_statistics():
    """The first batch norm's moving mean after --adapt-bn against the mean of
    its inputs over every tile, computed from the layer's input directly; a
    frozen backbone is adapted too, and the layers' momentum is kept."""
    config = load_config(tile_size=RECORD_TILE, magnifications=[10])
    model = build_model(config, ModelSpec("mobilenetv2", 16), None, freeze_backbone=True)
    rng = np.random.default_rng(0)
    tiles = rng.uniform(100, 220, (32, RECORD_TILE, RECORD_TILE, 3)).astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices(({"mag_10x": tiles}, np.zeros(32, np.int64))).batch(8)
    layers = batch_norm_layers(model)
    momenta = [layer.momentum for layer in layers]
    assert adapt_batch_norm(model, dataset, config.scales) == 4
    backbone = model.get_layer("backbone_mag_10x")
    first = layers[0]
    before_first = keras.Model(backbone.input, first.input)
    features = before_first(model.get_layer("preprocess_mag_10x")(tiles)).numpy()
    np.testing.assert_allclose(first.moving_mean.numpy(), features.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
    # The mean of the four batches' variances, as AdaBN estimates it.
    batch_variances = features.reshape(4, -1, features.shape[-1]).var(axis=1)
    np.testing.assert_allclose(first.moving_variance.numpy(), batch_variances.mean(axis=0), rtol=1e-3, atol=1e-5)
    assert [layer.momentum for layer in layers] == momenta and not any(layer.trainable for layer in layers)


def test_adapt_bn_reads_the_pool_in_shuffled_batches_so_its_variance_spans_the_classes(tiles, tmp_path):
    """Regression: --adapt-bn read the pool in stored order, where a batch
    holds one slide region and mostly one class, so the mean of the batches'
    variances missed the variance between classes. Now the first batch norm's
    moving variance is close to its input's variance over the whole sample,
    and well above what stored-order batches give."""
    from utils.learning import source_model
    from utils.learning.training_data import TrainingData

    config = load_config(tile_size=RECORD_TILE)
    options = TrainOptions(data=tiles, output=tmp_path, spec=ModelSpec("mobilenetv2", 16), backbone_weights=None,
                           batch_size=16, slide_class_cap=0, adapt_bn=True)
    data = TrainingData(options, config, np.random.default_rng(0))
    model = build_model(config, options.spec, None)
    source_model.adapt_to_pool(model, data, options)
    backbone = model.get_layer("backbone_mag_10x")
    first = batch_norm_layers(backbone)[0]
    before_first = keras.Model(backbone.input, first.input)
    sample = source_model.pool_sample(data, options.seed)
    stored = [before_first(model.get_layer("preprocess_mag_10x")(inputs["mag_10x"])).numpy()
              for inputs, _ in data.dataset(sample)]
    features = np.concatenate(stored)
    whole = features.var(axis=(0, 1, 2))
    in_stored_order = np.mean([batch.var(axis=(0, 1, 2)) for batch in stored], axis=0)
    moving = first.moving_variance.numpy()
    busy = whole > 1e-4
    # Measured: 0.97 shuffled, 0.89 in stored order (the first layer sees mostly variance within a tile).
    assert np.median(moving[busy] / whole[busy]) > 0.95
    assert np.median(in_stored_order[busy] / whole[busy]) < 0.92, "stored-order batches miss the between-class variance"


def test_adapt_bn_says_when_the_backbone_has_no_batch_norm(tiles, tmp_path):
    with pytest.warns(UserWarning, match="the small backbone has no batch normalisation"):
        assert active_learning_train.main(["--data", str(tiles), *FAST, "--output", str(tmp_path / "run"),
                                           "--rounds", "0", "--epochs", "1", "--adapt-bn"]) == 0


def fixmatch_step(threshold: float, weight: float) -> tuple[dict[str, float], dict[str, float]]:
    """One FixMatch step of a one-layer network on fixed batches: the history
    Keras reports, and the same quantities computed with numpy from the
    weights before the step."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,), name="x")
    network = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
    rng = np.random.default_rng(1)
    x, weak, strong = (rng.normal(size=(n, 4)).astype(np.float32) for n in (4, 8, 8))
    y, truth = np.array([0, 1, 2, 0]), rng.integers(0, 3, 8)
    kernel, bias = network.get_weights()

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    p_x, p_weak, p_strong = (softmax(v @ kernel + bias) for v in (x, weak, strong))
    confident = p_weak.max(axis=1) >= threshold
    target = p_weak.argmax(axis=1)
    supervised = -np.log(p_x[np.arange(4), y]).mean()
    unsupervised = (-np.log(p_strong[np.arange(8), target]) * confident).sum() / 8
    expected = {"loss": supervised + weight * unsupervised, "pseudo_used": confident.sum(),
                "pseudo_correct": (confident & (target == truth)).sum()}
    data = tf.data.Dataset.from_tensors(((x, y), ((weak, strong), truth)))
    model = FixMatch(network, threshold, weight)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    history = model.fit(data, epochs=1, verbose=0).history
    return {k: v[0] for k, v in history.items()}, expected


@pytest.mark.parametrize(("threshold", "weight"), [(0.0, 1.0), (0.4, 2.0), (0.99, 1.0)])
def test_fixmatch_loss_is_the_labelled_loss_plus_the_confident_strong_views_against_the_weak_ones(threshold, weight):
    reported, expected = fixmatch_step(threshold, weight)
    assert reported["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert reported["pseudo_used"] == expected["pseudo_used"]
    assert reported["pseudo_correct"] == expected["pseudo_correct"]


def test_fixmatch_scores_and_keeps_a_moving_average_of_the_weights_that_ramps_up():
    """The averages against numpy's, from the weights after every step:
    momentum min(m, (1 + t) / (10 + t)) at step t; validation scores the
    network with them (against Keras's evaluate of the network holding them),
    and keep_average puts them into the network."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,), name="x")
    network = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
    rng = np.random.default_rng(2)
    batches = [((rng.normal(size=(4, 4)).astype(np.float32), rng.integers(0, 3, 4)),
                ((rng.normal(size=(8, 4)).astype(np.float32), rng.normal(size=(8, 4)).astype(np.float32)),
                 rng.integers(0, 3, 8))) for _ in range(30)]
    data = tf.data.Dataset.from_generator(lambda: iter(batches), output_signature=(
        (tf.TensorSpec((4, 4), tf.float32), tf.TensorSpec((4,), tf.int64)),
        ((tf.TensorSpec((8, 4), tf.float32), tf.TensorSpec((8, 4), tf.float32)), tf.TensorSpec((8,), tf.int64))))
    val_x, val_y = rng.normal(size=(16, 4)).astype(np.float32), rng.integers(0, 3, 16)
    expected = [w.copy() for w in network.get_weights()]
    trajectory = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            trajectory.append(network.get_weights())

    model = FixMatch(network, 0.0, 1.0, ema_momentum=0.7)
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    history = model.fit(data, epochs=1, validation_data=(val_x, val_y), callbacks=[Record()], verbose=0).history
    for t, weights in enumerate(trajectory, start=1):
        momentum = min(0.7, (1 + t) / (10 + t))
        expected = [momentum * e + (1 - momentum) * w for e, w in zip(expected, weights)]
    assert len(trajectory) == 30 and momentum == 0.7, "the ramp reached the momentum"
    for average, e in zip(model.averages, expected):
        np.testing.assert_allclose(average.numpy(), e, rtol=1e-5, atol=1e-6)
    assert not np.allclose(trajectory[-1][0], expected[0], atol=1e-3), "the average is not the last weights"
    model.keep_average()
    for w, e in zip(network.get_weights(), expected):
        np.testing.assert_allclose(w, e, rtol=1e-5, atol=1e-6)
    network.compile(loss="sparse_categorical_crossentropy")
    assert history["val_loss"][0] == pytest.approx(network.evaluate(val_x, val_y, verbose=0), rel=1e-5)


def test_fixmatch_rounds_use_the_pool_without_labelling_it(tiles, tmp_path, capsys):
    common = ["--data", str(tiles), "--seed", "3", *FAST, "--rounds", "0", "--epochs", "1"]
    plain, fixmatch = tmp_path / "plain", tmp_path / "fixmatch"
    assert active_learning_train.main([*common, "--output", str(plain)]) == 0
    assert active_learning_train.main([*common, "--output", str(fixmatch), "--semi-supervised", "fixmatch",
                                       "--fixmatch-ratio", "1", "--pseudo-threshold", "0.18"]) == 0
    log = capsys.readouterr().out
    assert (fixmatch / "labelled.csv").read_text() == (plain / "labelled.csv").read_text()
    rows = rounds(fixmatch)
    for row, alone in zip(rows, rounds(plain), strict=True):
        used = int(row["pseudo_labelled"])
        unlabelled = int(re.search(rf"round {row['round']}: FixMatch trained on {used} confident views of (\d+) "
                                   "unlabelled pool tiles", log).group(1))
        # An epoch passes over the labelled tiles or, 32 a step, over the unlabelled ones, whichever is longer.
        labelled_steps = -(-int(row["labelled"]) // 32)
        assert int(alone["steps"]) == int(alone["epochs"]) * labelled_steps
        assert int(row["steps"]) == int(row["epochs"]) * max(labelled_steps, -(-unlabelled // 32)) > int(alone["steps"])
        # Each step reads fixmatch-ratio x batch pool views; the confident ones are counted.
        assert 0 < used <= 32 * int(row["steps"])
        assert 0 <= float(row["pseudo_accuracy"]) <= 1
