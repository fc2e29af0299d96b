"""The statistics and the lab changes of the domain-adaptation experiment, and
the recipes experiment end to end."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import cv2
from experiments import analysis, anchor
from experiments import kather_domain_adaptation as experiment
from experiments.kather_domain_adaptation import stratified_split
from experiments.stain import gamma, resample, rotate_eosin, scan_again, shift_stains
from tests.conftest import shared_file
from utils.common.io import read_csv


def test_curve_statistics():
    curve = analysis.Curve(np.array([0.0, 0.5, 1.0]), np.array([0.2, 0.7, 0.6]))
    assert analysis.area_under_curve(curve) == pytest.approx((0.5 * (0.2 + 0.7) / 2 + 0.5 * (0.7 + 0.6) / 2))
    assert np.isnan(analysis.labels_to_stay(curve, 0.65)), "the last round is below the target"
    assert analysis.labels_to_stay(curve, 0.55) == 0.5
    assert analysis.labels_to_stay(curve, 0.1) == 0.0
    lucky = analysis.Curve(np.linspace(0, 1, 5), np.array([0.5, 0.8, 0.6, 0.8, 0.8]))
    assert analysis.labels_to_stay(lucky, 0.75) == 0.75, "one early round above the target does not count"
    assert analysis.f1_at(curve, 0.25) == pytest.approx(0.45)
    assert np.isnan(analysis.f1_at(curve, 1.5))
    mean, sd = analysis.mean_curve([curve, analysis.Curve(np.array([0.0, 1.0]), np.array([0.4, 0.4]))],
                                   np.array([0.0, 0.5]))
    np.testing.assert_allclose(mean, [0.3, 0.55])
    np.testing.assert_allclose(sd, [0.1, 0.15])


def test_paired_interval_matches_scipy():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.8, 0.02, 6), rng.normal(0.79, 0.02, 6)
    mean, low, high = analysis.paired_interval(a, b)
    expected = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert mean == pytest.approx(np.mean(a - b))
    assert (low, high) == pytest.approx((expected.low, expected.high))
    assert experiment.paired_difference(mean, low, high) == f"{mean:+.3f} ({expected.low:+.3f}, {expected.high:+.3f})"
    assert experiment.paired_difference(*analysis.paired_interval(a[:1], b[:1])) == \
        f"{a[0] - b[0]:+.3f} (one seed, no interval)"


def test_stain_change_keeps_glass_and_is_the_identity_at_scale_one():
    rng = np.random.default_rng(0)
    rgb = rng.integers(30, 256, (16, 16, 3), dtype=np.uint8)
    rgb[:4] = 255
    same = shift_stains(rgb, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    assert np.abs(same.astype(int) - rgb).max() <= 1
    changed = shift_stains(rgb, (0.6, 1.5, 1.0), (0.0, 0.0, 0.05))
    assert (changed[:4] == 255).all(), "unstained glass stays white"
    assert np.abs(changed[4:].astype(int) - rgb[4:]).mean() > 5


def test_images_are_split_per_class_by_fraction(tmp_path):
    paths = [tmp_path / folder / f"{k}.png" for folder in ("a", "b") for k in range(20)]
    split = stratified_split(paths, {"train": 0.5, "val": 0.1, "test": 0.4}, seed=0)
    assert set(split) == set(paths)
    for folder in ("a", "b"):
        counts = {s: sum(1 for p, v in split.items() if p.parent.name == folder and v == s) for s in ("train", "val", "test")}
        assert counts == {"train": 10, "val": 2, "test": 8}


def test_the_harder_lab_blurs_and_compresses():
    rgb = cv2.imread(str(sorted(shared_file("kather").glob("01_TUMOR/*.png"))[0]))[..., ::-1]
    sharpness = {shift: cv2.Laplacian(cv2.cvtColor(experiment.target_lab(rgb, shift), cv2.COLOR_RGB2GRAY),
                                      cv2.CV_64F).var() for shift in experiment.SHIFTS}
    assert sharpness[experiment.HARD] < 0.5 * sharpness[experiment.EASY]
    scanned = scan_again(rgb, 1.2, 60)
    _, encoded = cv2.imencode(".jpg", cv2.GaussianBlur(rgb, (0, 0), 1.2)[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 60])
    np.testing.assert_array_equal(scanned, cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1])


def test_the_two_candidates_of_highest_validation_area_are_chosen():
    selection = {"random": 0.9, "coreset": 0.60, "badge": 0.65, "typiclust": 0.62, "margin+warm": 0.65}
    assert experiment.best_candidates(selection, ["coreset", "badge", "typiclust", "margin+warm"]) == \
        ["badge", "margin+warm"], "the baselines do not compete; ties keep the order given"


def test_strategy_names_with_suffixes_become_flags():
    assert experiment.strategy_flags("class_ratio+oracle") == ["--strategy", "class_ratio", "--oracle-classes"]
    assert experiment.strategy_flags("margin+warm") == ["--strategy", "margin", "--warm-start",
                                                        str(experiment.WARM_START)]
    with pytest.raises(SystemExit, match="unknown strategy 'margin\\+cold'"):
        experiment.strategy_flags("margin+cold")


#: The smallest experiment that runs every stage (about two minutes): one seed
#: of everything, one candidate beside random and class_ratio, 8 images per
#: class and lab, a source model of 4 epochs, and rounds of half the pool in
#: head mode and of all of it in full mode.
CANDIDATES = ["margin+warm"]
SMOKE = ["--images-per-class", "8", "--selection-seeds", "1", "--seeds", "1", "--ceiling-seeds", "1",
         "--full-seeds", "1", "--candidates", *CANDIDATES, "--budget", "0.5", "--full-budget", "1",
         "--source-epochs", "4"]


def test_the_experiment_runs_every_stage(tmp_path):
    """A smoke-sized experiment end to end: the tables agree with the runs' own rounds.csv."""
    out = tmp_path / "smoke"
    experiment.main([*SMOKE, "--kather", str(shared_file("kather")), "--output", str(out), "--jobs", "2"])
    results = json.loads((out / "results.json").read_text())
    assert results["chosen"] == CANDIDATES and set(results["selection"]) == {"random", "class_ratio", *CANDIDATES}
    assert set(results["shifts"]) == {experiment.HARD, experiment.EASY}
    pool = experiment.pool_size(out / "records" / f"target_{experiment.HARD}", out / "staged" / "target_split.json")
    for shift, mode in ((experiment.HARD, "head"), (experiment.HARD, "full"), (experiment.EASY, "head")):
        r = results["shifts"][shift][mode]
        assert set(r["table"]) >= {"random", "class_ratio", *results["chosen"]}
        rows = read_csv(out / shift / mode / "random" / "seed_0" / "rounds.csv")
        f1 = np.array([float(row["test_macro_f1"]) for row in rows if int(row["round"]) >= 0])
        assert int(rows[-1]["labelled"]) == pool, "every run labels the whole pool"
        fractions = np.array([int(row["labelled"]) / pool for row in rows if int(row["round"]) >= 0])
        curve = analysis.Curve(fractions, f1)
        assert r["table"]["random"]["areas"][0] == pytest.approx(analysis.area_under_curve(curve))
        expected = analysis.labels_to_stay(curve, r["ceiling"] - 0.01)
        stays = r["table"]["random"]["stays"][0]
        assert (np.isnan(expected) and np.isnan(stays)) or stays == pytest.approx(expected)
    assert "class_ratio+oracle" in results["shifts"][experiment.HARD]["head"]["table"]
    assert "forest" + anchor.ROW_SUFFIX in results["shifts"][experiment.HARD]["full"]["table"]
    report = (out / "results.md").read_text()
    assert "chosen: " + ", ".join(results["chosen"]) in report
    assert (out / "learning_curves.png").exists() and (out / "stain_examples.png").exists()


