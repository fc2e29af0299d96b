"""Training over active-learning rounds on synthetic records, the model
builder, and a real-texture learning check on the Kather tiles."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import keras

import numpy as np
import pytest
import shapely.geometry
import yaml

import active_learning_train
import tfrecord_generator
from tests.conftest import FAST, RECORD_TILE as TILE, ROOT, shared_file, wait_for
from utils.common.config import load_config
from utils.common.errors import InputError, ModelError
from utils.learning import learners
from utils.learning import queries
from utils.learning.active_learning import class_ratio_allocation
from utils.learning.learners import HEAD_START, HeadOnFeatures
from utils.learning.run_state import RunState
from utils.learning.train_options import TrainOptions
from utils.learning.training import run_training
from utils.learning.training_data import TrainingData
from utils.network.devices import distribution_over
from utils.network.model import Predictor, build_model, check_compatible, load_weights_by_name, save_model
from utils.network.model_spec import ModelSpec, read_metadata
from utils.tiles.records import read_index, record_files
from utils.tiles.synthetic import SyntheticRegion, make_slide, rectangle, write_geojson

@pytest.fixture(scope="module")
def one_round(tiles, tmp_path_factory) -> Path:
    """A plain run: round 0 and one query round, seed 1 (tests copy it before changing it)."""
    run = tmp_path_factory.mktemp("one_round") / "run"
    assert active_learning_train.main(["--data", str(tiles), "--output", str(run), "--rounds", "1", "--seed", "1",
                                       *FAST]) == 0
    return run


def rows_of(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_rounds_grow_the_labelled_set_and_resume_after_a_kill(tiles, one_round, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(one_round, run)
    first = rows_of(run / "labelled.csv")
    # The run is "killed" after round 1, even in the middle of writing round 2: its
    # labelled.csv already lists tiles of round 2, state.json does not know them yet.
    split = json.loads((run / "split.json").read_text())
    index = read_index(record_files(tiles))
    taken = {(r["slide"], r["x"], r["y"]) for r in first}
    extra = [(s, x, y, c) for s, x, y, c in zip(index.slide, index.x, index.y, index.label)
             if s in split["train"] and c >= 0 and (s, str(x), str(y)) not in taken][:5]
    with (run / "labelled.csv").open("a") as handle:
        handle.writelines(f"{s},{x},{y},{c},2\n" for s, x, y, c in extra)
    # A rerun with --resume must go on at round 2, from the round-1 labelled set.
    capsys.readouterr()
    assert active_learning_train.main(["--data", str(tiles), "--output", str(run), "--rounds", "2", "--resume",
                                       "--seed", "1", *FAST]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "at round 2" in out
    assert "round 0:" not in out and "round 1:" not in out, "finished rounds are not trained again"

    rounds = rows_of(run / "rounds.csv")
    assert [int(r["round"]) for r in rounds] == [0, 1, 2]
    labelled = [int(r["labelled"]) for r in rounds]
    assert labelled[1] == labelled[0] + 40 and labelled[2] == labelled[1] + 40
    for r in rounds:
        assert 0.0 <= float(r["test_macro_f1"]) <= 1.0
    final = rows_of(run / "labelled.csv")
    keys = {(r["slide"], r["x"], r["y"]) for r in final}
    assert {(r["slide"], r["x"], r["y"]) for r in first} <= keys, "the labelled set only grows"
    assert len(final) == labelled[2], "a half-written round is not counted twice"
    assert {r["slide"] for r in final} <= set(split["train"]), "no val/test slide is ever labelled"
    assert not set(split["train"]) & (set(split["val"]) | set(split["test"]))

    for name in ("model.keras", "config.json", "class_counts.json", "learning_curve.png", "training_curves.png",
                 "confusion_matrix.png", "rounds/round_0.keras", "rounds/round_2.keras"):
        assert (run / name).exists(), name
    for k in (1, 2):
        folder = run / "queries" / f"round_{k}"
        queries = rows_of(folder / "queries.csv")
        assert len(queries) == 40 and (folder / "contact_sheet_1.png").exists()
        assert {q["slide"] for q in queries} <= set(split["train"])
        geojson = json.loads((folder / f"{queries[0]['slide']}.geojson").read_text())
        ring = np.array(geojson["features"][0]["geometry"]["coordinates"][0])
        assert ring.max(axis=0)[0] - ring.min(axis=0)[0] == TILE
    metadata = read_metadata(run / "model.keras")
    assert metadata["config"]["tile_size"] == TILE and metadata["backbone"] == "small"


def test_class_budgets_go_by_predicted_classes_unless_the_oracle_is_asked_for(tiles, tmp_path):
    config = load_config(tile_size=TILE)
    options = TrainOptions(data=tiles, output=tmp_path, spec=ModelSpec("small", 32), backbone_weights=None,
                           strategy="class_ratio", budget=30, initial=5, slide_class_cap=60, eval_cap=40)
    rng = np.random.default_rng(0)
    run = TrainingData(options, config, rng)
    state = RunState.initial(run, options.initial, False, rng)
    labelled = state.labelled
    truth = run.index.label

    class PredictsOneClass:  # a learner that calls every tile class c
        def __init__(self, c: int) -> None:
            self.c = c

        def predict(self, ids, mc_passes=0, embeddings=False):
            return {"ids": ids, "labels": truth[ids], "probs": np.eye(config.num_classes)[np.full(len(ids), self.c)]}

    chosen = queries.query(run, PredictsOneClass(2), options, state)
    assert len(chosen.ids) == 30 and (chosen.predicted == 2).all()
    assert len(set(truth[chosen.ids])) > 1, "all of the budget went to the one predicted class, whatever the truth"

    oracle = queries.query(run, PredictsOneClass(2), dataclasses.replace(options, oracle_classes=True), state)
    counts = np.bincount(truth[oracle.ids], minlength=config.num_classes)
    available = np.bincount(truth[np.setdiff1d(run.pool_ids, labelled)], minlength=config.num_classes)
    np.testing.assert_array_equal(counts, class_ratio_allocation(30, state.misclassified, available))

    # The warm start draws class-balanced by predicted class, then hands over to the strategy.
    warm = dataclasses.replace(options, strategy="entropy", warm_start=0.5)
    assert queries.query(run, PredictsOneClass(1), warm, state).strategy == queries.WARM_START
    state.labelled = np.union1d(labelled, run.pool_ids[: int(0.6 * len(run.pool_ids))])
    assert queries.query(run, PredictsOneClass(1), warm, state).strategy == "entropy"


def qupath_reads(feature: dict) -> dict:
    """A feature as QuPath's GeoJSON reader (PathObjectTypeAdapters in qupath-core)
    takes it, with every type it insists on checked: a Feature with a geometry,
    ``objectType`` naming a known object, ``classification`` (when present) as
    {name, color [r, g, b]}, the object's own ``color`` as [r, g, b], ``name``
    a string, ``isLocked`` a boolean and ``measurements`` an object of numbers
    (read into a Map<String, Double>)."""
    assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
    properties = feature["properties"]
    assert properties["objectType"] == "annotation"
    classification = properties.get("classification")
    for colour in (properties["color"], *([classification["color"]] if classification else [])):
        assert len(colour) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in colour)
    assert isinstance(properties["name"], str) and isinstance(properties["isLocked"], bool)
    measurements = properties["measurements"]
    assert isinstance(measurements, dict)
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in measurements.values())
    return {"class": classification["name"] if classification else None, "colour": tuple(properties["color"]),
            "name": properties["name"], "measurements": measurements,
            "roi": shapely.geometry.shape(feature["geometry"])}


def test_query_only_writes_the_next_batch_from_the_unlabelled_pool(tiles, tmp_path, capsys):
    run = tmp_path / "annotate"
    assert active_learning_train.main(["--data", str(tiles), "--output", str(run), "--query-only",
                                       "--strategy", "margin", *FAST]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if "no built-in class" in x]
    assert "blood, damaged, muscle, urothelium:" in line, "the configured classes QuPath would add as new ones"
    assert "Stroma" in line.split(":", 1)[1] and "stroma," not in line.split(":", 1)[0]
    folder = run / "queries" / "round_1"
    queries = rows_of(folder / "queries.csv")
    assert len(queries) == 40
    assert all(q["label"] == "" for q in queries), "queries come from the unlabelled pool"
    assert all(q["predicted"] for q in queries) and len(rows_of(run / "rounds.csv")) == 1
    assert [int(q["number"]) for q in queries] == list(range(1, 41))
    assert sorted(p.name for p in folder.glob("contact_sheet_*.png")) == ["contact_sheet_1.png", "contact_sheet_2.png"]

    config = load_config(tile_size=TILE)
    colours = {c["name"]: tuple(int(c["color"][k:k + 2], 16) for k in (1, 3, 5)) for c in config.classes}
    stride = {json.loads(p.read_text())["slide"]: json.loads(p.read_text())["stride_level0"]
              for p in tiles.glob("*.summary.json")}
    by_number = {f"round 1 #{q['number']} ({q['predicted']}?)": q for q in queries}
    read = [qupath_reads(f) for path in folder.glob("*.geojson") for f in json.loads(path.read_text())["features"]]
    assert sorted(r["name"] for r in read) == sorted(by_number)
    assert {r["class"] for r in read} == {None}, "no square carries a class the pathologist did not set"
    for square in read:
        query = by_number[square["name"]]
        assert square["colour"] == colours[query["predicted"]], "drawn in the predicted class's colour"
        side = stride[query["slide"]]
        assert square["roi"].is_valid and square["roi"].area == pytest.approx(side * side)
        assert (square["roi"].centroid.x, square["roi"].centroid.y) == pytest.approx((float(query["x"]),
                                                                                      float(query["y"])))
        m = square["measurements"]
        assert (m["centre x (px)"], m["centre y (px)"]) == (float(query["x"]), float(query["y"]))
        first, second = m[f"P({query['predicted']})"], m[f"P({query['second']})"]
        assert 1.0 >= first >= second >= 0.0 and first == pytest.approx(float(query["probability"]), abs=1e-6)
        assert m["margin"] == pytest.approx(first - second, abs=1e-5), "the margin reads as the gap, not its negative"
        assert m["rank in pool"] == int(query["rank"]) >= 1
    ranks = [int(q["rank"]) for q in queries]
    assert len(set(ranks)) == 40 and min(ranks) == 1, "each query's place among the pool's scores"


def test_source_weights_load_by_name_and_missing_layers_are_listed(tmp_path):
    source_config = load_config(tile_size=TILE)
    target_config = load_config(tile_size=TILE, classes=source_config.classes[:4], rules=[], priority=[])
    source = build_model(source_config, ModelSpec("small", 16), None)
    save_model(source, tmp_path / "source.keras", {})
    target = build_model(target_config, ModelSpec("small", 16), None)
    missing = load_weights_by_name(target, tmp_path / "source.keras")
    assert missing == ["predictions"]
    for name in ("backbone_mag_40x", "fc1", "fc2"):
        for a, b in zip(target.get_layer(name).get_weights(), source.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)


def test_failed_imagenet_download_says_how_to_pass_a_local_file(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -2] Name or service not known")

    monkeypatch.setattr(keras.applications, "VGG16", offline)
    with pytest.raises(ModelError, match="--backbone-weights PATH"):
        build_model(load_config(tile_size=TILE), ModelSpec("vgg16", 16), "imagenet")


def test_local_backbone_weights_file(tmp_path):
    backbone = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(TILE, TILE, 3), alpha=0.35)
    path = tmp_path / "mobilenet.weights.h5"
    backbone.save_weights(path)
    model = build_model(load_config(tile_size=TILE, magnifications=[10]), ModelSpec("mobilenetv2", 16), str(path))
    for a, b in zip(model.get_layer("backbone_mag_10x").get_weights(), backbone.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_mobilenet_from_scratch_follows_its_batch_statistics():
    """Keras' MobileNetV2 keeps 0.999 of its moving statistics a step (and
    Keras' usual momentum 0.99): from scratch, 100 steps would leave them 90%
    (37%) at their start, and inference would normalise with stale statistics."""
    model = build_model(load_config(tile_size=TILE, magnifications=[10]), ModelSpec("mobilenetv2", 16), None)
    backbone = model.get_layer("backbone_mag_10x")
    features = keras.Model(backbone.input, backbone.get_layer("Conv1").output)(
        np.random.default_rng(0).uniform(0, 2, (8, TILE, TILE, 3)).astype("float32"))
    norm = backbone.get_layer("bn_Conv1")
    for _ in range(100):
        norm(features, training=True)
    target = keras.ops.convert_to_numpy(features).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(norm.moving_mean), target, atol=0.02 * np.abs(target).max())


def test_one_and_two_scale_models_and_compatibility_errors():
    mono = build_model(load_config(tile_size=TILE, magnifications=[10]), ModelSpec("small", 16), None)
    di = build_model(load_config(tile_size=TILE, magnifications=[20, 5]), ModelSpec("small", 16), None)
    assert mono.name == "mono_cnn" and len(mono.inputs) == 1 and di.name == "di_cnn"
    with pytest.raises(ModelError, match="scale input"):
        check_compatible(mono, load_config(tile_size=TILE))
    with pytest.raises(ModelError, match="px tiles"):
        check_compatible(mono, load_config(tile_size=64, magnifications=[10]))
    with pytest.raises(ModelError, match="classes"):
        check_compatible(mono, load_config(tile_size=TILE, magnifications=[10], classes=[
            {"name": "background", "color": "#000000"}, {"name": "x", "color": "#FFFFFF"}], rules=[], priority=[]))


def test_small_model_learns_real_kather_textures(tmp_path):
    """Kather et al. 2016 colorectal tiles (CC BY 4.0) through tfrecord_generator.py
    --tiles, split by source slide.

    The "empty" class is left out by a configuration without its rule: nearly
    all its tiles come from one slide, so no split by slide can both train and
    test it."""
    config_file = tmp_path / "kather.yaml"
    settings = yaml.safe_load((ROOT / "experiments" / "kather.yaml").read_text())
    settings["classes"] = settings["classes"][:7]
    settings["rules"] = settings["rules"][:7]
    config_file.write_text(yaml.safe_dump(settings))
    data = tmp_path / "kather"
    with pytest.warns(UserWarning, match="08_EMPTY"):
        assert tfrecord_generator.main(["--tiles", str(shared_file("kather")), "--mpp", "0.495", "--config",
                                        str(config_file), "--magnifications", "10", "--tile-size", "48",
                                        "--slide-pattern", r"(CRC-Prim-HE-\d+)", "--output", str(data)]) == 0
    config = load_config(config_file, magnifications=[10], tile_size=48)
    split = tmp_path / "split.json"
    name = "CRC-Prim-HE-{:02d}".format
    split.write_text(json.dumps({"train": [name(i) for i in (1, 2, 3, 4, 5, 7)], "val": [name(9), name(10)],
                                 "test": [name(6), name(8)]}))
    options = TrainOptions(data=data, output=tmp_path / "run", spec=ModelSpec("small", 64), backbone_weights=None,
                           rounds=0, initial=1000, epochs=10, batch_size=32, optimizer="adam", learning_rate=2e-3,
                           slide_class_cap=None, split_file=split, seed=1)
    last = run_training(options, config).rows[-1]
    chance = 1 / 7
    train_tiles = [p for p in shared_file("kather").glob("0[1-7]_*/*.png")
                   if re.search(r"CRC-Prim-HE-(\d+)", p.name).group(1) in {"01", "02", "03", "04", "05", "07"}]
    assert last["labelled"] == len(train_tiles), "one 48-px window at 10x fits a 150-px tile at 20x"
    assert last["test_accuracy"] > 2.5 * chance, last


def test_metrics_agree_with_scikit_learn_and_absent_classes_have_no_f1(tiles, tmp_path):
    from sklearn.metrics import f1_score, log_loss

    from utils.learning.evaluation import evaluate

    config = load_config(tile_size=TILE)
    run = TrainingData(TrainOptions(data=tiles, output=tmp_path, slide_class_cap=None), config,
                       np.random.default_rng(0))
    truth = np.array([1, 1, 2, 2, 3, 3, 4, 5])
    guess = np.array([1, 2, 2, 2, 3, 5, 4, 5])

    class Answers:  # a learner whose predictions are given
        def __init__(self, probs: np.ndarray) -> None:
            self.probs = probs

        def predict(self, ids, mc_passes=0, embeddings=False):
            return {"ids": np.arange(len(truth)), "labels": truth, "probs": self.probs}

    result = evaluate(Answers(np.eye(config.num_classes)[guess]), run, np.arange(len(truth)))
    assert result["accuracy"] == pytest.approx(6 / 8)
    assert result["macro_f1"] == pytest.approx(f1_score(truth, guess, average="macro"))
    assert np.isnan(result["per_class_f1"][0]), "background is absent: no F1, not 0"
    np.testing.assert_allclose(result["per_class_f1"][1:], f1_score(truth, guess, labels=[1, 2, 3, 4, 5], average=None))
    assert result["misclassified"].tolist() == [0, 1, 0, 1, 0, 0]
    soft = np.random.default_rng(0).dirichlet(np.ones(config.num_classes), size=len(truth)).astype(np.float32)
    loss = evaluate(Answers(soft), run, np.arange(len(truth)))["loss"]
    assert loss == pytest.approx(log_loss(truth, soft.astype(np.float64), labels=range(config.num_classes)), rel=1e-6)


def test_the_kept_round_follows_model_selection():
    """F1 and loss can disagree: val_f1 keeps round 1, val_loss (the original
    code's rule) keeps round 2."""
    from utils.learning.evaluation import improves

    rounds = [{"macro_f1": 0.50, "loss": 1.00}, {"macro_f1": 0.70, "loss": 0.90}, {"macro_f1": 0.65, "loss": 0.60}]
    for selection, expected in (("val_f1", 1), ("val_loss", 2)):
        best = {"round": None, "val_macro_f1": -1.0}
        for number, val in enumerate(rounds):
            if improves(val, best, selection):
                best = {"round": number, "val_macro_f1": val["macro_f1"], "val_loss": val["loss"]}
        assert best["round"] == expected


def test_head_only_training_on_cached_features_matches_the_model_and_keeps_the_backbone(tiles, tmp_path):
    # Seeded: with some initial weights a backbone channel that barely fires on the training tiles
    # fires hundreds of its deviations away on a validation tile, and Keras's loss from the softmax's
    # logits then differs from the clipped one of the training loop (and, unseeded, the test failed
    # about one run in three).
    keras.utils.set_random_seed(0)
    config = load_config(tile_size=TILE)
    options = TrainOptions(data=tiles, output=tmp_path, spec=ModelSpec("small", 32), backbone_weights=None,
                           freeze_backbone=True, epochs=2, batch_size=32, optimizer="adam", learning_rate=1e-2,
                           slide_class_cap=60, eval_cap=40)
    model = build_model(config, options.spec, None, freeze_backbone=True)
    rng = np.random.default_rng(0)
    run = TrainingData(options, config, rng)
    learner = HeadOnFeatures(model, run, options, distribution_over("all"))
    ids = run.val_ids
    direct = learners.predict(Predictor(model), run.dataset(ids, with_ids=True))
    order = np.argsort(direct["ids"])
    cached = learner.predict(ids)
    np.testing.assert_array_equal(cached["ids"], direct["ids"][order])
    np.testing.assert_allclose(cached["probs"], direct["probs"][order], atol=1e-5)
    assert cached["labels"].tolist() == direct["labels"][order].tolist()
    # The embeddings the diversity strategies read: the same from the cache as from the model.
    embedded = learners.predict(Predictor(model), run.dataset(ids, with_ids=True), embeddings=True)
    from_cache = learner.predict(ids, embeddings=True)
    for key in ("embeddings", "penultimate", "probs"):
        np.testing.assert_allclose(from_cache[key], embedded[key][order], atol=1e-5)
    assert embedded["penultimate"].shape[1] == 32, "the last dense layer's units"

    backbone = [w.copy() for w in model.get_layer("backbone_mag_40x").get_weights()]
    head = [w.copy() for w in model.get_layer("fc1").get_weights()]
    labelled = RunState.initial(run, options.initial, False, rng).labelled
    rows = learner.fit(labelled, run.index.label[labelled], run.val_ids, seed=0)
    assert len(rows) == 2
    # The head's own training loop reports Keras's loss: the best epoch's weights are restored.
    compiled = learner.cache.head
    compiled.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    loss, accuracy = compiled.evaluate(learner.cache.of(run.val_ids), learner.cache.labels[run.val_ids], verbose=0)
    best = min(rows, key=lambda r: r["val_loss"])
    assert (best["val_loss"], best["val_accuracy"]) == pytest.approx((loss, accuracy), abs=1e-4)
    for before, after in zip(backbone, model.get_layer("backbone_mag_40x").get_weights()):
        np.testing.assert_array_equal(before, after)
    assert any(not np.array_equal(b, a) for b, a in zip(head, model.get_layer("fc1").get_weights()))
    refreshed = learners.predict(Predictor(model), run.dataset(ids, with_ids=True))
    np.testing.assert_allclose(learner.predict(ids)["probs"],
                               refreshed["probs"][np.argsort(refreshed["ids"])], atol=1e-5)

    # --patience 0: every epoch runs and the last one's weights stay, although an earlier one had a lower
    # validation loss (shuffled labels make sure of it: the head learns noise).
    learner.options = dataclasses.replace(options, patience=0, epochs=8)
    rows = learner.fit(labelled, np.random.default_rng(0).permutation(run.index.label[labelled]), run.val_ids, seed=1)
    assert len(rows) == 8
    assert min(r["val_loss"] for r in rows) < rows[-1]["val_loss"], "a later epoch lost ground (the setting)"
    loss, accuracy = compiled.evaluate(learner.cache.of(run.val_ids), learner.cache.labels[run.val_ids], verbose=0)
    assert (rows[-1]["val_loss"], rows[-1]["val_accuracy"]) == pytest.approx((loss, accuracy), abs=1e-4)

    # --head-from start: each round's head starts from its weights before round 0, after a resume too
    # (the resumed model holds the last round's). A learning rate of 0 shows where a fit starts.
    labels = run.index.label[labelled]
    first = HeadOnFeatures(model, run, dataclasses.replace(options, head_from="start"), distribution_over("all"))
    start = [w.copy() for w in first.cache.head.get_weights()]
    assert (tmp_path / HEAD_START).exists()
    first.fit(labelled, labels, run.val_ids, seed=2)
    assert any(not np.array_equal(a, b) for a, b in zip(start, first.cache.head.get_weights()))
    still = dataclasses.replace(options, head_from="start", learning_rate=0.0)
    resumed = HeadOnFeatures(model, run, still, distribution_over("all"), resumed=True)
    resumed.fit(labelled, labels, run.val_ids, seed=3)
    for a, b in zip(start, resumed.cache.head.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)  # unfolded and folded back: float32 rounding
    with pytest.raises(InputError, match="started with --head-from last; resume it with --head-from last"):
        HeadOnFeatures(model, run, dataclasses.replace(still, output=tmp_path / "other"), distribution_over("all"),
                       resumed=True)
    with pytest.raises(InputError, match="started with --head-from start; resume it with --head-from start"):
        HeadOnFeatures(model, run, options, distribution_over("all"), resumed=True)
    HeadOnFeatures(model, run, options, distribution_over("all"))  # a fresh start with last forgets the old file
    assert not (tmp_path / HEAD_START).exists()
    with pytest.raises(InputError, match="needs --freeze-backbone"):
        dataclasses.replace(options, head_from="start", freeze_backbone=False)


def test_the_head_trains_on_standardised_features_so_its_fit_ignores_their_scale(tiles, tmp_path):
    """Scaling a ReLU layer's filters by a > 0 scales its outputs by a, so a
    backbone whose last filters are scaled per channel (by 10^-3.5 to 10^-0.5)
    gives the same features, each times its own factor. Trained on
    standardised features, a new head fits both backbones identically; the
    standardisation is scikit-learn's over the training split's tiles, but
    for channels that never fire there (centred only)."""
    from sklearn.preprocessing import StandardScaler

    config = load_config(tile_size=TILE)
    options = TrainOptions(data=tiles, output=tmp_path, spec=ModelSpec("small", 32, dropout=0.0),
                           backbone_weights=None, freeze_backbone=True, epochs=5, batch_size=16, optimizer="adam",
                           learning_rate=1e-2, slide_class_cap=60, eval_cap=40, patience=0)
    run = TrainingData(options, config, np.random.default_rng(0))
    models = []
    for factors in (None, 10.0 ** np.random.default_rng(1).uniform(-3.5, -0.5, 128)):
        keras.utils.set_random_seed(0)
        model = build_model(config, options.spec, None, freeze_backbone=True)
        if factors is not None:
            for name in ("mag_40x", "mag_10x", "mag_2_5x"):
                conv = model.get_layer(f"backbone_{name}").get_layer("conv4")
                kernel, bias = conv.get_weights()
                conv.set_weights([kernel * factors.astype(np.float32), bias * factors.astype(np.float32)])
        models.append(model)
    learners_ = [HeadOnFeatures(model, run, options, distribution_over("all")) for model in models]
    reference = np.union1d(run.candidates, run.pool_ids)
    features = learners.predict(Predictor(models[1]), run.dataset(reference, with_ids=True), embeddings=True)
    scaler = StandardScaler().fit(features["embeddings"])
    np.testing.assert_allclose(learners_[1].cache.mean, scaler.mean_, rtol=1e-4)
    deviation = np.sqrt(scaler.var_)  # scale_ reads 1 where the variance is 0
    fire = deviation > 1e-6 * deviation.max()
    np.testing.assert_allclose(learners_[1].cache.scale[fire], scaler.scale_[fire], rtol=1e-4)
    assert (learners_[1].cache.scale[~fire] == 1).all() and fire.mean() > 0.8
    assert scaler.scale_[fire].max() / scaler.scale_[fire].min() > 1e3, "the setting: features of very different scales"

    labelled = RunState.initial(run, 6, False, np.random.default_rng(2)).labelled
    probs = []
    for model, learner in zip(models, learners_):
        learner.fit(labelled, run.index.label[labelled], run.val_ids, seed=0)
        probs.append(learner.predict(run.test_ids)["probs"])
        direct = learners.predict(Predictor(model), run.dataset(run.test_ids, with_ids=True))
        order = np.argsort(direct["ids"])  # the model itself, on raw tiles: the standardisation is folded in
        np.testing.assert_allclose(direct["probs"][order], learner.predict(direct["ids"][order])["probs"], atol=1e-5)
    assert probs[0].max(axis=1).mean() > 0.5, "the head learned something"
    np.testing.assert_allclose(probs[0], probs[1], atol=2e-3)


def test_training_killed_mid_round_resumes_exactly_where_it_stopped(tiles, one_round, tmp_path):
    """The run of ``one_round``, killed with SIGKILL during round 1 and resumed,
    ends exactly as the uninterrupted run did."""
    flags = ["--data", str(tiles), "--rounds", "1", "--seed", "1", *FAST]
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, str(ROOT / "active_learning_train.py"), "--output", str(killed),
                                *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (killed / "state.json").exists() and json.loads((killed / "state.json").read_text())["round"] >= 0)
    finally:
        process.kill()  # SIGKILL: no clean-up runs
        process.wait()
    assert json.loads((killed / "state.json").read_text())["round"] < 1, "killed before the end"
    assert active_learning_train.main(["--output", str(killed), "--resume", *flags]) == 0
    assert (killed / "labelled.csv").read_text() == (one_round / "labelled.csv").read_text()
    metrics = ["round", "labelled", "val_macro_f1", "test_macro_f1", "epochs", "steps"]
    assert [[r[m] for m in metrics] for r in rows_of(killed / "rounds.csv")] == \
        [[r[m] for m in metrics] for r in rows_of(one_round / "rounds.csv")]
    assert not [p for p in killed.rglob("*") if ".tmp" in p.name], "no temporary file is left behind"


