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

Diversity guard: top-k uncertainty picks neighbouring tiles of one slide,
which are near-duplicates. Uncertainty-based picks therefore take at most one
tile per spatial bucket (``spacing`` x ``spacing`` grid tiles of one slide)
until every bucket has been used once, and only then fall back to plain order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

_EPS = 1e-12


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


@dataclass(frozen=True)
class Strategy:
    """A query strategy: how it ranks the pool, and how it spends the budget.

    ``score`` is None for strategies that draw at random; ``class_ratio``
    splits the budget across classes by the validation misclassifications (the
    paper's rule) before ranking or drawing within each class; ``mc_passes``
    asks for Monte-Carlo dropout predictions of the pool."""

    name: str
    score: Callable[[Pool], np.ndarray] | None
    class_ratio: bool = False
    mc_passes: bool = False

    @property
    def needs_predictions(self) -> bool:
        return self.score is not None


#: Every strategy by name; ``--strategy`` offers these.
STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("class_ratio", None, class_ratio=True),
    Strategy("entropy", lambda pool: entropy(pool.probs)),
    Strategy("margin", lambda pool: margin_uncertainty(pool.probs)),
    Strategy("least_confidence", lambda pool: least_confidence(pool.probs)),
    Strategy("bald", lambda pool: bald(pool.mc_probs), mc_passes=True),
    Strategy("random", None),
    Strategy("class_ratio_uncertainty", lambda pool: entropy(pool.probs), class_ratio=True),
)}


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}") from None


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
