"""A `tbclf ensemble` run: the ensemble's operating point chosen, its images scored and the
files `predict` (and, for labelled images, `test`) write.

The threshold (and optional temperature) is chosen on the ensemble's own predictions for
labelled images its members never trained on (``val_root``, or else the validation split they
share); for a `tbclf cv` run group on its pooled out-of-fold predictions; otherwise it is the
members' mean threshold, because no images are left to choose one on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tbclf.data.layouts import discover, discover_predict
from tbclf.data.records import Record
from tbclf.engine.ensemble import ensemble_scores, load_members, oof_scores, shared_validation
from tbclf.engine.predictions import write_predictions
from tbclf.errors import ConfigError
from tbclf.evaluation import calibration as cal
from tbclf.evaluation.operating_point import KEY as OPERATING_POINT_KEY
from tbclf.evaluation.operating_point import OperatingPoint, choose_operating_point
from tbclf.evaluation.probability import DECISION_RULE, decide, reported_probability
from tbclf.evaluation.report import report_from_csv
from tbclf.evaluation.roc import auroc
from tbclf.evaluation.threshold import goal_text
from tbclf.models.module import TBClassifier


def run_ensemble(
    paths: Sequence[str | Path],
    predict_root: str | Path,
    out: Path,
    *,
    val_root: str | Path | None = None,
    group: str | Path | None = None,
    tta: bool = False,
    calibrate: bool = False,
    report: bool = True,
    batch_size: int = 16,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Score ``predict_root`` with the members at the ensemble's operating point and write
    predictions.csv, its sidecar and (when every image has a label) report/ into ``out``."""
    models = load_members(paths)
    point, info = ensemble_operating_point(
        models, paths, val_root=val_root, group=group, tta=tta, calibrate=calibrate,
        batch_size=batch_size,
    )  # fmt: skip
    scores = ensemble_scores(models, discover_predict(Path(predict_root)), tta, batch_size)
    prob = reported_probability(scores["logit"], point.temperature).numpy()
    rows = [
        (i, float(p), int(decide(p, point.threshold)), None if np.isnan(y) else int(y))
        for i, p, y in zip(scores["id"], prob, scores["label"], strict=True)
    ]
    first = models[0]
    record = {
        OPERATING_POINT_KEY: point.to_dict(),
        "decision_rule": DECISION_RULE,
        "model_class": f"ensemble of {len(models)} {type(first).__name__}",
        "input_spec": first.input_spec.to_dict(),
        "ensemble": info,
    }
    path = write_predictions(out / "predictions.csv", rows, record)
    log(f"{len(rows)} images scored by {len(models)} models -> {path}")
    if report and all(r[3] is not None for r in rows):
        report_from_csv(path, out / "report", overwrite=True)
        log(f"report written to {out / 'report' / 'report.md'}")
    return {**info, OPERATING_POINT_KEY: point.to_dict()}


def ensemble_operating_point(
    models: Sequence[TBClassifier],
    paths: Sequence[str | Path],
    *,
    val_root: str | Path | None = None,
    group: str | Path | None = None,
    tta: bool = False,
    calibrate: bool = False,
    batch_size: int = 16,
) -> tuple[OperatingPoint, dict[str, Any]]:
    """The ensemble's operating point and the facts the sidecar keeps about it (members, their
    thresholds, validation AUROC and calibration)."""
    info: dict[str, Any] = {
        "members": [str(p) for p in paths],
        "member_thresholds": [float(m.threshold) for m in models],
        "tta": tta,
    }
    shared = None if val_root else shared_validation(paths)
    if calibrate and not (val_root or shared):
        raise ConfigError(
            "--calibrate needs labelled images no member trained on: pass --val_root (or "
            "members from run folders that share one validation split)"
        )
    if val_root:
        where = f"the labelled images in {val_root}"
        held_out = (discover(Path(val_root)), where, {"val_root": str(val_root)})
    elif shared:
        records, split_json = shared
        where = f"the validation split all members held out ({split_json})"
        held_out = (records, where, {"split_file": str(split_json)})
    else:
        held_out = None
    if held_out is not None:
        point, val_info = _validation_point(models, *held_out, tta, calibrate, batch_size)
        return point, {**info, **val_info}
    if group:
        return _out_of_fold_point(models[0], group), info
    strategy, target = models[0].threshold_strategy, models[0].target_sensitivity
    point = OperatingPoint(
        threshold=float(np.mean(info["member_thresholds"])),
        strategy=strategy,
        target_sensitivity=target if strategy == "sensitivity" else None,
        source="members",
        description="the mean of the members' validation thresholds (no --val_root given)",
    )
    return point, info


def _validation_point(
    models: Sequence[TBClassifier],
    records: Sequence[Record],
    where: str,
    chosen_on: dict[str, str],
    tta: bool,
    calibrate: bool,
    batch_size: int,
) -> tuple[OperatingPoint, dict[str, Any]]:
    """Chosen on the ensemble's own predictions for held-out labelled images (with the
    temperature fitted there first when ``calibrate``)."""
    first = models[0]
    val = ensemble_scores(models, records, tta, batch_size)
    temperature = cal.fit_temperature(val["logit"], val["label"]) if calibrate else 1.0
    val_prob = reported_probability(val["logit"], temperature).numpy()
    point = choose_operating_point(
        val_prob,
        val["label"],
        first.threshold_strategy,
        first.target_sensitivity,
        source="ensemble validation",
        description=f"chosen on the ensemble's own predictions for {where}{_goal(first)}",
        temperature=temperature,
        **chosen_on,
    )
    info = {
        "val_auroc": auroc(val_prob.tolist(), val["label"].tolist()),
        "val": {
            **cal.calibration_metrics(val["prob"], val["label"], "before_"),
            **cal.calibration_metrics(val_prob, val["label"], "after_"),
        },
    }
    return point, info


def _out_of_fold_point(first: TBClassifier, group: str | Path) -> OperatingPoint:
    """Chosen on a run group's pooled out-of-fold predictions: single fold models, each on the
    images it never saw (the ensemble itself has no unseen images there)."""
    oof = oof_scores(group)
    return choose_operating_point(
        oof["prob"],
        oof["label"],
        first.threshold_strategy,
        first.target_sensitivity,
        source="out-of-fold",
        description=f"chosen on the pooled out-of-fold predictions of {group} (each "
        f"image scored by the fold model that never saw it){_goal(first)}; single models, "
        "not the ensemble: --val_root picks it on the ensemble's own",
        group=str(group),
    )


def _goal(model: TBClassifier) -> str:
    return goal_text(model.threshold_strategy, model.target_sensitivity)