def test_repeats_run_successive_seeds_and_summarise_the_kept_models(tiles, one_round, tmp_path):
    out = tmp_path / "repeated"
    assert active_learning_train.main(["--data", str(tiles), "--output", str(out), "--rounds", "1",
                                       "--repeats", "2", *FAST]) == 0
    summary = rows_of(out / "repeats.csv")
    assert [(r["repeat"], r["seed"]) for r in summary] == [("0", "0"), ("1", "1")]
    for row in summary:
        state = json.loads((out / f"repeat_{row['repeat']}" / "state.json").read_text())
        rounds = rows_of(out / f"repeat_{row['repeat']}" / "rounds.csv")
        kept = next(r for r in rounds if r["round"] == str(state["best"]["round"]))
        assert row["kept_round"] == kept["round"] and row["test_macro_f1"] == kept["test_macro_f1"]
    # A repeat is the plain run with its seed, whatever the repeats before it did in the process.
    untimed = [[{k: v for k, v in row.items() if not k.endswith("seconds")} for row in rows_of(path / "rounds.csv")]
               for path in (one_round, out / "repeat_1")]
    assert untimed[0] == untimed[1]


def test_the_original_cap_per_slide_and_class_reaches_the_evaluation_sets_only_when_asked(tiles, tmp_path):
    """--cap-eval-per-slide (the original code's) caps validation and test
    tiles per slide and class like the training candidates; blood, the
    configuration's uncapped class, keeps every tile either way."""
    from collections import Counter

    config = load_config(tile_size=TILE)
    blood = config.class_index("blood")
    counts = {}
    for per_slide in (False, True):
        run = TrainingData(TrainOptions(data=tiles, output=tmp_path, slide_class_cap=5,
                                        cap_eval_per_slide=per_slide), config, np.random.default_rng(0))
        for name, ids in (("train", run.candidates), ("val", run.val_ids), ("test", run.test_ids)):
            counts[per_slide, name] = Counter(zip(run.index.slide[ids].tolist(), run.index.label[ids].tolist()))
    for name in ("train", "val", "test"):
        capped = {key: n for key, n in counts[True, name].items() if key[1] != blood}
        assert max(capped.values()) == 5, name
        assert {k: n for k, n in counts[True, name].items() if k[1] == blood} == \
               {k: n for k, n in counts[False, name].items() if k[1] == blood}
    assert max(n for key, n in counts[False, "val"].items() if key[1] != blood) > 5
    assert max(n for key, n in counts[False, "test"].items() if key[1] != blood) > 5
    assert any(n > 5 for key, n in counts[True, "val"].items() if key[1] == blood) or \
           any(n > 5 for key, n in counts[True, "train"].items() if key[1] == blood)


