"""Stain augmentation against Tellez et al.'s published transform computed with
scikit-image's colour deconvolution, on real H&E tiles (Kather et al. 2016),
and on the training pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.color
import tensorflow as tf
from PIL import Image

from tests.conftest import RECORD_TILE, shared_file
from utils.common.config import load_config
from utils.common.errors import InputError
from utils.common.scales import Scales
from utils.learning.train_options import TrainOptions
from utils.tiles.augment import augment_triplet, hed_transform
from utils.tiles.records import read_index, record_files, triplet_dataset
from utils.tiles.stain_jitter import STAIN_PRESETS, stain_jitter_of


def he_tiles() -> list[np.ndarray]:
    """One real tile of each Kather class, uint8 RGB."""
    folders = sorted(p for p in shared_file("kather").iterdir() if p.is_dir())
    return [np.asarray(Image.open(next(iter(sorted(f.glob("*.png"))))).convert("RGB")) for f in folders]


def transformed(rgb: np.ndarray, scale, shift) -> np.ndarray:
    out = hed_transform(tf.constant(rgb, tf.float32), tf.constant(scale, tf.float32), tf.constant(shift, tf.float32))
    return out.numpy()


def test_no_stain_change_gives_back_the_image_within_one_grey_level():
    rng = np.random.default_rng(0)
    for rgb in [*he_tiles(), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)]:
        assert np.abs(transformed(rgb, [1, 1, 1], [0, 0, 0]) - rgb).max() <= 1.0


#: Concentration added to every stain before scikit-image sees it (below).
LIFT = 2.0


def published_transform(rgb: np.ndarray, scale, shift) -> np.ndarray:
    """Tellez et al.'s stain change (their group's ``custom_hed_transform.py``:
    the optical density of I + 2, I in [0, 1]) computed with scikit-image's
    deconvolution. scikit-image divides optical densities by -ln 1e-6 and
    clips intensities to [0, 1] and concentrations to >= 0, where those of
    I + 2 lie from -1.6 to 0.85; so it deconvolves (I + 2) dimmed by
    :data:`LIFT` units of every stain, whose concentrations are ours plus
    LIFT, all positive, and recomposes the changed ones plus LIFT."""
    unit, lift = -np.log(1e-6), np.full(3, LIFT)
    dimmed = (rgb / 255.0 + 2.0) * np.exp(-lift @ skimage.color.rgb_from_hed)
    stains = skimage.color.separate_stains(dimmed, skimage.color.hed_from_rgb) * unit - lift
    assert (stains > -LIFT).all(), "no concentration was clipped"
    changed = stains * np.array(scale) + np.array(shift)
    recomposed = skimage.color.combine_stains((changed + lift) / unit, skimage.color.rgb_from_hed)
    return np.clip(recomposed * np.exp(lift @ skimage.color.rgb_from_hed) - 2.0, 0.0, 1.0) * 255.0


def agrees_with_the_published_transform(rgb: np.ndarray, scale, shift) -> np.ndarray:
    """The published transform's image, after checking that ours gives it within one grey level."""
    expected = published_transform(rgb, scale, shift)
    assert np.abs(transformed(rgb, scale, shift) - expected).max() <= 1.0
    return expected


@pytest.mark.parametrize(("scale", "shift"), [([1.3, 1, 1], [0, 0, 0]), ([1, 0.8, 1], [0, 0.03, 0]),
                                              ([0.95, 1.05, 1.1], [-0.02, 0.01, 0.02])])
def test_a_stain_change_gives_the_published_transforms_image(scale, shift):
    for rgb in he_tiles():
        agrees_with_the_published_transform(rgb, scale, shift)


@pytest.mark.parametrize(("preset", "low", "high"), [("light", 10, 25), ("strong", 40, 80)])
def test_the_presets_move_real_tissue_as_far_as_the_published_ranges(preset, low, high):
    """Tellez et al.'s HED-light and HED-strong ranges, drawn as they draw
    them, move real H&E tiles by tens of grey levels on average (about 17
    and 58 by their transform); the stain part of each preset does the same."""
    sigma = STAIN_PRESETS[preset].sigma
    rng = np.random.default_rng(1)
    moves = []
    for rgb in he_tiles():
        for _ in range(10):
            scale, shift = 1 + rng.uniform(-sigma, sigma, 3), rng.uniform(-sigma, sigma, 3)
            moves.append(np.abs(agrees_with_the_published_transform(rgb, scale, shift) - rgb).mean())
    assert low < np.mean(moves) < high


def test_one_stain_change_for_every_scale_of_a_triplet_and_a_new_one_for_the_next():
    tile = he_tiles()[0][:64, :64].astype(np.float32)
    tf.random.set_seed(3)
    first = [t.numpy() for t in augment_triplet([tf.constant(tile)] * 3, False, False, STAIN_PRESETS["strong"])]
    second = [t.numpy() for t in augment_triplet([tf.constant(tile)] * 3, False, False, STAIN_PRESETS["strong"])]
    assert all(np.array_equal(first[0], other) for other in first[1:])
    assert np.abs(first[0] - tile).mean() > 1.0 and np.abs(first[0] - second[0]).mean() > 1.0
    assert 0 <= first[0].min() and first[0].max() <= 255


def test_only_training_batches_are_stain_jittered(tiles):
    config = load_config(tile_size=RECORD_TILE)
    index = read_index(record_files(tiles))
    ids = np.flatnonzero(index.label >= 0)[:32]

    def first_batch(**kwargs) -> np.ndarray:
        inputs, _ = next(iter(triplet_dataset(index, ids, Scales(config.magnifications, RECORD_TILE), 32, **kwargs)))
        return inputs["mag_40x"].numpy()

    plain = first_batch()
    tf.random.set_seed(0)  # as every run seeds itself
    jittered = first_batch(stains=stain_jitter_of("light"))
    assert jittered.shape == plain.shape and not np.array_equal(jittered, plain)
    # Light jitter moves colours by a few grey levels on average, never to another image.
    assert 0.5 < np.abs(jittered - plain).mean() < 20


def test_stain_options_are_checked():
    assert stain_jitter_of("strong", 0.1).sigma == 0.1 and stain_jitter_of("none") is None
    with pytest.raises(InputError, match="pass --stain-jitter light or strong"):
        TrainOptions(data=".", output=".", stain_sigma=0.1)
    with pytest.raises(InputError, match="stain-sigma"):
        TrainOptions(data=".", output=".", stain_jitter="light", stain_sigma=1.5)
