"""How the package holds together: modules that import alone and without a
loop, TensorFlow's start-up notes kept off stderr, the summaries that one
stage hands the next read in every shape earlier versions wrote, and one
value for the scales that every stage takes."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from utils.common.config import load_config
from utils.common.errors import ConfigError, ModelError
from utils.common.scales import Scales, check_same_data
from utils.common.startup import without_start_up_notes
from utils.learning.training_data import _slide_grids
from utils.tiles.summaries import ClassArea, MapSummary, ShardSummary

MODULES = sorted(".".join(path.relative_to(ROOT).with_suffix("").parts) for path in (ROOT / "utils").rglob("*.py")
                 if path.stem != "__init__")
#: The sub-packages of utils, in the order of the pipeline: each may import from
#: those before it, never from those after it (see each one's __init__).
LAYERS = ("common", "slides", "tiles", "network", "learning", "maps")


def test_tensorflow_start_up_notes_are_dropped_and_everything_else_kept():
    # As TensorFlow 2.21 printed them on a CPU with oneDNN custom operations on.
    notes = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1796169995.121152    1998 port.cc:153] oneDNN custom operations are on. You may see slightly "
        "different numerical results due to floating-point round-off errors from different computation orders. "
        "To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.\n"
        "I0000 00:00:1796169995.176950    1998 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
        "available CPU instructions in performance-critical operations.\n"
        "To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in other operations, "
        "rebuild TensorFlow with the appropriate compiler flags.\n"
    )
    real = ("E0000 00:00:1796169995.2 1998 cuda_dnn.cc:8] Unable to register cuDNN factory\n"
            "warning: something the user must read\n"
            "Traceback (most recent call last):\n")
    assert without_start_up_notes(notes) == ""
    assert without_start_up_notes(notes + real + notes) == real, "errors, warnings and tracebacks stay"


def test_every_module_imports_alone():
    """Each module in a fresh interpreter state: a loop of ``from x import y``
    between two modules fails whichever is imported first."""
    code = ("import importlib, sys\n"
            "for name in sys.argv[1:]:\n"
            "    for loaded in [m for m in sys.modules if m.startswith('utils.')]:\n"
            "        del sys.modules[loaded]\n"
            "    importlib.import_module(name)\n")
    result = subprocess.run([sys.executable, "-c", code, *MODULES], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def import_graph() -> dict[str, set[str]]:
    """The modules of utils that each module imports, counting the imports made for type hints only."""
    graph: dict[str, set[str]] = {}
    for name in MODULES:
        tree = ast.parse((ROOT / f"{name.replace('.', '/')}.py").read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("utils"):
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
                imported |= {t for t in targets if t in MODULES}
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names if a.name in MODULES}
        graph[name] = imported - {name}
    return graph


def test_no_module_of_the_package_imports_itself_back():
    """No loop in the import graph."""
    graph = import_graph()
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for other in sorted(graph[module]):
            assert state.get(other) != "open", f"import loop: {' -> '.join([*path, module, other])}"
            if other not in state:
                visit(other, [*path, module])
        state[module] = "done"

    for module in MODULES:
        if module not in state:
            visit(module, [])


def test_each_stage_imports_only_the_stages_before_it():
    """Every module sits in one of the sub-packages of :data:`LAYERS` and
    imports only from its own or an earlier one, so the folder reads as the
    pipeline and no stage reaches into a later one."""
    assert {name.split(".")[1] for name in MODULES} == set(LAYERS)
    assert all(len(name.split(".")) == 3 for name in MODULES), "no module outside a sub-package"
    for name, imported in import_graph().items():
        for other in imported:
            assert LAYERS.index(other.split(".")[1]) <= LAYERS.index(name.split(".")[1]), f"{name} imports {other}"


CURRENT_SHARD = {
    "slide": "s1", "status": "done", "slide_path": "/data/s1.svs", "annotations": "/data/s1.geojson", "tiles": 12,
    "tiles_per_class": {"stroma": 8, "unlabeled": 4}, "base_mpp": 0.25, "mpp_source": "openslide.mpp-x",
    "fingerprint": None, "made_with": {"encoding": "png"}, "reader": {"vendor": "aperio", "backend": "openslide"},
    "magnifications": [40.0, 10.0, 2.5], "scale_mpps": [0.25, 1.0, 4.0], "scale_levels": [0, 1, 2],
    "tile_size": 64, "stride_level0": 64.0, "window_level0": 1024.0, "grid_shape": [4, 3], "encoding": "png",
    "unmatched_annotations": {}, "ignored_annotations": {}, "coverage": {}, "warnings": [], "seconds": 1.5,
    "config": None,
}


def older_shards() -> dict[str, dict]:
    """The summary shapes of earlier versions, as their extraction wrote them."""
    config = load_config(tile_size=64).to_dict()
    first = {key: value for key, value in CURRENT_SHARD.items()
             if key not in ("fingerprint", "made_with", "reader", "scale_mpps", "window_level0", "ignored_annotations",
                            "warnings")}
    first.update(scale_mpp=[0.25, 1.0, 4.0], warning=None, config=config)  # the first version
    with_fingerprint = {**first, "fingerprint": load_config(tile_size=64).fingerprint(), "warnings": []}
    del with_fingerprint["warning"]
    tile_folder = {"slide": "CRC-01", "status": "done", "source": "tile folder", "images": 3, "tiles": 3,
                   "tiles_per_class": {"stroma": 3}, "fingerprint": load_config(tile_size=64).fingerprint(),
                   "made_with": {}, "magnifications": [40.0, 10.0, 2.5], "tile_size": 64, "base_mpp": 0.495,
                   "scale_mpps": [0.25, 1.0, 4.0], "stride_level0": 520.0, "window_level0": 520.0, "seconds": 0.1}
    return {"first (scale_mpp, no fingerprint, no window)": first,
            "with fingerprint, no window": with_fingerprint, "tile folder": tile_folder}


@pytest.mark.parametrize("shape", list(older_shards()))
def test_shard_summaries_of_earlier_versions_load_and_train(shape, tmp_path):
    data = older_shards()[shape]
    summary = ShardSummary.from_json(data)
    assert summary.done and summary.tiles == data["tiles"] and summary.scale_mpps == [0.25, 1.0, 4.0]
    assert summary.fingerprint == load_config(tile_size=64).fingerprint()
    expected_window = data.get("window_level0", 64 * 4.0 / 0.25)  # the coarsest window in level-0 pixels
    assert summary.window_level0 == pytest.approx(expected_window)
    (tmp_path / f"{data['slide']}.summary.json").write_text(json.dumps(data))
    grid = _slide_grids(tmp_path, load_config(tile_size=64))[data["slide"]]
    assert (grid.stride, grid.window) == (pytest.approx(data["stride_level0"]), pytest.approx(expected_window))
    with pytest.raises(ModelError, match="tile_size"):
        _slide_grids(tmp_path, load_config(tile_size=32))


def test_the_scales_name_the_model_inputs_and_a_shard_and_one_check_says_what_differs():
    """The scales of a configuration are those of the shards it cuts (read
    back from JSON as lists) and name the inputs Keras builds; where two
    fingerprints differ, one line names the key and both values."""
    from utils.network.model import build_model
    from utils.network.model_spec import ModelSpec

    config = load_config(magnifications=[20, 5], tile_size=32)
    summary = ShardSummary.from_json({**CURRENT_SHARD, "magnifications": [20, 5.0], "tile_size": 32})
    assert summary.scales == config.scales == Scales((20.0, 5.0), 32) and str(config.scales) == "32-px tiles at 20x/5x"
    assert config.scales.mpps == [0.5, 2.0] and len(config.scales) == 2
    model = build_model(config, ModelSpec("small", 16), None)
    assert [tensor.name.split(":")[0] for tensor in model.inputs] == config.scales.names == ["mag_20x", "mag_5x"]
    check_same_data(config.fingerprint(), load_config(magnifications=[20, 5], tile_size=32).fingerprint(),
                    ConfigError, "never", "never")
    with pytest.raises(ConfigError) as raised:
        check_same_data(load_config(tile_size=64).fingerprint(), load_config(tile_size=32).fingerprint(),
                        ConfigError, "shards/ was cut with", "cut it again")
    assert str(raised.value) == "shards/ was cut with tile_size 64, this run has 32; cut it again"


def test_shard_summary_round_trips_without_empty_keys():
    current = {key: value for key, value in CURRENT_SHARD.items() if value is not None}
    summary = ShardSummary.from_json(current)
    assert summary.to_json() == current
    assert ShardSummary("s2", "unchanged").to_json()["status"] == "unchanged"


def test_map_summaries_of_earlier_versions_load():
    first = {  # the first version: no reader, no made_with
        "slide": "s1", "status": "done", "slide_path": "/s1.svs", "base_mpp": 0.5, "mpp_source": "tiff",
        "grid_shape": [2, 2], "cell_size_level0": 128.0, "cell_area_mm2": 0.004, "tissue_tiles": 3,
        "tissue_mm2": 0.012, "model": "m.keras", "model_info": {"backbone": "small"}, "smoothing": False,
        "config": {}, "seconds": 1.0, "predict_seconds": 0.5, "tiles_per_second": 6.0,
        "classes": {"background": {"cells": 1, "mm2": 0.004, "percent_of_tissue": 0.0},
                    "stroma": {"cells": 2, "mm2": 0.008, "percent_of_tissue": 66.667},
                    "muscle": {"cells": 1, "mm2": 0.004, "percent_of_tissue": 33.333},
                    "blood": {"cells": 0, "mm2": 0.0, "percent_of_tissue": 0.0}},
    }
    summary = MapSummary.from_json(first)
    assert summary.classes["stroma"] == ClassArea(2, 0.008, 66.667)
    assert summary.tissue_shares("background") == [("stroma", 66.667), ("muscle", 33.333)]
    assert summary.to_json() == first
    no_tiles = MapSummary.from_json({**first, "tiles_per_second": None, "tissue_tiles": 0})
    assert no_tiles.to_json()["tiles_per_second"] is None


@pytest.mark.parametrize("script, bad", [("tfrecord_generator.py", ["--slides"]),
                                         ("active_learning_train.py", ["--data", "x"]),
                                         ("active_learning_inference.py", ["--model", "m.keras", "--sildes", "s"])])
def test_help_and_argument_errors_answer_before_tensorflow_loads(script, bad):
    """TensorFlow takes seconds to load; --help and a mistyped command line
    must not wait for it (each script imports it once its arguments are read)."""
    probe = ("import runpy, sys\n"
             "sys.argv = sys.argv[1:]\n"
             "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
             "except SystemExit as exit:\n    code = exit.code\n"
             "print('TF' if 'tensorflow' in sys.modules else 'no TF', code)\n")
    for argv, code in ((["--help"], 0), (bad, 2)):
        done = subprocess.run([sys.executable, "-c", probe, str(ROOT / script), *argv], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert done.stdout.strip().splitlines()[-1] == f"no TF {code}", (argv, done.stderr[-500:])
