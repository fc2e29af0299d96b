"""Pseudo-labels: the unlabelled pool as extra training data (``--semi-supervised pseudo``).

CEAL (Wang et al., IEEE TCSVT 2016) pairs active learning with
self-training: the tiles the model is unsure of are queried, and those it is
confident about join the round's training with their predicted class. Here,
each round after the model has been fitted on target labels once, every pool
tile predicted with a top probability of at least ``--pseudo-threshold`` is a
candidate; each class takes its most confident candidates, at most
``--pseudo-ratio`` times its labelled count, so that one class the model
favours cannot flood the training set. Pseudo-labelled tiles train that round
only: they are never labelled, never written to ``labelled.csv``, and stay in
the pool for later queries. In simulation the pool's true labels are known,
so their accuracy is reported beside their count: a user sees when
self-training goes wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from utils.learning.learners import Learner
from utils.learning.run_state import RunState
from utils.learning.train_options import TrainOptions
from utils.learning.training_data import TrainingData


@dataclass
class PoolUse:
    """What a round trained on from the pool without labels, for rounds.csv:
    pseudo-labelled tiles, or FixMatch's confident views summed over the
    round's epochs; and the share whose class was right (simulation only)."""

    count: int
    accuracy: float | None

    @classmethod
    def of_fixmatch(cls, epochs: list[dict[str, float]], known: bool) -> PoolUse:
        used = int(sum(e.get("pseudo_used", 0) for e in epochs))
        correct = sum(e.get("pseudo_correct", 0) for e in epochs)
        return cls(used, correct / used if known and used else None)


@dataclass
class PseudoLabels:
    """The pool tiles a round also trains on, and the class each is trained as."""

    ids: np.ndarray
    labels: np.ndarray
    #: Share that matches the true label: simulation only, else None.
    accuracy: float | None

    @classmethod
    def none(cls) -> PseudoLabels:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), None)

    @property
    def use(self) -> PoolUse:
        return PoolUse(len(self.ids), self.accuracy)


def pseudo_label(learner: Learner, data: TrainingData, state: RunState, options: TrainOptions) -> PseudoLabels:
    """This round's pseudo-labels, chosen by the model as it stands (the kept round's)."""
    if options.semi_supervised != "pseudo" or state.best["round"] is None:
        return PseudoLabels.none()
    pool = np.setdiff1d(data.pool_ids, state.labelled)
    if len(pool) == 0:
        return PseudoLabels.none()
    scored = learner.predict(pool)
    confidence, predicted = scored["probs"].max(axis=1), scored["probs"].argmax(axis=1)
    labelled_per_class = np.bincount(data.index.label[state.labelled], minlength=data.config.num_classes)
    chosen = []
    for c, labelled in enumerate(labelled_per_class):
        candidates = np.flatnonzero((predicted == c) & (confidence >= options.pseudo_threshold))
        most_confident = candidates[np.argsort(-confidence[candidates], kind="stable")]
        chosen.append(most_confident[: int(options.pseudo_ratio * labelled)])
    positions = np.sort(np.concatenate(chosen))
    truth = scored["labels"][positions]
    known = not options.query_only and len(positions) > 0
    accuracy = float((truth == predicted[positions]).mean()) if known else None
    return PseudoLabels(scored["ids"][positions], predicted[positions], accuracy)
