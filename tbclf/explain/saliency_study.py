"""A saliency study of one checkpoint, as `tbclf saliency` runs it: the images matched to
their boxes, every map scored, the outputs written and a one-line verdict logged."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tbclf.data.layouts import discover_predict
from tbclf.explain.boxes import match_boxes, read_boxes
from tbclf.explain.saliency import run_saliency
from tbclf.explain.saliency_report import write_outputs
from tbclf.models.loading import load_classifier


def saliency_study(
    ckpt_path: str | Path,
    images: str | Path,
    boxes: str | Path,
    out: str | Path,
    *,
    unmatched: str = "error",
    max_images: int | None = None,
    per_row: int = 4,
    seed: int = 0,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    **options: Any,
) -> dict[str, Any]:
    """Score the checkpoint's maps on the first ``max_images`` boxed images of ``images`` and
    write the summary into ``out``; ``options`` are :func:`run_saliency`'s (methods,
    baselines, batch sizes, ROAD, tta, max_pixels)."""
    model = load_classifier(ckpt_path)
    matched = match_boxes(discover_predict(Path(images)), read_boxes(boxes), unmatched)
    pairs = matched.pairs[:max_images] if max_images else matched.pairs
    run = run_saliency(model, pairs, seed=seed, log=log, **options)
    summary = write_outputs(
        run,
        out,
        per_row=per_row,
        seed=seed,
        overwrite=overwrite,
        extra={
            "checkpoint": str(ckpt_path),
            "model": type(model).__name__,
            "skipped_without_boxes": matched.without_boxes,
            "skipped_without_image": matched.without_image,
        },
    )
    sens = summary["sensitivity"]
    log(
        f"{summary['n_images']} images scored; sensitivity {sens['tp']}/{sens['n']}; "
        f"written to {Path(out) / 'summary.md'}"
    )
    return summary
