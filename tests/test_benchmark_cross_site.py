"""The cross-site benchmark's re-thresholding rows, on made-up held-out-site predictions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # cross_site imports cross_validation beside it
SPEC = importlib.util.spec_from_file_location("cross_site", BENCHMARKS / "cross_site.py")
xsite = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(xsite)


def _site(n_pos: int, n_neg: int, gap: float, seed: int = 0) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    probs = np.concatenate([rng.normal(gap, 1, n_pos), rng.normal(0, 1, n_neg)])
    return (1 / (1 + np.exp(-probs))).tolist(), [1] * n_pos + [0] * n_neg


def test_separable_site_keeps_full_specificity_and_near_target_sensitivity():
    probs, labels = _site(60, 60, gap=20.0)
    got = xsite.rethreshold_draws(probs, labels, per_class=20, draws=200)
    assert got["spec_median"] == 1.0 and got["spec_p10"] == 1.0
    # The 90%-sensitivity point of 20 positives, scored on the other 40: near 0.9, never 1.0
    # for every draw (the threshold sits at a drawn positive's score).
    assert 0.75 <= got["sens_median"] <= 1.0
    assert got["sens_p10"] < 1.0


def test_more_images_give_a_steadier_operating_point():
    probs, labels = _site(150, 150, gap=1.5, seed=1)
    few = xsite.rethreshold_draws(probs, labels, per_class=5, draws=400)
    many = xsite.rethreshold_draws(probs, labels, per_class=50, draws=400)
    assert many["sens_p10"] > few["sens_p10"]  # fewer bad draws far below the target
    assert abs(many["sens_median"] - 0.9) < 0.05
    assert few == xsite.rethreshold_draws(probs, labels, per_class=5, draws=400)  # seeded
    strict = xsite.rethreshold_draws(probs, labels, per_class=50, draws=400, target=1.0)
    assert strict["sens_median"] > many["sens_median"]  # a higher aim buys sensitivity
    assert strict["spec_median"] < many["spec_median"]  # with specificity


def test_a_site_too_small_for_the_draw_is_reported_not_guessed():
    probs, labels = _site(7, 30, gap=2.0)
    assert xsite.rethreshold_draws(probs, labels, per_class=4, draws=10) is None
    row = {"variant": "mobilenet_ft", "protocol": "loso", "case": "loso-x",
           "test_sources": ["x"], "test_sensitivity": 0.4, "test_specificity": 0.9,
           "predictions": {"prob": probs, "label": labels}}  # fmt: skip
    table = xsite.rethreshold_table([row, {**row, "protocol": "single"}], [2, 4], draws=20)
    lines = table.splitlines()
    assert len(lines) == 2 + 3  # header, transferred, n=2, n=4: single-source runs left out
    assert "x (7 / 30) | none (the transferred threshold) | 0.40 |" in lines[2]
    assert "| 4 | too few images |" in lines[4]
