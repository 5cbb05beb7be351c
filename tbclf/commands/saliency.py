"""`tbclf saliency`: where the model looks, scored against radiologists' boxes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tbclf.commands.common import CHECKPOINT, OUT, REPLACE, add_tta, command_parser
from tbclf.data.imageio import DEFAULT_MAX_PIXELS


def main(argv: list[str]) -> dict[str, Any]:
    """Saliency maps of several grad-cam methods and baselines against boxes, with a summary."""
    from tbclf.data.layouts import discover_predict
    from tbclf.explain.boxes import UNMATCHED, match_boxes, read_boxes
    from tbclf.explain.saliency import BASELINES, METHODS, ROAD_PERCENTILES, run_saliency
    from tbclf.explain.saliency_report import write_outputs
    from tbclf.models.loading import load_classifier

    parser = command_parser(
        "saliency",
        "Saliency maps (Grad-CAM, Grad-CAM++, HiResCAM, Score-CAM, EigenCAM) against "
        "radiologists' boxes: proportional energy, pointing game, ROAD faithfulness and "
        "P(TB) per image, summarised with 95% intervals against uniform, central-ellipse, "
        "mean-map and random-weights baselines.",
        required={
            "ckpt_path": CHECKPOINT,
            "images": "folder of images",
            "boxes": "folder of Pascal VOC .xml or a COCO .json",
            "out": OUT,
        },
        overwrite=REPLACE,
    )
    parser.add_argument("--methods", type=list[str], default=list(METHODS), help=", ".join(METHODS))
    parser.add_argument(
        "--baselines", type=list[str], default=list(BASELINES), help=", ".join(BASELINES)
    )
    parser.add_argument(
        "--unmatched",
        type=str,
        default="error",
        help=f"{' or '.join(UNMATCHED)}: images without boxes / boxes without image",
    )
    parser.add_argument("--batch_size", type=int, default=4, help="images per saliency pass")
    parser.add_argument(
        "--scorecam_batch_size", type=int, default=32, help="Score-CAM forward passes per step"
    )
    parser.add_argument(
        "--method_max_images",
        type=dict[str, int],
        default={},
        help='a fixed seeded subset per method, e.g. {"scorecam": 20} (Score-CAM is slow)',
    )
    parser.add_argument("--road", type=bool, default=True, help="compute ROAD faithfulness")
    parser.add_argument(
        "--road_max_images", type=int | None, default=None, help="ROAD on a fixed seeded subset"
    )
    parser.add_argument("--road_percentiles", type=list[int], default=list(ROAD_PERCENTILES))
    parser.add_argument("--per_row", type=int, default=4, help="contact sheets: best/worst shown")
    parser.add_argument("--max_images", type=int | None, default=None, help="first N images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_pixels", type=int, default=DEFAULT_MAX_PIXELS)
    add_tta(parser)
    cfg = parser.parse_args(argv)
    model = load_classifier(cfg.ckpt_path)
    matched = match_boxes(discover_predict(Path(cfg.images)), read_boxes(cfg.boxes), cfg.unmatched)
    pairs = matched.pairs[: cfg.max_images] if cfg.max_images else matched.pairs
    run = run_saliency(
        model,
        pairs,
        methods=cfg.methods,
        baselines=cfg.baselines,
        batch_size=cfg.batch_size,
        scorecam_batch_size=cfg.scorecam_batch_size,
        method_max_images=cfg.method_max_images,
        road=cfg.road,
        road_max_images=cfg.road_max_images,
        road_percentiles=cfg.road_percentiles,
        seed=cfg.seed,
        max_pixels=cfg.max_pixels,
        log=print,
        tta=cfg.tta,
    )
    summary = write_outputs(
        run,
        cfg.out,
        per_row=cfg.per_row,
        seed=cfg.seed,
        overwrite=cfg.overwrite,
        extra={
            "checkpoint": str(cfg.ckpt_path),
            "model": type(model).__name__,
            "skipped_without_boxes": matched.without_boxes,
            "skipped_without_image": matched.without_image,
        },
    )
    sens = summary["sensitivity"]
    print(
        f"{summary['n_images']} images scored; sensitivity {sens['tp']}/{sens['n']}; "
        f"written to {Path(cfg.out) / 'summary.md'}"
    )
    return summary
