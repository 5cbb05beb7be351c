"""`tbclf ensemble`: average several checkpoints' TB probabilities (optionally with test-time
augmentation) on a folder of images, with the threshold and temperature chosen on the
ensemble's predictions for a labelled validation folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tbclf.commands.common import OUT, REPLACE, command_parser
from tbclf.data.layouts import discover, discover_predict
from tbclf.engine.ensemble import ensemble_scores, load_members, summary
from tbclf.errors import ConfigError
from tbclf.evaluation import calibration as cal
from tbclf.evaluation.roc import auroc
from tbclf.evaluation.threshold import pick_threshold
from tbclf.io import atomic_write_json, check_can_write, write_csv

OUTPUTS = ("predictions.csv", "ensemble.json")


def main(argv: list[str]) -> dict:
    parser = command_parser(
        "ensemble",
        __doc__.splitlines()[0],
        required={"predict_root": "images to score", "out": OUT},
        overwrite=REPLACE,
    )
    parser.add_argument("--ckpt_path", type=str, action="append", required=True,
                        help="a member checkpoint (repeat for each model)")  # fmt: skip
    parser.add_argument(
        "--val_root",
        type=str,
        default=None,
        help="labelled images the members never trained on: threshold and temperature are "
        "chosen on the ensemble's predictions for them",
    )
    parser.add_argument("--tta", type=bool, default=False, help="test-time augmentation")
    parser.add_argument("--calibrate", type=bool, default=False,
                        help="temperature scaling fitted on --val_root")  # fmt: skip
    parser.add_argument("--batch_size", type=int, default=16)
    args = parser.parse_args(argv)
    out = check_can_write(args.out, OUTPUTS, args.overwrite)
    if args.calibrate and not args.val_root:
        raise ConfigError("--calibrate needs --val_root (labelled images to fit it on)")
    models = load_members(args.ckpt_path)
    info = {**summary(models, args.ckpt_path), "tta": args.tta, "temperature": 1.0}
    if args.val_root:
        val = ensemble_scores(models, discover(Path(args.val_root)), args.tta, args.batch_size)
        if args.calibrate:
            info["temperature"] = cal.fit_temperature(val["logit"], val["label"])
        val_prob = cal.apply_temperature(val["logit"], info["temperature"])
        first = models[0]
        info["threshold"] = pick_threshold(
            val_prob, val["label"], first.threshold_strategy, first.target_sensitivity
        )
        info["threshold_from"] = f"ensemble validation predictions on {args.val_root}"
        info["val_auroc"] = auroc(val_prob.tolist(), val["label"].tolist())
        info["val"] = {
            **cal.calibration_metrics(val["prob"], val["label"], "before_"),
            **cal.calibration_metrics(val_prob, val["label"], "after_"),
        }
    else:
        info["threshold"] = float(np.mean(info["member_thresholds"]))
        info["threshold_from"] = "mean of the members' thresholds (no --val_root given)"
    scores = ensemble_scores(models, discover_predict(Path(args.predict_root)), args.tta,
                             args.batch_size)  # fmt: skip
    prob = cal.apply_temperature(scores["logit"], info["temperature"])
    rows = [
        (i, s, f"{p:.6f}", int(p >= info["threshold"]), "" if np.isnan(y) else int(y))
        for i, s, p, y in zip(scores["id"], scores["source"], prob, scores["label"], strict=True)
    ]
    write_csv(out / "predictions.csv", ("id", "source", "prob", "decision", "label"), rows)
    atomic_write_json(out / "ensemble.json", info)
    print(f"{len(rows)} images scored by {len(models)} models -> {out / 'predictions.csv'}")
    return info
