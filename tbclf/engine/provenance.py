"""What is known about a model's threshold and inputs, for the files that outlive the run.

The report and the predictions sidecar both state where the threshold came from; they take it
from here so the two never disagree.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

import tbclf
from tbclf.evaluation.probability import DECISION_RULE


def threshold_info_of(
    pl_module: pl.LightningModule, checkpoint: str | None = None
) -> dict[str, Any]:
    """How the module's threshold was chosen: on validation, with the module's strategy and
    target (its hyperparameters), and the checkpoint it was read from when known; or, for a
    threshold re-picked on a site's images (`tbclf rethreshold`), what the checkpoint records."""
    recorded = getattr(pl_module, "threshold_source", None)
    if recorded:
        return {**recorded, **({"checkpoint": str(checkpoint)} if checkpoint else {})}
    out: dict[str, Any] = {"source": "validation"}
    strategy = getattr(pl_module, "threshold_strategy", None)
    if strategy is not None:
        out["strategy"] = str(strategy)
        if strategy == "sensitivity":
            out["target_sensitivity"] = float(getattr(pl_module, "target_sensitivity", 0.9))
    if checkpoint:
        out["checkpoint"] = str(checkpoint)
    return out


def module_threshold(pl_module: pl.LightningModule) -> float:
    threshold = getattr(pl_module, "threshold", 0.5)
    return float(threshold.item() if hasattr(threshold, "item") else threshold)


def model_record(
    pl_module: pl.LightningModule, checkpoint: str | None, tta: bool
) -> dict[str, Any]:
    """Threshold, its origin, temperature, TTA, model class, input spec and tbclf version, as
    JSON-ready data."""
    cls = type(pl_module)
    spec = getattr(pl_module, "input_spec", None)
    return {
        "threshold": module_threshold(pl_module),
        "threshold_source": threshold_info_of(pl_module, checkpoint),
        "decision_rule": DECISION_RULE,
        "temperature": float(getattr(pl_module, "temperature", 1.0)),
        "tta": bool(tta),
        "model_class": f"{cls.__module__}.{cls.__qualname__}",
        "input_spec": spec.to_dict() if spec is not None else None,
        "tbclf_version": tbclf.__version__,
    }
