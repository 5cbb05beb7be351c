"""`tbclf explain`: Grad-CAM overlays for a folder of images and a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tbclf.commands.common import CHECKPOINT, OUT, REPLACE, add_tta, command_parser
from tbclf.data.imageio import DEFAULT_MAX_PIXELS
from tbclf.errors import ConfigError


def main(argv: list[str]) -> list[dict[str, Any]]:
    """Grad-CAM overlays per image, and a contact sheet when the images carry labels."""
    from tbclf.data.layouts import discover_predict
    from tbclf.explain.gradcam import contact_sheet, explain_images
    from tbclf.models.loading import load_classifier

    parser = command_parser(
        "explain",
        "Grad-CAM heatmaps over the X-rays, with P(TB) and the "
        "decision at the checkpoint's threshold.",
        required={
            "ckpt_path": CHECKPOINT,
            "images": "folder of images (any layout) or a Zindi CSV",
            "out": OUT,
        },
        overwrite=REPLACE,
    )
    parser.add_argument("--max_images", type=int | None, default=None)
    parser.add_argument(
        "--per_group", type=int, default=4, help="contact sheet: images per group (TP, FP, FN)"
    )
    parser.add_argument("--max_pixels", type=int, default=DEFAULT_MAX_PIXELS)
    add_tta(parser)
    cfg = parser.parse_args(argv)
    images = Path(cfg.images).expanduser()
    if not images.exists():
        raise ConfigError(
            f"--images {images} does not exist: point it at a folder of images, one image or "
            "a Zindi CSV."
        )
    model = load_classifier(cfg.ckpt_path)
    records = discover_predict(images)
    results = explain_images(
        model,
        records,
        cfg.out,
        max_images=cfg.max_images,
        max_pixels=cfg.max_pixels,
        overwrite=cfg.overwrite,
        tta=cfg.tta,
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
            max_pixels=cfg.max_pixels,
            overwrite=cfg.overwrite,
        )
    print(f"{len(results)} Grad-CAM overlays written to {cfg.out}")
    return results
