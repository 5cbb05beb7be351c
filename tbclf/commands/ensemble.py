"""Predict and test with several checkpoints (or a `tbclf cv` run group): P(TB) averaged.

`tbclf ensemble`: the members score the same images and their reported P(TB) is averaged;
predictions.csv and its sidecar are the ones `predict` writes, and labelled images also get the
report `test` writes.

The ensemble's threshold (and optional temperature) is chosen on the ensemble's own
predictions for labelled images its members never trained on: --val_root, or else the
validation split its members share when they come from run folders with one split (one recipe
fitted with several seeds). For a run group, whose fold models validated on different images,
it is chosen on the group's pooled out-of-fold predictions (each image scored by the one fold
model that never saw it); otherwise it is the members' mean threshold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tbclf.commands.common import OUT, REPLACE, command_parser
from tbclf.data.layouts import discover, discover_predict
from tbclf.engine.ensemble import (
    ensemble_scores,
    group_members,
    load_members,
    oof_scores,
    shared_validation,
)
from tbclf.engine.predictions import write_predictions
from tbclf.errors import ConfigError
from tbclf.evaluation import calibration as cal
from tbclf.evaluation.operating_point import KEY as OPERATING_POINT_KEY
from tbclf.evaluation.operating_point import OperatingPoint, choose_operating_point
from tbclf.evaluation.probability import DECISION_RULE, decide, reported_probability
from tbclf.evaluation.roc import auroc
from tbclf.evaluation.threshold import goal_text
from tbclf.io import check_can_write

OUTPUTS = ("predictions.csv", "predictions.json", "report")


def main(argv: list[str]) -> dict[str, Any]:
    parser = command_parser(
        "ensemble",
        __doc__.splitlines()[0],
        required={
            "predict_root": "images to score (labelled ones also get a report)",
            "out": OUT,
        },  # fmt: skip
        overwrite=REPLACE,
    )
    parser.add_argument("--ckpt_path", type=str, action="append", default=None,
                        help="a member checkpoint (repeat for each model)")  # fmt: skip
    parser.add_argument(
        "--group",
        type=str | None,
        default=None,
        help="a `tbclf cv` run group (the folder with cv.json): its fold models are the members",
    )
    parser.add_argument(
        "--val_root",
        type=str | None,
        default=None,
        help="labelled images the members never trained on: threshold and temperature are "
        "chosen on the ensemble's predictions for them",
    )
    parser.add_argument("--tta", type=bool, default=False, help="test-time augmentation")
    parser.add_argument("--calibrate", type=bool, default=False,
                        help="temperature scaling fitted on --val_root")  # fmt: skip
    parser.add_argument("--report", type=bool, default=True,
                        help="write report/ when every image has a label")  # fmt: skip
    parser.add_argument("--batch_size", type=int, default=16)
    args = parser.parse_args(argv)
    out = check_can_write(args.out, OUTPUTS, args.overwrite)
    paths = [*(args.ckpt_path or []), *(group_members(args.group) if args.group else [])]
    if not paths:
        raise ConfigError("name the members: --ckpt_path A --ckpt_path B, or --group RUN_GROUP")
    models = load_members(paths)
    first = models[0]
    info: dict[str, Any] = {
        "members": [str(p) for p in paths],
        "member_thresholds": [float(m.threshold) for m in models],
        "tta": args.tta,
    }
    temperature = 1.0
    strategy, target = first.threshold_strategy, first.target_sensitivity
    shared = None if args.val_root else shared_validation(paths)
    if args.calibrate and not (args.val_root or shared):
        raise ConfigError(
            "--calibrate needs labelled images no member trained on: pass --val_root (or "
            "members from run folders that share one validation split)"
        )
    if args.val_root or shared:
        if args.val_root:
            records, where = (
                discover(Path(args.val_root)),
                f"the labelled images in {args.val_root}",
            )
            chosen_on = {"val_root": str(args.val_root)}
        else:
            records, split_json = shared
            where = f"the validation split all members held out ({split_json})"
            chosen_on = {"split_file": str(split_json)}
        val = ensemble_scores(models, records, args.tta, args.batch_size)
        if args.calibrate:
            temperature = cal.fit_temperature(val["logit"], val["label"])
        val_prob = reported_probability(val["logit"], temperature).numpy()
        point = choose_operating_point(
            val_prob,
            val["label"],
            strategy,
            target,
            source="ensemble validation",
            description=f"chosen on the ensemble's own predictions for {where}{_goal(first)}",
            temperature=temperature,
            **chosen_on,
        )
        info["val_auroc"] = auroc(val_prob.tolist(), val["label"].tolist())
        info["val"] = {
            **cal.calibration_metrics(val["prob"], val["label"], "before_"),
            **cal.calibration_metrics(val_prob, val["label"], "after_"),
        }
    elif args.group:
        oof = oof_scores(args.group)
        point = choose_operating_point(
            oof["prob"],
            oof["label"],
            strategy,
            target,
            source="out-of-fold",
            description=f"chosen on the pooled out-of-fold predictions of {args.group} (each "
            f"image scored by the fold model that never saw it){_goal(first)}; single models, "
            "not the ensemble: --val_root picks it on the ensemble's own",
            group=str(args.group),
        )
    else:
        point = OperatingPoint(
            threshold=float(np.mean(info["member_thresholds"])),
            strategy=strategy,
            target_sensitivity=target if strategy == "sensitivity" else None,
            source="members",
            description="the mean of the members' validation thresholds (no --val_root given)",
        )
    threshold = point.threshold
    scores = ensemble_scores(models, discover_predict(Path(args.predict_root)), args.tta,
                             args.batch_size)  # fmt: skip
    prob = reported_probability(scores["logit"], point.temperature).numpy()
    rows = [
        (i, float(p), int(decide(p, threshold)), None if np.isnan(y) else int(y))
        for i, p, y in zip(scores["id"], prob, scores["label"], strict=True)
    ]
    record = {
        OPERATING_POINT_KEY: point.to_dict(),
        "decision_rule": DECISION_RULE,
        "model_class": f"ensemble of {len(models)} {type(first).__name__}",
        "input_spec": first.input_spec.to_dict(),
        "ensemble": info,
    }
    path = write_predictions(out / "predictions.csv", rows, record)
    print(f"{len(rows)} images scored by {len(models)} models -> {path}")
    if args.report and all(r[3] is not None for r in rows):
        from tbclf.evaluation.report import report_from_csv

        report_from_csv(path, out / "report", overwrite=True)
        print(f"report written to {out / 'report' / 'report.md'}")
    return {**info, OPERATING_POINT_KEY: point.to_dict()}


def _goal(model: Any) -> str:
    return goal_text(model.threshold_strategy, model.target_sensitivity)
