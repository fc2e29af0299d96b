"""Each query strategy selects what it claims, on hand-made probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from utils.active_learning import Pool, bald, class_ratio_allocation, entropy, select


def pool_of(probs: np.ndarray, classes=None, mc_probs=None, spread: float = 1000.0) -> Pool:
    n = len(probs) if probs is not None else mc_probs.shape[1]
    # Tiles far apart on separate slides, so the diversity guard stays out of the way.
    return Pool(np.array([f"s{i}" for i in range(n)], dtype=object), np.arange(n) * spread, np.zeros(n),
                np.asarray(classes if classes is not None else np.zeros(n, int)), probs, mc_probs)


def test_entropy_picks_the_flattest_rows():
    probs = np.array([[0.98, 0.01, 0.01], [1 / 3, 1 / 3, 1 / 3], [0.6, 0.3, 0.1], [0.5, 0.5, 0.0], [0.9, 0.05, 0.05]])
    chosen, scores = select("entropy", 2, pool_of(probs), np.random.default_rng(0))
    assert list(chosen) == [1, 2]
    np.testing.assert_allclose(scores[1], np.log(3))


def test_margin_and_least_confidence():
    probs = np.array([[0.5, 0.49, 0.01], [0.7, 0.15, 0.15], [0.4, 0.3, 0.3], [0.99, 0.005, 0.005]])
    margin, _ = select("margin", 1, pool_of(probs), np.random.default_rng(0))
    least, _ = select("least_confidence", 1, pool_of(probs), np.random.default_rng(0))
    assert list(margin) == [0]  # smallest gap between the top two
    assert list(least) == [2]  # lowest top probability


def test_bald_prefers_disagreeing_passes():
    agree = np.tile([[0.5, 0.5]], (4, 1))  # each pass unsure, all passes alike
    disagree = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])  # confident passes that disagree
    mc = np.stack([agree, disagree], axis=1)  # (passes, tiles, classes)
    scores = bald(mc)
    assert scores[1] > scores[0] + 0.5
    assert scores[0] == pytest.approx(0.0, abs=1e-9)
    chosen, _ = select("bald", 1, pool_of(None, mc_probs=mc), np.random.default_rng(0))
    assert list(chosen) == [1]


def test_class_ratio_allocates_in_proportion_to_misclassifications():
    misclassified = np.array([0, 10, 30, 0, 60, 0])
    available = np.full(6, 1000)
    np.testing.assert_array_equal(class_ratio_allocation(100, misclassified, available), [0, 10, 30, 0, 60, 0])
    np.testing.assert_array_equal(class_ratio_allocation(60, np.zeros(6), available), [10] * 6)
    # A class whose pool runs short passes its share on; the budget is still spent.
    allocation = class_ratio_allocation(100, np.array([50, 50, 0]), np.array([5, 1000, 1000]))
    assert allocation[0] == 5 and allocation.sum() == 100
    assert (class_ratio_allocation(10_000, misclassified, available) <= available).all()


def test_class_ratio_draws_each_share_from_its_class():
    classes = np.repeat(np.arange(3), 50)
    pool = pool_of(np.full((150, 3), 1 / 3), classes)
    chosen, _ = select("class_ratio", 30, pool, np.random.default_rng(1), misclassified=np.array([1, 2, 3]),
                       num_classes=3)
    np.testing.assert_array_equal(np.bincount(classes[chosen], minlength=3), [5, 10, 15])
    assert len(set(chosen.tolist())) == 30


def test_class_ratio_uncertainty_takes_the_most_uncertain_within_each_class():
    rng = np.random.default_rng(0)
    classes = np.repeat([0, 1], 20)
    probs = rng.dirichlet([5, 1], size=40)
    chosen, _ = select("class_ratio_uncertainty", 6, pool_of(probs, classes), rng, misclassified=np.array([1, 2]),
                       num_classes=2)
    h = entropy(probs)
    for c, k in ((0, 2), (1, 4)):
        members = np.flatnonzero(classes == c)
        expected = set(members[np.argsort(-h[members])[:k]].tolist())
        assert set(chosen[classes[chosen] == c].tolist()) == expected


def test_random_respects_the_seed():
    pool = pool_of(np.full((100, 2), 0.5))
    a, _ = select("random", 10, pool, np.random.default_rng(7))
    b, _ = select("random", 10, pool, np.random.default_rng(7))
    c, _ = select("random", 10, pool, np.random.default_rng(8))
    assert list(a) == list(b) and list(a) != list(c)


def test_diversity_guard_spreads_uncertainty_picks():
    # A 4x4 block of neighbouring, equally uncertain tiles on one slide plus
    # four slightly less uncertain tiles far away.
    n = 20
    x = np.r_[np.tile(np.arange(4), 4) * 128 + 64, (np.arange(4) + 1) * 10_000 + 64].astype(float)
    y = np.r_[np.repeat(np.arange(4), 4) * 128 + 64, np.full(4, 64)].astype(float)
    probs = np.r_[np.full((16, 2), 0.5), np.full((4, 2), [0.6, 0.4])]
    pool = Pool(np.array(["a"] * n, dtype=object), x, y, np.zeros(n, int), probs)
    chosen, _ = select("entropy", 8, pool, np.random.default_rng(0), stride=128, spacing=2)
    picked_block = [i for i in chosen if i < 16]
    buckets = {(x[i] // 256, y[i] // 256) for i in picked_block}
    assert len(buckets) == len(picked_block) == 4, "one pick per 2x2 bucket of the dense block"
    assert set(range(16, 20)) <= set(chosen.tolist()), "far tiles come before a second pick in a bucket"


def test_the_registry_is_what_the_script_offers_and_what_select_knows():
    import active_learning_train
    from utils.active_learning import STRATEGIES

    for name in STRATEGIES:
        assert active_learning_train.parse_args(["--data", "d", "--output", "o", "--strategy", name]).strategy == name
    with pytest.raises(SystemExit):
        active_learning_train.parse_args(["--data", "d", "--output", "o", "--strategy", "coreset_typo"])
    with pytest.raises(ValueError, match="unknown strategy 'coreset_typo'; choose one of class_ratio, entropy"):
        select("coreset_typo", 1, pool_of(np.full((2, 2), 0.5)), np.random.default_rng(0))
    assert [n for n, s in STRATEGIES.items() if s.mc_passes] == ["bald"]
    assert [n for n, s in STRATEGIES.items() if not s.needs_predictions] == ["class_ratio", "random"]
