"""Each query strategy selects what it claims, on hand-made probabilities."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.neighbors import NearestNeighbors

from utils.common.errors import InputError
from utils.learning.active_learning import Pool, bald, class_ratio_allocation, entropy, select


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
    from utils.learning.active_learning import STRATEGIES

    for name in STRATEGIES:
        assert active_learning_train.parse_args(["--data", "d", "--output", "o", "--strategy", name]).strategy == name
    with pytest.raises(SystemExit):
        active_learning_train.parse_args(["--data", "d", "--output", "o", "--strategy", "coreset_typo"])
    with pytest.raises(InputError, match="unknown strategy 'coreset_typo'; choose one of class_ratio, entropy"):
        select("coreset_typo", 1, pool_of(np.full((2, 2), 0.5)), np.random.default_rng(0))
    assert [n for n, s in STRATEGIES.items() if s.mc_passes] == ["bald"]
    assert [n for n, s in STRATEGIES.items() if not s.needs_predictions] == ["class_ratio", "random"]
    assert [n for n, s in STRATEGIES.items() if s.embeddings] == ["coreset", "typiclust", "diverse_entropy"]


# -- strategies that weigh picks against each other, checked against scipy / scikit-learn ------
def embedded_pool(embeddings: np.ndarray, labelled=None, probs=None, penultimate=None) -> Pool:
    n = len(embeddings)
    pool = pool_of(probs if probs is not None else np.full((n, 2), 0.5))
    pool.embeddings, pool.labelled_embeddings, pool.penultimate = embeddings, labelled, penultimate
    return pool


def test_coreset_is_greedy_k_centre_within_twice_the_optimal_radius():
    rng = np.random.default_rng(1)
    points = rng.normal(size=(14, 2))
    labelled = points[:1] + 0.01
    chosen, scores = select("coreset", 3, embedded_pool(points, labelled), np.random.default_rng(0))
    np.testing.assert_allclose(scores, cdist(points, labelled).min(axis=1))
    assert chosen[0] == np.argmax(cdist(points, labelled).min(axis=1)), "first the farthest from the labelled set"
    centres = np.vstack([labelled, points[chosen]])
    radius = cdist(points, centres).min(axis=1).max()
    optimal = min(cdist(points, np.vstack([labelled, points[list(c)]])).min(axis=1).max()
                  for c in itertools.combinations(range(len(points)), 3))
    assert optimal <= radius <= 2 * optimal + 1e-9, "greedy k-centre's guarantee"
    assert len(set(chosen.tolist())) == 3


def test_badge_first_picks_the_longest_gradient_then_spreads_over_groups():
    rng = np.random.default_rng(2)
    # Three groups of near-identical tiles; the confident group's gradients are all zero.
    probs = np.r_[np.tile([0.5, 0.5, 0.0], (10, 1)), np.tile([0.2, 0.3, 0.5], (10, 1)), np.tile([1.0, 0, 0], (10, 1))]
    hidden = np.r_[rng.normal(1, 0.01, (10, 4)), rng.normal(-1, 0.01, (10, 4)), rng.normal(3, 0.01, (10, 4))]
    explicit = np.einsum("nc,nh->nch", probs - np.eye(3)[probs.argmax(1)], hidden).reshape(30, -1)
    for seed in range(5):
        chosen, scores = select("badge", 3, embedded_pool(hidden, probs=probs, penultimate=hidden),
                                np.random.default_rng(seed))
        np.testing.assert_allclose(scores, np.linalg.norm(explicit, axis=1))
        assert chosen[0] == np.argmax(np.linalg.norm(explicit, axis=1))
        assert sorted(chosen // 10) == [0, 1, 2], "k-means++ on the explicit gradients: one pick per group"


def test_typiclust_takes_the_densest_tile_of_the_largest_clusters_without_labels():
    rng = np.random.default_rng(3)
    centres = np.array([[0, 0], [50, 0], [0, 50], [50, 50]], float)
    sizes = [60, 45, 30, 25]  # each larger than the 20 neighbours of typicality
    points = np.vstack([c + rng.normal(size=(n, 2)) for c, n in zip(centres, sizes)])
    group = np.repeat(np.arange(4), sizes)
    labelled = centres[:1] + 0.1  # the largest cluster already has a label
    chosen, scores = select("typiclust", 2, embedded_pool(points, labelled), np.random.default_rng(0))
    assert sorted(group[chosen]) == [1, 2], "the largest clusters that hold no labelled tile"
    for i in chosen:  # the most typical tile of its cluster, by scikit-learn's neighbours
        members = np.flatnonzero(group == group[i])
        distances, _ = NearestNeighbors(n_neighbors=21).fit(points[members]).kneighbors(points[members])
        typical = 1 / distances[:, 1:].mean(axis=1)
        assert members[np.argmax(typical)] == i
        np.testing.assert_allclose(scores[members], typical, rtol=1e-6)


def test_diverse_entropy_spreads_uncertain_picks_over_embedding_clusters():
    # Ten very uncertain tiles that look alike, ten slightly less uncertain elsewhere.
    probs = np.r_[np.full((10, 2), 0.5), np.full((10, 2), [0.55, 0.45])]
    embeddings = np.r_[np.random.default_rng(4).normal(0, 0.01, (10, 3)), np.random.default_rng(5).normal(9, 0.01, (10, 3))]
    plain, _ = select("entropy", 2, pool_of(probs), np.random.default_rng(0))
    assert set(plain // 10) == {0}
    chosen, scores = select("diverse_entropy", 2, embedded_pool(embeddings, probs=probs), np.random.default_rng(0))
    assert sorted(chosen // 10) == [0, 1], "one pick per cluster, the most uncertain of each"
    assert chosen[chosen < 10][0] == np.argmax(scores[:10]) and chosen[chosen >= 10][0] == 10 + np.argmax(scores[10:])

