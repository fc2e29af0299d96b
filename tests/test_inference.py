"""Whole-slide inference on a synthetic slide whose regions are known, with a
stub model whose output is a known function of the tile colour."""

from __future__ import annotations

import json
import re
import shutil

import cv2
import keras
import numpy as np
import pytest

import active_learning_inference
from tests.conftest import TILE, known_regions, shared_file
from utils.common.config import load_config
from utils.common.scales import scale_name
from utils.maps.inference import classify, label_colours
from utils.network.model import build_model, save_model
from utils.network.model_spec import ModelSpec
from utils.slides.annotations import read_annotations
from utils.slides.geometry import slide_geometry
from utils.slides.labels import rasterize_regions
from utils.slides.qupath import qupath_class_name
from utils.slides.slide import Slide
from utils.slides.tissue import tile_fractions, tissue_grid
from utils.tiles.synthetic import GLASS, TEXTURES, make_slide, truth_grid

ROWS, COLS = 16, 24


def colour_model(config, temperature: float = 40.0) -> keras.Model:
    """Softmax over minus the squared distance between the scale-0 tile's mean
    colour and each class's synthetic colour (glass for background)."""
    centres = np.array([GLASS if n == "background" else TEXTURES[n]["colour"] for n in config.class_names], float)
    inputs = [keras.Input((config.tile_size, config.tile_size, 3), name=scale_name(m)) for m in config.magnifications]
    pooled = keras.layers.Concatenate(name="concat")([keras.layers.GlobalAveragePooling2D()(x) for x in inputs])
    kernel = np.zeros((3 * len(inputs), len(centres)))
    kernel[:3] = 2 * centres.T / temperature  # only scale 0 counts
    bias = -(centres**2).sum(axis=1) / temperature
    dense = keras.layers.Dense(len(centres), activation="softmax", name="predictions")
    outputs = dense(pooled)
    dense.set_weights([kernel, bias])
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    config = load_config(tile_size=TILE)
    path = tmp_path_factory.mktemp("model") / "model.keras"
    save_model(colour_model(config), path, {"config": config.to_dict(), "backbone": "stub"})
    return path


@pytest.fixture(scope="module")
def mapped(synthetic_slide, model_path, tmp_path_factory):
    output = tmp_path_factory.mktemp("maps")
    assert active_learning_inference.main(["--slides", str(synthetic_slide[0]), "--model", str(model_path),
                                           "--output", str(output), "--batch-size", "64"]) == 0
    return output / "known"