def test_the_unmodelled_lab_changes_hue_gamma_and_detail_and_each_is_the_identity_at_rest():
    rgb = cv2.imread(str(sorted(shared_file("kather").glob("02_STROMA/*.png"))[0]))[..., ::-1]
    assert np.abs(rotate_eosin(rgb, 0.0).astype(int) - rgb).max() <= 1
    assert np.array_equal(gamma(rgb, 1.0), rgb)
    turned = rotate_eosin(rgb, 15.0)
    # Eosin turned towards red absorbs more red: the pink stroma loses red, not green.
    assert turned[..., 0].mean() < rgb[..., 0].mean() - 5 and abs(turned[..., 1].mean() - rgb[..., 1].mean()) < 5
    assert gamma(rgb, 1.2).mean() < rgb.mean()
    coarse = resample(rgb, 1.5)
    sharpness = [cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var() for image in (rgb, coarse)]
    assert coarse.shape == rgb.shape and sharpness[1] < 0.7 * sharpness[0]


def test_the_recipes_experiment_runs_every_stage(tmp_path):
    """--quick end to end: every recipe and the ceiling run, and the tables
    agree with the runs' own rounds.csv."""
    from experiments import kather_recipes as recipes

    out = tmp_path / "recipes"
    recipes.main(["--quick", "--kather", str(shared_file("kather")), "--output", str(out), "--jobs", "2"])
    results = json.loads((out / "results.json").read_text())
    r = results["shifts"][experiment.HARD]["full"]
    anchors = {name + anchor.ROW_SUFFIX for name in anchor.ANCHORS}
    assert set(r["table"]) == {f"{recipe} random" for recipe in recipes.RECIPES} | anchors
    for name in anchors:  # fitted on today's recipe's labelled sets: the same fractions of the pool
        assert np.array_equal(np.isnan(r["curves"][name][0]), np.isnan(r["curves"][recipes.TODAY][0]))
        assert r["table"][name]["seeds"] == 1 and 0 < r["table"][name]["aulc"] <= 1
    for name, entry in [(name, e) for name, e in r["table"].items() if name not in anchors]:
        rows = read_csv(out / experiment.HARD / "full" / recipes.folder_name(name) / "seed_0" / "rounds.csv")
        assert entry["zero_label_f1"] == pytest.approx(float(rows[0]["test_macro_f1"])) and rows[0]["round"] == "-1"
        assert entry["pool_used_per_round"] == pytest.approx(
            np.mean([float(row["pseudo_labelled"]) for row in rows if int(row["round"]) >= 0]))
    preset = results["preset"]
    assert preset == max(recipes.PRESETS, key=lambda kind: results["zero_label"][kind]["val"])
    for kind in ("plain", *recipes.PRESETS):
        options = json.loads((out / f"source_{kind}_seed_0" / "config.json").read_text())["options"]
        assert options["stain_jitter"] == ("none" if kind == "plain" else kind) and options["seed"] == 0
    for kind in recipes.PRESETS:
        first = read_csv(out / experiment.HARD / "full" / f"zero_label_{kind}" / "seed_0" / "rounds.csv")[0]
        assert results["zero_label"][kind]["val"] == pytest.approx(float(first["val_macro_f1"]))
        assert results["zero_label"][kind]["val_per_seed"] == [pytest.approx(float(first["val_macro_f1"]))]
    for run, source in (("a_random", "plain"), ("b_random", preset)):  # each seed fine-tunes its own source model
        options = json.loads((out / experiment.HARD / "full" / run / "seed_0" / "config.json").read_text())["options"]
        assert Path(options["weights"]) == out / f"source_{source}_seed_0" / "model.keras"
    for run, stain in (("d_random", preset), ("e_random", "none")):
        options = json.loads((out / experiment.HARD / "full" / run / "seed_0" / "config.json").read_text())["options"]
        assert options["semi_supervised"] == "fixmatch" and options["fixmatch_ratio"] == 7
        assert options["stain_jitter"] == stain
    bn = out / experiment.HARD / "full"
    for recipe in ("a", "b"):
        first = {adapt: read_csv(bn / f"zero_label_mobilenetv2_{recipe}{adapt}" / "seed_0" / "rounds.csv")[0]
                 for adapt in ("", "_adapt_bn")}
        scores = results["adapt_bn"][recipe][experiment.HARD]
        assert scores == {"without": pytest.approx(float(first[""]["test_macro_f1"])),
                          "with": pytest.approx(float(first["_adapt_bn"]["test_macro_f1"]))}
        assert first[""]["val_loss"] != first["_adapt_bn"]["val_loss"], "--adapt-bn changed the batch-norm statistics"
        options = json.loads((bn / f"zero_label_mobilenetv2_{recipe}_adapt_bn" / "seed_0" / "config.json").read_text())
        assert options["options"]["adapt_bn"] and options["options"]["spec"]["backbone"] == "mobilenetv2"
    for run in ("a_random", "ceiling_a"):
        plain = json.loads((out / experiment.HARD / "full" / run / "seed_0" / "config.json").read_text())
        assert plain["options"]["stain_jitter"] == "none"
    assert r["fair_ceiling"] == max(recipes.CEILINGS, key=lambda name: r["ceilings"][name]["val"])
    assert r["ceiling"] == pytest.approx(r["ceilings"][r["fair_ceiling"]]["test"])
    today = r["table"][recipes.TODAY]
    assert r["table"]["b random"]["vs_random"][0] == pytest.approx(r["table"]["b random"]["aulc"] - today["aulc"])
    report = (out / "results.md").read_text()
    assert "AULC − a random" in report and "zero-label F1" in report and f"recipes b-d: **{preset}**" in report
    assert (out / "stain_examples.png").exists() and (out / "learning_curves.png").exists()
    # --report-only reads finished seeds and starts nothing: a run cut short leaves its lab without a table.
    state = out / experiment.HARD / "full" / "d_random" / "seed_0" / "state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "round": 0}))
    recipes.main(["--quick", "--kather", str(shared_file("kather")), "--output", str(out), "--report-only"])
    assert json.loads(state.read_text())["round"] == 0
    assert json.loads((out / "results.json").read_text())["shifts"] == {}
    with pytest.raises(SystemExit, match=r"--report-only: \d+ source model"):
        recipes.main(["--quick", "--kather", str(shared_file("kather")), "--output", str(tmp_path / "new"),
                      "--report-only"])
    assert not (tmp_path / "new").exists()


