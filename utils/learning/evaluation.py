"""A round's scores: what the run reports and keeps a model by.

The metrics are scikit-learn's, over the classes a set contains, so that a
class absent from a split has no F1 rather than an F1 of 0; the row they make
is one line of ``rounds.csv`` (:class:`utils.learning.run_files.RoundRow` reads it back).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from utils.learning.learners import Learner
from utils.learning.pseudo_labels import PoolUse
from utils.learning.training_data import TrainingData


def evaluate(learner: Learner, data: TrainingData, ids: np.ndarray) -> dict[str, Any]:
    """Accuracy, macro and per-class F1 (scikit-learn) and the confusion matrix."""
    num = data.config.num_classes
    if len(ids) == 0:
        return {"accuracy": float("nan"), "macro_f1": float("nan"), "per_class_f1": [float("nan")] * num,
                "loss": float("nan"), "confusion": np.zeros((num, num), np.int64), "misclassified": np.zeros(num)}
    result = learner.predict(ids)
    truth, predicted = result["labels"], result["probs"].argmax(axis=1)
    labels = list(range(num))
    present = sorted(set(truth.tolist()))
    per_class = f1_score(truth, predicted, labels=labels, average=None, zero_division=0)
    per_class[~np.isin(labels, present)] = np.nan  # a class absent from the set has no F1
    probs = result["probs"].astype(np.float64)
    probs /= probs.sum(axis=1, keepdims=True)
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        # Mean cross-entropy, the loss the model is fitted on (clipped as Keras clips it).
        "loss": float(-np.log(np.clip(probs[np.arange(len(truth)), truth], 1e-7, 1.0)).mean()),
        # Macro over the classes the set contains, so an absent class does not count as 0.
        "macro_f1": float(f1_score(truth, predicted, labels=present, average="macro", zero_division=0)),
        "per_class_f1": per_class.tolist(),
        "confusion": confusion_matrix(truth, predicted, labels=labels),
        "misclassified": np.bincount(truth[truth != predicted], minlength=num),
    }


def test_set_scores(test: dict[str, Any]) -> str:
    """The test set's macro F1 and accuracy, or that there is no test set (a
    split file with an empty test list), never a NaN."""
    if np.isnan(test["accuracy"]):
        return "no test set (the split's test list is empty)"
    return f"test macro F1 {test['macro_f1']:.3f}, test accuracy {test['accuracy']:.3f}"


def improves(val: dict[str, Any], best: dict[str, Any], model_selection: str) -> bool:
    """Whether this round's model replaces the best so far: a higher validation
    macro F1 (``val_f1``), or a lower validation loss (``val_loss``, the
    original code's rule)."""
    if best["round"] is None:
        return True
    if model_selection == "val_loss":
        return val["loss"] < best.get("val_loss", float("inf"))
    return val["macro_f1"] > best["val_macro_f1"]


def metrics_row(run: TrainingData, round_number: int, labelled: np.ndarray, val: dict, test: dict, epochs: int, steps: int,
                 query_seconds: float, fit_seconds: float, seconds: float, pool_use: PoolUse) -> dict[str, Any]:
    """One row of ``rounds.csv``: the labelled set's size and classes, the
    pool tiles trained on without a label, the scores and the time taken."""
    return {"round": round_number, "labelled": len(labelled),
            **{f"labelled_{k}": v for k, v in run.counts(labelled).items()},
            "pseudo_labelled": pool_use.count, "pseudo_accuracy": pool_use.accuracy,
            "val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"], "val_loss": val["loss"],
            "test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"],
            **{f"test_f1_{n}": f for n, f in zip(run.config.class_names, test["per_class_f1"])},
            "epochs": epochs, "steps": steps, "query_seconds": round(query_seconds, 2), "fit_seconds": round(fit_seconds, 2),
            "seconds": round(seconds, 2)}
