"""Self-supervised pretraining (``--self-supervised simclr``): the loss against
the SimCLR paper's formula written out in numpy, the views, and the job:
checkpointed every epoch, resumed, and its backbone loaded by a training run."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import active_learning_train
from tests.conftest import FAST, RECORD_TILE
from utils.network.model import build_backbone, load_model
from utils.network.simclr import nt_xent, view


def numpy_nt_xent(z1: np.ndarray, z2: np.ndarray, temperature: float) -> float:
    """NT-Xent view by view, as Chen et al. (2020) write it: for view i and its
    positive j, -log(exp(s_ij / t) / sum over k != i of exp(s_ik / t)), with s
    the cosine similarity, averaged over the 2N views."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        positive = z[i] @ z[(i + n) % (2 * n)] / temperature
        others = np.array([z[i] @ z[k] / temperature for k in range(2 * n) if k != i])
        total += np.log(np.exp(others).sum()) - positive
    return total / (2 * n)


@pytest.mark.parametrize("temperature", [0.1, 0.2, 1.0])
def test_nt_xent_is_the_papers_loss(temperature):
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
    got = float(nt_xent(tf.constant(z1, tf.float32), tf.constant(z2, tf.float32), temperature))
    assert got == pytest.approx(numpy_nt_xent(z1, z2, temperature), rel=1e-4)
    same = float(nt_xent(tf.constant(z1, tf.float32), tf.constant(z1, tf.float32), temperature))
    assert same < got, "two identical views of each window are the easiest pairs"


def test_views_are_windows_of_the_same_size_range_and_tissue_but_differ():
    rng = np.random.default_rng(1)
    window = tf.constant(rng.uniform(0, 255, (32, 32, 3)), tf.float32)
    tf.random.set_seed(0)
    first, second = view(window).numpy(), view(window).numpy()
    assert first.shape == second.shape == (32, 32, 3)
    assert 0.0 <= first.min() and first.max() <= 255.0
    assert np.abs(first - second).mean() > 1.0, "two draws give two views"


def test_pretraining_resumes_and_its_backbone_is_what_a_training_run_loads(small_tiles, tiles, tmp_path, capsys):
    out = tmp_path / "simclr"
    argv = ["--self-supervised", "simclr", "--data", str(small_tiles), "--output", str(out), "--backbone", "small",
            "--backbone-weights", "none", "--batch-size", "64", "--optimizer", "adam", "--learning-rate", "1e-3"]
    assert active_learning_train.main([*argv, "--epochs", "1"]) == 0
    first = json.loads((out / "pretraining.json").read_text())["history"]
    assert [row["epoch"] for row in first] == [1] and np.isfinite(first[0]["loss"])
    assert active_learning_train.main([*argv, "--epochs", "1"]) == 2, "a finished pretraining is not redone"
    assert "pass --resume" in capsys.readouterr().err
    assert active_learning_train.main([*argv, "--epochs", "3", "--resume"]) == 0
    history = json.loads((out / "pretraining.json").read_text())["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3] and history[0] == first[0]
    assert "resuming" in capsys.readouterr().out
    assert history[-1]["loss"] < history[0]["loss"], "the contrastive loss falls"

    weights = out / "backbone.weights.h5"
    oracle = build_backbone("small", RECORD_TILE, None, "oracle")
    oracle.load_weights(weights)
    run = tmp_path / "source"
    assert active_learning_train.main(["--data", str(tiles), "--output", str(run), *FAST, "--rounds", "0",
                                       "--epochs", "1", "--learning-rate", "0", "--backbone-weights",
                                       str(weights)]) == 0
    model = load_model(run / "model.keras")
    backbones = [layer for layer in model.layers if layer.name.startswith("backbone_")]
    assert len(backbones) == 3
    for backbone in backbones:
        for got, expected in zip(backbone.get_weights(), oracle.get_weights(), strict=True):
            np.testing.assert_array_equal(got, expected)
    untrained = build_backbone("small", RECORD_TILE, None, "untrained")
    assert not np.array_equal(untrained.get_weights()[0], oracle.get_weights()[0])


def test_texture_with_a_pretrained_small_cnn_loads_it_beside_the_filter_bank(small_tiles, tmp_path):
    small = build_backbone("small", RECORD_TILE, None, "small")
    keras.utils.set_random_seed(3)
    small.set_weights([np.random.default_rng(3).normal(size=w.shape).astype("float32") for w in small.get_weights()])
    path = tmp_path / "small.weights.h5"
    small.save_weights(path)
    both = build_backbone("texture+small", RECORD_TILE, str(path), "both")
    inner = [layer for layer in both.layers if isinstance(layer, keras.Model)]
    assert len(inner) == 1
    for got, expected in zip(inner[0].get_weights(), small.get_weights(), strict=True):
        np.testing.assert_array_equal(got, expected)


def test_the_filter_bank_is_not_pretrained_and_a_pretraining_takes_no_labels():
    from utils.common.errors import InputError
    from utils.learning.train_options import TrainOptions

    for backbone in ("texture", "texture+small"):
        with pytest.raises(InputError, match="pretrain --backbone small"):
            TrainOptions(data=Path("d"), output=Path("o"), self_supervised="simclr", backbone=backbone)
    with pytest.raises(InputError, match="without labels"):
        TrainOptions(data=Path("d"), output=Path("o"), self_supervised="simclr", query_only=True)
