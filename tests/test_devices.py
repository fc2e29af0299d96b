"""Training on several devices and in mixed precision, tested on a CPU.

Several GPUs are simulated by splitting the CPU into two logical devices in a
subprocess (tests/two_replicas.py): ``--devices CPU:0,CPU:1`` then builds the
same MirroredStrategy, mirrored variables, split batches and all-reduced
gradients as two GPUs would. Mixed precision is forced with Keras's global
policy, as :func:`utils.common.setup.setup_process` sets it on a GPU.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import active_learning_inference
import active_learning_train
from tests.conftest import FAST, RECORD_TILE, ROOT
from utils.common.config import load_config
from utils.common.errors import InputError
from utils.common.scales import Scales
from utils.network.devices import chosen_devices
from utils.network.model import load_model
from utils.tiles.records import read_index, record_files, triplet_dataset

TWO = ["--devices", "CPU:0,CPU:1"]
#: The global batch of the loss comparison: it divides the 100 tiles of round
#: 0, so one and two replicas fit on the same batches.
EVEN_BATCH = 20


def rounds(run: Path) -> list[dict[str, str]]:
    with (run / "rounds.csv").open() as handle:
        return list(csv.DictReader(handle))


def state(run: Path) -> dict:
    return json.loads((run / "state.json").read_text())


@pytest.fixture(scope="module")
def two_replicas(tiles, small_tiles, tmp_path_factory) -> tuple[Path, str]:
    """Every training path on two replicas, in one process: full mode
    interrupted in round 1 and resumed, head mode, a fine-tune from the
    full run's model at an even global batch, the texture backbone in head
    mode, its head refitted every round, SimCLR, and FixMatch with its moving
    average of the weights. Returns the folder of the runs and the process's
    log."""
    root = tmp_path_factory.mktemp("two_replicas")
    common = ["--data", str(tiles), "--seed", "1", *FAST, *TWO]
    runs = [
        {"argv": [*common, "--output", str(root / "full"), "--rounds", "1"], "interrupt_fit": 2},
        {"argv": [*common, "--output", str(root / "full"), "--rounds", "1", "--resume"]},
        {"argv": [*common, "--output", str(root / "head"), "--rounds", "1", "--freeze-backbone"]},
        {"argv": [*common, *fine_tuning(root / "full", root / "tuned")]},
        {"argv": [*common, "--output", str(root / "texture"), "--rounds", "1", "--freeze-backbone",
                  "--backbone", "texture", "--head-from", "start", "--patience", "0"]},
        {"argv": ["--self-supervised", "simclr", "--data", str(small_tiles), "--output", str(root / "simclr"),
                  "--backbone", "small", "--backbone-weights", "none", "--batch-size", "64", "--optimizer", "adam",
                  "--learning-rate", "1e-3", "--epochs", "2", *TWO]},
        {"argv": [*common, "--output", str(root / "fixmatch"), "--rounds", "0", "--epochs", "2",
                  "--semi-supervised", "fixmatch", "--fixmatch-ratio", "2", "--pseudo-threshold", "0.18"]},
    ]
    (root / "runs.json").write_text(json.dumps(runs))
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "two_replicas.py"), str(root / "runs.json")],
                            capture_output=True, text=True, timeout=900)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    return root, log


def fine_tuning(source: Path, output: Path) -> list[str]:
    """Round 0 from the source run's model at a global batch that divides its
    100 tiles, so one and two replicas fit on the same batches."""
    return ["--output", str(output), "--rounds", "0", "--weights", str(source / "model.keras"),
            "--batch-size", str(EVEN_BATCH)]


def test_every_training_path_runs_on_two_replicas(two_replicas):
    """Before the fix, full mode stopped in its first fit ("Mixing different
    tf.distribute.Strategy objects": the optimizer was made outside the
    strategy's scope) and head mode in its first update ("tuple indices must
    be integers or slices, not MirroredVariable")."""
    root, log = two_replicas
    statuses = [line for line in log.splitlines() if line.startswith("run ")]
    assert statuses == ["run 0: 130", *(f"run {k}: 0" for k in range(1, 7))], log[-4000:]
    assert log.count("training on 2 replicas (MirroredStrategy over CPU:0, CPU:1): --batch-size 32 is the global "
                     "batch, 16 tiles per replica per step") == 5
    assert f"--batch-size {EVEN_BATCH} is the global batch, {EVEN_BATCH // 2} tiles per replica" in log
    assert f"resuming {root / 'full'} at round 1" in log
    assert f"loaded source weights from {root / 'full' / 'model.keras'}" in log
    for name, last_round in (("full", 1), ("head", 1), ("tuned", 0), ("texture", 1), ("fixmatch", 0)):
        saved = state(root / name)
        assert saved["devices"] == ["CPU:0", "CPU:1"]
        assert saved["round"] == last_round
        assert all(np.isfinite(epoch["loss"]) and np.isfinite(epoch["val_loss"]) for epoch in saved["history"])
        assert all(np.isfinite(w).all() for w in load_model(root / name / "model.keras").get_weights()), name
    assert "--batch-size 64 is the global batch, 32 tiles per replica per step" in log
    pretraining = json.loads((root / "simclr" / "pretraining.json").read_text())["history"]
    assert len(pretraining) == 2 and all(np.isfinite(epoch["loss"]) for epoch in pretraining)
    assert (root / "texture" / "head_start.npz").exists()
    assert int(rounds(root / "fixmatch")[-1]["pseudo_labelled"]) > 0, "FixMatch trained on pool views"
    assert [r["epochs"] for r in rounds(root / "texture")] == ["2", "2"], "--patience 0: every epoch"
    for name in ("full", "head"):
        first, second = rounds(root / name)
        assert int(second["labelled"]) == int(first["labelled"]) + 40
    # Fine-tuning starts from the full run's kept model: its source row scores it as that run did.
    source = rounds(root / "tuned")[0]
    kept = next(r for r in rounds(root / "full") if int(r["round"]) == state(root / "full")["best"]["round"])
    assert source["round"] == "-1" and float(source["val_macro_f1"]) == pytest.approx(float(kept["val_macro_f1"]))


def test_two_replicas_fit_as_one_device_does_with_the_same_global_batch(two_replicas, tiles, tmp_path):
    """The fine-tune's first-epoch loss on two replicas against one device,
    same seed and source model, same global batch (so both see the same five
    batches of 20). The replicas sum their gradients before each update, so
    each update is the global batch's; what differs is each replica's own
    dropout masks (0.4 on both dense layers) and the order of float sums.
    Measured: a relative difference of 1.7%; the bound allows 3%."""
    root, _ = two_replicas
    one = tmp_path / "one"
    assert active_learning_train.main(["--data", str(tiles), "--seed", "1", *FAST,
                                       *fine_tuning(root / "full", one)]) == 0
    assert int(rounds(one)[1]["labelled"]) % EVEN_BATCH == 0, "the premise: no partial batch"
    first_one, first_two = state(one)["history"][0]["loss"], state(root / "tuned")["history"][0]["loss"]
    assert first_two == pytest.approx(first_one, rel=0.03)
    assert state(one)["devices"] == ["default"]


def test_the_model_of_two_replicas_maps_a_slide_on_one_device(two_replicas, tiles, tmp_path):
    root, _ = two_replicas
    slide = tiles.parent / "slides" / "slide0.tiff"
    assert active_learning_inference.main(["--slides", str(slide), "--model", str(root / "full" / "model.keras"),
                                           "--output", str(tmp_path / "maps")]) == 0
    summary = json.loads((tmp_path / "maps" / "slide0" / "summary.json").read_text())
    assert summary["tissue_tiles"] > 0
    assert sum(c["cells"] for c in summary["classes"].values()) >= summary["tissue_tiles"]


def test_resuming_on_another_replica_count_says_so(two_replicas, tmp_path, tiles, capsys):
    root, _ = two_replicas
    run = tmp_path / "head"
    shutil.copytree(root / "head", run)
    assert active_learning_train.main(["--data", str(tiles), "--seed", "1", *FAST, "--output", str(run),
                                       "--rounds", "2", "--freeze-backbone", "--resume"]) == 0
    assert "its earlier rounds ran on 2 replica(s) (CPU:0, CPU:1), this one on 1" in capsys.readouterr().out
    assert state(run)["devices"] == ["default"] and state(run)["round"] == 2


def test_devices_are_chosen_by_count_or_name_and_wrong_choices_say_what_is_visible():
    assert chosen_devices("all") == [], "no GPU here: TensorFlow's own placement"
    assert chosen_devices("CPU:0") == ["/device:CPU:0"]
    assert chosen_devices("/cpu:0") == chosen_devices("CPU:0")
    with pytest.raises(InputError, match="no GPU is visible"):
        chosen_devices("2")
    with pytest.raises(InputError, match=r"no device 'GPU:7'; visible: CPU:0"):
        chosen_devices("GPU:7")
    with pytest.raises(InputError, match="twice"):
        chosen_devices("CPU:0,cpu:0")


@pytest.fixture
def mixed_precision():
    """Keras's mixed_float16 policy for one test, as a GPU gets it."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("mode", [[], ["--freeze-backbone"]], ids=["full", "head"])
def test_mixed_precision_trains_and_its_model_reloads_in_float32(tiles, tmp_path, mixed_precision, mode):
    """Float16 compute with float32 weights: the loss must stay finite and
    fall (Keras's fit and the head's loop both scale the loss), the softmax
    must stay float32, and the saved model must load on a CPU in float32 and
    predict the same classes."""
    run = tmp_path / "run"
    assert active_learning_train.main(["--data", str(tiles), "--seed", "1", *FAST, "--output", str(run),
                                       "--rounds", "0", "--epochs", "4", "--patience", "4", "--learning-rate", "1e-2", *mode]) == 0
    losses = [epoch["loss"] for epoch in state(run)["history"]]
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
    mixed = load_model(run / "model.keras")
    assert mixed.get_layer("fc2").compute_dtype == "float16"
    assert mixed.get_layer("fc1").compute_dtype == "float32", "it holds the folded standardisation (head mode)"
    assert mixed.outputs[0].dtype == "float32"
    config = load_config(tile_size=RECORD_TILE)
    index = read_index(record_files(tiles))
    batch, _ = next(iter(triplet_dataset(index, np.arange(128), Scales(config.magnifications, RECORD_TILE), 128)))
    probs16 = np.asarray(mixed(batch, training=False))
    assert probs16.dtype == np.float32
    keras.mixed_precision.set_global_policy("float32")
    reloaded = load_model(run / "model.keras")
    assert {layer.compute_dtype for layer in reloaded.get_layer("backbone_mag_40x").layers[1:]} == {"float32"}
    assert reloaded.get_layer("fc1").compute_dtype == "float32"
    probs32 = np.asarray(reloaded(batch, training=False))
    # Half precision moves the probabilities by less than 1e-3 in full mode
    # (measured: 7e-5) and 1e-2 in head mode (4.8e-3: the head trains on
    # standardised features, which magnify float16's relative error of a
    # feature that varies little about its mean), so the class can change only
    # where the top two are that close.
    tolerance = 1e-2 if mode else 1e-3
    assert np.abs(probs16 - probs32).max() < tolerance
    top2 = np.sort(probs32, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * tolerance
    assert clear.sum() >= 64, "enough tiles that are not near-ties for the class check to mean something"
    np.testing.assert_array_equal(probs16.argmax(axis=1)[clear], probs32.argmax(axis=1)[clear])


def test_the_texture_backbone_is_standardised_and_trains_on_two_replicas(two_replicas, tiles):
    """Its standardisation is set on the mirrored variables outside a replica
    context: the saved model carries the training split's means, and
    predicts as the same network rebuilt on one device."""
    from utils.network.model import Predictor, build_model
    from utils.network.model_spec import ModelSpec
    from utils.network.texture import STANDARDIZE

    root, _ = two_replicas
    assert [int(r["round"]) for r in rounds(root / "texture")] == [0, 1]
    model = load_model(root / "texture" / "model.keras")
    mean, variance = model.get_layer("backbone_mag_40x").get_layer(STANDARDIZE).get_weights()
    assert np.abs(mean).max() > 0 and not np.allclose(variance, 1.0), "fitted, not the initial 0 and 1"
    config = load_config(tile_size=RECORD_TILE)
    rebuilt = build_model(config, ModelSpec("texture", 32), None)
    rebuilt.set_weights(model.get_weights())
    inputs, _ = next(iter(triplet_dataset(read_index(record_files(tiles)), np.arange(32),
                                          Scales(config.magnifications, RECORD_TILE), 32)))
    np.testing.assert_allclose(Predictor(model).probabilities(inputs), Predictor(rebuilt).probabilities(inputs),
                               atol=1e-6)
