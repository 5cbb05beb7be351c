"""`tbclf saliency`: where the model looks, scored against radiologists' boxes."""

from __future__ import annotations

from typing import Any

from tbclf.commands.common import CHECKPOINT, OUT, REPLACE, add_tta, command_parser, parsed_options
from tbclf.data.imageio import DEFAULT_MAX_PIXELS


def main(argv: list[str]) -> dict[str, Any]:
    """Saliency maps of several grad-cam methods and baselines against boxes, with a summary."""
    from tbclf.explain.boxes import UNMATCHED
    from tbclf.explain.saliency import BASELINES, METHODS, ROAD_PERCENTILES
    from tbclf.explain.saliency_study import saliency_study

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
    cfg = parsed_options(parser, argv)
    paths = [cfg.pop(name) for name in ("ckpt_path", "images", "boxes", "out")]
    return saliency_study(*paths, **cfg)
