"""Broken slides, annotation files, records, models and disks: every case ends
in one line that names the file and what to do, a non-zero exit, no partial
output, and in a batch the good slides are still done."""

from __future__ import annotations

import errno
import json
import re
import shutil
import zipfile
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf
import tifffile

import active_learning_inference
import active_learning_train
import tfrecord_generator
from tests.conftest import SHARED_DATA
from utils.common.config import load_config
from utils.common.errors import AnnotationError, InputError, ModelError
from utils.network.model import build_model, load_model, load_weights_by_name, save_model
from utils.network.model_spec import ModelSpec
from utils.slides.annotations import read_annotations
from utils.slides.labels import rasterize_regions
from utils.tiles.records import make_example, read_index
from utils.tiles.synthetic import make_slide, random_layout, write_pyramid_tiff

BAD_SLIDES = {
    "zero.svs": "the file is empty (0 bytes)",
    "truncated.tiff": "cannot be decoded",
    "text.svs": "cannot open slide: the file is truncated or unreadable",
    "photo.png": "not a whole-slide format this tool reads",
    "no_mpp.tiff": "no µm/px, resolution tags or objective power); pass the true base µm/px of level 0",
    "absurd_mpp.tiff": "gives 264.6 µm/px (96 dpi, a software default)",
    # A real low-resolution image: its scale is believed, and the magnifications it can give are named.
    "coarse.tiff": "scanned at 29 µm/px, so its finest level gives 0.345x at most; pass magnifications it can "
                   "give, in the same ratios: --magnifications 0.312 0.0781 0.0195, or resample up with "
                   "--allow-upsampling",
    "cut.svs": "the file is truncated or unreadable (copy it again)",
    "tiny.tiff": "40x40 px is smaller than one 64-px tile at 40x",
    "bad_annotations.tiff": "bad_annotations.geojson: not a valid annotation file (Expecting value",
}


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """One good slide among broken ones, all passed to one extraction run."""
    root = tmp_path_factory.mktemp("bad_slides")
    slides, annotations = root / "slides", root / "annotations"
    good, geojson = make_slide(slides, "good", 1024, 1024, random_layout(1024, 1024, 0), annotations_dir=annotations)
    data = good.read_bytes()
    (slides / "zero.svs").write_bytes(b"")
    (slides / "truncated.tiff").write_bytes(data[: len(data) // 2])
    svs = SHARED_DATA / "slides" / "CMU-1-Small-Region.svs"
    if svs.exists():  # an Aperio file cut short, as an interrupted copy leaves it
        (slides / "cut.svs").write_bytes(svs.read_bytes()[:400_000])
    else:
        (slides / "cut.svs").write_bytes(data[:300])
    (slides / "text.svs").write_text("not a slide\n")
    (slides / "folder.svs").mkdir()  # a folder is no slide, whatever its name: not counted
    cv2.imwrite(str(root / "photo.png"), np.full((64, 64, 3), 200, np.uint8))
    glass = np.full((512, 512, 3), 245, np.uint8)
    tifffile.imwrite(slides / "no_mpp.tiff", glass, tile=(256, 256), photometric="rgb")
    write_pyramid_tiff(slides / "absurd_mpp.tiff", glass, 264.6)  # a 96-dpi tag read as µm/px
    write_pyramid_tiff(slides / "coarse.tiff", glass, 28.97)
    write_pyramid_tiff(slides / "blank.tiff", glass, 0.25)
    write_pyramid_tiff(slides / "tiny.tiff", np.full((40, 40, 3), 120, np.uint8), 0.25)
    shutil.copy(good, slides / "bad_annotations.tiff")
    for name in [*BAD_SLIDES, "blank.tiff"]:
        shutil.copy(geojson, annotations / f"{Path(name).stem}.geojson")
    (annotations / "bad_annotations.geojson").write_text('{"type": "FeatureCollection", "features": [')
    out = root / "out"
    return root, out, [str(slides), str(root / "photo.png"), "--annotations", str(annotations), "--output", str(out),
                       "--tile-size", "64"]


@pytest.fixture(scope="module")
def batch_result(batch, tmp_path_factory):
    root, out, argv = batch
    import contextlib
    import io

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = tfrecord_generator.main(["--slides", *argv])
    return code, stdout.getvalue(), stderr.getvalue(), out


def test_good_slides_are_done_and_the_batch_fails(batch_result):
    code, stdout, stderr, out = batch_result
    assert code == 1
    assert "good: done" in stdout
    assert f"{len(BAD_SLIDES) + 2} slide(s): 2 done, 0 skipped (unchanged), {len(BAD_SLIDES)} failed" in stdout
    assert "error:" not in stdout and "FAILED" not in stdout, "failures go to stderr"
    assert "tifffile" not in stderr and "Traceback" not in stderr, "no library's raw message reaches the output"
    assert json.loads((out / "good.summary.json").read_text())["tiles"] > 0
    assert "blank: done" in stdout and "warning: blank: no tissue found" in stderr, "done, with a warning"
    made = {p.name for p in out.iterdir()}
    assert made == {"extraction_config.json", "good.tfrecord", "good.summary.json", "good.tfrecord.offsets.npz",
                    "blank.tfrecord", "blank.summary.json", "blank.tfrecord.offsets.npz"}, \
        "no partial output of a failed slide"


@pytest.mark.parametrize("name", sorted(BAD_SLIDES))
def test_each_broken_slide_is_one_line_naming_it(batch_result, name):
    _, _, stderr, _ = batch_result
    lines = [line for line in stderr.splitlines() if line.startswith("error: ") and f"/{Path(name).stem}." in line]
    assert len(lines) == 1 and "FAILED" not in stderr, "each failure once"
    assert BAD_SLIDES[name] in lines[0]
    assert not re.search(r"\b[A-Z]\w*(Error|Exception)\b", lines[0]), "plain words, no Python exception names"
    assert "--mpp 0" not in lines[0], "no µm/px value is ever suggested: following it would cut wrong tiles"
    assert "Traceback" not in stderr


def test_debug_shows_the_traceback_of_an_unexpected_error(batch, monkeypatch, capsys):
    from utils.tiles import extract

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(extract, "tissue_grid", broken)
    root, out, argv = batch
    argv = [root / "slides" / "good.tiff", *argv[2:]]
    argv[argv.index("--output") + 1] = str(root / "debug")
    assert tfrecord_generator.main(["--slides", *map(str, argv)]) == 1
    assert "unexpected error (boom); rerun with --debug" in capsys.readouterr().err
    monkeypatch.delenv("TISSUE_AL_DEBUG", raising=False)
    assert tfrecord_generator.main(["--slides", *map(str, argv), "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_a_damaged_extraction_config_is_named_by_extraction_and_training(batch_result, tmp_path, capsys):
    """extraction_config.json is read as a configuration file, by both scripts."""
    _, _, _, out = batch_result
    folder = tmp_path / "out"
    shutil.copytree(out, folder)
    (folder / "extraction_config.json").write_text('{"tile_size": 64,')
    capsys.readouterr()
    root = out.parent
    assert tfrecord_generator.main(["--slides", str(root / "slides" / "good.tiff"), "--annotations",
                                    str(root / "annotations"), "--output", str(folder), "--tile-size", "64"]) == 2
    error = capsys.readouterr().err
    assert "extraction_config.json: cannot read configuration" in error and "delete it to extract" in error
    assert active_learning_train.main(["--data", str(folder), "--output", str(tmp_path / "run")]) == 2
    assert "extraction_config.json: cannot read configuration" in capsys.readouterr().err


# -- annotation files ------------------------------------------------------------------
def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def feature(geometry: dict, name: str = "Stroma") -> dict:
    return {"type": "Feature", "geometry": geometry, "properties": {"classification": {"name": name}}}


def square(x: float, y: float, side: float) -> list:
    return [[[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]]


def collection(*features: dict) -> str:
    return json.dumps({"type": "FeatureCollection", "features": list(features)})


def test_invalid_json_and_xml_name_the_file_and_position(tmp_path):
    with pytest.raises(AnnotationError, match=r"bad\.geojson: not a valid annotation file .*line 1 column 31"):
        read_annotations(write(tmp_path / "bad.geojson", '{"type": "FeatureCollection", ]'))
    with pytest.raises(AnnotationError, match=r"bad\.xml: not a valid annotation file .*line 1, column"):
        read_annotations(write(tmp_path / "bad.xml", "<ASAP_Annotations><Annotation></ASAP_Annotations>"))


def test_empty_collection_and_features_without_area(tmp_path):
    assert read_annotations(write(tmp_path / "empty.geojson", collection())) == []
    text = collection(
        feature({"type": "Point", "coordinates": [5, 5]}),
        feature({"type": "LineString", "coordinates": [[0, 0], [9, 9]]}),
        feature({"type": "Polygon", "coordinates": [[[0, 0], [5, 5], [0, 0]]]}),
        feature({"type": "Polygon", "coordinates": [[[0, 0], [10, float("nan")], [10, 10], [0, 10]]]}),
        feature({"type": "Polygon", "coordinates": square(0, 0, 10)}),
    )
    with pytest.warns(UserWarning) as caught:
        regions = read_annotations(write(tmp_path / "mixed.geojson", text))
    message = str(caught[0].message)
    for part in ("1 Point geometries", "1 LineString geometries", "1 rings with fewer than 3 points",
                 "1 rings with NaN or infinite coordinates"):
        assert part in message
    assert len(regions) == 1 and regions[0].polygons[0].exterior.shape == (5, 2)


def test_bow_tie_outside_and_non_ascii_polygons_rasterise_without_error(tmp_path):
    config = load_config()
    bow_tie = [[[0, 0], [8, 8], [8, 0], [0, 8], [0, 0]]]  # crosses itself at (4, 4)
    text = collection(feature({"type": "Polygon", "coordinates": bow_tie}, "Stroma (épithélium) ✓"),
                      feature({"type": "Polygon", "coordinates": square(-50, 8, 100)}, "Muscle"))
    regions = read_annotations(write(tmp_path / "odd.geojson", text))
    assert regions[0].name == "Stroma (épithélium) ✓"
    cells = rasterize_regions(regions, config, (10, 10), 1.0)
    stroma = cells.classes == config.class_index("stroma")
    # Even-odd: the left and right triangles of the bow tie are in, the top and bottom ones out.
    assert stroma[4, 1] and stroma[4, 7] and not stroma[0, 4] and not stroma[7, 4]
    assert abs(int(stroma.sum()) - 32) <= 4, "about the bow tie's area, 2 x 16"
    muscle = cells.classes == config.class_index("muscle")
    assert muscle[8:].all() and not muscle[:8].any(), "a polygon beyond the slide is clipped to it"


def test_huge_annotation_file_fails_cleanly_without_being_read(tmp_path):
    path = tmp_path / "huge.geojson"
    with path.open("wb") as handle:
        handle.truncate(100 * 2**20)  # 100 MB, sparse: nothing is allocated
    with pytest.raises(AnnotationError, match=r"huge\.geojson: 100 MB is more than the 64 MB"):
        read_annotations(path)


@pytest.mark.parametrize("declaration", [
    '<!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>',
    '<!DOCTYPE l [<!ENTITY secret SYSTEM "file:///etc/passwd">]>',
])
def test_xml_entities_are_never_expanded(tmp_path, declaration):
    text = f'<?xml version="1.0"?>{declaration}<ASAP_Annotations><Annotation Name="&b;&secret;"/></ASAP_Annotations>'
    with pytest.raises(AnnotationError, match="DOCTYPE or entity declarations is refused"):
        read_annotations(write(tmp_path / "entities.xml", text))


def test_unknown_class_names_warn_and_strict_fails(synthetic_slide, tmp_path, capsys):
    slide, geojson = synthetic_slide
    argv = ["--slides", str(slide), "--annotations", str(geojson.parent), "--tile-size", "64"]
    assert tfrecord_generator.main([*argv, "--output", str(tmp_path / "a")]) == 0
    assert "warning: known: skipped annotations whose names match no class rule: 'Unknown thing'" in \
        capsys.readouterr().err
    assert tfrecord_generator.main([*argv, "--output", str(tmp_path / "b"), "--strict"]) == 1
    assert "Unknown thing" in capsys.readouterr().err
    assert not (tmp_path / "b" / "known.tfrecord").exists()


# -- records and models ----------------------------------------------------------------
def shard(path: Path, count: int = 20) -> Path:
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i in range(count):
            writer.write(make_example("s", 1, "Stroma", i, 0, [b"png"], [0.25]))
    return path


def test_truncated_and_foreign_records_are_named(tmp_path):
    good = shard(tmp_path / "good.tfrecord")
    data = good.read_bytes()
    (tmp_path / "cut.tfrecord").write_bytes(data[: len(data) - 7])
    with pytest.raises(InputError, match=r"cut\.tfrecord: truncated or corrupt TFRecord shard; delete it"):
        read_index([good, tmp_path / "cut.tfrecord"])
    with tf.io.TFRecordWriter(str(tmp_path / "foreign.tfrecord")) as writer:
        feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x"]))}
        writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    with pytest.raises(InputError, match=r"foreign\.tfrecord: not a shard of this project's record schema"):
        read_index([tmp_path / "foreign.tfrecord"])
    assert len(read_index([good]).label) == 20


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    """A MONO-CNN (one scale, 10x) for 2 classes, saved like a training run saves it."""
    config = load_config(magnifications=[10], tile_size=32, priority=[], rules=[],
                         classes=[{"name": "a", "color": "#000000"}, {"name": "b", "color": "#FFFFFF"}])
    model = build_model(config, ModelSpec("small", 16), None)
    path = tmp_path_factory.mktemp("model") / "model.keras"
    save_model(model, path, {"config": config.to_dict(), "backbone": "small"})
    return path


def test_model_for_other_scales_or_classes_is_refused_by_inference(small_model, synthetic_slide, tmp_path, capsys):
    slide, _ = synthetic_slide
    argv = ["--slides", str(slide), "--model", str(small_model), "--output", str(tmp_path / "maps")]
    assert active_learning_inference.main([*argv, "--magnifications", "40", "10", "2.5"]) == 2
    assert "the model has 1 scale input(s) ['mag_10x'], the configuration 3" in capsys.readouterr().err
    six = tmp_path / "six.yaml"
    six.write_text("classes: [{name: a, color: '#000000'}, {name: b, color: '#111111'}, {name: c, color: '#222222'}]\n"
                   "rules: []\npriority: []\n")
    assert active_learning_inference.main([*argv, "--config", str(six)]) == 2
    assert "the model predicts 2 classes, the configuration has 3" in capsys.readouterr().err
    assert not (tmp_path / "maps").exists() or not any((tmp_path / "maps").iterdir())


def test_corrupt_and_unsafe_model_files_are_refused(small_model, tmp_path):
    (tmp_path / "random.keras").write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(ModelError, match=r"random\.keras: not a \.keras model archive"):
        load_model(tmp_path / "random.keras")
    data = small_model.read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"cut\.keras: not a \.keras model archive"):
        load_model(tmp_path / "cut.keras")
    inputs = keras.Input((4,))
    unsafe = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    unsafe.save(tmp_path / "lambda.keras")
    with pytest.raises(ModelError, match=r"lambda\.keras: cannot load model .*safe_mode"):
        load_model(tmp_path / "lambda.keras")


def test_weights_with_no_matching_layer_are_an_error(small_model, tmp_path):
    inputs = keras.Input((8,))
    other = keras.Model(inputs, keras.layers.Dense(3, name="unrelated")(inputs))
    save_model(other, tmp_path / "other.keras", {})
    config = load_config(magnifications=[10], tile_size=32)
    model = build_model(config, ModelSpec("small", 16), None)
    with pytest.raises(ModelError, match=r"other\.keras: no layer of this model matches"):
        load_weights_by_name(model, tmp_path / "other.keras")
    assert "predictions" in load_weights_by_name(model, small_model), "a 2-class head cannot fill a 6-class one"
    with zipfile.ZipFile(small_model) as archive:
        assert "tissue_al.json" in archive.namelist()


# -- the environment -------------------------------------------------------------------
def test_unwritable_output_is_one_line(synthetic_slide, tmp_path, capsys):
    slide, geojson = synthetic_slide
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code = tfrecord_generator.main(["--slides", str(slide), "--annotations", str(geojson.parent),
                                    "--output", str(blocker / "tiles")])
    assert code == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a_file/tiles" in err and "a path component is a file" in err


def test_full_disk_fails_the_slide_and_leaves_no_partial_shard(synthetic_slide, tmp_path, monkeypatch, capsys):
    class FullDisk:
        def __init__(self, path: str) -> None:
            self.path = path
            Path(path).write_bytes(b"partial")

        def write(self, record: bytes) -> None:
            raise OSError(errno.ENOSPC, "No space left on device", self.path)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(tf.io, "TFRecordWriter", FullDisk)
    slide, geojson = synthetic_slide
    out = tmp_path / "tiles"
    assert tfrecord_generator.main(["--slides", str(slide), "--annotations", str(geojson.parent),
                                    "--output", str(out), "--tile-size", "64"]) == 1
    assert "the disk is full; free space or choose another --output" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["extraction_config.json"], "no partial shard, no summary"


def test_training_data_folder_without_shards_is_one_line(tmp_path, capsys):
    assert active_learning_train.main(["--data", str(tmp_path), "--output", str(tmp_path / "run")]) == 2
    assert "no .tfrecord shards; run tfrecord_generator.py first" in capsys.readouterr().err


# -- untrusted files -------------------------------------------------------------------
def test_nothing_is_pickled_or_unpickled():
    """Results are JSON, CSV and NPZ read with allow_pickle=False; models load in safe mode."""
    root = Path(__file__).resolve().parents[1]
    sources = [p for p in root.rglob("*.py") if ".venv" not in p.parts and p.name != "test_bad_input.py"]
    for path in sources:
        text = path.read_text()
        assert "pickle" not in text.replace("allow_pickle=False", ""), path
        for call in re.finditer(r"np\.load\((?:[^()]|\([^()]*\))*\)", text):
            assert "allow_pickle=False" in call.group(0), f"{path}: {call.group(0)}"


def test_interrupt_and_disk_errors_are_one_line_with_their_own_exit_status(capsys):
    from utils.common.failures import exit_on_input_error

    @exit_on_input_error
    def interrupted(argv=None) -> int:
        raise KeyboardInterrupt

    @exit_on_input_error
    def full(argv=None) -> int:
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out/slide.tfrecord")

    assert interrupted([]) == 130
    assert "interrupted; finished work is kept, rerun the same command" in capsys.readouterr().err
    assert full([]) == 3
    err = capsys.readouterr().err
    assert err == ("error: /data/out/slide.tfrecord: No space left on device (the disk is full; free space or "
                   "choose another --output, then rerun (finished work is kept))\n")


def test_a_broken_slide_without_annotation_file_is_reported_broken_not_skipped(batch, tmp_path, capsys):
    """Before, a truncated, empty or text file named on the command line with
    no annotation beside it was "skipped (no annotation file)", exit 0: the
    user was never told that the file is broken."""
    root, _, _ = batch
    for name, says in (("cut.svs", "truncated or unreadable"), ("zero.svs", "the file is empty"),
                       ("text.svs", "cannot open slide")):
        code = tfrecord_generator.main(["--slides", str(root / "slides" / name), "--annotations", str(tmp_path),
                                        "--output", str(tmp_path / "out")])
        captured = capsys.readouterr()
        assert code == 1 and "skipped (no annotation" not in captured.out, name
        assert says in captured.err, (name, captured.err)
