"""Intervals: exact for proportions, DeLong for AUROC; coverage checked by simulation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest, norm

from tbclf.evaluation.intervals import (
    auroc_ci,
    delong_ci,
    perfect_ranking_bound,
    proportion_ci,
)

N_SIM = 2000  # simulated test sets per case


def test_proportion_ci_is_scipys_exact_interval_and_never_zero_width():
    for k, n in ((0, 2), (11, 11), (36, 40), (5, 9)):
        ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
        assert proportion_ci(k, n) == pytest.approx((ref.low, ref.high))
        lo, hi = proportion_ci(k, n)
        assert lo < hi
    assert proportion_ci(11, 11)[1] == 1.0 and proportion_ci(11, 11)[0] < 0.75
    assert all(np.isnan(proportion_ci(0, 0)))


@pytest.mark.parametrize(("n", "p"), [(11, 1.0), (40, 0.9), (11, 0.5), (200, 0.97)])
def test_proportion_intervals_cover_the_true_value(n, p):
    k = np.random.default_rng(n).binomial(n, p, size=N_SIM)
    bounds = np.array([proportion_ci(int(i), n) for i in k])
    covered = (bounds[:, 0] <= p) & (p <= bounds[:, 1])
    assert covered.mean() >= 0.94, covered.mean()


def _binormal(n_tb: int, n_healthy: int, auc: float, seed: int):
    """Simulated test sets (rows) whose true AUROC is ``auc`` (TB ~ N(d, 1), healthy ~ N(0, 1))."""
    rng = np.random.default_rng(seed)
    d = np.sqrt(2) * norm.ppf(auc)
    scores = np.concatenate(
        [rng.normal(d, 1, (N_SIM, n_tb)), rng.normal(0, 1, (N_SIM, n_healthy))], axis=1
    )
    return scores, np.r_[np.ones(n_tb, bool), np.zeros(n_healthy, bool)]


@pytest.mark.parametrize(
    ("n_tb", "n_healthy", "auc"),
    [(30, 30, 0.85), (11, 11, 0.97)],  # the second is perfectly ranked in ~30% of the sets
)
def test_auroc_intervals_cover_the_true_value(n_tb, n_healthy, auc):
    scores, positive = _binormal(n_tb, n_healthy, auc, seed=n_tb)
    est, lo, hi = delong_ci(scores, positive)
    assert not np.isnan(lo).any()
    assert np.all(lo < hi)  # never zero width, also at AUROC 1.0
    covered = (lo <= auc) & (auc <= hi)
    assert covered.mean() >= 0.94, covered.mean()


def test_delong_variance_matches_the_pairwise_definition():
    rng = np.random.default_rng(5)
    p = np.round(rng.random(25), 1)
    y = np.r_[np.ones(10), np.zeros(15)]
    pos, neg = p[y == 1], p[y == 0]
    psi = (pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None])
    auc = psi.mean()
    var = psi.mean(1).var(ddof=1) / 10 + psi.mean(0).var(ddof=1) / 15
    half = 1.959963984540054 * np.sqrt(var) / (auc * (1 - auc))
    logit = np.log(auc / (1 - auc))
    expected = 1 / (1 + np.exp(-(logit - half))), 1 / (1 + np.exp(-(logit + half)))
    got = auroc_ci(p, y)
    assert got["value"] == pytest.approx(auc)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx(expected)


def test_perfect_ranking_has_an_exact_lower_bound_not_zero_width():
    p = np.r_[np.linspace(0.6, 0.9, 11), np.linspace(0.1, 0.4, 8)]
    y = np.r_[np.ones(11), np.zeros(8)]
    got = auroc_ci(p, y)
    assert got == pytest.approx({"value": 1.0, "ci_low": 0.025 ** (1 / 8), "ci_high": 1.0})
    assert perfect_ranking_bound(8) == pytest.approx(0.025 ** (1 / 8))
    mirrored = auroc_ci(1 - p, y)
    assert mirrored == pytest.approx({"value": 0.0, "ci_low": 0.0, "ci_high": 1 - 0.025**0.125})


def test_no_interval_where_none_exists():
    one_class = auroc_ci([0.2, 0.7], [1, 1])
    assert np.isnan(one_class["value"]) and np.isnan(one_class["ci_low"])
    one_tb = auroc_ci([0.5, 0.7, 0.2, 0.9], [1, 0, 0, 0])  # DeLong needs two of each class
    assert one_tb["value"] == pytest.approx(1 / 3) and np.isnan(one_tb["ci_low"])