def test_only_the_squares_a_pathologist_classified_become_labels(tmp_path, capsys):
    """24 query squares come back from QuPath with 3 classified (one confirmed
    as predicted, two corrected) and 21 untouched: extraction gives exactly 3
    new labels, where and as the pathologist set them, and says how many
    squares nobody reviewed."""
    side = 16 * TILE
    tissue = SyntheticRegion("stroma", "Lamina propria", rectangle(TILE, TILE, side - TILE, side - TILE))
    slide, _ = make_slide(tmp_path / "slides", "s0", side, side, [tissue], annotations_dir=tmp_path / "drawn")
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    write_geojson(annotations / "s0.geojson", [])  # nothing drawn yet: the whole slide is the pool
    argv = ["--slides", str(slide), "--annotations", str(annotations), "--output", str(tmp_path / "tiles"),
            "--tile-size", str(TILE), "--unlabeled"]
    assert tfrecord_generator.main(argv) == 0
    config = load_config(tile_size=TILE)
    index = read_index(record_files(tmp_path / "tiles"))
    inner = np.flatnonzero((index.x > 3 * TILE) & (index.x < side - 3 * TILE) & (index.y > 3 * TILE)
                           & (index.y < side - 3 * TILE))  # whole tissue under each square
    ids = inner[:: max(1, len(inner) // 24)][:24]
    stroma, muscle = config.class_index("stroma"), config.class_index("muscle")
    probs = np.full((24, config.num_classes), 0.1 / (config.num_classes - 1))
    probs[:, stroma] = 0.9
    selection = queries.Selection(ids, None, np.full(24, stroma), 1000, "random", probs)
    folder = tmp_path / "queries"
    queries.write_queries(folder, selection, 1, index, config, {"s0": float(TILE)}, {}, None)

    squares = json.loads((folder / "s0.geojson").read_text())["features"]
    assert len(squares) == 24 and all("classification" not in f["properties"] for f in squares)
    answers = {0: "stroma", 7: "Muscle", 15: "muscle"}  # a confirmation and two corrections, in any spelling
    for k, name in answers.items():
        squares[k]["properties"]["classification"] = {"name": name, "color": [1, 2, 3]}
    (annotations / "s0.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": squares}))
    capsys.readouterr()
    assert tfrecord_generator.main([*argv, "--overwrite"]) == 0
    assert "21 query square(s) without a class (not reviewed), left unlabelled" in capsys.readouterr().out

    after = read_index(record_files(tmp_path / "tiles"))
    labels = {(int(x), int(y)): int(c) for x, y, c in zip(after.x, after.y, after.label) if c >= 0}
    expected = {(int(index.x[ids[k]]), int(index.y[ids[k]])): stroma if k == 0 else muscle for k in answers}
    assert labels == expected


