"""Which pool tiles to label next: the query strategies, on plain arrays.

Every strategy returns positions into the pool arrays it was given, so it can
be tested on hand-made probabilities without a model.

* ``class_ratio`` (the paper): the budget is split across classes in
  proportion to each class's misclassifications on the validation set (equal
  shares when there are none), then each class's share is drawn at random from
  that class's pool.
* ``entropy``, ``margin``, ``least_confidence``: the most uncertain tiles.
* ``bald``: the largest mutual information between prediction and weights,
  estimated with Monte-Carlo dropout passes.
* ``random``: the baseline.
* ``class_ratio_uncertainty``: the paper's class budget, filled within each
  class by the most uncertain (entropy) tiles instead of random ones.
* ``coreset`` (Sener & Savarese, ICLR 2018): greedy k-centre on the backbone
  embeddings, starting from the labelled set: each pick is the pool tile
  farthest from everything labelled or picked.
* ``badge`` (Ash et al., ICLR 2020): k-means++ seeding on the gradient of the
  loss, for the predicted class, with respect to the last layer's weights:
  picks that are both uncertain (long gradients) and different.
* ``typiclust`` (Hacohen et al., ICML 2022): the labelled and pool embeddings
  clustered into (labelled + budget) clusters, at most ``MAX_CLUSTERS``; then
  the most typical pool tile of the clusters that hold the fewest labelled
  tiles, largest first. Made for the low-budget start, where uncertainty
  starves the easy classes.
* ``diverse_entropy``: the ``DIVERSE_PREFILTER`` x budget most uncertain
  (entropy) tiles clustered into ``budget`` clusters in embedding space, and
  the most uncertain tile of each (after Zhdanov, 2019): uncertainty without
  near-duplicates.

The class-ratio budget needs each pool tile's class. Real use only knows the
predicted class, and so do simulations unless ``--oracle-classes`` asks for
the true labels (what the original code did, and no deployment can).

Diversity guard: top-k uncertainty picks neighbouring tiles of one slide,
which are near-duplicates. Uncertainty-based picks therefore take at most one
tile per spatial bucket (``spacing`` x ``spacing`` grid tiles of one slide)
until every bucket has been used once, and only then fall back to plain order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from utils.common.errors import InputError

_EPS = 1e-12
#: typiclust: at most this many clusters, and neighbours for typicality; clusters
#: smaller than MIN_CLUSTER are passed over while larger ones are left.
MAX_CLUSTERS, TYPICALITY_NEIGHBOURS, MIN_CLUSTER = 500, 20, 5
#: diverse_entropy clusters the this-many-times-budget most uncertain tiles.
DIVERSE_PREFILTER = 10
#: Rows of a distance block, to bound memory on large pools.
_CHUNK = 4096


def entropy(probs: np.ndarray) -> np.ndarray:
    return -(probs * np.log(probs + _EPS)).sum(axis=-1)


def margin_uncertainty(probs: np.ndarray) -> np.ndarray:
    """Minus the gap between the two most likely classes (higher is more uncertain)."""
    top2 = np.sort(probs, axis=-1)[..., -2:]
    return -(top2[..., 1] - top2[..., 0])


def least_confidence(probs: np.ndarray) -> np.ndarray:
    return 1.0 - probs.max(axis=-1)


def bald(mc_probs: np.ndarray) -> np.ndarray:
    """Mutual information from passes of shape (passes, n, classes): the entropy
    of the mean prediction minus the mean entropy of each pass."""
    return entropy(mc_probs.mean(axis=0)) - entropy(mc_probs).mean(axis=0)


def class_ratio_allocation(budget: int, misclassified: np.ndarray, available: np.ndarray) -> np.ndarray:
    """Tiles to draw per class: ``budget`` split in proportion to ``misclassified``
    (equal shares when all are zero), largest remainders rounding up, and any
    share a class's pool cannot fill passed on to the classes that can."""
    available = np.asarray(available, np.int64)
    weights = np.asarray(misclassified, np.float64).copy()
    if weights.sum() <= 0:
        weights = np.ones_like(weights)
    allocation = np.zeros(len(weights), np.int64)
    remaining = min(int(budget), int(available.sum()))
    while remaining > 0:
        open_ = (allocation < available) & (weights > 0)
        if not open_.any():
            open_ = allocation < available
            weights = np.where(open_, 1.0, 0.0)
        share = np.where(open_, weights, 0.0)
        exact = remaining * share / share.sum()
        add = np.floor(exact).astype(np.int64)
        leftover = remaining - add.sum()
        order = np.argsort(-(exact - add), kind="stable")
        add[order[:leftover]] += 1
        add = np.minimum(add, available - allocation)
        allocation += add
        remaining -= int(add.sum())
        if add.sum() == 0:
            break
    return allocation


