"""`python -m tbclf eda | report | explain`: the commands that are not a Trainer method."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ActionConfigFile, ArgumentParser

from tbclf.data.datamodule import MODEL_INPUT_KEYS
from tbclf.data.imageio import DEFAULT_MAX_PIXELS
from tbclf.engine.checkpoints import read_checkpoint
from tbclf.errors import ConfigError

# The data options that shape what a model sees; eda takes them like training does.
DATA_OPTIONS: dict[str, tuple[type, Any, str]] = {
    "layout": (str, "auto", "auto, nlm, zindi or folders"),
    "preprocessing": (str, "clahe", "clahe, equalize or none"),
    "clahe_clip_limit": (float, 2.0, "CLAHE clip limit"),
    "clahe_tile_grid": (int, 8, "CLAHE tiles per side"),
    "image_size": (int, 256, "side of the square image the statistics use"),
    "resize": (str, "pad", "pad (keep aspect ratio) or squash"),
    "crop_border": (bool, True, "crop uniform black bands first"),
    "num_workers": (int, 2, "decoding processes"),
    "max_pixels": (int, DEFAULT_MAX_PIXELS, "refuse bigger images"),
}


def _parser(prog: str, description: str) -> ArgumentParser:
    parser = ArgumentParser(
        prog=f"python -m tbclf {prog}", description=description, exit_on_error=True
    )
    parser.add_argument(
        "-c", "--config", action=ActionConfigFile, help="YAML with any of these options"
    )
    return parser


def eda(argv: list[str]) -> dict[str, Any]:
    """Figures, stats.json and summary.md describing a data set."""
    from tbclf.eda.run import run_eda

    parser = _parser(
        "eda",
        "Explore a data set: mean/std images per class, class difference, "
        "contrast and variability, eigen-images, histograms, CLAHE/HE.",
    )
    parser.add_argument("--data.root", type=str, required=True, help="data folder")
    for key, (kind, default, text) in DATA_OPTIONS.items():
        parser.add_argument(f"--data.{key}", type=kind, default=default, help=text)
    parser.add_argument("--out", type=str, required=True, help="output folder")
    parser.add_argument(
        "--max_images",
        type=int | None,
        default=None,
        help="class-balanced random subset of this size",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--overwrite",
        type=bool,
        default=False,
        help="replace the outputs of an earlier run in --out",
    )
    cfg = parser.parse_args(argv)
    data = cfg.data.as_dict()
    stats = run_eda(
        root=data.pop("root"),
        out=cfg.out,
        max_images=cfg.max_images,
        seed=cfg.seed,
        overwrite=cfg.overwrite,
        **data,
    )
    print(f"EDA of {stats.get('n_images', '?')} images written to {Path(cfg.out) / 'summary.md'}")
    return stats


def report(argv: list[str]) -> dict[str, Any]:
    """Evaluation report from a predictions.csv with true labels."""
    from tbclf.evaluation.report import report_from_csv

    parser = _parser(
        "report",
        "Evaluation report (AUROC and operating-point metrics with "
        "bootstrap CIs, ROC/PR, confusion, calibration, per source) from "
        "a predictions.csv that has TRUE_LABEL or a labels CSV.",
    )
    parser.add_argument("--predictions", type=str, required=True, help="predictions.csv")
    parser.add_argument("--out", type=str, required=True, help="output folder")
    parser.add_argument(
        "--labels",
        type=str | None,
        default=None,
        help="CSV with ID,LABEL when predictions.csv has no TRUE_LABEL",
    )
    parser.add_argument(
        "--threshold",
        type=float | None,
        default=None,
        help="default: the threshold the DECISION column implies",
    )
    parser.add_argument("--n_boot", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", type=bool, default=False)
    cfg = parser.parse_args(argv)
    result = report_from_csv(
        cfg.predictions,
        cfg.out,
        threshold=cfg.threshold,
        labels_csv=cfg.labels,
        n_boot=cfg.n_boot,
        seed=cfg.seed,
        overwrite=cfg.overwrite,
    )
    print(f"report written to {Path(cfg.out) / 'report.md'}")
    return result


def load_classifier(ckpt_path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A trained tbclf model and the data settings it was trained with, from its checkpoint."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(f"--ckpt_path {path}: no such file.")
    checkpoint = read_checkpoint(path)
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    class_path = hparams.pop("_class_path", None)
    if not class_path:
        raise ConfigError(
            f"{path} has no model class in its hyperparameters; was it written by "
            "`python -m tbclf fit`?"
        )
    module_name, _, class_name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    hparams.pop("_instantiator", None)
    model = cls(**hparams)
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    settings = {k: data[k] for k in (*MODEL_INPUT_KEYS, "max_pixels") if k in data}
    return model, settings


def explain(argv: list[str]) -> list[dict[str, Any]]:
    """Grad-CAM overlays per image, and a contact sheet when the images carry labels."""
    from tbclf.data.layouts import discover_predict
    from tbclf.explain.gradcam import contact_sheet, explain_images

    parser = _parser(
        "explain",
        "Grad-CAM heatmaps over the X-rays, with P(TB) and the "
        "decision at the checkpoint's threshold.",
    )
    parser.add_argument("--ckpt_path", type=str, required=True, help="a tbclf checkpoint")
    parser.add_argument(
        "--images", type=str, required=True, help="folder of images (any layout) or a Zindi CSV"
    )
    parser.add_argument("--out", type=str, required=True, help="output folder")
    parser.add_argument("--max_images", type=int | None, default=None)
    parser.add_argument(
        "--per_group", type=int, default=4, help="contact sheet: images per group (TP, FP, FN)"
    )
    parser.add_argument("--overwrite", type=bool, default=False)
    cfg = parser.parse_args(argv)
    model, settings = load_classifier(cfg.ckpt_path)
    records = discover_predict(Path(cfg.images))
    results = explain_images(
        model, records, cfg.out, max_images=cfg.max_images, overwrite=cfg.overwrite, **settings
    )
    labelled = [r for r in results if r["label"] is not None]
    if labelled and len({r["label"] for r in labelled}) == 2:
        paths = {rec.id: rec.path for rec in records}
        contact_sheet(
            [r["prob"] for r in labelled],
            [r["label"] for r in labelled],
            [r["id"] for r in labelled],
            {r["id"]: paths[r["id"]] for r in labelled},
            Path(cfg.out) / "contact_sheet.png",
            threshold=float(model.threshold),
            n_per_group=cfg.per_group,
            model=model,
            overwrite=cfg.overwrite,
            **{k: v for k, v in settings.items()},
        )
    print(f"{len(results)} Grad-CAM overlays written to {cfg.out}")
    return results
