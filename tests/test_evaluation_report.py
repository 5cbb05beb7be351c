"""Evaluation report: files, keys and numbers; per-source metrics; CSV entry point; callback."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tbclf.errors import ConfigError, DataError
from tbclf.evaluation.figures import calibration_summary, report_figures
from tbclf.evaluation.intervals import proportion_ci
from tbclf.evaluation.metrics import METRICS, point_metrics
from tbclf.evaluation.report import implied_threshold, report_from_csv, write_report
from tbclf.evaluation.roc import average_precision

FIGS = ("roc", "precision_recall", "confusion_matrix", "score_histogram", "calibration")


def _data(n: int = 120, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.array([0, 1] * (n // 2))
    p = np.clip(0.25 + 0.5 * y + rng.normal(0, 0.2, n), 0, 1)
    sources = np.where(np.arange(n) % 3 == 0, "montgomery", "shenzhen")
    ids = [f"img_{i:03d}" for i in range(n)]
    return p, y, sources, ids


def test_write_report_files_keys_and_values(tmp_path):
    p, y, sources, ids = _data()
    info = {"strategy": "sensitivity", "target_sensitivity": 0.9, "source": "validation"}
    res = write_report(
        p, y, 0.37, tmp_path / "rep", sources=sources, ids=ids, threshold_info=info, n_boot=300
    )
    out = tmp_path / "rep"
    for name in FIGS:
        assert (out / f"{name}.png").stat().st_size > 5000, name
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["threshold"] == pytest.approx(0.37)
    assert on_disk["threshold_info"] == info
    assert set(on_disk["metrics"]) == set(METRICS)
    ref = point_metrics(p, y, 0.37)
    for name in METRICS:
        m = on_disk["metrics"][name]
        assert m["value"] == pytest.approx(ref[name]), name
        assert m["ci_low"] <= m["value"] <= m["ci_high"], name
    c = on_disk["confusion"]
    pred = p >= 0.37
    assert c["tp"] == int(np.sum(pred & (y == 1))) and c["fn"] == int(np.sum(~pred & (y == 1)))
    assert on_disk["n"] == 120 and on_disk["prevalence"] == pytest.approx(0.5)
    assert on_disk["average_precision"] == pytest.approx(average_precision(p, y))
    assert set(on_disk["figures"]) == set(FIGS)
    # WHO flags follow the point estimates
    who = on_disk["who_triage"]
    assert who["sensitivity_met"] == (ref["sensitivity"] >= 0.9)
    assert who["specificity_met"] == (ref["specificity"] >= 0.7)
    assert who["met"] == (who["sensitivity_met"] and who["specificity_met"])
    # per source, with the right subsets
    assert set(on_disk["per_source"]) == {"montgomery", "shenzhen"}
    sel = sources == "montgomery"
    ps = on_disk["per_source"]["montgomery"]
    assert ps["n"] == int(sel.sum())
    assert ps["metrics"]["sensitivity"]["value"] == pytest.approx(
        point_metrics(p[sel], y[sel], 0.37)["sensitivity"]
    )
    # predictions.csv: one row per image, decision with >=
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == 120 and rows[0]["ID"] == "img_000"
    assert [int(r["DECISION"]) for r in rows] == [int(v) for v in pred]
    assert {r["SOURCE"] for r in rows} == {"montgomery", "shenzhen"}
    # the plain-language summary
    md = (out / "report.md").read_text()
    assert "At threshold 0.37, chosen on the validation set for 90% sensitivity" in md
    sens = on_disk["metrics"]["sensitivity"]
    assert f"Sensitivity {sens['value']:.2f} [{sens['ci_low']:.2f}, {sens['ci_high']:.2f}]" in md
    assert "WHO target for a TB triage test" in md
    assert ("**met**" in md) == who["met"]
    assert "never used to choose it" in md
    for name in FIGS:
        assert f"]({name}.png)" in md
    assert "## By source" in md
    assert res["metrics"]["auroc"]["value"] == pytest.approx(ref["auroc"])


def test_who_target_met_and_not_met(tmp_path):
    # 10 TB all found; 10 healthy, 8 cleared: sens 1.0, spec 0.8 -> met
    p = np.r_[np.linspace(0.6, 0.9, 10), np.linspace(0.1, 0.4, 8), 0.7, 0.8]
    y = np.r_[np.ones(10), np.zeros(10)]
    res = write_report(p, y, 0.5, tmp_path / "a", n_boot=200)
    assert res["who_triage"]["met"] is True
    assert res["metrics"]["specificity"]["value"] == pytest.approx(0.8)
    # at threshold 0.75 sensitivity drops to 0.5 -> not met
    res = write_report(p, y, 0.75, tmp_path / "b", n_boot=200)
    assert res["who_triage"]["sensitivity_met"] is False
    assert res["who_triage"]["met"] is False
    assert "**not met**" in (tmp_path / "b" / "report.md").read_text()


def test_single_source_has_no_per_source_and_no_ids_no_csv(tmp_path):
    p, y, _, _ = _data(40)
    res = write_report(p, y, 0.5, tmp_path, sources=["x"] * 40, n_boot=100)
    assert "per_source" not in res
    assert not (tmp_path / "predictions.csv").exists()
    md = (tmp_path / "report.md").read_text()
    assert "no record of how it was chosen" in md


def test_refuses_to_overwrite_and_rejects_bad_input(tmp_path):
    p, y, _, _ = _data(40)
    write_report(p, y, 0.5, tmp_path, n_boot=50)
    with pytest.raises(ConfigError, match="overwrite"):
        write_report(p, y, 0.5, tmp_path, n_boot=50)
    write_report(p, y, 0.5, tmp_path, n_boot=50, overwrite=True)
    y_nan = y.astype(float)
    y_nan[0] = np.nan
    with pytest.raises(DataError, match="labels"):
        write_report(p, y_nan, 0.5, tmp_path / "x", n_boot=50)
    with pytest.raises(DataError, match="ids"):
        write_report(p, y, 0.5, tmp_path / "y", ids=["a"], n_boot=50)


def test_one_class_report_skips_curves(tmp_path):
    p = np.array([0.1, 0.6, 0.3])
    y = np.array([0, 0, 0])
    res = write_report(p, y, 0.5, tmp_path, n_boot=50)
    assert "roc" not in res["figures"] and "confusion_matrix" in res["figures"]
    assert res["metrics"]["auroc"]["value"] is not None  # NaN in memory
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"]["auroc"]["value"] is None
    assert set(report_figures(p, y, 0.5)) == {"confusion_matrix", "score_histogram", "calibration"}


def test_calibration_numbers():
    p = np.array([0.05, 0.05, 0.95, 0.95])
    y = np.array([0, 1, 1, 1])
    cal = calibration_summary(p, y, n_bins=10)
    assert cal["brier"] == pytest.approx(np.mean((p - y) ** 2))
    # bin 0: mean 0.05, frac 0.5; bin 9: mean 0.95, frac 1.0 -> ECE = .5*.45 + .5*.05
    assert cal["ece"] == pytest.approx(0.5 * 0.45 + 0.5 * 0.05)
    assert sum(b["n"] for b in cal["bins"]) == 4


def test_on_figure_receives_every_figure(tmp_path):
    p, y, _, _ = _data(40)
    seen = []
    write_report(p, y, 0.5, tmp_path, n_boot=50, on_figure=lambda n, f: seen.append(n))
    assert sorted(seen) == sorted(FIGS)


# --------------------------------------------------------------------------- CSV entry point


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_implied_threshold():
    p = np.array([0.1, 0.3, 0.45, 0.8])
    assert implied_threshold(p, np.array([0, 0, 0, 1])) == 0.5
    assert implied_threshold(p, np.array([0, 1, 1, 1])) == pytest.approx(0.3)
    t = implied_threshold(p, np.array([0, 0, 0, 0]))
    assert t > 0.8 or t == 0.5
    assert implied_threshold(np.array([0.6, 0.7]), np.array([0, 0])) > 0.7
    with pytest.raises(DataError, match="one threshold"):
        implied_threshold(p, np.array([0, 1, 0, 1]))


def test_report_from_csv_with_true_labels_and_implied_threshold(tmp_path):
    p, y, _, ids = _data(60)
    thr = 0.31
    rows = [[i, f"{v:.6f}", int(v >= thr), t] for i, v, t in zip(ids, p, y, strict=True)]
    csv_path = _write_csv(
        tmp_path / "predictions.csv", ["ID", "LABEL", "DECISION", "TRUE_LABEL"], rows
    )
    res = report_from_csv(csv_path, tmp_path / "rep", n_boot=100)
    decided = np.array([r[2] for r in rows])
    ref = point_metrics(np.round(p, 6), y, res["threshold"])
    assert res["metrics"]["sensitivity"]["value"] == pytest.approx(ref["sensitivity"])
    assert res["confusion"]["tp"] == int(np.sum((decided == 1) & (y == 1)))
    assert res["confusion"]["fp"] == int(np.sum((decided == 1) & (y == 0)))
    assert res["threshold_info"]["strategy"] == "inferred"
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "inferred from the DECISION column" in md and "stored in the checkpoint" not in md
    assert "played no part in training" not in md  # a CSV does not know that
    assert "not recorded" in md


def test_report_from_csv_with_zindi_labels_and_explicit_threshold(tmp_path):
    p, y, _, ids = _data(40)
    pred = _write_csv(
        tmp_path / "pred.csv",
        ["ID", "LABEL", "DECISION"],
        [[i, f"{v:.6f}", int(v >= 0.5)] for i, v in zip(ids, p, strict=True)],
    )
    # the labels file may hold more images than were predicted, in another order
    extra = [["other_1", 1], ["other_2", 0]]
    labels = _write_csv(
        tmp_path / "Train.csv",
        ["ID", "LABEL"],
        extra + [[i, t] for i, t in reversed(list(zip(ids, y, strict=True)))],
    )
    res = report_from_csv(pred, tmp_path / "rep", threshold=0.6, labels_csv=labels, n_boot=100)
    assert res["threshold"] == pytest.approx(0.6)
    ref = point_metrics(np.round(p, 6), y, 0.6)
    assert res["metrics"]["specificity"]["value"] == pytest.approx(ref["specificity"])
    assert res["n"] == 40


def test_report_from_csv_errors(tmp_path):
    pred = _write_csv(
        tmp_path / "pred.csv", ["ID", "LABEL", "DECISION"], [["a", "0.2", 0], ["b", "0.9", 1]]
    )
    with pytest.raises(DataError, match="TRUE_LABEL"):
        report_from_csv(pred, tmp_path / "r1")
    labels = _write_csv(tmp_path / "labels.csv", ["ID", "LABEL"], [["a", 0]])
    with pytest.raises(DataError, match="no label for 1"):
        report_from_csv(pred, tmp_path / "r2", labels_csv=labels)
    bad = _write_csv(tmp_path / "bad.csv", ["ID", "LABEL"], [["a", "high"]])
    with pytest.raises(DataError, match="not a number"):
        report_from_csv(bad, tmp_path / "r3", labels_csv=labels)
    with pytest.raises(DataError, match="no ID column"):
        report_from_csv(_write_csv(tmp_path / "x.csv", ["id", "p"], [["a", 1]]), tmp_path / "r4")


def test_small_groups_get_intervals_that_do_not_collapse(tmp_path):
    # Shenzhen-like: 11 of 11 healthy cleared; Montgomery-like: 0 of 2 TB found
    p = np.r_[np.full(11, 0.1), 0.9, 0.8, 0.2, 0.3, np.full(6, 0.7), np.full(6, 0.2)]
    y = np.r_[np.zeros(11), 1, 1, 1, 1, np.ones(6), np.zeros(6)]
    src = ["shenzhen"] * 11 + ["shenzhen"] * 2 + ["montgomery"] * 2 + ["other"] * 12
    res = write_report(p, y, 0.5, tmp_path, sources=src, n_boot=200)
    spec = res["per_source"]["shenzhen"]["metrics"]["specificity"]
    assert spec["value"] == 1.0 and (spec["ci_low"], spec["ci_high"]) == proportion_ci(11, 11)
    assert spec["ci_low"] < 0.75
    sens = res["per_source"]["montgomery"]["metrics"]["sensitivity"]
    assert sens["value"] == 0.0 and sens["ci_low"] == 0.0 and sens["ci_high"] > 0.8
    md = (tmp_path / "report.md").read_text()
    assert "[1.00, 1.00]" not in md and "[0.00, 0.00]" not in md


def test_who_sentence_uses_the_exact_lower_bounds(tmp_path):
    # 20 of 20 TB found, 20 of 20 healthy cleared: both lower ends clear the targets
    p = np.r_[np.full(20, 0.9), np.full(20, 0.1)]
    y = np.r_[np.ones(20), np.zeros(20)]
    res = write_report(p, y, 0.5, tmp_path / "a", n_boot=100)
    assert res["metrics"]["sensitivity"]["ci_low"] == proportion_ci(20, 20)[0]
    # 20/20: the exact lower end 0.83 is below 0.90, so the claim is not confirmed
    assert res["who_triage"]["met"] and not res["who_triage"]["met_at_ci_low"]
    md = (tmp_path / "a" / "report.md").read_text()
    assert f"sensitivity {proportion_ci(20, 20)[0]:.2f}" in md and "fall short" in md
    # 100/100: lower ends 0.96 and above
    p = np.r_[np.full(100, 0.9), np.full(100, 0.1)]
    y = np.r_[np.ones(100), np.zeros(100)]
    res = write_report(p, y, 0.5, tmp_path / "b", n_boot=100)
    assert res["who_triage"]["met_at_ci_low"]
    assert "Even the lower ends" in (tmp_path / "b" / "report.md").read_text()


def test_per_view_table_only_with_pa_and_ap(tmp_path):
    p, y, _, _ = _data(60)
    views = ["PA" if i % 4 < 2 else "ap" for i in range(60)]  # both classes in each view
    res = write_report(p, y, 0.5, tmp_path / "a", views=views, n_boot=100)
    assert set(res["per_view"]) == {"PA", "AP"}
    sel = np.array(views) == "PA"
    pa = res["per_view"]["PA"]
    assert pa["n"] == 30
    assert pa["metrics"]["specificity"]["value"] == pytest.approx(
        point_metrics(p[sel], y[sel], 0.5)["specificity"]
    )
    assert "## By view" in (tmp_path / "a" / "report.md").read_text()
    res = write_report(p, y, 0.5, tmp_path / "b", views=["PA"] * 60, n_boot=100)
    assert "per_view" not in res
    assert "## By view" not in (tmp_path / "b" / "report.md").read_text()
    with pytest.raises(DataError, match="views"):
        write_report(p, y, 0.5, tmp_path / "c", views=["PA"], n_boot=100)


@pytest.mark.parametrize(
    ("held_out", "text"),
    [
        (True, "played no part in training"),
        (None, "not recorded"),
        (False, "optimistic"),
    ],
)
def test_training_sentence_says_only_what_is_known(tmp_path, held_out, text):
    p, y, _, _ = _data(40)
    write_report(p, y, 0.5, tmp_path, n_boot=50, held_out=held_out)
    md = (tmp_path / "report.md").read_text()
    assert text in md
    if held_out is not True:
        assert "played no part in training" not in md


# --------------------------------------------------------------------------- the sidecar


def _predict_outputs(tmp_path: Path, p, y, ids, thr: float, sidecar: dict | None) -> Path:
    rows = [[i, f"{v:.6f}", int(v >= thr), t] for i, v, t in zip(ids, p, y, strict=True)]
    csv_path = _write_csv(
        tmp_path / "predictions.csv", ["ID", "LABEL", "DECISION", "TRUE_LABEL"], rows
    )
    if sidecar is not None:
        (tmp_path / "predictions.json").write_text(json.dumps(sidecar))
    return csv_path


SIDECAR = {
    "threshold": 0.3436,
    "threshold_source": {
        "source": "validation",
        "strategy": "sensitivity",
        "target_sensitivity": 0.9,
        "checkpoint": "/runs/x/version_0/checkpoints/best.ckpt",
    },
}


def test_report_uses_the_sidecar_threshold(tmp_path):
    p, y, _, ids = _data(60)
    csv_path = _predict_outputs(tmp_path, p, y, ids, 0.3436, SIDECAR)
    res = report_from_csv(csv_path, tmp_path / "rep", n_boot=100)
    assert res["threshold"] == pytest.approx(0.3436)  # not the inferred lowest TB score
    assert implied_threshold(np.round(p, 6), (p >= 0.3436).astype(int)) != pytest.approx(0.3436)
    assert res["threshold_info"]["strategy"] == "sensitivity"
    assert res["threshold_info"]["from"].endswith("predictions.json")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "chosen on the validation set for 90% sensitivity" in md
    assert "best.ckpt" in md and "inferred" not in md
    # an explicit threshold wins and the report names the recorded one
    res = report_from_csv(csv_path, tmp_path / "rep2", threshold=0.5, n_boot=100)
    assert res["threshold"] == 0.5 and "0.3436" in res["threshold_info"]["description"]


def test_sidecar_that_does_not_fit_is_refused(tmp_path):
    p, y, _, ids = _data(60)
    csv_path = _predict_outputs(tmp_path, p, y, ids, 0.3436, {**SIDECAR, "threshold": 0.6})
    with pytest.raises(DataError, match="do not belong together"):
        report_from_csv(csv_path, tmp_path / "rep", n_boot=100)
    for bad in ("{not json", json.dumps({"threshold": "high"}), json.dumps([1, 2])):
        (tmp_path / "predictions.json").write_text(bad)
        with pytest.raises(DataError, match="predictions.json"):
            report_from_csv(csv_path, tmp_path / "rep", n_boot=100)


def test_sidecar_threshold_on_a_rounded_label_follows_decision(tmp_path):
    # P(TB) 0.34359996 prints as 0.343600 >= 0.3436 but the model decided 0 (it was below)
    ids = ["a", "b", "c", "d"]
    rows = [
        ["a", "0.343600", 0, 0],
        ["b", "0.900000", 1, 1],
        ["c", "0.1", 0, 0],
        ["d", "0.5", 1, 1],
    ]
    csv_path = _write_csv(
        tmp_path / "predictions.csv", ["ID", "LABEL", "DECISION", "TRUE_LABEL"], rows
    )
    (tmp_path / "predictions.json").write_text(json.dumps(SIDECAR))
    res = report_from_csv(csv_path, tmp_path / "rep", n_boot=50)
    assert res["confusion"] == {"tp": 2, "fp": 0, "tn": 2, "fn": 0}
    assert len(ids) == res["n"]