def test_compare_draws_the_earlier_runs_and_a_folder_without_one_stops_before_any_fit(tiles, one_round, tmp_path,
                                                                                      capsys):
    from utils.learning.round_report import other_runs

    expected = [(int(r["labelled"]), float(r["test_macro_f1"])) for r in rows_of(one_round / "rounds.csv")]
    strategy = json.loads((one_round / "config.json").read_text())["options"]["strategy"]
    assert other_runs((one_round,)) == {f"run ({strategy})": expected}
    out = tmp_path / "run"
    flags = ["--data", str(tiles), "--output", str(out), *FAST, "--rounds", "0", "--compare"]
    assert active_learning_train.main([*flags, str(tmp_path / "nothing")]) == 2
    assert "nothing: no rounds.csv" in capsys.readouterr().err and not out.exists()
    assert active_learning_train.main([*flags, str(one_round)]) == 0
    assert (out / "learning_curve.png").exists()


def test_rounds_that_would_find_the_pool_empty_stop_before_any_fit(tiles, tmp_path, capsys):
    """--initial taking every labelled tile, or a --budget or --budgets that
    empties the pool before the last round, stops with the fix before round 0
    is fitted."""
    for flags, message in ((["--initial", "100000", "--rounds", "2"], "nothing is left to query in 2 round(s)"),
                           (["--budget", "100000", "--rounds", "3"], "last 1 round(s) of --budget 100000, not the 3"),
                           (["--budgets", "10", "100000", "--rounds", "3"],
                            "last 2 round(s) of --budgets 10 100000, not the 3")):
        out = tmp_path / flags[1]
        assert active_learning_train.main(["--data", str(tiles), "--output", str(out), *FAST, *flags]) == 2
        assert message in capsys.readouterr().err
        assert not (out / "rounds.csv").exists() and not (out / "model.keras").exists(), "nothing was fitted"
    ceiling = ["--initial", "100000", "--budget", "0", "--rounds", "1", "--epochs", "1"]
    assert active_learning_train.main(["--data", str(tiles), "--output", str(tmp_path / "ceiling"), *FAST,
                                       *ceiling]) == 0, "a budget of 0 refits the same set on purpose"


