"""The one ROC: curve points (for thresholds and figures) and AUROC (for metrics and intervals).

Two implementations, each used everywhere: ``operating_points`` counts the TB and healthy
images at or above every distinct score (the ROC and precision-recall curves and threshold
picking are read off it, with tbclf's rule ``prob >= threshold``), and ``placements`` gives
each image's share of the other class it outranks (ties count one half); their mean is the
AUROC (Mann-Whitney) and their variances are DeLong's interval (``intervals.py``). The tests
check one against the other and both against scikit-learn and torchmetrics on tied scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata


def _binary(probs: Sequence[float] | np.ndarray, labels: Sequence[float] | np.ndarray):
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"probs and labels differ in length: {p.size} vs {y.size}")
    return p, y == 1


def operating_points(
    probs: Sequence[float] | np.ndarray, labels: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, tp, fp): for each distinct score, from the highest down, how many TB (tp)
    and healthy (fp) images have ``prob >= threshold``."""
    p, pos = _binary(probs, labels)
    if p.size == 0:
        return np.empty(0), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    order = np.argsort(-p, kind="stable")
    scores, hits = p[order], pos[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tp = np.cumsum(hits, dtype=np.int64)[last_of_group]
    fp = last_of_group + 1 - tp
    return scores[last_of_group], tp, fp


def roc_curve(
    probs: Sequence[float] | np.ndarray, labels: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) from (0, 0) at threshold +inf to (1, 1) at the lowest score."""
    thresholds, tp, fp = operating_points(probs, labels)
    n_pos, n_neg = (tp[-1], fp[-1]) if tp.size else (0, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.r_[0.0, tp / n_pos]
        fpr = np.r_[0.0, fp / n_neg]
    return fpr, tpr, np.r_[np.inf, thresholds]


def pr_curve(
    probs: Sequence[float] | np.ndarray, labels: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds), recall rising, from (recall 0, precision 1) at +inf."""
    thresholds, tp, fp = operating_points(probs, labels)
    n_pos = tp[-1] if tp.size else 0
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.r_[1.0, tp / (tp + fp)]
        recall = np.r_[0.0, tp / n_pos]
    return precision, recall, np.r_[np.inf, thresholds]


def average_precision(
    probs: Sequence[float] | np.ndarray, labels: Sequence[float] | np.ndarray
) -> float:
    """Step-wise area under the precision-recall curve (scikit-learn's definition)."""
    precision, recall, _ = pr_curve(probs, labels)
    return float(np.sum(np.diff(recall) * precision[1:]))


def placements(
    scores: np.ndarray, positive: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DeLong's placement values along the last axis of ``scores`` (rows: e.g. simulations).

    Returns (auroc, v10, v01): v10 is, per TB image, the share of healthy images it outscores
    (ties one half); v01 is, per healthy image, the share of TB images that outscore it.
    ``positive`` is a boolean mask over the last axis, shared by every row.
    """
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    ranks = rankdata(scores, axis=-1)  # midranks: ties count one half
    v10 = (ranks[..., positive] - rankdata(scores[..., positive], axis=-1)) / max(n_neg, 1)
    v01 = 1.0 - (ranks[..., ~positive] - rankdata(scores[..., ~positive], axis=-1)) / max(n_pos, 1)
    if n_pos == 0 or n_neg == 0:
        return np.full(scores.shape[:-1], np.nan), v10, v01
    return v10.mean(axis=-1), v10, v01


def auroc(probs: Sequence[float] | np.ndarray, labels: Sequence[float] | np.ndarray) -> float:
    """Probability that a TB image outscores a healthy one, ties one half; NaN with one class."""
    p, pos = _binary(probs, labels)
    if p.size == 0:
        return float("nan")
    return float(placements(p, pos)[0])
