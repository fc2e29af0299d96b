"""A cohort run twice: outputs record what made them, so a rerun skips what is
unchanged, stops on what was made otherwise (or redoes it with --overwrite),
and never reports a stale result as done. Also per-slide µm/px and the logs a
cluster job writes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import active_learning_inference
import active_learning_train
import tfrecord_generator
from tests.conftest import ROOT, TILE, shared_file
from tests.test_inference import colour_model
from utils.common.config import load_config
from utils.network.model import save_model
from utils.tiles.synthetic import make_slide, random_layout


def run(main, argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_extraction_rerun_skips_unchanged_stops_on_changed_annotations_and_redoes_with_overwrite(
        synthetic_slide, tmp_path, capsys):
    slide, geojson = synthetic_slide
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    shutil.copy(geojson, annotations / geojson.name)
    out = tmp_path / "tiles"
    argv = ["--slides", str(slide), "--annotations", str(annotations), "--output", str(out), "--tile-size", str(TILE)]
    assert run(tfrecord_generator.main, argv, capsys)[0] == 0
    summary_file = out / "known.summary.json"
    first = summary_file.read_bytes()

    code, stdout, _ = run(tfrecord_generator.main, argv, capsys)
    assert code == 0 and "1 slide(s): 0 done, 1 skipped (unchanged), 0 failed" in stdout

    features = json.loads(geojson.read_text())
    features["features"] = features["features"][1:]  # the pathologist removed a region
    (annotations / geojson.name).write_text(json.dumps(features))
    code, stdout, stderr = run(tfrecord_generator.main, argv, capsys)
    assert code == 2 and "done" not in stdout
    assert stderr.count("\n") == 1 and "made_with" not in stderr
    assert f"annotations file {geojson.name} changed since" in stderr and "--overwrite" in stderr
    assert "sha256" not in stderr, "no digests in the message"
    assert summary_file.read_bytes() == first, "nothing was touched"

    code, stdout, _ = run(tfrecord_generator.main, [*argv, "--overwrite"], capsys)
    assert code == 0 and "1 slide(s): 1 done" in stdout
    made_with = json.loads(summary_file.read_text())["made_with"]
    assert made_with["annotations"]["sha256"] == hashlib.sha256((annotations / geojson.name).read_bytes()).hexdigest()
    redone = summary_file.read_bytes()
    code, stdout, _ = run(tfrecord_generator.main, [*argv, "--overwrite"], capsys)
    assert code == 0 and "1 slide(s): 0 done, 1 skipped (unchanged)" in stdout, "--overwrite redoes only what changed"
    assert summary_file.read_bytes() == redone

    code, _, stderr = run(tfrecord_generator.main, [*argv, "--encoding", "jpeg"], capsys)
    assert code == 2 and 'encoding "png" vs "jpeg"' in stderr


def test_inference_rerun_with_another_threshold_or_model_never_keeps_stale_maps(synthetic_slide, tmp_path, capsys):
    config = load_config(tile_size=TILE)
    model = tmp_path / "model.keras"
    save_model(colour_model(config), model, {"config": config.to_dict(), "backbone": "stub"})
    out = tmp_path / "maps"
    argv = ["--slides", str(synthetic_slide[0]), "--model", str(model), "--output", str(out), "--batch-size", "64"]
    assert run(active_learning_inference.main, argv, capsys)[0] == 0
    assert not (out / "inference_config.json").exists(), "no top-level file to contradict the maps"
    summary_file = out / "known" / "summary.json"
    assert json.loads(summary_file.read_text())["made_with"]["configuration"]["undefined_threshold"] == 0.6

    strict = tmp_path / "strict.yaml"
    strict.write_text(yaml.safe_dump({"undefined_threshold": 0.0}))
    code, stdout, stderr = run(active_learning_inference.main, [*argv, "--config", str(strict)], capsys)
    assert code == 2 and "done" not in stdout
    assert "configuration.undefined_threshold 0.6 vs 0.0" in stderr and "--overwrite" in stderr

    code, stdout, _ = run(active_learning_inference.main, [*argv, "--config", str(strict), "--overwrite"], capsys)
    assert code == 0 and "1 slide(s): 1 done" in stdout
    summary = json.loads(summary_file.read_text())
    assert summary["made_with"]["configuration"]["undefined_threshold"] == 0.0
    assert summary["classes"]["undefined"]["cells"] == 0, "the new threshold shaped the new map"

    other = tmp_path / "other.keras"
    save_model(colour_model(config, temperature=10.0), other, {"config": config.to_dict(), "backbone": "stub"})
    code, _, stderr = run(active_learning_inference.main,
                          ["--slides", str(synthetic_slide[0]), "--model", str(other), "--output", str(out),
                           "--config", str(strict)], capsys)
    assert code == 2 and "the model differs in content" in stderr and "sha256" not in stderr

    code, stdout, _ = run(active_learning_inference.main, [*argv, "--config", str(strict)], capsys)
    assert code == 0 and "0 done, 1 skipped (unchanged)" in stdout


def test_a_run_that_finds_no_slide_fails(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("nothing here\n")
    code, _, stderr = run(tfrecord_generator.main, ["--slides", str(tmp_path / "empty"), "--unlabeled", "--output",
                                                    str(tmp_path / "out")], capsys)
    assert code == 2 and "no slides in" in stderr


def test_mpp_file_gives_each_slide_its_scale_and_a_slide_without_any_fails_alone(tmp_path, capsys):
    crop = shared_file("slides", "CropBreastSlide.tiff")  # its 96-dpi tag reads as 264.6 µm/px
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(crop, slides / "listed.tiff")
    shutil.copy(crop, slides / "unlisted.tiff")
    make_slide(slides, "scanned", 1024, 1024, random_layout(1024, 1024, 0))
    (slides / "scanned.geojson").unlink()
    table = tmp_path / "mpp.csv"
    table.write_text("slide,mpp\nlisted.tiff,0.5\nnot_here,0.25\n")
    with pytest.warns(UserWarning, match="not_here is not among the slides"):
        code, stdout, stderr = run(tfrecord_generator.main,
                                   ["--slides", str(slides), "--unlabeled", "--output", str(tmp_path / "out"),
                                    "--mpp", str(table), "--magnifications", "20", "5", "--tile-size", "64"], capsys)
    assert code == 1 and "3 slide(s): 2 done, 0 skipped (unchanged), 1 failed" in stdout
    listed = json.loads((tmp_path / "out" / "listed.summary.json").read_text())
    scanned = json.loads((tmp_path / "out" / "scanned.summary.json").read_text())
    assert (listed["base_mpp"], listed["mpp_source"]) == (0.5, "--mpp")
    assert scanned["base_mpp"] == pytest.approx(0.25) and scanned["mpp_source"] != "--mpp"
    failed = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(failed) == 1 and "unlisted.tiff" in failed[0] and "264.6" in failed[0] and "--mpp FILE" in failed[0]


def script(name: str, *argv: str, stderr_file: Path) -> subprocess.CompletedProcess:
    """A script as a cluster job runs it: stderr is a file, not a terminal.
    oneDNN's custom operations are forced on, so that TensorFlow prints its
    start-up notes on any x86 CPU, as it does by itself on some."""
    environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    environment["TF_ENABLE_ONEDNN_OPTS"] = "1"
    with stderr_file.open("w") as handle:
        return subprocess.run([sys.executable, str(ROOT / name), *argv], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=handle, text=True, env=environment, timeout=600)


def test_a_job_log_has_plain_lines_and_quiet_keeps_only_warnings(synthetic_slide, tmp_path):
    """Two slides on two worker processes: neither the script nor its workers
    let TensorFlow's start-up notes into the log."""
    slide, geojson = synthetic_slide
    for folder, source in (("slides", slide), ("annotations", geojson)):
        (tmp_path / folder).mkdir()
        for name in ("known", "again"):
            (tmp_path / folder / f"{name}{source.suffix}").symlink_to(source)
    argv = ["--slides", str(tmp_path / "slides"), "--annotations", str(tmp_path / "annotations"), "--tile-size",
            str(TILE), "--workers", "2"]
    log = tmp_path / "job.err"
    result = script("tfrecord_generator.py", *argv, "--output", str(tmp_path / "a"), stderr_file=log)
    assert result.returncode == 0, log.read_text()
    text = log.read_text()
    assert "\r" not in text and "\x1b" not in text, "no carriage return or cursor code in a log"
    assert "slides: 2/2 (100%)" in text
    for note in ("oneDNN", "cpu_feature_guard", "absl::InitializeLog", "port.cc"):
        assert note not in text, f"TensorFlow's start-up is quiet: {note}"
    assert "warning: known: skipped annotations whose names match no class rule: 'Unknown thing'" in text
    assert "warning:" not in result.stdout, "warnings go to stderr"
    assert "2 slide(s): 2 done" in result.stdout

    quiet = script("tfrecord_generator.py", *argv, "--output", str(tmp_path / "b"), "--quiet", stderr_file=log)
    assert quiet.returncode == 0 and quiet.stdout == ""
    assert all(line.startswith("warning: ") for line in log.read_text().splitlines()), log.read_text()


