from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tbclf.evaluation.threshold import pick_threshold, sensitivity_specificity


def test_sensitivity_strategy_picks_highest_threshold_reaching_target():
    # 10 positives with distinct scores; 90% sensitivity = 9 of 10 at or above the threshold.
    pos = np.linspace(0.1, 1.0, 10)
    neg = np.linspace(0.0, 0.5, 7)
    probs = np.concatenate([pos, neg])
    labels = np.r_[np.ones(10), np.zeros(7)]
    t = pick_threshold(probs, labels, "sensitivity", 0.9)
    assert t == pytest.approx(0.2)  # 9th highest positive score
    sens, _ = sensitivity_specificity(probs, labels, t)
    assert sens == pytest.approx(0.9)
    # any higher threshold misses the target
    sens_above, _ = sensitivity_specificity(probs, labels, np.nextafter(t, 1.0))
    assert sens_above < 0.9


def test_sensitivity_strategy_target_one_and_ties():
    probs = np.array([0.9, 0.7, 0.7, 0.7, 0.2, 0.1, 0.8])
    labels = np.array([1, 1, 1, 1, 0, 0, 0])
    assert pick_threshold(probs, labels, "sensitivity", 1.0) == pytest.approx(0.7)
    # target 0.5 -> k=2: the 2nd highest positive is 0.7 (tied); all three ties count
    t = pick_threshold(probs, labels, "sensitivity", 0.5)
    assert t == pytest.approx(0.7)
    assert sensitivity_specificity(probs, labels, t)[0] == 1.0


def test_youden_on_separable_and_overlapping_scores():
    probs = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8])
    labels = np.array([0, 0, 0, 1, 1, 1])
    assert pick_threshold(probs, labels, "youden") == pytest.approx(0.6)
    probs = np.array([0.1, 0.4, 0.35, 0.8, 0.3, 0.9])
    labels = np.array([0, 0, 1, 1, 0, 1])
    t = pick_threshold(probs, labels, "youden")
    sens, spec = sensitivity_specificity(probs, labels, t)
    # brute force over every candidate threshold
    best = max(sum(sensitivity_specificity(probs, labels, c)) for c in probs)
    assert sens + spec == pytest.approx(best)


def test_one_class_returns_default_with_warning():
    with pytest.warns(RuntimeWarning, match="both classes"):
        assert pick_threshold([0.2, 0.9], [1, 1]) == 0.5
    with pytest.warns(RuntimeWarning):
        assert pick_threshold([], [], "youden") == 0.5


def test_nan_labels_are_ignored_and_bad_input_rejected():
    probs = [0.9, 0.8, 0.1, 0.05]
    assert pick_threshold(probs, [1, np.nan, 0, np.nan], "sensitivity", 1.0) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="strategy"):
        pick_threshold(probs, [1, 0, 0, 1], "f1")
    with pytest.raises(ValueError, match="target_sensitivity"):
        pick_threshold(probs, [1, 0, 0, 1], "sensitivity", 0.0)
    with pytest.raises(ValueError, match="0/1"):
        pick_threshold(probs, [2, 0, 0, 1])
    with pytest.raises(ValueError, match="length"):
        pick_threshold(probs, [1, 0])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0, 1, width=32), min_size=1, max_size=40),
    st.lists(st.floats(0, 1, width=32), min_size=1, max_size=40),
    st.floats(0.05, 1.0),
)
def test_sensitivity_target_is_met_and_threshold_is_highest(pos, neg, target):
    probs = np.array(pos + neg, dtype=np.float32)
    labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    t = pick_threshold(probs, labels, "sensitivity", target)
    sens, _ = sensitivity_specificity(probs, labels, t)
    assert sens >= target - 1e-9
    higher = probs[probs > t]
    if higher.size:  # the next higher candidate threshold no longer reaches the target
        assert sensitivity_specificity(probs, labels, higher.min())[0] < target - 1e-9
