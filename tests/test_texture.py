"""The texture backbone (utils/network/texture.py): its filters against scipy and
scikit-image pixel by pixel on real tissue, its statistics against numpy, and
the backbone trained, saved, reloaded and mapping a slide."""

from __future__ import annotations


import cv2
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage
from skimage.color import rgb2hed

import active_learning_inference
import active_learning_train
from tests.conftest import FAST, RECORD_TILE, known_regions, shared_file
from tests.test_inference import decode_map
from utils.common.config import load_config
from utils.common.errors import ModelError
from utils.common.scales import Scales
from utils.network import texture
from utils.network.model import Predictor, build_model, load_model, split_model
from utils.network.model_spec import ModelSpec
from utils.tiles.records import read_index, record_files, triplet_dataset
from utils.tiles.synthetic import truth_grid

KATHER_CLASSES = ("01_TUMOR", "02_STROMA", "04_LYMPHO", "07_ADIPOSE")


def kather_tiles(size: int = 64) -> np.ndarray:
    """One real H&E tile per class, its top-left ``size`` px, RGB 0-255."""
    folder = shared_file("kather")
    return np.stack([cv2.imread(str(min((folder / name).glob("*.png"))))[:size, :size, ::-1]
                     for name in KATHER_CLASSES])


def scipy_responses(rgb: np.ndarray) -> list[np.ndarray]:
    """The bank's maps of one float RGB tile in [0, 1], in the layer's order,
    computed with scipy.ndimage and scikit-image's colour deconvolution."""
    stains = rgb2hed(rgb) * -np.log(1e-6)  # scikit-image divides optical density by -ln 1e-6
    channels = [rgb[..., 0], rgb[..., 1], rgb[..., 2], stains[..., 0], stains[..., 1]]
    maps = []
    for sigma in texture.SIGMAS:
        for name in texture.FILTERS:
            for image in channels:
                def derivative(order):
                    return ndimage.gaussian_filter(image, sigma, order=order)
                if name == "gaussian":
                    maps.append(derivative((0, 0)))
                elif name == "gradient_magnitude":
                    maps.append(ndimage.gaussian_gradient_magnitude(image, sigma))
                elif name == "laplacian_of_gaussian":
                    maps.append(ndimage.gaussian_laplace(image, sigma))
                elif name == "coherence":
                    dy, dx = derivative((1, 0)), derivative((0, 1))
                    sxx, syy, sxy = (ndimage.gaussian_filter(t, sigma) for t in (dx * dx, dy * dy, dx * dy))
                    maps.append(np.sqrt((sxx - syy) ** 2 + 4 * sxy**2) / (sxx + syy + texture.COHERENCE_EPSILON))
                else:
                    maps.append(derivative((2, 0)) * derivative((0, 2)) - derivative((1, 1)) ** 2)
    return maps


