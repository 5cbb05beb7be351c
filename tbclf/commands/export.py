"""`tbclf export`: a checkpoint as a self-describing ONNX file (optionally also INT8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tbclf.commands.common import CHECKPOINT, command_parser
from tbclf.data.imageio import DEFAULT_MAX_PIXELS


def default_out(ckpt_path: str | Path) -> Path:
    """model.onnx in the checkpoint's run folder, else <checkpoint stem>.onnx beside it."""
    from tbclf.engine.rundir import run_dir_of

    run_dir = run_dir_of(ckpt_path)
    return run_dir / "model.onnx" if run_dir is not None else Path(ckpt_path).with_suffix(".onnx")


def int8_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.int8.onnx")


def main(argv: list[str]) -> dict[str, Any]:
    from tbclf import export
    from tbclf.engine.rundir import run_dir_of
    from tbclf.errors import ConfigError
    from tbclf.models.loading import load_classifier

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
    cfg = parser.parse_args(argv)

    out = Path(cfg.out) if cfg.out else default_out(cfg.ckpt_path)
    export.refuse_existing(out, cfg.overwrite)
    if cfg.int8:
        export.refuse_existing(int8_path(out), cfg.overwrite)
    if cfg.max_auroc_change > export.MAX_INT8_AUROC_CHANGE:
        raise ConfigError(
            f"--max_auroc_change {cfg.max_auroc_change} is above the project's limit of "
            f"{export.MAX_INT8_AUROC_CHANGE}."
        )
    model = load_classifier(cfg.ckpt_path)
    run_dir = run_dir_of(cfg.ckpt_path)
    check = None
    if run_dir is not None and (run_dir / "split.json").is_file() and cfg.check_images > 0:
        try:
            test = export.run_split(run_dir, cfg.max_pixels).get("test", [])
        except ConfigError as error:  # data moved: compare on random images instead
            print(f"note: {error}")
            test = []
        paths = [r.path for r in export._spread(test, cfg.check_images)]
        check = export.prepare_images(model.input_spec, paths, cfg.max_pixels)
    path, diff = export.export_onnx(
        model,
        out,
        run=export.training_run(cfg.ckpt_path),
        check_images=check,
        overwrite=cfg.overwrite,
        opset=cfg.opset,
        tta=cfg.tta,
    )
    what = f"{len(check)} test images" if check is not None and len(check) else "random images"
    print(f"wrote {path} (opset {cfg.opset}); max |P_onnx - P_torch| = {diff:.2e} on {what}")
    result: dict[str, Any] = {"onnx": str(path), "max_prob_diff": diff}
    if cfg.int8:
        if run_dir is None:
            raise ConfigError(
                f"--int8 calibrates on the run's training images, but {cfg.ckpt_path} is not in "
                "a run folder (runs/NAME/version_N/checkpoints/)."
            )
        q_path, q = export.export_int8(
            path,
            int8_path(out),
            run_dir,
            n_calibration=cfg.calibration_images,
            max_change=cfg.max_auroc_change,
            overwrite=cfg.overwrite,
            max_pixels=cfg.max_pixels,
        )
        print(
            f"wrote {q_path}: test AUROC {q.auroc_fp32:.4f} (fp32) -> {q.auroc_int8:.4f} "
            f"(int8), change {q.change:+.4f} on {q.n_test} test images; calibrated on "
            f"{q.n_calibration} training images"
        )
        result.update(int8=str(q_path), auroc_fp32=q.auroc_fp32, auroc_int8=q.auroc_int8)
    return result
