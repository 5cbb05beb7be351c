"""A copy of a checkpoint with its threshold chosen again on a new site's labelled images.

`tbclf rethreshold` re-picks the threshold (and optionally the temperature) on labelled images
from the site the model will screen.

A threshold chosen on one site's validation images does not transfer to another site, and a
few labelled images of the new site pin it only loosely: docs/results.md and
benchmarks/README.md ("How many images of a new site `tbclf rethreshold` needs") give the
measured figures, so use every labelled image the site has. The weights are untouched. The
new checkpoint records where its threshold came from, so `test`, `predict`, `export` and
`serve` all say so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tbclf.commands.common import CHECKPOINT, command_parser
from tbclf.engine.site_threshold import refuse_out, rethreshold_checkpoint, what_changed


def main(argv: list[str]) -> dict[str, Any]:
    parser = command_parser(
        "rethreshold",
        __doc__.splitlines()[0],
        required={
            "ckpt_path": CHECKPOINT,
            "val_root": "labelled images from the new site (not used for training)",
            "out": "the new checkpoint (.ckpt)",
        },  # fmt: skip
        overwrite="replace an existing --out",
    )
    parser.add_argument("--strategy", type=str | None, default=None,
                        help="sensitivity or youden (default: the model's)")  # fmt: skip
    parser.add_argument("--target_sensitivity", type=float | None, default=None,
                        help="default: the model's")  # fmt: skip
    parser.add_argument("--calibrate", type=bool, default=False,
                        help="also fit the temperature on these images")  # fmt: skip
    parser.add_argument("--batch_size", type=int, default=16)
    args = parser.parse_args(argv)
    src, out = Path(args.ckpt_path), Path(args.out)
    refuse_out(src, out, args.overwrite)
    result = rethreshold_checkpoint(
        src, Path(args.val_root), out, args.strategy, args.target_sensitivity, args.calibrate,
        args.batch_size,
    )  # fmt: skip
    print(what_changed(result, args.val_root))
    return result