def test_a_round_says_how_long_it_will_take_after_its_first_steps(monkeypatch, capsys):
    """At a pace of 2 s per step, 1,000 steps of 10 epochs: about 33 min per
    epoch and 5.6 h for the round, said once, after the first timed steps."""
    from utils.learning import learners

    clock = iter([0.0, 10.0])  # read after the untimed first step, then after 5 more
    monkeypatch.setattr(learners.time, "perf_counter", lambda: next(clock))
    estimate = learners.RoundTimeEstimate(steps_per_epoch=1000, epochs=10)
    for step in range(20):
        estimate.on_train_batch_end(step)
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert "about 33 min per epoch of 1000 steps at this pace, so at most 5.6 h for 10 epochs" in out
    short = learners.RoundTimeEstimate(steps_per_epoch=3, epochs=10)
    for step in range(3):
        short.on_train_batch_end(step)
    assert capsys.readouterr().out == "", "a round of a few steps needs no estimate"


def test_no_run_reports_a_nan_score(tiles, tmp_path, capsys):
    """A split file without test slides trains and says there is no test set
    (before: "test macro F1 nan" with exit 0)."""
    slides = sorted({p.name[: -len(".summary.json")] for p in tiles.glob("*.summary.json")})
    no_test = tmp_path / "no_test.json"
    no_test.write_text(json.dumps({"train": slides[:3], "val": slides[3:], "test": []}))
    out = tmp_path / "run"
    assert active_learning_train.main(["--data", str(tiles), "--output", str(out), "--split", str(no_test),
                                       "--rounds", "0", *FAST]) == 0
    printed = capsys.readouterr().out
    assert "no test set" in printed and "F1 nan" not in printed and "accuracy nan" not in printed