@dataclass
class Pool:
    """What a strategy may look at for each pool tile."""

    slide: np.ndarray  # slide name
    x: np.ndarray  # level-0 centre
    y: np.ndarray
    classes: np.ndarray  # the class used for class_ratio: known (simulation) or predicted
    probs: np.ndarray | None = None  # (n, classes)
    mc_probs: np.ndarray | None = None  # (passes, n, classes), for bald
    embeddings: np.ndarray | None = None  # (n, features): pooled backbone features
    penultimate: np.ndarray | None = None  # (n, units): the input of the last layer, for badge
    labelled_embeddings: np.ndarray | None = None  # (labelled, features)


@dataclass(frozen=True)
class Strategy:
    """A query strategy: how it ranks the pool, and how it spends the budget.

    ``score`` is None for strategies that draw at random; ``class_ratio``
    splits the budget across classes by the validation misclassifications (the
    paper's rule) before ranking or drawing within each class; ``pick``
    chooses a whole batch at once, returning the positions and a score per
    pool tile, for strategies that weigh the picks against each other.
    ``mc_passes``, ``embeddings`` and ``gradients`` say which predictions of
    the pool the strategy reads (``embeddings`` also of the labelled set).
    A higher score is always a stronger claim to be labelled; annotators are
    shown it under ``score_name``, times ``score_sign`` (so a margin reads as
    the gap between the two likeliest classes, not as its negative)."""

    name: str
    score: Callable[[Pool], np.ndarray] | None
    class_ratio: bool = False
    mc_passes: bool = False
    pick: Callable[[Pool, int, np.random.Generator], tuple[np.ndarray, np.ndarray]] | None = None
    embeddings: bool = False
    gradients: bool = False
    score_name: str = ""
    score_sign: float = 1.0

    @property
    def needs_predictions(self) -> bool:
        return self.score is not None or self.pick is not None


#: Every strategy by name; ``--strategy`` offers these.
STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("class_ratio", None, class_ratio=True),
    Strategy("entropy", lambda pool: entropy(pool.probs), score_name="entropy"),
    Strategy("margin", lambda pool: margin_uncertainty(pool.probs), score_name="margin", score_sign=-1.0),
    Strategy("least_confidence", lambda pool: least_confidence(pool.probs), score_name="1 - top probability"),
    Strategy("bald", lambda pool: bald(pool.mc_probs), mc_passes=True, score_name="BALD"),
    Strategy("random", None),
    Strategy("class_ratio_uncertainty", lambda pool: entropy(pool.probs), class_ratio=True, score_name="entropy"),
    Strategy("coreset", None, pick=lambda pool, k, rng: k_centre(pool.embeddings, pool.labelled_embeddings, k, rng),
             embeddings=True, score_name="distance to labelled"),
    Strategy("badge", None, pick=lambda pool, k, rng: badge(pool.probs, pool.penultimate, k, rng), gradients=True,
             score_name="gradient norm"),
    Strategy("typiclust", None, embeddings=True, score_name="typicality",
             pick=lambda pool, k, rng: typiclust(pool.embeddings, pool.labelled_embeddings, k, rng)),
    Strategy("diverse_entropy", None, embeddings=True, score_name="entropy",
             pick=lambda pool, k, rng: diverse_uncertainty(entropy(pool.probs), pool.embeddings, k, rng)),
)}


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise InputError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}") from None


