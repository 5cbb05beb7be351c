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

from typing import Any

from tbclf.commands.common import OUT, REPLACE, command_parser
from tbclf.engine.ensemble import group_members
from tbclf.engine.ensemble_run import run_ensemble
from tbclf.errors import ConfigError
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
    return run_ensemble(
        paths,
        args.predict_root,
        out,
        val_root=args.val_root,
        group=args.group,
        tta=args.tta,
        calibrate=args.calibrate,
        report=args.report,
        batch_size=args.batch_size,
    )
