"""The CV benchmark's ensemble and nested-selection rows, on made-up fold predictions."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from tbclf.evaluation.roc import auroc

SPEC = importlib.util.spec_from_file_location(
    "cross_validation", Path(__file__).resolve().parents[1] / "benchmarks" / "cross_validation.py"
)
cv = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(cv)


def fake_row(fold: int, seed: int, tag: str = "", temperature: float = 1.0) -> dict:
    rng = np.random.default_rng(seed)
    ids = [f"f{fold}_{i}" for i in range(20)]
    val_ids = [f"v{fold}_{i}" for i in range(12)]
    labels = [i % 2 for i in range(20)]
    val_labels = [float(i % 2) for i in range(12)]
    prob = (0.3 + 0.4 * np.array(labels) * rng.random(20) + 0.2 * rng.random(20)).tolist()
    val_prob = (0.2 + 0.5 * np.array(val_labels) * rng.random(12) + 0.3 * rng.random(12)).tolist()
    return {
        "variant": "mobilenet_ft",
        "preprocessing": "clahe",
        "tag": tag,
        "fold": fold,
        "seconds": 60.0,
        "set": {},
        "score_temperature": temperature,
        "predictions": {
            "id": ids[::-1],  # the test loader's order need not be the scorer's
            "label": labels[::-1],
            "source": ["a"] * 20,
            "prob": prob[::-1],
            "prob_scored": prob,
            "id_scored": ids,
            "val_prob": val_prob,
            "val_id": val_ids,
            "val_label": val_labels,
        },
    }


def test_an_ensemble_row_averages_each_member_as_it_reports_p_tb():
    a, b = fake_row(0, 1, temperature=2.0), fake_row(0, 2, "s7", temperature=0.5)
    sa, sb = cv.fold_scores(a), cv.fold_scores(b)  # mobilenet.yaml calibrates

    def reported(p, t):
        p = np.asarray(p)
        return 1 / (1 + np.exp(-np.log(p / (1 - p)) / t))

    by_id = dict(zip(a["predictions"]["id_scored"], a["predictions"]["prob_scored"], strict=True))
    raw = [by_id[i] for i in sa["test"]["id"]]
    np.testing.assert_allclose(
        sa["test"]["prob"], reported(raw, 2.0), atol=1e-6
    )  # float32, as reported
    both = cv.combine([sa, sb])
    np.testing.assert_allclose(
        both["test"]["prob"], (sa["test"]["prob"] + sb["test"]["prob"]) / 2, atol=1e-6
    )
    assert both["seconds"] == 120.0
    scored = cv.evaluate(both)
    assert scored["test_auroc"] == pytest.approx(
        auroc(both["test"]["prob"].tolist(), both["test"]["label"].tolist())
    )
    with pytest.raises(ValueError, match="different folds"):
        cv.combine([sa, cv.fold_scores(fake_row(1, 3))])


def test_nested_selection_takes_each_folds_best_validation_candidate():
    candidates = {
        "x": [
            {"val_auroc": 0.9, "name": "x0", "fold": 0},
            {"val_auroc": 0.7, "name": "x1", "fold": 1},
            {"val_auroc": 1.0, "name": "x2", "fold": 2},
        ],
        "y": [
            {"val_auroc": 0.8, "name": "y0", "fold": 0},
            {"val_auroc": 0.95, "name": "y1", "fold": 1},
        ],
        "z": [
            {"val_auroc": 0.9, "name": "z0", "fold": 0},
            {"val_auroc": 0.1, "name": "z1", "fold": 1},
        ],
    }  # fold 2 is not finished for y and z: left out
    chosen, picks = cv.select_on_validation(candidates)
    assert picks == ["x", "y"]  # fold 0: x and z tie, the first listed wins
    assert [c["name"] for c in chosen] == ["x0", "y1"]


def test_ensemble_table_has_a_row_per_ensemble_and_the_nested_choice():
    rows = [fake_row(k, 10 * k + s, tag) for k in range(3) for s, tag in ((1, ""), (2, "s7"))]
    text = cv.ensemble_table(
        rows,
        ["mobilenet_ft:clahe,mobilenet_ft+s7:clahe"],
        ["mobilenet_ft:clahe", "mobilenet_ft+s7:clahe"],
    )
    lines = text.splitlines()
    assert lines[2].startswith("| mobilenet_ft:clahe |")
    assert lines[4].startswith("| mobilenet_ft:clahe,mobilenet_ft+s7:clahe |")
    assert lines[5].startswith("| chosen per fold on validation |") and lines[5].count("|") == 10
    with pytest.raises(SystemExit, match="no finished runs"):
        cv.ensemble_table(rows, ["mobilenet_ft:none"], [])
