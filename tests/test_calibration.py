from __future__ import annotations

import numpy as np
import pytest

from tbclf.evaluation import calibration as cal
from tbclf.evaluation.probability import reported_probability


def overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from sigmoid(z) but scores reported as 3 z: too sharp by T = 3."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
    return 3 * z, y


def test_temperature_fitted_on_validation_lowers_nll_on_held_data():
    val_logits, val_labels = overconfident(400, seed=0)
    held_logits, held_labels = overconfident(400, seed=1)
    t = cal.fit_temperature(val_logits, val_labels)
    assert 2.0 < t < 4.5
    before = cal.nll(held_logits, held_labels)
    after = cal.nll(held_logits, held_labels, t)
    assert after < before - 0.05
    calibrated = reported_probability(held_logits, t).numpy()
    raw = reported_probability(held_logits, 1.0).numpy()
    assert cal.ece(calibrated, held_labels) < cal.ece(raw, held_labels)
    assert cal.brier(calibrated, held_labels) < cal.brier(raw, held_labels)


def test_temperature_keeps_the_ranking_and_is_one_without_both_classes():
    logits, labels = overconfident(100, seed=2)
    t = cal.fit_temperature(logits, labels)
    assert np.array_equal(np.argsort(reported_probability(logits, t).numpy()), np.argsort(logits))
    assert cal.fit_temperature(logits, np.ones_like(labels)) == 1.0


def test_brier_and_ece_by_hand():
    probs, labels = np.array([0.9, 0.2, 0.6, 0.4]), np.array([1.0, 0.0, 0.0, np.nan])
    assert cal.brier(probs, labels) == pytest.approx((0.01 + 0.04 + 0.36) / 3)
    # bins: 0.9 -> bin 9 (|0.9-1|), 0.2 -> bin 2 (|0.2-0|), 0.6 -> bin 6 (|0.6-0|)
    assert cal.ece(probs, labels) == pytest.approx((0.1 + 0.2 + 0.6) / 3)
    assert cal.calibration_metrics(probs, labels, "test/")["test/ece"] == cal.ece(probs, labels)
    with pytest.raises(ValueError):
        cal.brier([0.5], [1.0, 0.0])