def test_growing_budgets_measure_each_fraction_of_the_pool_without_interpolation():
    from experiments import kather_texture

    per_class = {"tumour": 700, "stroma": 600, "adipose": 676}
    budgets, rounds = experiment.growing_budgets(per_class, 4, kather_texture.FRACTIONS)
    labelled = 12 + np.cumsum(budgets)
    assert rounds == len(kather_texture.FRACTIONS) == len(budgets)
    assert labelled.tolist() == [round(f * 1976) for f in kather_texture.FRACTIONS]


def test_a_finished_run_of_another_head_recipe_stops_the_texture_experiment(tmp_path, monkeypatch):
    """Runs are skipped when finished, so a run fitted another way must stop the experiment, not join its table."""
    from experiments import kather_texture

    started = []
    monkeypatch.setattr(kather_texture, "run_script", lambda script, flags, log: started.append(flags))
    args = kather_texture.parse_args(["--output", str(tmp_path)])
    assert args.head_recipe == "refit"
    run = kather_texture.run_folder(tmp_path, experiment.HARD, "no source", "random", 0)
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"options": {"patience": 8}}))  # written before --head-from
    (run / "state.json").write_text(json.dumps({"round": 6, "best": {"round": 6}}))
    job = (args, tmp_path, [], [], tmp_path / "none.h5", [1] * 6, 6, experiment.HARD, "no source", "random", 0)
    with pytest.raises(SystemExit, match="--head-from last --patience 8, not the refit recipe's"):
        kather_texture.texture_run(*job)
    args.head_recipe = "early"
    kather_texture.texture_run(*job)
    assert started == [], "finished with the early recipe: skipped"
    (run / "state.json").write_text(json.dumps({"round": 3, "best": {"round": 3}}))
    kather_texture.texture_run(*job)
    flags = started[0]
    assert flags[flags.index("--head-from") + 1] == "last" and flags[flags.index("--patience") + 1] == "8"


def test_a_script_run_by_an_experiment_answers_as_its_command_line_would(tmp_path, monkeypatch):
    """In the worker, a script sees its own name and the experiment's
    environment, writes to its log, exits as its command line would, and
    leaves the worker's environment, arguments and output as they were;
    through the worker pool, a failure stops the experiment naming the log."""
    from experiments import script_runs

    monkeypatch.setenv("TISSUE_AL_QUIET", "1")
    log, argv, environment = tmp_path / "extract.txt", list(sys.argv), {**os.environ, "ONLY_FOR_THE_RUN": "1"}
    assert script_runs.run_main("tfrecord_generator.py", ["--no-such-flag"], str(log), environment) == 2
    text = log.read_text()
    assert text.startswith("usage: tfrecord_generator.py") and "tfrecord_generator.py: error: " in text
    assert "ONLY_FOR_THE_RUN" not in os.environ and sys.argv == argv
    with pytest.raises(SystemExit, match=r"tfrecord_generator\.py failed \(exit 2\); see .*worker\.txt"):
        script_runs.run_script("tfrecord_generator.py", ["--no-such-flag"], tmp_path / "worker.txt")
    assert "tfrecord_generator.py: error: " in (tmp_path / "worker.txt").read_text()
