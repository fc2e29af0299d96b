"""Regressions of the README walk-through: fine-tuning keeps the source model,
one data folder holds one configuration, missing classes are said, outputs are
strict JSON, and every labelled tile carries the round that added it."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

import active_learning_inference
import active_learning_train
import tfrecord_generator
from utils.common.config import load_config
from utils.common.errors import InputError
from utils.common.io import read_csv
from utils.learning.run_files import SavedRound, finished, read_labelled, read_rounds
from utils.network.batch_norm import batch_norm_layers
from utils.network.model import build_model, load_model
from utils.network.model_spec import ModelSpec
from utils.tiles.records import read_index, record_files
from utils.tiles.synthetic import SyntheticRegion, make_slide, random_layout, write_geojson

TILE = 32
SMALL = ["--backbone", "small", "--backbone-weights", "none", "--head-units", "32"]
FIT = ["--optimizer", "adam", "--learning-rate", "1e-3", "--epochs", "1", "--batch-size", "32", "--initial", "10",
       "--budget", "20", "--slide-class-cap", "40", "--eval-cap", "30"]
THREE_CLASSES = """classes:
  - {name: background, color: "#000000"}
  - {name: tumour, color: "#FF0000"}
  - {name: stroma, color: "#FF00FF"}
rules:
  - ["grade.*|cis|urothelium", tumour]
  - ["lamina.*", stroma]
priority: [tumour]
"""


def layout(i: int) -> list[SyntheticRegion]:
    return random_layout(768, 768, i, margin=128)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Four small synthetic slides, their annotations, and their shards (labelled
    tiles and the unlabelled pool), cut with the default configuration."""
    root = tmp_path_factory.mktemp("cohort")
    for i in range(4):
        make_slide(root / "slides", f"s{i}", 768, 768, layout(i), seed=i, annotations_dir=root / "annotations")
    assert extract(root, root / "tiles", "--unlabeled") == 0
    return root


def extract(root: Path, output: Path, *flags: str) -> int:
    return tfrecord_generator.main(["--slides", str(root / "slides"), "--annotations", str(root / "annotations"),
                                    "--output", str(output), "--tile-size", str(TILE), *flags])


