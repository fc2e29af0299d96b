"""Extraction and inference killed with SIGKILL part-way, then run again: the
rerun completes, its outputs equal those of an uninterrupted run, and no
temporary file is left. (Training: tests/test_training.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import active_learning_inference
import tfrecord_generator
from tests.conftest import ROOT, wait_for
from utils.common.config import load_config
from utils.network.model import build_model, save_model
from utils.network.model_spec import ModelSpec
from utils.tiles.synthetic import make_slide, random_layout


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("kill")
    for i in range(3):
        make_slide(root / "slides", f"slide{i}", 2048, 2048, random_layout(2048, 2048, i), seed=i,
                   annotations_dir=root / "annotations")
    return root / "slides", root / "annotations"


def kill_when(argv: list[str], condition) -> None:
    """Run a script in a child process and SIGKILL it as soon as ``condition`` holds."""
    process = subprocess.Popen([sys.executable, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: condition() or process.poll() is not None)
    finally:
        process.kill()
        process.wait()


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


def test_extraction_killed_mid_slide_reruns_to_the_same_shards(slides, tmp_path):
    folder, annotations = slides
    argv = ["--slides", str(folder), "--annotations", str(annotations), "--tile-size", "32", "--unlabeled"]
    assert tfrecord_generator.main([*argv, "--output", str(tmp_path / "whole")]) == 0
    killed = tmp_path / "killed"
    kill_when([str(ROOT / "tfrecord_generator.py"), *argv, "--output", str(killed)],
              lambda: (killed / "slide0.summary.json").exists() and temporaries(killed))
    assert not (killed / "slide2.summary.json").exists(), "killed part-way"
    assert temporaries(killed), "killed while a shard was half-written"
    assert tfrecord_generator.main([*argv, "--output", str(killed)]) == 0
    for i in range(3):
        name = f"slide{i}.tfrecord"
        assert (killed / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    assert not temporaries(killed)


def test_inference_killed_mid_slide_reruns_to_the_same_maps(slides, tmp_path):
    folder, _ = slides
    config = load_config(tile_size=32)
    model_path = tmp_path / "model.keras"
    save_model(build_model(config, ModelSpec("small", 16), None), model_path,
               {"config": config.to_dict(), "backbone": "small"})
    argv = ["--slides", str(folder), "--model", str(model_path)]
    assert active_learning_inference.main([*argv, "--output", str(tmp_path / "whole")]) == 0
    killed = tmp_path / "killed"
    kill_when([str(ROOT / "active_learning_inference.py"), *argv, "--output", str(killed)],
              lambda: (killed / "slide0" / "summary.json").exists())
    assert not (killed / "slide2" / "summary.json").exists(), "killed part-way"
    assert active_learning_inference.main([*argv, "--output", str(killed)]) == 0
    for i in range(3):
        for name in ("tissue_map.png", "tissue_map.geojson"):
            assert (killed / f"slide{i}" / name).read_bytes() == (tmp_path / "whole" / f"slide{i}" / name).read_bytes()
        with np.load(killed / f"slide{i}" / "probabilities.npz", allow_pickle=False) as a, \
                np.load(tmp_path / "whole" / f"slide{i}" / "probabilities.npz", allow_pickle=False) as b:
            assert set(a.files) == set(b.files)
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key])
    assert not temporaries(killed)