def decode_map(folder, config, rows: int = ROWS) -> np.ndarray:
    """The class of each cell of a map with ``rows`` rows of tiles."""
    image = cv2.imread(str(folder / "tissue_map.png"))[..., ::-1]
    scale = image.shape[0] // rows
    cells = image[scale // 2 :: scale, scale // 2 :: scale]
    colours = label_colours(config).astype(int)
    distance = ((cells[..., None, :].astype(int) - colours[None, None]) ** 2).sum(axis=-1)
    assert distance.min(axis=-1).max() == 0, "the map uses only the configured colours"
    return distance.argmin(axis=-1)


def test_map_matches_the_known_regions(mapped):
    config = load_config(tile_size=TILE)
    classes = decode_map(mapped, config)
    assert classes.shape == (ROWS, COLS)
    truth = truth_grid(COLS * TILE, ROWS * TILE, known_regions(), TILE)
    scored = truth != ""
    expected = np.array([config.class_index(n) for n in truth[scored]])
    total, correct = int(scored.sum()), int((classes[scored] == expected).sum())
    assert total > 0.8 * ROWS * COLS
    assert correct / total >= 0.97, f"cell accuracy {correct / total:.3f}"


def test_probabilities_rethresholded_give_the_png_classes(mapped):
    config = load_config(tile_size=TILE)
    saved = np.load(mapped / "probabilities.npz", allow_pickle=False)
    assert saved["probabilities"].dtype == np.float16
    assert list(saved["class_names"]) == config.class_names
    assert float(saved["cell_size_level0"]) == TILE and float(saved["mpp"]) == 0.25
    again = classify(saved["probabilities"].astype(np.float32), saved["tissue"], config)
    np.testing.assert_array_equal(again, decode_map(mapped, config))


def test_geojson_round_trips_to_the_same_cells(mapped):
    config = load_config(tile_size=TILE)
    classes = decode_map(mapped, config)
    names = [*config.class_names, config.undefined["name"]]
    regions = read_annotations(mapped / "tissue_map.geojson")
    collection = json.loads((mapped / "tissue_map.geojson").read_text())
    assert all(f["properties"]["objectType"] == "annotation" for f in collection["features"])
    written = {qupath_class_name(n): n for n in names}
    assert {r.name for r in regions} == {qupath_class_name(names[c]) for c in np.unique(classes)} - {"background"}
    assert "Stroma" in written, "the configured 'stroma' in QuPath's built-in spelling"
    any_rule = load_config(rules=[[".*", "stroma"]])
    for region in regions:
        cells = rasterize_regions([region], any_rule, (ROWS * 8, COLS * 8), TILE / 8).classes >= 0
        per_cell = cells.reshape(ROWS, 8, COLS, 8).all(axis=(1, 3))
        np.testing.assert_array_equal(per_cell, classes == names.index(written[region.name]), err_msg=region.name)
        assert config.class_for_annotation(region.name) in (names.index(written[region.name]), None), \
            "read back as the configured class (undefined is not one)"


def test_overlays_fill_and_outline_agree_and_carry_a_legend_and_a_true_scale_bar(mapped, synthetic_slide,
                                                                                   model_path, tmp_path):
    """The outline overlay leaves the slide as it is inside each class, so the
    fill overlay must be 0.6 of it plus 0.4 of the class colour there; across
    a class boundary the outline takes one of the two classes' colours. Below
    the map, the legend holds the colour of every class on the map and of no
    other; in its lower left corner, a bar of 1, 2 or 5 x 10^k µm."""
    assert active_learning_inference.main(["--slides", str(synthetic_slide[0]), "--model", str(model_path),
                                           "--output", str(tmp_path), "--batch-size", "64",
                                           "--overlay", "outline"]) == 0
    config = load_config(tile_size=TILE)
    classes = decode_map(mapped, config)
    colours = label_colours(config).astype(int)
    height, width = cv2.imread(str(mapped / "tissue_map.png")).shape[:2]
    scale = height // ROWS
    fill, outline = (cv2.imread(str(folder / "overlay.png"))[..., ::-1].astype(int)
                     for folder in (mapped, tmp_path / "known"))
    assert fill.shape == outline.shape and fill.shape[1] == width
    top = next(r for r in range(fill.shape[0]) if (fill[r] != outline[r]).any())  # the title differs
    top = next(r for r in range(top, fill.shape[0]) if (fill[r, :, :] != 255).sum() > width)  # first map row
    tissue = np.load(mapped / "probabilities.npz", allow_pickle=False)["tissue"]
    for r, c in zip(*np.nonzero(tissue)):
        y, x = top + r * scale + scale // 2, c * scale + scale // 2
        if y > top + height - 50 and x < width // 2:
            continue  # under the scale bar
        expected = (0.6 * outline[y, x] + 0.4 * colours[classes[r, c]]).astype(int)
        assert np.abs(fill[y, x] - expected).max() <= 1, (r, c)
    edges = 0
    for r, c in zip(*np.nonzero(tissue[:, :-1] & tissue[:, 1:] & (classes[:, :-1] != classes[:, 1:]))):
        pixel = outline[top + r * scale + scale // 2, (c + 1) * scale - 1]
        assert any((pixel == colours[k]).all() for k in (classes[r, c], classes[r, c + 1])), (r, c)
        edges += 1
    assert edges > 0
    legend = fill[top + height:]
    solid = np.ones((9, 9), np.uint8)  # a swatch, not a letter or a swatch's frame
    shown = {k for k, colour in enumerate(colours)
             if cv2.erode((legend == colour).all(axis=-1).astype(np.uint8), solid).any()}
    assert shown == set(np.unique(classes[tissue]).tolist())
    summary = json.loads((mapped / "summary.json").read_text())
    um_per_px = summary["cell_size_level0"] * summary["base_mpp"] / scale
    corner = outline[top + height - 40: top + height, : width // 2]
    runs = [np.diff(np.flatnonzero(np.diff(np.r_[0, (row == 0).all(axis=-1), 0]))) for row in corner]
    bar_um = max(int(run[::2].max()) for run in runs if len(run)) * um_per_px
    power = 10 ** np.floor(np.log10(bar_um))
    assert min(abs(bar_um - m * power) for m in (1, 2, 5)) <= um_per_px
    assert width / 12 <= bar_um / um_per_px <= width / 5


def test_summary_areas(mapped):
    summary = json.loads((mapped / "summary.json").read_text())
    cell_mm2 = (TILE * 0.25 / 1000) ** 2
    assert summary["cell_area_mm2"] == pytest.approx(cell_mm2)
    tissue_classes = {k: v for k, v in summary["classes"].items() if k != "background"}
    assert sum(v["cells"] for v in tissue_classes.values()) == summary["tissue_tiles"]
    assert sum(v["percent_of_tissue"] for v in tissue_classes.values()) == pytest.approx(100, abs=0.01)
    assert summary["tissue_mm2"] == pytest.approx(summary["tissue_tiles"] * cell_mm2, rel=1e-6)
    assert summary["tiles_per_second"] > 0 and summary["model_info"]["backbone"] == "stub"


def test_thresholds_give_undefined_and_the_damaged_rule():
    config = load_config()
    b, _, d, m, s, u = range(6)
    probs = np.zeros((1, 6, 6))
    probs[0, 0, [m, s]] = [0.59, 0.41]  # top below 0.6: undefined
    probs[0, 1, [m, s]] = [0.6, 0.4]  # exactly 0.6: kept
    probs[0, 2, [d, s]] = [0.89, 0.11]  # damaged below 0.9: the next class
    probs[0, 3, [d, s]] = [0.9, 0.1]  # damaged at 0.9: kept
    probs[0, 4, [d, u, s]] = [0.7, 0.2, 0.1]  # damaged demoted to urothelium
    probs[0, 5, [u, s]] = [0.95, 0.05]
    tissue = np.array([[True, True, True, True, True, False]])
    classes = classify(probs, tissue, config)
    assert classes.tolist() == [[6, m, s, d, u, b]]


def test_slide_without_tissue_gives_an_all_background_map(model_path, tmp_path):
    slide, _ = make_slide(tmp_path, "blank", 8 * TILE, 8 * TILE, [])
    assert active_learning_inference.main(["--slides", str(slide), "--model", str(model_path),
                                           "--output", str(tmp_path / "maps")]) == 0
    config = load_config(tile_size=TILE)
    folder = tmp_path / "maps" / "blank"
    saved = np.load(folder / "probabilities.npz", allow_pickle=False)
    assert not saved["tissue"].any() and (saved["classes"] == config.class_index("background")).all()
    assert json.loads((folder / "tissue_map.geojson").read_text())["features"] == []
    assert json.loads((folder / "summary.json").read_text())["tissue_mm2"] == 0


def test_contradicting_the_model_is_a_clear_error(synthetic_slide, model_path, tmp_path, capsys):
    code = active_learning_inference.main(["--slides", str(synthetic_slide[0]), "--model", str(model_path),
                                           "--output", str(tmp_path), "--tile-size", "32"])
    assert code == 2
    assert "expects 64 px tiles" in capsys.readouterr().err


def test_complete_slides_are_skipped_and_a_bad_slide_does_not_stop_the_rest(mapped, synthetic_slide, model_path,
                                                                           tmp_path, capsys):
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(synthetic_slide[0], slides / "known.tiff")
    (slides / "corrupt.svs").write_bytes(b"\x00" * 100)
    shutil.copytree(mapped, tmp_path / "maps" / "known")
    code = active_learning_inference.main(["--slides", str(slides), "--model", str(model_path),
                                           "--output", str(tmp_path / "maps")])
    captured = capsys.readouterr()
    assert code == 1
    assert "known: skipped (unchanged)" in captured.out and "corrupt.svs" in captured.err


def test_real_slide_tissue_area_agrees_with_the_tissue_mask(tmp_path):
    path = shared_file("slides", "CMU-1-Small-Region.svs")
    config = load_config(magnifications=[20, 5, 1.25], tile_size=TILE)
    model = build_model(config, ModelSpec("small", 16), None)
    save_model(model, tmp_path / "model.keras", {"config": config.to_dict(), "backbone": "small"})
    assert active_learning_inference.main(["--slides", str(path), "--model", str(tmp_path / "model.keras"),
                                           "--output", str(tmp_path / "maps")]) == 0
    summary = json.loads((tmp_path / "maps" / "CMU-1-Small-Region" / "summary.json").read_text())
    with Slide(path) as slide:
        geometry = slide_geometry(slide, config)
        k = config.mask_cells_per_tile
        tissue = tile_fractions(tissue_grid(slide, geometry, config.tissue_method, k), k) >= config.tissue_fraction
    cell_mm2 = (geometry.stride * 0.499 / 1000) ** 2
    assert summary["tissue_tiles"] == int(tissue.sum()) > 100
    assert summary["tissue_mm2"] == pytest.approx(tissue.sum() * cell_mm2, rel=1e-6)


def test_without_a_background_class_glass_belongs_to_no_class_in_any_output(synthetic_slide, model_path, tmp_path):
    """``background_class: null`` through --config: glass cells are white in
    the map, in no GeoJSON feature and in no class's area; "undefined" is only
    ever tissue (before, every glass cell was "undefined", and the setting
    given in a file was dropped without a word)."""
    import shapely.geometry

    settings = tmp_path / "no_background.yaml"
    settings.write_text("background_class: null\n")
    out = tmp_path / "maps"
    assert active_learning_inference.main(["--slides", str(synthetic_slide[0]), "--model", str(model_path),
                                           "--output", str(out), "--config", str(settings)]) == 0
    folder = out / "known"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["config"]["background_class"] is None
    saved = np.load(folder / "probabilities.npz", allow_pickle=False)
    tissue, classes = saved["tissue"], saved["classes"]
    assert (classes[~tissue] == -1).all() and (classes[tissue] >= 0).all()
    assert sum(area["cells"] for area in summary["classes"].values()) == summary["tissue_tiles"] == int(tissue.sum())
    assert summary["classes"]["undefined"]["cells"] == int((classes[tissue] == len(summary["config"]["classes"])).sum())
    image = cv2.imread(str(folder / "tissue_map.png"))[..., ::-1]
    scale = image.shape[0] // classes.shape[0]
    cells = image[scale // 2 :: scale, scale // 2 :: scale]
    assert (cells[~tissue] == 255).all(), "glass is white in the map"
    features = json.loads((folder / "tissue_map.geojson").read_text())["features"]
    area = sum(shapely.geometry.shape(f["geometry"]).area for f in features)
    assert area == pytest.approx(int(tissue.sum()) * summary["cell_size_level0"] ** 2), "features cover tissue only"


def test_a_scan_coarser_than_the_model_gets_a_fix_that_the_same_command_accepts(synthetic_slide, model_path,
                                                                                tmp_path, capsys):
    """The model fixes the scales, so a hint to pass other magnifications would
    be refused by the model (its inputs are named after them): the hint is the
    flag that resamples, and running with it maps the slide."""
    argv = ["--slides", str(synthetic_slide[0]), "--model", str(model_path), "--mpp", "0.5"]
    assert active_learning_inference.main([*argv, "--output", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "--magnifications" not in err
    fix = re.search(r"resample up with (--[a-z-]+)", err).group(1)
    assert active_learning_inference.main([*argv, "--output", str(tmp_path / "b"), fix]) == 0
    assert (tmp_path / "b" / "known" / "tissue_map.png").exists()