@pytest.fixture(scope="module")
def source_model(cohort, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("source") / "run"
    assert active_learning_train.main(["--data", str(cohort / "tiles"), "--output", str(run), "--rounds", "0",
                                       *SMALL, *FIT]) == 0
    return run / "model.keras"


def test_fine_tuning_a_small_source_model_keeps_it_without_architecture_flags(cohort, source_model, tmp_path,
                                                                               monkeypatch, capsys):
    def no_download(*args, **kwargs):
        raise AssertionError("ImageNet weights must not be fetched when --weights gives the model")

    monkeypatch.setattr(keras.applications, "VGG16", no_download)
    run = tmp_path / "target"
    # The README's command, without --backbone or --head-units; a zero
    # learning rate keeps round 0 at exactly the loaded weights.
    assert active_learning_train.main(["--data", str(cohort / "tiles"), "--output", str(run), "--weights",
                                       str(source_model), "--rounds", "0", "--epochs", "1", "--learning-rate", "0",
                                       "--batch-size", "32", "--initial", "10", "--eval-cap", "30"]) == 0
    assert "loaded source weights" in capsys.readouterr().out
    source, tuned = load_model(source_model), load_model(run / "model.keras")
    for name in ("backbone_mag_40x", "backbone_mag_10x", "backbone_mag_2_5x", "fc1", "fc2", "predictions"):
        for a, b in zip(source.get_layer(name).get_weights(), tuned.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    rows = read_csv(run / "rounds.csv")
    assert [r["round"] for r in rows] == ["-1", "0"]
    assert rows[0]["val_macro_f1"] == rows[1]["val_macro_f1"], "round 0 is the source model itself"


def test_rounds_minus_one_scores_the_source_model_and_keeps_it_without_a_label(cohort, source_model, tmp_path,
                                                                              capsys):
    run = tmp_path / "zero"
    args = ["--data", str(cohort / "tiles"), "--output", str(run), "--weights", str(source_model), "--eval-cap", "30"]
    assert active_learning_train.main([*args, "--rounds", "-1"]) == 0
    assert [r["round"] for r in read_csv(run / "rounds.csv")] == ["-1"]
    assert read_csv(run / "labelled.csv") == [], "no tile was labelled"
    source, kept = load_model(source_model), load_model(run / "model.keras")
    for a, b in zip(source.get_weights(), kept.get_weights()):
        np.testing.assert_array_equal(a, b)
    # The same score as round -1 of a run that goes on to fine-tune.
    assert active_learning_train.main([*args, "--output", str(tmp_path / "tuned"), "--rounds", "0", *FIT]) == 0
    tuned = read_csv(tmp_path / "tuned" / "rounds.csv")[0]
    assert read_csv(run / "rounds.csv")[0]["val_macro_f1"] == tuned["val_macro_f1"] and tuned["round"] == "-1"
    capsys.readouterr()
    assert active_learning_train.main([*args, "--rounds", "2", "--resume", *FIT]) == 2
    assert "holds a zero-label score (--rounds -1)" in capsys.readouterr().err
    assert active_learning_train.main(["--data", str(cohort / "tiles"), "--output", str(tmp_path / "none"),
                                       "--rounds", "-1", *SMALL]) == 2
    assert "--rounds -1 scores the --weights model" in capsys.readouterr().err


def test_rounds_minus_one_with_adapt_bn_keeps_the_adapted_model_it_scored(cohort, tmp_path):
    """A MobileNetV2 given as a .weights.h5: the kept model's batch norm is the
    pool's, and scoring that model again without --adapt-bn gives round -1's
    numbers, so the score was taken after the adaptation."""
    config = load_config(tile_size=TILE)
    source = build_model(config, ModelSpec("mobilenetv2", 16), None)
    weights = tmp_path / "source.weights.h5"
    source.save_weights(weights)
    common = ["--data", str(cohort / "tiles"), "--rounds", "-1", "--backbone", "mobilenetv2", "--head-units", "16",
              "--backbone-weights", "none", "--eval-cap", "30"]
    assert active_learning_train.main([*common, "--output", str(tmp_path / "adapted"), "--weights", str(weights),
                                       "--adapt-bn"]) == 0
    adapted = load_model(tmp_path / "adapted" / "model.keras")
    pairs = list(zip(batch_norm_layers(source), batch_norm_layers(adapted)))
    assert len(pairs) == 156 and all(a.name == b.name for a, b in pairs)
    assert not np.allclose(pairs[0][0].moving_mean.numpy(), pairs[0][1].moving_mean.numpy())
    assert active_learning_train.main([*common, "--output", str(tmp_path / "again"),
                                       "--weights", str(tmp_path / "adapted" / "model.keras")]) == 0
    once, again = (read_csv(tmp_path / name / "rounds.csv")[0] for name in ("adapted", "again"))
    assert (once["val_loss"], once["test_macro_f1"]) == (again["val_loss"], again["test_macro_f1"])


def test_a_flag_that_contradicts_the_source_model_stops_with_both_values(cohort, source_model, tmp_path, capsys):
    code = active_learning_train.main(["--data", str(cohort / "tiles"), "--output", str(tmp_path / "r"),
                                       "--weights", str(source_model), "--backbone", "vgg16", *FIT])
    error = capsys.readouterr().err
    assert code == 2 and "'small'" in error and "'vgg16'" in error and "--allow-partial-weights" in error
    assert not (tmp_path / "r" / "rounds.csv").exists()


def test_partial_loading_is_refused_unless_asked_for(cohort, source_model, tmp_path, capsys):
    args = ["--data", str(cohort / "tiles"), "--weights", str(source_model), "--rounds", "0",
            "--backbone", "small", "--head-units", "16", *FIT]
    assert active_learning_train.main([*args, "--output", str(tmp_path / "refused")]) == 2
    assert "head_units 32" in capsys.readouterr().err
    assert active_learning_train.main([*args, "--output", str(tmp_path / "partial"), "--allow-partial-weights"]) == 0
    out = capsys.readouterr().out
    assert "layers that received no weights (--allow-partial-weights): fc1, fc2, predictions" in out


def test_source_model_of_other_classes_is_refused(cohort, source_model, tmp_path, capsys):
    config = tmp_path / "three.yaml"
    config.write_text(THREE_CLASSES)
    assert extract(cohort, tmp_path / "tiles3", "--config", str(config)) == 0
    code = active_learning_train.main(["--data", str(tmp_path / "tiles3"), "--output", str(tmp_path / "r"),
                                       "--weights", str(source_model), *FIT])
    error = capsys.readouterr().err
    assert code == 2 and "classes" in error and "'blood'" in error and "'tumour'" in error


def test_one_data_folder_holds_one_configuration(cohort, tmp_path, capsys):
    data = tmp_path / "tiles"
    assert extract(cohort, data) == 0
    config = tmp_path / "three.yaml"
    config.write_text(THREE_CLASSES)
    capsys.readouterr()
    assert extract(cohort, data, "--config", str(config)) == 2, "a folder of another configuration is refused"
    error = capsys.readouterr().err
    assert "--overwrite" in error and "'tumour'" in error
    # --overwrite redoes the slides given; a shard of another slide left from the
    # earlier configuration makes training stop, naming it.
    one_slide = ["--slides", str(cohort / "slides" / "s0.tiff"), "--annotations", str(cohort / "annotations"),
                 "--output", str(data), "--tile-size", str(TILE), "--config", str(config), "--overwrite"]
    with pytest.warns(UserWarning, match=r"shards of 3 slide\(s\) not in this run \(s1, s2, s3\) keep another"):
        assert tfrecord_generator.main(one_slide) == 0
    code = active_learning_train.main(["--data", str(data), "--output", str(tmp_path / "r"), *SMALL, *FIT])
    error = capsys.readouterr().err
    assert code == 2 and "s1.summary.json" in error and "classes" in error


def test_missing_classes_are_said_and_strict_stops(cohort, tmp_path, capsys):
    args = ["--data", str(cohort / "tiles"), "--rounds", "0", *SMALL, *FIT]
    with pytest.warns(UserWarning, match="configured classes with no training tiles: background"):
        assert active_learning_train.main([*args, "--output", str(tmp_path / "warned")]) == 0
    assert "absent from the test set, so not in its macro F1: background" in capsys.readouterr().out
    assert active_learning_train.main([*args, "--output", str(tmp_path / "strict"), "--strict"]) == 2
    assert "no training tiles: background" in capsys.readouterr().err

    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")

    run = tmp_path / "warned"
    for name in ("state.json", "class_counts.json", "config.json", "split.json"):
        json.loads((run / name).read_text(), parse_constant=refuse)
    rounds = read_csv(run / "rounds.csv")
    assert rounds[0]["test_f1_background"] == "" and "nan" not in (run / "rounds.csv").read_text().lower()
    # The typed reader of the demo and the experiments agrees with the csv module, column by column.
    typed, state = read_rounds(run)[0], json.loads((run / "state.json").read_text())
    assert np.isnan(typed.test_f1_per_class["background"]) and typed.round == int(rounds[0]["round"]) == 0
    assert typed.test_macro_f1 == float(rounds[0]["test_macro_f1"]) and typed.steps == int(rounds[0]["steps"])
    assert typed.labelled_per_class == {k[len("labelled_"):]: int(v) for k, v in rounds[0].items()
                                        if k.startswith("labelled_")}
    assert typed.labelled == sum(typed.labelled_per_class.values()) == int(rounds[0]["labelled"])
    assert SavedRound.read(run) == SavedRound(state["round"], state["best"]["round"]) and finished(run, 0)
    assert not finished(run, 1) and SavedRound.read(tmp_path / "strict") is None
    assert [(t.slide, str(t.x), str(t.y), str(t.label), str(t.round)) for t in read_labelled(run)] == \
        [(r["slide"], r["x"], r["y"], r["label"], r["round"]) for r in read_csv(run / "labelled.csv")] != []
    lines = (run / "rounds.csv").read_text().splitlines()  # as written before the pool was used: no pseudo columns
    kept = [k for k, name in enumerate(lines[0].split(",")) if not name.startswith("pseudo_")]
    (run / "rounds.csv").write_text("".join(",".join(line.split(",")[k] for k in kept) + "\n" for line in lines))
    older = read_rounds(run)[0]
    assert older.pseudo_labelled == 0 and np.isnan(older.pseudo_accuracy) and older.test_macro_f1 == typed.test_macro_f1
    (run / "rounds.csv").write_text("round,labelled\n0,3\n")
    with pytest.raises(InputError, match="not a rounds.csv"):
        read_rounds(run)


def test_annotation_mode_records_the_round_of_every_label(cohort, tmp_path):
    """Query, label more regions, re-extract, resume: the new labels, and only
    they, carry round 1 in labelled.csv."""
    root = tmp_path / "lab"
    (root / "annotations").mkdir(parents=True)
    (root / "slides").mkdir()
    for i in range(4):
        (root / "slides" / f"s{i}.tiff").symlink_to(cohort / "slides" / f"s{i}.tiff")
        write_geojson(root / "annotations" / f"s{i}.geojson", layout(i)[:6])
    assert extract(root, root / "tiles", "--unlabeled") == 0
    run = root / "run"
    train = ["--data", str(root / "tiles"), "--output", str(run), "--query-only", *SMALL, *FIT]
    assert active_learning_train.main(train) == 0
    first = read_csv(run / "labelled.csv")
    assert first and {r["round"] for r in first} == {"0"}
    split = json.loads((run / "split.json").read_text())
    for slide in split["train"]:
        write_geojson(root / "annotations" / f"{slide}.geojson", layout(int(slide[1:])))
    assert extract(root, root / "tiles", "--unlabeled", "--overwrite") == 0
    assert active_learning_train.main([*train, "--resume"]) == 0
    second = read_csv(run / "labelled.csv")
    before = {(r["slide"], r["x"], r["y"]) for r in first}
    added = {(r["slide"], r["x"], r["y"]) for r in second if r["round"] == "1"}
    assert added and added == {(r["slide"], r["x"], r["y"]) for r in second} - before
    assert all(r["round"] == "0" for r in second if (r["slide"], r["x"], r["y"]) in before)


def test_configuration_errors_name_the_file_and_the_key(cohort, tmp_path, capsys):
    config = tmp_path / "typo.yaml"
    config.write_text("tile_sise: 64\n")
    assert extract(cohort, tmp_path / "out", "--config", str(config)) == 2
    error = capsys.readouterr().err
    assert str(config) in error and "tile_sise" in error and "flags:" not in error


def test_help_says_where_defaults_come_from(capsys):
    with pytest.raises(SystemExit):
        active_learning_inference.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default: the model's, else 40 10 2.5" in text and "default: the model's, else 128" in text
    with pytest.raises(SystemExit):
        active_learning_train.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default: the --weights model's, else vgg16" in text


def test_input_scaling_is_a_switch_the_model_keeps_and_fine_tuning_honours(tmp_path):
    """raw feeds 0-255 unchanged (the original code's VGG16 input); the saved
    model carries it, and a fine-tune that asks for another scaling stops."""
    from dataclasses import asdict

    from utils.common.config import load_config
    from utils.common.errors import ModelError
    from utils.network.model import build_model, save_model
    from utils.network.model_spec import ModelSpec, check_fits_source, source_metadata, source_spec

    assert ModelSpec().scaling == "caffe" and ModelSpec("mobilenetv2").scaling == "tf"
    config = load_config(tile_size=32, magnifications=[10])
    spec = ModelSpec("small", 16, input_scaling="raw")
    model = build_model(config, spec, None)
    tiles = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(model.get_layer("preprocess_mag_10x")(tiles)), tiles)
    path = tmp_path / "raw.keras"
    save_model(model, path, {"config": config.to_dict(), "backbone": "small", "spec": asdict(spec)})
    loaded = load_model(path)
    np.testing.assert_array_equal(np.asarray(loaded.get_layer("preprocess_mag_10x")(tiles)), tiles)
    source = source_metadata(path)
    assert source_spec(source, None, None).scaling == "raw"
    with pytest.raises(ModelError, match="--input-scaling"):
        check_fits_source(path, source, source_spec(source, None, None, "unit"), config)


def test_every_answer_counts_on_an_edge_tile_and_an_ignored_square_leaves_the_pool(tmp_path):
    """A tile of the pool needs half of it on tissue, a region's label 70%:
    the tissue here ends 5/8 into the tiles of column 4, so they are pooled
    but no region labels them. The pathologist's answer about one (its query
    square classified Stroma) labels it all the same; another, set to
    Ignore*, is never pooled again."""
    t = 64
    stroma = SyntheticRegion("stroma", "Lamina propria", [[2 * t, 2 * t], [4 * t + 40, 2 * t], [4 * t + 40, 7 * t],
                                                          [2 * t, 7 * t], [2 * t, 2 * t]])
    slide, geojson = make_slide(tmp_path / "slides", "edge", 10 * t, 9 * t, [stroma],
                                annotations_dir=tmp_path / "annotations")

    def square(row: int, col: int, classification: str) -> dict:
        ring = [[col * t, row * t], [(col + 1) * t, row * t], [(col + 1) * t, (row + 1) * t], [col * t, (row + 1) * t],
                [col * t, row * t]]
        return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"objectType": "annotation", "name": f"round 1 #{row} (muscle?)",
                               "classification": {"name": classification}}}

    def extract(output: Path) -> tuple[dict[tuple[int, int], str], dict]:
        assert tfrecord_generator.main(["--slides", str(slide), "--annotations", str(geojson.parent), "--output",
                                        str(output), "--tile-size", str(t), "--unlabeled", "--quiet"]) == 0
        index = read_index(record_files(output))
        tiles = {(int(y) // t, int(x) // t): name for x, y, name in zip(index.x, index.y, index.label_name)}
        return tiles, json.loads((output / "edge.summary.json").read_text())

    before, _ = extract(tmp_path / "before")
    assert before[(3, 4)] == before[(4, 4)] == "", "edge tiles are pooled, unlabelled"
    assert before[(3, 3)] == "Lamina propria"
    features = json.loads(geojson.read_text())
    features["features"] += [square(3, 4, "Stroma"), square(4, 4, "Ignore*")]
    geojson.write_text(json.dumps(features))
    after, summary = extract(tmp_path / "after")
    assert after[(3, 4)] == "Stroma", "the answer labels its tile whatever its tissue fraction"
    assert (4, 4) not in after, "a square set to Ignore* takes its tile out of the pool"
    assert summary["ignored_queries"] == 1 and summary["unreviewed_queries"] == 0
    assert {k: v for k, v in after.items() if k not in ((3, 4), (4, 4))} == \
        {k: v for k, v in before.items() if k not in ((3, 4), (4, 4))}
