"""`tbclf backbone`: a checkpoint's network without its head, as a .safetensors file."""

from __future__ import annotations

from typing import Any

from tbclf.commands.common import CHECKPOINT, command_parser


def main(argv: list[str]) -> dict[str, Any]:
    """Export the backbone that `--model.init_args.weights` takes."""
    from tbclf.models.backbone_file import DTYPES, export_backbone

    parser = command_parser(
        "backbone",
        "Write a checkpoint's network without its head (e.g. a chest X-ray pretraining run) "
        "as a small .safetensors file; start a model from it with --model.init_args.weights.",
        required={"ckpt_path": CHECKPOINT, "out": "output file (.safetensors)"},
        overwrite="replace --out if it exists",
    )
    parser.add_argument("--dtype", type=str, default="float16", help=f"one of {', '.join(DTYPES)}")
    cfg = parser.parse_args(argv)
    result = export_backbone(cfg.ckpt_path, cfg.out, cfg.dtype, cfg.overwrite)
    print(f"backbone written to {result['path']} ({result['tensors']} tensors, {cfg.dtype})")
    return result
