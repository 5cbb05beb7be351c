"""Confidence intervals that keep their promise on small test sets.

A percentile bootstrap of a proportion cannot leave 1.0: 11 of 11 healthy images cleared gave
``1.00 [1.00, 1.00]``, a certainty the data do not hold. So:

- proportions (sensitivity, specificity, PPV, NPV, accuracy): exact Clopper-Pearson intervals
  (``scipy.stats.binomtest(k, n).proportion_ci(method="exact")``); they never have zero width
  and cover the true value at least at the stated level for every n and p.
- AUROC: DeLong's variance, with the interval built on the logit scale so it stays inside
  (0, 1) and keeps its coverage near 1. At AUROC 1.0 (every TB image outscores every healthy
  one) DeLong's variance is zero, which is not certainty; there the lower end is the exact
  Clopper-Pearson bound for m = min(n_tb, n_healthy) independent TB/healthy pairs all ranked
  correctly, ``(alpha / 2) ** (1 / m)``, and the upper end is 1 (mirrored at AUROC 0.0).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.special import expit, logit
from scipy.stats import binomtest, norm

from tbclf.evaluation.roc import placements

PROPORTION_METHOD = "Clopper-Pearson exact binomial interval"
AUROC_METHOD = (
    "DeLong variance, interval on the logit scale; at AUROC 1.0 (0.0) the exact bound for "
    "min(n_tb, n_healthy) independent TB/healthy pairs"
)


@lru_cache(maxsize=65536)
def proportion_ci(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval for k successes in n trials; NaN when n is 0."""
    if n == 0:
        return float("nan"), float("nan")
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=1 - alpha, method="exact")
    return float(ci.low), float(ci.high)


def perfect_ranking_bound(m: int, alpha: float = 0.05) -> float:
    """Lowest AUROC still consistent with m independent TB/healthy pairs all ranked right."""
    return float((alpha / 2) ** (1 / m))


def delong_ci(
    scores: np.ndarray, positive: np.ndarray, alpha: float = 0.05
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(auroc, low, high) for each row of ``scores`` (last axis: images; labels shared).

    NaN bounds where no interval exists: one class absent, or fewer than two images of a
    class while the AUROC is not 0 or 1 (DeLong needs a variance from each class).
    """
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    auc, v10, v01 = placements(scores, positive)
    auc = np.asarray(auc, dtype=np.float64)
    low = np.full(auc.shape, np.nan)
    high = np.full(auc.shape, np.nan)
    if n_pos == 0 or n_neg == 0:
        return auc, low, high
    bound = perfect_ranking_bound(min(n_pos, n_neg), alpha)
    top, bottom = auc >= 1.0, auc <= 0.0
    low[top], high[top] = bound, 1.0
    low[bottom], high[bottom] = 0.0, 1.0 - bound
    if n_pos >= 2 and n_neg >= 2:
        var = v10.var(axis=-1, ddof=1) / n_pos + v01.var(axis=-1, ddof=1) / n_neg
        inner = ~(top | bottom) & (var > 0)
        a = auc[inner]
        half = norm.ppf(1 - alpha / 2) * np.sqrt(var[inner]) / (a * (1 - a))
        low[inner] = expit(logit(a) - half)
        high[inner] = expit(logit(a) + half)
    return auc, low, high


def auroc_ci(probs: np.ndarray, labels: np.ndarray, alpha: float = 0.05) -> dict[str, float]:
    """AUROC with its interval (see the module docstring) as value / ci_low / ci_high."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    auc, low, high = delong_ci(p[None], np.asarray(labels).reshape(-1) == 1, alpha)
    return {"value": float(auc[0]), "ci_low": float(low[0]), "ci_high": float(high[0])}
