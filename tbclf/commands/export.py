"""`tbclf export`: a checkpoint as a self-describing ONNX file (optionally also INT8)."""

from __future__ import annotations

from typing import Any

from tbclf.commands.common import CHECKPOINT, command_parser, parsed_options
from tbclf.data.imageio import DEFAULT_MAX_PIXELS


def main(argv: list[str]) -> dict[str, Any]:
    from tbclf import export

    parser = command_parser(
        "export",
        "Write a trained model as ONNX (dynamic batch, normalisation inside, input spec and "
        "threshold in its metadata); --int8 also writes an INT8 model calibrated on the run's "
        "training images, refused when its test AUROC changes by more than 0.01.",
        required={"ckpt_path": CHECKPOINT},
        overwrite="replace an earlier export at --out",
    )
    parser.add_argument(
        "--out", type=str | None, default=None, help="default: RUN/model.onnx (or CKPT.onnx)"
    )
    parser.add_argument("--opset", type=int, default=export.OPSET)
    parser.add_argument("--int8", type=bool, default=False, help="also write OUT.int8.onnx")
    parser.add_argument("--calibration_images", type=int, default=64)
    parser.add_argument("--max_auroc_change", type=float, default=export.MAX_INT8_AUROC_CHANGE)
    parser.add_argument(
        "--tta",
        type=bool,
        default=False,
        help="trace test-time augmentation into the model (P(TB) averaged over 5 fixed views, "
        "as `test --tta true`; 5x the inference cost)",
    )
    parser.add_argument("--check_images", type=int, default=16, help="test images compared")
    parser.add_argument("--max_pixels", type=int, default=DEFAULT_MAX_PIXELS)
    cfg = parsed_options(parser, argv)
    return export.export_checkpoint(cfg.pop("ckpt_path"), cfg.pop("out"), **cfg)
