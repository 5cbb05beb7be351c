"""Point metrics against hand counts; metrics with intervals; the F1 bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from tbclf.evaluation.bootstrap import bootstrap_f1, replicate_indices, resampled_counts
from tbclf.evaluation.intervals import proportion_ci
from tbclf.evaluation.metrics import (
    METRICS,
    confusion_counts,
    metrics_with_intervals,
    point_metrics,
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
    for name in ("sensitivity", "specificity", "ppv", "npv", "accuracy", "f1"):
        assert m[name] == pytest.approx(0.5), name
    # pairs (pos > neg): 0.9 beats 4, 0.8 beats 4, 0.4 beats 2, 0.35 beats 2 -> 12 / 16
    assert m["auroc"] == pytest.approx(12 / 16)


def test_threshold_is_inclusive():
    p = np.array([0.5, 0.49])
    y = np.array([1, 0])
    assert confusion_counts(p, y, 0.5) == {"tp": 1, "fp": 0, "tn": 1, "fn": 0}


def test_proportions_get_exact_intervals_from_their_counts():
    p, y = _scores(200, 4)
    res = metrics_with_intervals(p, y, 0.5, n_boot=300)
    c = res["confusion"]
    counts = {
        "sensitivity": (c["tp"], c["tp"] + c["fn"]),
        "specificity": (c["tn"], c["tn"] + c["fp"]),
        "ppv": (c["tp"], c["tp"] + c["fp"]),
        "npv": (c["tn"], c["tn"] + c["fn"]),
        "accuracy": (c["tp"] + c["tn"], 200),
    }
    for name, (k, n) in counts.items():
        m = res["metrics"][name]
        assert m["value"] == pytest.approx(k / n)
        assert (m["ci_low"], m["ci_high"]) == proportion_ci(k, n)
    for name in METRICS:
        m = res["metrics"][name]
        assert m["ci_low"] < m["value"] < m["ci_high"], name
    assert res["intervals"]["f1_bootstrap"]["failed_replicates"] == 0
    assert "Clopper-Pearson" in res["intervals"]["proportions"]


def test_vectorised_counts_equal_a_plain_loop():
    p, y = _scores(80, 3)
    idx = np.random.default_rng(7).integers(0, p.size, size=(25, p.size))
    got = resampled_counts(p >= 0.45, y, idx)
    for r in range(idx.shape[0]):
        ref = confusion_counts(p[idx[r]], y[idx[r]], 0.45)
        assert {k: int(v[r]) for k, v in got.items()} == ref


def test_f1_interval_seeded_and_narrows_with_more_data():
    p, y = _scores(150, 6)
    a = bootstrap_f1(p, y, 0.5, n_boot=300, seed=1)
    assert a == bootstrap_f1(p, y, 0.5, n_boot=300, seed=1)
    assert a != bootstrap_f1(p, y, 0.5, n_boot=300, seed=2)
    big = bootstrap_f1(*_scores(3000, 6), 0.5, n_boot=300)
    assert big["ci_high"] - big["ci_low"] < (a["ci_high"] - a["ci_low"]) / 3


def test_failed_f1_replicates_are_counted_not_dropped_silently():
    # no TB images and nothing called TB: every replicate's F1 is 0 / 0
    res = bootstrap_f1(np.array([0.1, 0.2, 0.3]), np.array([0, 0, 0]), 0.5, n_boot=50)
    assert res["failed"] == 50 and np.isnan(res["ci_low"])
    # plain resampling of a set with one TB image: replicates without it and without TB calls
    p, y = np.array([0.9, 0.1, 0.2, 0.3, 0.4]), np.array([1, 0, 0, 0, 0])
    plain = bootstrap_f1(p, y, 0.5, n_boot=400, stratified=False)
    assert 0 < plain["failed"] < 400


def test_stratified_keeps_prevalence_and_plain_does_not():
    _, y = _scores(60, 8)
    rng = np.random.default_rng(0)
    strat = replicate_indices(rng, y, 200, stratified=True)
    plain = replicate_indices(rng, y, 200, stratified=False)
    assert np.all(y[strat].sum(axis=1) == y.sum())
    assert len(np.unique(y[plain].sum(axis=1))) > 1


def test_one_class_gives_nan_not_a_crash():
    res = metrics_with_intervals(np.array([0.2, 0.7, 0.9]), np.array([0, 0, 0]), 0.5, n_boot=100)
    assert np.isnan(res["metrics"]["auroc"]["value"])
    assert np.isnan(res["metrics"]["sensitivity"]["value"])
    assert np.isnan(res["metrics"]["sensitivity"]["ci_low"])
    assert res["metrics"]["specificity"]["value"] == pytest.approx(1 / 3)


def test_perfect_separation_has_no_zero_width_interval():
    p = np.array([0.1, 0.2, 0.8, 0.9])
    y = np.array([0, 0, 1, 1])
    res = metrics_with_intervals(p, y, 0.5, n_boot=200)
    for name in METRICS:
        m = res["metrics"][name]
        assert m["value"] == m["ci_high"] == 1.0 and m["ci_low"] < 1.0, name
    assert "bound" in res["intervals"]["f1"]  # the bootstrap alone would give [1, 1]


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="length"):
        metrics_with_intervals([0.1, 0.2], [0], 0.5)
    with pytest.raises(ValueError, match="0 \\(healthy\\) or 1"):
        metrics_with_intervals([0.1, 0.2], [0, 2], 0.5)
    with pytest.raises(ValueError, match="NaN"):
        metrics_with_intervals([0.1, float("nan")], [0, 1], 0.5)
