"""Operating threshold chosen on validation scores.

A screening model is used at one fixed threshold; picking it on validation data (and storing it
in the checkpoint) keeps test metrics and predictions honest: the test set never chooses it.
The decision rule everywhere in tbclf is ``prob >= threshold`` -> TB.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from tbclf.evaluation.probability import decide
from tbclf.evaluation.roc import operating_points

STRATEGIES = ("sensitivity", "youden")
DEFAULT_THRESHOLD = 0.5


def goal_text(strategy: str | None, target_sensitivity: float | None = None) -> str:
    """What a strategy aims at, in words (" for 90% sensitivity"), for reports and records."""
    if strategy == "sensitivity":
        if target_sensitivity is None:
            return " for a target sensitivity"
        return f" for {100 * float(target_sensitivity):.0f}% sensitivity"
    if strategy == "youden":
        return " to maximise sensitivity + specificity (Youden index)"
    return f" ({strategy})" if strategy else ""


def _clean(probs: Sequence[float] | np.ndarray, labels: Sequence[float] | np.ndarray):
    """Return float64 scores and int labels with unlabeled (NaN) entries dropped."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"probs and labels differ in length: {p.shape[0]} vs {y.shape[0]}")
    keep = ~np.isnan(y)
    p, y = p[keep], y[keep]
    if not np.all(np.isfinite(p)):
        raise ValueError("probs contain NaN or infinite values")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError(f"labels must be 0/1 (or NaN for unlabeled), got {np.unique(y)[:10]}")
    return p, y.astype(np.int64)


def pick_threshold(
    probs: Sequence[float] | np.ndarray,
    labels: Sequence[float] | np.ndarray,
    strategy: str = "sensitivity",
    target_sensitivity: float = 0.9,
) -> float:
    """Pick the operating threshold (decision: ``prob >= threshold``) on labelled scores.

    - ``"sensitivity"``: the highest threshold whose sensitivity on these labels is at least
      ``target_sensitivity`` (the most specific rule that still finds the target share of TB
      cases). It is the k-th highest positive score with k = ceil(target * n_positive); tied
      scores all count as detected.
    - ``"youden"``: the threshold maximising TPR - FPR over all distinct scores; among equal
      maxima the highest threshold wins (fewest false alarms).

    Unlabeled entries (NaN labels) are ignored. With only one class present no threshold can be
    chosen: a warning is issued and 0.5 returned.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown threshold strategy {strategy!r}; use one of {STRATEGIES}")
    if not 0.0 < float(target_sensitivity) <= 1.0:
        raise ValueError(f"target_sensitivity must be in (0, 1], got {target_sensitivity}")
    p, y = _clean(probs, labels)
    n_pos, n_neg = int(np.sum(y == 1)), int(np.sum(y == 0))
    if n_pos == 0 or n_neg == 0:
        warnings.warn(
            f"cannot pick a threshold: labels hold {n_pos} TB and {n_neg} healthy "
            f"samples (both classes are needed); using {DEFAULT_THRESHOLD}",
            RuntimeWarning,
            stacklevel=2,
        )
        return DEFAULT_THRESHOLD

    # Distinct scores from the highest down; the first match is the highest threshold.
    thresholds, tp, fp = operating_points(p, y)
    if strategy == "sensitivity":
        # small epsilon: 0.9 * 10 is 9.000000000000002 in floating point, which must mean 9.
        k = int(np.ceil(float(target_sensitivity) * n_pos - 1e-9))
        k = min(max(k, 1), n_pos)
        return float(thresholds[int(np.argmax(tp >= k))])
    return float(thresholds[int(np.argmax(tp / n_pos - fp / n_neg))])


def sensitivity_specificity(
    probs: Sequence[float] | np.ndarray, labels: Sequence[float] | np.ndarray, threshold: float
) -> tuple[float, float]:
    """Sensitivity and specificity of ``prob >= threshold`` (NaN for an absent class)."""
    p, y = _clean(probs, labels)
    decision = decide(p, threshold).astype(bool)
    sens = float(decision[y == 1].mean()) if np.any(y == 1) else float("nan")
    spec = float((~decision[y == 0]).mean()) if np.any(y == 0) else float("nan")
    return sens, spec