def test_filter_responses_match_scipy_pixel_by_pixel_on_real_tissue():
    tiles = kather_tiles()
    ours = texture.FilterResponses()(tf.constant(tiles / 255.0, tf.float32)).numpy()
    assert ours.shape[-1] == len(texture.SIGMAS) * len(texture.FILTERS) * len(texture.CHANNELS)
    per_sigma = len(texture.FILTERS) * len(texture.CHANNELS)
    for tile, maps in zip(tiles, ours):
        for k, expected in enumerate(scipy_responses(tile / 255.0)):
            name = texture.FILTERS[k % per_sigma // len(texture.CHANNELS)]
            # float32 against float64: a ratio of small gradients (coherence, in [0, 1]) keeps 4 digits
            tolerance = 2e-4 if name == "coherence" else 1e-5 * np.abs(expected).max() + 1e-9
            np.testing.assert_allclose(maps[..., k], expected, rtol=0, atol=tolerance, err_msg=f"map {k}, {name}")


@pytest.mark.parametrize("size, stride", [(20, 1), (127, 1), (128, 2), (256, 4)])
def test_statistics_match_numpy_and_the_names(size, stride):
    """Mean and standard deviation over every pixel; percentiles over every
    ``stride``-th pixel of each row and column once a tile reaches twice
    the percentile grid."""
    maps = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
    ours = texture.MapStatistics()(tf.constant(maps)).numpy()[:, 0, 0]
    assert texture.percentile_stride(size) == stride
    flat = maps.reshape(2, -1, 3)
    sampled = maps[:, ::stride, ::stride].reshape(2, -1, 3)
    expected = np.concatenate([flat.mean(1), flat.std(1),
                               *[np.percentile(sampled, p, axis=1, method="lower") for p in texture.PERCENTILES]], 1)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
    assert len(texture.feature_names()) == texture.feature_count() == 375
    assert texture.feature_names()[0] == "mean_gaussian_sigma1_red"


def test_a_tile_narrower_than_the_widest_filter_or_another_input_scaling_is_refused():
    with pytest.raises(ModelError, match=f"at least {texture.smallest_tile()} px"):
        build_model(load_config(tile_size=16), ModelSpec("texture", 16), None)
    with pytest.raises(ModelError, match="RGB scaled to \\[0, 1\\]; leave --input-scaling out"):
        build_model(load_config(tile_size=32), ModelSpec("texture", 16, input_scaling="caffe"), None)


@pytest.fixture(scope="module")
def texture_run(tiles, tmp_path_factory):
    """The texture backbone trained from nothing in head mode, then two
    rounds of coreset picks on its features, of growing budgets."""
    output = tmp_path_factory.mktemp("texture") / "run"
    argv = ["--data", str(tiles), "--output", str(output), *FAST, "--backbone", "texture", "--freeze-backbone",
            "--rounds", "2", "--budgets", "10", "30", "--strategy", "coreset", "--epochs", "30", "--learning-rate", "3e-3", "--no-figures"]
    assert active_learning_train.main(argv) == 0
    return output


def test_the_standardisation_is_the_moments_of_the_tiles_it_is_fitted_on(tiles):
    config = load_config(tile_size=RECORD_TILE)
    model = build_model(config, ModelSpec("texture+small", 16), None)
    index = read_index(record_files(tiles))
    ids = np.random.default_rng(0).permutation(len(index.label))[:300]
    dataset = triplet_dataset(index, ids, Scales(config.magnifications, RECORD_TILE), 64)
    assert texture.fit_standardization(model, dataset) == 300
    raw = np.concatenate([texture.feature_model(RECORD_TILE, ["mag_40x"])(inputs, training=False).numpy()
                          for inputs, _ in dataset])
    for name in ("mag_40x", "mag_10x"):
        layer = model.get_layer(f"backbone_{name}").get_layer(texture.STANDARDIZE)
        mean, variance = layer.get_weights()
        if name == "mag_40x":
            np.testing.assert_allclose(mean, raw.mean(0), rtol=1e-4, atol=1e-7)
            np.testing.assert_allclose(variance, raw.var(0), rtol=1e-3, atol=1e-9)
        assert (np.abs(mean) > 0).mean() > 0.9, f"{name}: fitted"
    standardised = texture.standardizers(model)["mag_40x"][1](tf.constant(raw)).numpy()
    np.testing.assert_allclose(standardised.mean(0), 0, atol=1e-3)
    assert model.get_layer("backbone_mag_40x").output.shape[-1] == texture.feature_count() + 128, "texture, then CNN"
    # Head mode leaves these columns of the head's input as the layer gives them: the 40x backbone's first ones.
    given = texture.standardized_columns(model)
    assert given.tolist() == ([True] * texture.feature_count() + [False] * 128) * len(model.inputs)
    pooled = np.concatenate([split_model(model)[0](inputs, training=False).numpy() for inputs, _ in dataset])
    np.testing.assert_allclose(pooled[:, : texture.feature_count()], standardised, atol=1e-3)


def test_texture_backbone_learns_saves_reloads_and_maps_a_slide(texture_run, tiles, synthetic_slide, tmp_path):
    rows = (texture_run / "rounds.csv").read_text().splitlines()
    header = rows[0].split(",")
    last = dict(zip(header, rows[-1].split(",")))
    assert int(last["round"]) == 2
    assert float(last["test_macro_f1"]) > 0.8, "the synthetic textures differ in colour and grain"
    added = [line.rsplit(",", 1)[1] for line in (texture_run / "labelled.csv").read_text().splitlines()[1:]]
    assert (added.count("1"), added.count("2")) == (10, 30), "coreset chose each round's budget on the texture features"
    labelled = [int(dict(zip(header, row.split(",")))["labelled"]) for row in rows[1:]]
    assert np.diff(labelled).tolist() == [10, 30]

    model = load_model(texture_run / "model.keras")
    mean, _ = model.get_layer("backbone_mag_40x").get_layer(texture.STANDARDIZE).get_weights()
    assert np.abs(mean).max() > 0, "standardised on the training split before round 0"
    config = load_config(tile_size=RECORD_TILE)
    index = read_index(record_files(tiles))
    inputs, _ = next(iter(triplet_dataset(index, np.arange(64), Scales(config.magnifications, RECORD_TILE), 64)))
    rebuilt = build_model(config, ModelSpec("texture", 32), None)
    rebuilt.set_weights(model.get_weights())
    np.testing.assert_allclose(Predictor(model).probabilities(inputs), Predictor(rebuilt).probabilities(inputs),
                               atol=1e-6)

    assert active_learning_inference.main(["--slides", str(synthetic_slide[0]), "--model",
                                           str(texture_run / "model.keras"), "--output", str(tmp_path),
                                           "--batch-size", "64"]) == 0
    rows, cols = 16 * 64 // RECORD_TILE, 24 * 64 // RECORD_TILE
    classes = decode_map(tmp_path / "known", config, rows)
    truth = truth_grid(cols * RECORD_TILE, rows * RECORD_TILE, known_regions(), RECORD_TILE)
    scored = (truth != "") & (truth != "background")
    expected = np.array([config.class_index(n) for n in truth[scored]])
    accuracy = float((classes[scored] == expected).mean())
    assert scored.sum() > 0.25 * rows * cols and accuracy >= 0.95, f"map accuracy {accuracy:.3f} on {scored.sum()} cells"