def test_a_split_file_that_leaves_slides_out_says_which_and_never_uses_them(tiles, tmp_path, capsys):
    slides = sorted({p.name[: -len(".summary.json")] for p in tiles.glob("*.summary.json")})
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"train": slides[:2], "val": slides[2:3], "test": []}))
    out = tmp_path / "run"
    assert active_learning_train.main(["--data", str(tiles), "--output", str(out), "--split", str(partial),
                                       "--rounds", "0", *FAST]) == 0
    assert f"lists 3 of the 4 slides in {tiles}; the other 1 are in no split and not used: {slides[3]}" in \
        capsys.readouterr().out
    assert {row["slide"] for row in rows_of(out / "labelled.csv")} <= set(slides[:2])


def test_repeats_that_share_their_data_differ_only_in_training(tiles, tmp_path):
    """--repeats-share-data, the original code's: one split, one initial set
    and one pool order for every repeat; only the training seed moves."""
    out = tmp_path / "shared"
    assert active_learning_train.main(["--data", str(tiles), "--output", str(out), "--rounds", "1", "--epochs", "1",
                                       "--repeats", "2", "--repeats-share-data", *FAST]) == 0
    first, second = out / "repeat_0", out / "repeat_1"
    assert (first / "split.json").read_text() == (second / "split.json").read_text()
    assert (first / "labelled.csv").read_text() == (second / "labelled.csv").read_text()
    losses = [[e["loss"] for e in json.loads((run / "state.json").read_text())["history"]] for run in (first, second)]
    assert losses[0] != losses[1], "the training itself is repeated with another seed"
    options = [json.loads((run / "config.json").read_text())["options"] for run in (first, second)]
    assert [(o["seed"], o["data_seed"]) for o in options] == [(0, 0), (1, 0)]
