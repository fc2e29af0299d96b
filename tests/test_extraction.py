"""Extraction end to end on a synthetic slide with known regions: pixels against
OpenSlide at every scale, labels against the polygons, padding at the edge,
skipping, failure isolation and sharding."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import openslide
import pytest
import tensorflow as tf

import tfrecord_generator
from tests.conftest import TILE, known_regions
from utils.common.config import load_config
from utils.common.scales import Scales, scale_name
from utils.tiles.records import read_index, record_files, triplet_dataset

MAGS = [40.0, 10.0, 2.5]
FACTORS = [1, 4, 16]  # level-0 px per output px at 0.25 µm/px


@pytest.fixture(scope="module")
def extracted(synthetic_slide, tmp_path_factory):
    slide, geojson = synthetic_slide
    output = tmp_path_factory.mktemp("tiles")
    code = tfrecord_generator.main([
        "--slides", str(slide), "--annotations", str(geojson.parent), "--output", str(output),
        "--tile-size", str(TILE), "--unlabeled",
    ])
    assert code == 0
    return output


def records(output):
    features = {
        "slide": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
        "label_name": tf.io.FixedLenFeature([], tf.string),
        "x": tf.io.FixedLenFeature([], tf.int64),
        "y": tf.io.FixedLenFeature([], tf.int64),
        **{f"image/{s}": tf.io.FixedLenFeature([], tf.string) for s in range(3)},
        **{f"mpp/{s}": tf.io.FixedLenFeature([], tf.float32) for s in range(3)},
    }
    for raw in tf.data.TFRecordDataset(str(output / "known.tfrecord")):
        yield {k: v.numpy() for k, v in tf.io.parse_single_example(raw, features).items()}


def expected_fractions():
    """Per-tile coverage of each class from the rectangles, painted exactly at
    level 0 (stroma, then the prioritised muscle and blood on top)."""
    config = load_config()
    height, width = 16 * TILE, 24 * TILE
    label = np.full((height, width), -1, np.int16)
    order = {name: i for i, name in enumerate(["urothelium", "damaged", "stroma", "muscle", "blood"])}
    for region in sorted(known_regions(), key=lambda r: order[r.tissue]):
        index = config.class_for_annotation(region.name)
        if index is None:
            continue
        xs, ys = zip(*region.exterior)
        label[int(min(ys)) : int(max(ys)), int(min(xs)) : int(max(xs))] = index
    blocks = label.reshape(16, TILE, 24, TILE)
    return {c: (blocks == c).mean(axis=(1, 3)) for c in range(config.num_classes)}


def test_tiles_equal_openslide_windows_at_every_scale(extracted, synthetic_slide):
    reference = openslide.OpenSlide(str(synthetic_slide[0]))
    count = 0
    for record in records(extracted):
        x, y = int(record["x"]), int(record["y"])
        for scale, factor in enumerate(FACTORS):
            tile = tf.io.decode_png(record[f"image/{scale}"]).numpy()
            half = TILE * factor // 2
            rgba = np.asarray(reference.read_region((x - half, y - half), scale, (TILE, TILE)))
            alpha = rgba[..., 3:4].astype(np.float64) / 255
            expected = np.round(rgba[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
            np.testing.assert_array_equal(tile, expected, err_msg=f"tile at ({x}, {y}) scale {scale}")
            assert record[f"mpp/{scale}"] == pytest.approx(0.25 * factor)
        count += 1
    assert count > 100


def test_edge_windows_are_padded_with_background_not_shifted(extracted):
    corner = [r for r in records(extracted) if r["x"] == 23 * TILE + TILE // 2 and r["y"] == 15 * TILE + TILE // 2]
    assert len(corner) == 1, "the tile touching the bottom-right corner must be extracted"
    tile = tf.io.decode_png(corner[0]["image/2"]).numpy()
    # Scale 2 covers 16 level-0 px per pixel; the slide ends 32 px right of and
    # below the tile centre, i.e. 2 output px past the tile's middle.
    inside = TILE // 2 + 2
    assert (tile[:, inside:] == 255).all() and (tile[inside:, :] == 255).all()
    assert (tile[:inside, :inside] != 255).any(axis=-1).mean() > 0.5, "tissue must stay where it is"


def test_labels_match_polygons(extracted):
    config = load_config()
    fractions = expected_fractions()
    labels = {(int(r["y"]) // TILE, int(r["x"]) // TILE): (int(r["label"]), r["label_name"].decode())
              for r in records(extracted)}
    checked = 0
    for row in range(16):
        for col in range(24):
            label, name = labels.get((row, col), (None, None))
            clear = [c for c in fractions if fractions[c][row, col] >= 0.85]
            if clear:
                assert label == clear[0], f"tile ({row}, {col})"
                assert config.class_for_annotation(name) == label
                checked += 1
            elif max(f[row, col] for f in fractions.values()) <= 0.55:
                assert label in (None, -1), f"tile ({row}, {col}) must not be labelled"
                checked += 1
    assert checked > 0.85 * 16 * 24
    assert labels[(3, 5)][0] == config.class_index("muscle"), "muscle wins where it overlaps stroma"


def test_unlabeled_pool_and_unmatched_names_reported(extracted):
    summary = json.loads((extracted / "known.summary.json").read_text())
    assert summary["unmatched_annotations"] == {"Unknown thing": 1}
    assert any("Unknown thing" in line for line in summary["warnings"])
    pool = [r for r in records(extracted) if r["label"] == -1]
    # The tissue of the unmatched region (rows 14-15, cols 1-3) becomes pool tiles.
    assert {(int(r["y"]) // TILE, int(r["x"]) // TILE) for r in pool} >= {(14, 2), (15, 2)}
    assert all(r["label_name"] == b"" for r in pool)
    assert json.loads((extracted / "extraction_config.json").read_text())["tile_size"] == TILE


def test_reader_yields_model_inputs_and_labels(extracted):
    index = read_index(record_files(extracted))
    labelled = np.flatnonzero(index.label >= 0)
    dataset = triplet_dataset(index, labelled, Scales(MAGS, TILE), batch_size=16)
    seen = 0
    for inputs, labels in dataset:
        assert set(inputs) == {scale_name(m) for m in MAGS}
        assert inputs[scale_name(40)].shape[1:] == (TILE, TILE, 3)
        assert inputs[scale_name(40)].dtype == tf.float32
        assert (labels.numpy() >= 0).all()
        seen += len(labels)
    assert seen == len(labelled)


def test_rerun_skips_finished_slides(extracted, synthetic_slide, capsys):
    slide, geojson = synthetic_slide
    before = (extracted / "known.tfrecord").stat().st_mtime_ns
    code = tfrecord_generator.main(["--slides", str(slide), "--annotations", str(geojson.parent),
                                    "--output", str(extracted), "--tile-size", str(TILE), "--unlabeled"])
    assert code == 0
    assert "known: skipped (unchanged)" in capsys.readouterr().out
    assert (extracted / "known.tfrecord").stat().st_mtime_ns == before


def test_bad_slide_is_reported_and_others_go_on(synthetic_slide, tmp_path, capsys):
    slide, geojson = synthetic_slide
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(slide, slides / "good.tiff")
    shutil.copy(geojson, geojson.parent / "good.geojson")
    (slides / "broken.tiff").write_bytes(b"not a tiff at all")
    shutil.copy(geojson, geojson.parent / "broken.geojson")
    code = tfrecord_generator.main(["--slides", str(slides), "--annotations", str(geojson.parent),
                                    "--output", str(tmp_path / "out"), "--tile-size", str(TILE), "--workers", "2"])
    err = capsys.readouterr().err
    assert code == 1
    assert "broken.tiff" in err and "cannot open slide" in err
    assert (tmp_path / "out" / "good.tfrecord").exists()
    assert not (tmp_path / "out" / "broken.tfrecord").exists()
    assert not list((tmp_path / "out").glob(".*tmp")), "no temporary file is left behind"


def test_shards_partition_the_slide_list(tmp_path):
    from utils.tiles.batch import expand_slides, parse_shard, take_shard

    for name in "abcde":
        (tmp_path / f"{name}.svs").touch()
    slides = expand_slides([tmp_path])
    parts = [take_shard(slides, parse_shard(f"{i}/3")) for i in range(3)]
    names = sorted(p.name for part in parts for p in part)
    assert names == list("abcde")
    assert all(parts) and sum(map(len, parts)) == 5


def test_slide_without_annotations_is_skipped_with_a_message(synthetic_slide, tmp_path, capsys):
    code = tfrecord_generator.main(["--slides", str(synthetic_slide[0]), "--annotations", str(tmp_path),
                                    "--output", str(tmp_path / "out"), "--tile-size", str(TILE)])
    assert code == 0
    captured = capsys.readouterr()
    assert "known: skipped (no annotation file" in captured.out
    assert (f"known.tiff: no annotation file in {tmp_path}; looked for known.geojson, known.tiff.geojson (or .json, "
            f".geojson.gz, .json.gz, .zip, .xml in place of .geojson)") in captured.err, \
        "the names looked for, so that a misnamed export is found"
    assert not (tmp_path / "out" / "known.tfrecord").exists()


def test_strict_fails_a_slide_with_unmatched_annotation_names(synthetic_slide, tmp_path, capsys):
    slide, geojson = synthetic_slide
    code = tfrecord_generator.main(["--slides", str(slide), "--annotations", str(geojson.parent),
                                    "--output", str(tmp_path), "--tile-size", str(TILE), "--strict"])
    assert code == 1
    assert "Unknown thing" in capsys.readouterr().err
    assert not (tmp_path / "known.tfrecord").exists()


def test_a_scan_coarser_than_the_magnifications_gets_a_fix_that_the_same_command_accepts(synthetic_slide, tmp_path,
                                                                                        capsys):
    slide, geojson = synthetic_slide
    argv = ["--slides", str(slide), "--annotations", str(geojson.parent), "--tile-size", str(TILE), "--mpp", "0.5"]
    assert tfrecord_generator.main([*argv, "--output", str(tmp_path / "a")]) == 1
    fix = re.search(r"--magnifications ([\d. ]+\d)", capsys.readouterr().err).group(1).split()
    assert fix == ["20", "5", "1.25"]
    assert tfrecord_generator.main([*argv, "--output", str(tmp_path / "b"), "--magnifications", *fix]) == 0