def select(
    strategy: str,
    budget: int,
    pool: Pool,
    rng: np.random.Generator,
    misclassified: np.ndarray | None = None,
    num_classes: int | None = None,
    stride: float = 1.0,
    spacing: int = 2,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Positions of the chosen pool tiles and the scores of the whole pool."""
    chosen_strategy = get_strategy(strategy)
    budget = min(budget, len(pool.slide))
    if chosen_strategy.pick is not None:
        return chosen_strategy.pick(pool, budget, rng)
    scores = chosen_strategy.score(pool) if chosen_strategy.score else None
    if not chosen_strategy.class_ratio:
        if scores is None:
            return rng.choice(len(pool.slide), size=budget, replace=False), scores
        return _top_diverse(np.arange(len(scores)), scores, budget, pool, stride, spacing), scores
    # Class-ratio budget, drawn at random or by uncertainty within each class.
    num_classes = num_classes or int(pool.classes.max()) + 1
    available = np.bincount(pool.classes[pool.classes >= 0], minlength=num_classes)
    if misclassified is None:
        misclassified = np.zeros(num_classes)
    allocation = class_ratio_allocation(budget, misclassified, available)
    chosen = []
    for c in range(num_classes):
        members = np.flatnonzero(pool.classes == c)
        if allocation[c] == 0:
            continue
        if scores is None:
            chosen.append(rng.choice(members, size=allocation[c], replace=False))
        else:
            chosen.append(_top_diverse(members, scores[members], allocation[c], pool, stride, spacing))
    return (np.concatenate(chosen) if chosen else np.zeros(0, np.int64)), scores


def _top_diverse(members: np.ndarray, scores: np.ndarray, k: int, pool: Pool, stride: float, spacing: int) -> np.ndarray:
    """The ``k`` best-scored members, at most one per spatial bucket while unused buckets remain."""
    order = members[np.argsort(-scores, kind="stable")]
    size = stride * max(spacing, 1)
    buckets = [(s, int(x // size), int(y // size)) for s, x, y in zip(pool.slide[order], pool.x[order], pool.y[order])]
    seen: set = set()
    first, rest = [], []
    for position, bucket in zip(order, buckets):
        (rest if bucket in seen else first).append(position)
        seen.add(bucket)
    return np.asarray((first + rest)[:k], np.int64)


# -- batch strategies on embeddings ----------------------------------------------------
def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All squared Euclidean distances between the rows of ``a`` and ``b`` (float64, never negative)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def nearest_distance(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Distance from each point to its nearest centre (inf without centres), in row blocks."""
    if centres is None or len(centres) == 0:
        return np.full(len(points), np.inf)
    return np.concatenate([np.sqrt(squared_distances(points[i : i + _CHUNK], centres).min(axis=1))
                           for i in range(0, len(points), _CHUNK)])


def k_centre(embeddings: np.ndarray, labelled: np.ndarray | None, k: int,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-centre: each pick is the point farthest from the labelled set
    and the earlier picks. Scores: the distance to the labelled set."""
    distance = nearest_distance(embeddings, labelled)
    scores = distance.copy()
    chosen: list[int] = []
    for _ in range(k):
        i = int(rng.integers(len(embeddings))) if np.isinf(distance).all() else int(np.argmax(distance))
        chosen.append(i)
        distance = np.minimum(distance, np.sqrt(squared_distances(embeddings, embeddings[i : i + 1])[:, 0]))
        distance[chosen] = -1.0
    return np.asarray(chosen, np.int64), np.where(np.isinf(scores), np.nan, scores)


def badge(probs: np.ndarray, penultimate: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """k-means++ seeding on the last layer's gradient embeddings g = e ⊗ h,
    with e = probabilities − one-hot(predicted class) and h the penultimate
    activations. Distances come from the factors (⟨g_i, g_j⟩ = ⟨e_i, e_j⟩⟨h_i, h_j⟩),
    so the (classes × units) vectors are never built. Scores: the gradient norm."""
    e = np.asarray(probs, np.float64).copy()
    e[np.arange(len(e)), e.argmax(axis=1)] -= 1.0
    h = np.asarray(penultimate, np.float64)
    norms = (e * e).sum(1) * (h * h).sum(1)
    first = int(np.argmax(norms))
    chosen = [first]
    distance = np.full(len(e), np.inf)
    while True:
        c = chosen[-1]
        to_new = norms + norms[c] - 2.0 * (e @ e[c]) * (h @ h[c])
        distance = np.minimum(distance, np.maximum(to_new, 0.0))
        distance[chosen] = 0.0
        if len(chosen) == k:
            break
        total = distance.sum()
        if total > 0:
            chosen.append(int(rng.choice(len(e), p=distance / total)))
        else:  # every remaining point coincides with a centre
            chosen.append(int(rng.choice(np.setdiff1d(np.arange(len(e)), chosen))))
    return np.asarray(chosen, np.int64), np.sqrt(norms)


def _kmeans(x: np.ndarray, clusters: int, rng: np.random.Generator) -> np.ndarray:
    """Cluster labels; mini-batch k-means for many clusters, as TypiClust does."""
    seed = int(rng.integers(2**31 - 1))
    from sklearn.cluster import KMeans, MiniBatchKMeans  # a second to import: only where clusters are made

    method = KMeans(clusters, n_init=1, random_state=seed) if clusters <= 50 else \
        MiniBatchKMeans(clusters, n_init=1, random_state=seed, batch_size=max(1024, 3 * clusters))
    return method.fit_predict(np.asarray(x, np.float32))


def typicality(x: np.ndarray, neighbours: int = TYPICALITY_NEIGHBOURS) -> np.ndarray:
    """1 / mean distance to the ``neighbours`` nearest other points (within ``x``)."""
    if len(x) < 2:
        return np.ones(len(x))
    k = min(neighbours, len(x) - 1)
    result = np.empty(len(x))
    for i in range(0, len(x), _CHUNK):
        d = np.sqrt(squared_distances(x[i : i + _CHUNK], x))
        d[np.arange(len(d)), np.arange(i, i + len(d))] = np.inf
        result[i : i + len(d)] = 1.0 / (np.partition(d, k - 1, axis=1)[:, :k].mean(axis=1) + _EPS)
    return result


def typiclust(embeddings: np.ndarray, labelled: np.ndarray | None, k: int,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """TypiClust: one pick per cluster, from the clusters with the fewest
    labelled tiles (largest first), each the cluster's most typical pool tile.
    Scores: each pool tile's typicality within its cluster."""
    labelled = np.zeros((0, embeddings.shape[1])) if labelled is None else labelled
    everything = np.concatenate([labelled, embeddings])
    clusters = min(len(labelled) + k, MAX_CLUSTERS, len(everything))
    assignment = _kmeans(everything, clusters, rng)
    labelled_in = np.bincount(assignment[: len(labelled)], minlength=clusters)
    pool_cluster = assignment[len(labelled):]
    sizes = np.bincount(assignment, minlength=clusters)
    scores = np.zeros(len(embeddings))
    for c in np.unique(pool_cluster):
        members = np.flatnonzero(assignment == c)
        typical = typicality(everything[members])
        in_pool = members >= len(labelled)
        scores[members[in_pool] - len(labelled)] = typical[in_pool]
    available = np.bincount(pool_cluster, minlength=clusters)
    chosen: list[int] = []
    taken = np.zeros(len(embeddings), bool)
    for _ in range(k):
        open_ = available > 0
        if not open_.any():
            break
        large = open_ & (sizes >= MIN_CLUSTER)
        candidates = np.flatnonzero(large if large.any() else open_)
        c = candidates[np.lexsort((-sizes[candidates], labelled_in[candidates]))[0]]
        members = np.flatnonzero((pool_cluster == c) & ~taken)
        i = int(members[np.argmax(scores[members])])
        chosen.append(i)
        taken[i] = True
        labelled_in[c] += 1
        available[c] -= 1
    return np.asarray(chosen, np.int64), scores


def diverse_uncertainty(scores: np.ndarray, embeddings: np.ndarray, k: int,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The most uncertain tile of each of ``k`` clusters of the
    ``DIVERSE_PREFILTER * k`` most uncertain tiles."""
    top = np.argsort(-scores, kind="stable")[: DIVERSE_PREFILTER * k]
    if len(top) <= k:
        return top, scores
    assignment = _kmeans(embeddings[top], k, rng)
    best = [top[assignment == c][0] for c in np.unique(assignment)]  # top is sorted: the first is the most uncertain
    picked = set(best)
    rest = [i for i in top if i not in picked]
    return np.asarray((best + rest)[:k], np.int64), scores
