"""Bootstrap metrics: point values against hand counts and torchmetrics, interval behaviour."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from tbclf.evaluation.bootstrap import (
    METRICS,
    auroc,
    bootstrap_metrics,
    confusion_counts,
    point_metrics,
    resampled_metrics,
)


def _scores(n: int, seed: int, separation: float = 1.5, decimals: int | None = 2):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + separation * (y - 0.5))))
    if decimals is not None:
        p = np.round(p, decimals)  # ties, as real scores have them
    return p, y


def test_point_metrics_match_hand_counts():
    p = np.array([0.9, 0.8, 0.4, 0.35, 0.6, 0.2, 0.1, 0.5])
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    # threshold 0.5 (>=): TB called for 0.9, 0.8, 0.6, 0.5 -> tp 2, fp 2, tn 2, fn 2
    c = confusion_counts(p, y, 0.5)
    assert c == {"tp": 2, "fp": 2, "tn": 2, "fn": 2}
    m = point_metrics(p, y, 0.5)
    assert m["sensitivity"] == pytest.approx(0.5)
    assert m["specificity"] == pytest.approx(0.5)
    assert m["ppv"] == pytest.approx(0.5)
    assert m["npv"] == pytest.approx(0.5)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(0.5)
    # pairs (pos > neg): 0.9 beats 4, 0.8 beats 4, 0.4 beats 2, 0.35 beats 2 -> 12 / 16
    assert m["auroc"] == pytest.approx(12 / 16)


def test_threshold_is_inclusive():
    p = np.array([0.5, 0.49])
    y = np.array([1, 0])
    assert confusion_counts(p, y, 0.5) == {"tp": 1, "fp": 0, "tn": 1, "fn": 0}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_torchmetrics_with_ties(seed):
    p, y = _scores(300, seed, decimals=1)  # heavy ties
    expected = binary_auroc(torch.tensor(p), torch.tensor(y)).item()
    assert auroc(p, y) == pytest.approx(expected, abs=1e-6)


def test_vectorised_replicates_equal_a_plain_loop():
    p, y = _scores(80, 3)
    rng = np.random.default_rng(7)
    idx = rng.integers(0, p.size, size=(25, p.size))
    got = resampled_metrics(p, y, 0.45, idx)
    for r in range(idx.shape[0]):
        ref = point_metrics(p[idx[r]], y[idx[r]], 0.45)
        for name in METRICS:
            if np.isnan(ref[name]):
                assert np.isnan(got[name][r])
            else:
                assert got[name][r] == pytest.approx(ref[name], abs=1e-12), (name, r)
        tm = binary_auroc(torch.tensor(p[idx[r]]), torch.tensor(y[idx[r]])).item()
        assert got["auroc"][r] == pytest.approx(tm, abs=1e-6)


def test_intervals_contain_point_estimate_and_have_keys():
    p, y = _scores(200, 4)
    res = bootstrap_metrics(p, y, 0.5, n_boot=500, seed=0)
    assert set(res["metrics"]) == set(METRICS)
    assert res["n"] == 200 and res["n_tb"] + res["n_healthy"] == 200
    for name, m in res["metrics"].items():
        assert m["ci_low"] <= m["value"] <= m["ci_high"], name
        assert 0.0 <= m["ci_low"] < m["ci_high"] <= 1.0, name
    assert res["metrics"]["auroc"]["value"] == pytest.approx(auroc(p, y))


def test_intervals_narrow_with_more_data():
    small = bootstrap_metrics(*_scores(100, 5), 0.5, n_boot=800, seed=0)
    large = bootstrap_metrics(*_scores(3000, 5), 0.5, n_boot=800, seed=0)
    for name in ("auroc", "sensitivity", "specificity", "accuracy"):
        w_small = small["metrics"][name]["ci_high"] - small["metrics"][name]["ci_low"]
        w_large = large["metrics"][name]["ci_high"] - large["metrics"][name]["ci_low"]
        # width ~ 1/sqrt(n): 30x the data should give ~5x narrower intervals
        assert w_large < w_small / 3, name


def test_seeded_and_reproducible():
    p, y = _scores(150, 6)
    a = bootstrap_metrics(p, y, 0.5, n_boot=300, seed=1)
    b = bootstrap_metrics(p, y, 0.5, n_boot=300, seed=1)
    c = bootstrap_metrics(p, y, 0.5, n_boot=300, seed=2)
    assert a == b
    assert a["metrics"]["auroc"]["ci_low"] != c["metrics"]["auroc"]["ci_low"]


def test_stratified_keeps_prevalence_and_plain_does_not():
    p, y = _scores(60, 8)
    rng = np.random.default_rng(0)
    from tbclf.evaluation.bootstrap import _replicate_indices

    strat = _replicate_indices(rng, y, 200, stratified=True)
    plain = _replicate_indices(rng, y, 200, stratified=False)
    assert np.all(y[strat].sum(axis=1) == y.sum())
    assert len(np.unique(y[plain].sum(axis=1))) > 1


def test_one_class_gives_nan_not_a_crash():
    p = np.array([0.2, 0.7, 0.9])
    y = np.array([0, 0, 0])
    res = bootstrap_metrics(p, y, 0.5, n_boot=100)
    assert np.isnan(res["metrics"]["auroc"]["value"])
    assert np.isnan(res["metrics"]["sensitivity"]["value"])
    assert np.isnan(res["metrics"]["sensitivity"]["ci_low"])
    assert res["metrics"]["specificity"]["value"] == pytest.approx(1 / 3)


def test_perfect_separation():
    p = np.array([0.1, 0.2, 0.8, 0.9])
    y = np.array([0, 0, 1, 1])
    res = bootstrap_metrics(p, y, 0.5, n_boot=200)
    for name in METRICS:
        m = res["metrics"][name]
        assert m["value"] == m["ci_low"] == m["ci_high"] == 1.0


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="length"):
        bootstrap_metrics([0.1, 0.2], [0], 0.5)
    with pytest.raises(ValueError, match="0 \\(healthy\\) or 1"):
        bootstrap_metrics([0.1, 0.2], [0, 2], 0.5)
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_metrics([0.1, float("nan")], [0, 1], 0.5)


def test_fast_enough():
    p, y = _scores(5000, 9, decimals=None)
    t0 = time.perf_counter()
    bootstrap_metrics(p, y, 0.5, n_boot=2000)
    assert time.perf_counter() - t0 < 10.0
