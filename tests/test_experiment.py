"""The statistics and the stain change of the domain-adaptation experiment."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from experiments import analysis
from experiments.kather_domain_adaptation import stratified_split
from experiments.stain import shift_stains


def test_curve_statistics():
    curve = analysis.Curve(np.array([0.0, 0.5, 1.0]), np.array([0.2, 0.7, 0.6]))
    assert analysis.area_under_curve(curve) == pytest.approx((0.5 * (0.2 + 0.7) / 2 + 0.5 * (0.7 + 0.6) / 2))
    assert analysis.labels_to_reach(curve, 0.65) == 0.5, "the first round at or above the target"
    assert np.isnan(analysis.labels_to_reach(curve, 0.8))
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
