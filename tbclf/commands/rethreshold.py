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
from tbclf.engine.site_threshold import rethreshold_checkpoint
from tbclf.errors import ConfigError

# Below this many images of a class the chosen point is mostly noise: say so.
FEW = 20


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
    if out.exists() and out.resolve() == src.resolve():
        raise ConfigError(f"--out {out} is the input checkpoint; write the copy elsewhere.")
    if out.exists() and not args.overwrite:
        raise ConfigError(f"{out} already exists; pass --overwrite true to replace it.")
    result = rethreshold_checkpoint(
        src, Path(args.val_root), out, args.strategy, args.target_sensitivity, args.calibrate,
        args.batch_size,
    )  # fmt: skip
    old_threshold, threshold = result["old_threshold"], result["threshold"]
    n_tb, n_healthy = result["n_tb"], result["n_healthy"]
    old_sens, sens = result["site_sensitivity_before"], result["site_sensitivity"]
    old_spec, spec = result["site_specificity_before"], result["site_specificity"]
    print(
        f"{out}: threshold {old_threshold:.4f} -> {threshold:.4f} on {n_tb} TB / {n_healthy} "
        f"healthy images of {args.val_root}; there sensitivity {old_sens:.2f} -> {sens:.2f}, "
        f"specificity {old_spec:.2f} -> {spec:.2f} (these are the images it was chosen on: "
        "confirm it on other images of the site with `tbclf test` or `tbclf report`)."
    )
    if min(n_tb, n_healthy) < FEW:
        print(
            f"note: fewer than {FEW} images of a class: the sensitivity this threshold gives on "
            "the site's next patients is uncertain (95% interval of the one seen here: "
            f"{result['sensitivity_ci'][0]:.2f}-{result['sensitivity_ci'][1]:.2f})."
        )
    return result
