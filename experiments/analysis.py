"""Learning-curve statistics for comparing active-learning strategies over seeds.

A curve is the test macro F1 after each round against the fraction of the
target pool labelled. Strategies are compared seed by seed (the same seed
gives every strategy the same initial labelled set and the same round 0), so
differences are paired and the interval is a t interval over seeds.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass
class Curve:
    fraction: np.ndarray  # labelled fraction of the pool after each round
    f1: np.ndarray  # test macro F1 after each round


def labels_to_stay(curve: Curve, target: float) -> float:
    """The smallest labelled fraction from which F1 stays at or above
    ``target`` in every later round (NaN: the last round is below it). Unlike
    the first crossing, one lucky round does not count."""
    below = np.flatnonzero(curve.f1 < target)
    if len(below) == 0:
        return float(curve.fraction[0])
    if below[-1] == len(curve.f1) - 1:
        return float("nan")
    return float(curve.fraction[below[-1] + 1])


def area_under_curve(curve: Curve) -> float:
    """Mean F1 over the labelled fractions the curve spans (trapezoids)."""
    width = curve.fraction[-1] - curve.fraction[0]
    return float(np.trapezoid(curve.f1, curve.fraction) / width) if width > 0 else float(curve.f1[0])


def f1_at(curve: Curve, fraction: float) -> float:
    """F1 linearly interpolated at ``fraction`` (NaN outside the curve)."""
    if not curve.fraction[0] <= fraction <= curve.fraction[-1]:
        return float("nan")
    return float(np.interp(fraction, curve.fraction, curve.f1))


def paired_interval(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``a - b`` over seeds and its t interval: (mean, low, high)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    mean = float(d.mean())
    if len(d) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + confidence / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
    return mean, mean - half, mean + half


def mean_curve(curves: list[Curve], grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation over seeds of the curves interpolated on ``grid``."""
    values = np.array([[f1_at(c, g) for g in grid] for c in curves])
    with warnings.catch_warnings():  # grid points outside every curve stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=0), np.nanstd(values, axis=0)