def test_every_script_reports_versions_and_groups_its_options_alike(tmp_path, capsys):
    groups = {}
    for name, main in (("tfrecord_generator.py", tfrecord_generator), ("active_learning_train.py", active_learning_train),
                       ("active_learning_inference.py", active_learning_inference)):
        with pytest.raises(SystemExit):
            main.parse_args(["--help"])
        help_text = capsys.readouterr().out
        groups[name] = [line[:-1] for line in help_text.splitlines() if line.endswith(":") and not line[0].isspace()
                        and line[:-1].islower()]
        assert "(default: " in help_text
    assert groups["tfrecord_generator.py"] == ["options", "input and output", "configuration", "slides",
                                               "extraction", "messages"]
    assert groups["active_learning_inference.py"] == ["options", "input and output", "configuration", "slides",
                                                      "inference", "messages"]
    assert groups["active_learning_train.py"][:3] == ["options", "input and output", "configuration"]
    assert groups["active_learning_train.py"][-1] == "messages"
    version = script("active_learning_inference.py", "--version", stderr_file=tmp_path / "err").stdout
    import openslide
    import tensorflow as tf

    from utils import __version__
    assert f"{__version__}; TensorFlow {tf.__version__}; OpenSlide {openslide.__library_version__}" in version


def test_outputs_of_a_version_before_background_class_are_not_stale_for_lack_of_it():
    from utils.tiles.provenance import difference

    new = {"configuration": load_config().extraction_settings(), "mpp": None}
    old = json.loads(json.dumps(new))
    del old["configuration"]["background_class"]
    assert difference(old, new) is None, "earlier versions used 'background' without recording it"
    other = {**new, "configuration": {**new["configuration"], "background_class": None}}
    assert difference(old, other) == 'configuration.background_class "background" vs null this run'
    assert "uncapped_classes" not in new["configuration"], "shards do not depend on training-only keys"
