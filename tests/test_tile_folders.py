"""Tile-folder datasets (one sub-folder per class) through tfrecord_generator.py
--tiles: pixels against the image files, labels against the folder rules."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import tfrecord_generator
from utils.common.scales import Scales
from utils.tiles.records import read_index, record_files, triplet_dataset

CONFIG = {
    "classes": [{"name": "tumour", "color": "#FF0000"}, {"name": "stroma", "color": "#00FF00"}],
    "rules": [[r"(\d+_)?tumou?r", "tumour"], [r"(\d+_)?stroma", "stroma"]],
    "priority": [],
}


def write_dataset(root: Path, size: int = 140, per_class: int = 3) -> dict[str, np.ndarray]:
    """Random RGB images in 01_TUMOR, 02_STROMA and an unmapped 03_OTHER folder."""
    rng = np.random.default_rng(0)
    images = {}
    for folder in ("01_TUMOR", "02_STROMA", "03_OTHER"):
        (root / folder).mkdir(parents=True)
        for k in range(per_class):
            name = f"{folder}/{k:03d}_SLIDE-{k % 2}_x.png"
            rgb = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            cv2.imwrite(str(root / name), rgb[..., ::-1])
            images[name] = rgb
    return images


def generate(tmp_path: Path, *flags: str) -> tuple[int, Path]:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG))
    out = tmp_path / "records"
    code = tfrecord_generator.main(["--tiles", str(tmp_path / "tiles"), "--mpp", "0.5", "--config", str(config),
                                    "--slide-pattern", r"_(SLIDE-\d+)_", "--output", str(out), *flags])
    return code, out


def records(out: Path, magnifications: list[float], size: int) -> list[tuple[list[np.ndarray], int, str, int, int]]:
    index = read_index(record_files(out))
    rows = []
    for inputs, labels, gid in triplet_dataset(index, None, Scales(magnifications, size), 64, with_ids=True):
        arrays = [inputs[k].numpy().astype(np.uint8) for k in inputs]
        for j, i in enumerate(gid.numpy()):
            rows.append(([a[j] for a in arrays], int(labels[j]), index.slide[i], index.x[i], index.y[i]))
    return rows


def file_of(out: Path) -> dict[tuple[str, int, int], tuple[str, int]]:
    lookup = {}
    for path in out.glob("*.index.csv"):
        slide = path.name.removesuffix(".index.csv")
        with path.open() as handle:
            for row in csv.DictReader(handle):
                lookup[(slide, int(row["x"]), int(row["y"]))] = (row["file"], int(row["label"]))
    return lookup


def test_tiles_are_the_image_pixels_centred_at_every_scale(tmp_path):
    images = write_dataset(tmp_path / "tiles")
    # 20x = 0.5 µm/px, the images' own scale: 32-px windows; 10x: a 64-px window
    # shrunk to 32 px, centred on the same point. The coarsest (64 px) fits 2x2
    # times in 140 px, centred: window centres at 38 and 102.
    with pytest.warns(UserWarning, match="03_OTHER"):
        code, out = generate(tmp_path, "--magnifications", "20", "10", "--tile-size", "32")
    assert code == 0
    rows = records(out, [20, 10], 32)
    lookup = file_of(out)
    assert len(rows) == 6 * 4, "2x2 records per image"
    offsets = set()
    for (fine, coarse), label, slide, x, y in rows:
        name, listed_label = lookup[(slide, x, y)]
        assert listed_label == label == (0 if name.startswith("01_TUMOR") else 1)
        assert slide == f"SLIDE-{int(name.split('/')[1][:3]) % 2}"
        image = images[name]
        # The record's canvas position modulo the 128-px image cell gives its window.
        cx, cy = x % 128 + 6, y + 6
        offsets.add((cx, cy))
        np.testing.assert_array_equal(fine, image[cy - 16 : cy + 16, cx - 16 : cx + 16])
        expected = cv2.resize(image[cy - 32 : cy + 32, cx - 32 : cx + 32], (32, 32), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(coarse, expected)
    assert offsets == {(38, 38), (102, 38), (38, 102), (102, 102)}
    summary = json.loads((out / "SLIDE-0.summary.json").read_text())
    assert summary["status"] == "done" and summary["scale_mpps"] == [0.5, 1.0] and summary["stride_level0"] == 64


def test_rerun_skips_finished_slides_and_bad_input_is_one_clear_error(tmp_path, capsys):
    write_dataset(tmp_path / "tiles")
    with pytest.warns(UserWarning):
        assert generate(tmp_path, "--magnifications", "20", "--tile-size", "32")[0] == 0
    with pytest.warns(UserWarning):
        assert generate(tmp_path, "--magnifications", "20", "--tile-size", "32")[0] == 0
    assert "SLIDE-0: skipped (unchanged)" in capsys.readouterr().out
    with pytest.warns(UserWarning):
        assert generate(tmp_path, "--magnifications", "2.5", "--tile-size", "32", "--overwrite")[0] == 2
    assert "smaller than the 256-px window of 2.5x" in capsys.readouterr().err
    assert generate(tmp_path, "--magnifications", "40", "--tile-size", "32", "--overwrite")[0] == 2
    assert "40x needs 0.25 µm/px but the tiles are 0.5 µm/px" in capsys.readouterr().err
    assert not list((tmp_path / "records").glob(".*.tmp")), "no temporary file is left behind"


def test_images_of_another_shape_get_canvas_cells_as_wide_as_their_grid(tmp_path):
    """A 140x70 image gives a 2x1 grid of 64-px windows; its neighbour on the
    canvas must start after both, not overlap them."""
    write_dataset(tmp_path / "tiles", size=70)
    for k, path in enumerate(sorted((tmp_path / "tiles" / "01_TUMOR").glob("*.png"))):
        cv2.imwrite(str(path), np.full((70, 140, 3), 40 * k, np.uint8))
    with pytest.warns(UserWarning):
        code, out = generate(tmp_path, "--magnifications", "20", "10", "--tile-size", "32")
    assert code == 0
    positions = [(slide, x, y) for _, _, slide, x, y in records(out, [20, 10], 32)]
    assert len(positions) == len(set(positions)), "every record has its own canvas position"


def test_strict_stops_on_an_unmapped_folder_and_slide_only_flags_are_refused(tmp_path, capsys):
    write_dataset(tmp_path / "tiles")
    assert generate(tmp_path, "--magnifications", "20", "--tile-size", "32", "--strict")[0] == 2
    assert "folders ['03_OTHER'] match no class rule (--strict)" in capsys.readouterr().err
    assert not (tmp_path / "records").exists() or not list((tmp_path / "records").glob("*.tfrecord"))
    for flags in (["--shard", "0/2"], ["--workers", "2"], ["--unlabeled"]):
        with pytest.raises(SystemExit) as exit_info:
            generate(tmp_path, "--magnifications", "20", "--tile-size", "32", *flags)
        assert exit_info.value.code == 2
        assert "apply to --slides only" in capsys.readouterr().err
