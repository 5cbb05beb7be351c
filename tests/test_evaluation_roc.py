"""The one ROC: curve points and AUROC against each other and against sklearn/torchmetrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve
from torchmetrics.functional.classification import binary_auroc

from tbclf.evaluation.roc import (
    auroc,
    average_precision,
    operating_points,
    placements,
    pr_curve,
    roc_curve,
)


def _tied(n: int, seed: int, decimals: int = 1):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.round(1 / (1 + np.exp(-(rng.normal(0, 1, n) + 1.2 * (y - 0.5)))), decimals)
    return p, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_curve_and_auroc_agree_with_each_other_and_the_libraries(seed):
    p, y = _tied(300, seed)  # one decimal: heavy ties
    fpr, tpr, thr = roc_curve(p, y)
    # the two implementations against each other: trapezoids under the curve = Mann-Whitney
    assert np.trapezoid(tpr, fpr) == pytest.approx(auroc(p, y), abs=1e-12)
    assert auroc(p, y) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert auroc(p, y) == pytest.approx(binary_auroc(torch.tensor(p), torch.tensor(y)).item(), 1e-6)
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(y, p, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thr[1:], sk_thr[1:])
    assert average_precision(p, y) == pytest.approx(average_precision_score(y, p), abs=1e-12)


def test_operating_points_count_prob_at_or_above_each_threshold():
    p, y = _tied(80, 3, decimals=2)
    thresholds, tp, fp = operating_points(p, y)
    assert np.all(np.diff(thresholds) < 0)  # distinct, descending
    for t, a, b in zip(thresholds, tp, fp, strict=True):
        assert a == np.sum((p >= t) & (y == 1)) and b == np.sum((p >= t) & (y == 0))


def test_pr_curve_ends():
    p = np.array([0.9, 0.8, 0.8, 0.3])
    y = np.array([1, 0, 1, 0])
    prec, rec, thr = pr_curve(p, y)
    assert (prec[0], rec[0]) == (1.0, 0.0) and rec[-1] == 1.0 and prec[-1] == 0.5
    np.testing.assert_allclose(prec[1:], [1.0, 2 / 3, 0.5])
    assert thr[0] == np.inf


def test_placements_are_shares_of_the_other_class_outranked():
    p = np.array([0.9, 0.5, 0.5, 0.2, 0.5])
    pos = np.array([True, True, False, False, False])
    auc, v10, v01 = placements(p, pos)
    # TB 0.9 beats all 3 healthy; TB 0.5 beats 0.2, ties two 0.5s -> (1 + 2 * 0.5) / 3
    np.testing.assert_allclose(v10, [1.0, 2 / 3])
    # healthy 0.5: one TB above, one tied -> 1.5 / 2; healthy 0.2: both above
    np.testing.assert_allclose(v01, [0.75, 1.0, 0.75])
    assert auc == pytest.approx(np.mean(v10)) == pytest.approx(np.mean(v01))


def test_one_class_gives_nan():
    assert np.isnan(auroc([0.1, 0.9], [0, 0]))
    assert np.isnan(auroc([], []))
