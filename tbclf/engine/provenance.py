"""What is known about a model's operating point and inputs, for the files that outlive the run.

The report and the predictions sidecar both state where the threshold came from; they take it
from here so the two never disagree.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

import tbclf
from tbclf.evaluation.operating_point import KEY, OperatingPoint
from tbclf.evaluation.probability import DECISION_RULE


def operating_point_of(
    pl_module: pl.LightningModule, checkpoint: str | None = None
) -> OperatingPoint:
    """The module's operating point (how its threshold was chosen: on validation with its
    strategy and target, or what its checkpoint records, e.g. a site's re-pick), with the
    checkpoint it was read from when known."""
    getter = getattr(pl_module, "operating_point", None)
    if callable(getter):
        op = getter()
    else:  # a bare module with a threshold: nothing records how it was chosen
        op = OperatingPoint(
            threshold=module_threshold(pl_module),
            strategy="unknown",
            target_sensitivity=None,
            source="unknown",
            temperature=float(getattr(pl_module, "temperature", 1.0)),
        )
    return op.with_details(checkpoint=str(checkpoint) if checkpoint else None)


def module_threshold(pl_module: pl.LightningModule) -> float:
    threshold = getattr(pl_module, "threshold", 0.5)
    return float(threshold.item() if hasattr(threshold, "item") else threshold)


def model_record(
    pl_module: pl.LightningModule, checkpoint: str | None, tta: bool
) -> dict[str, Any]:
    """The operating point, TTA, model class, input spec and tbclf version, as JSON-ready
    data (the predictions sidecar's account of the model)."""
    cls = type(pl_module)
    spec = getattr(pl_module, "input_spec", None)
    return {
        KEY: operating_point_of(pl_module, checkpoint).to_dict(),
        "decision_rule": DECISION_RULE,
        "tta": bool(tta),
        "model_class": f"{cls.__module__}.{cls.__qualname__}",
        "input_spec": spec.to_dict() if spec is not None else None,
        # The starting weights (e.g. a chest X-ray pretrained backbone): file and SHA-256.
        "weights_origin": getattr(pl_module, "weights_origin", None),
        "tbclf_version": tbclf.__version__,
    }
