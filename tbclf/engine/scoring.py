"""Score a loader with a trained model outside the Trainer: logits per image, optionally with
test-time augmentation, for ensembles and calibration (which need raw scores of several
models on the same images)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from tbclf.models.tta import prob_to_logit, tta_probs


@torch.no_grad()
def score_loader(
    model: nn.Module, loader: Any, tta: bool = False, calibrated: bool = False
) -> dict[str, np.ndarray]:
    """{"id", "source", "logit", "prob", "label"} arrays over the loader, in its order.

    The logits are the network's own, or with ``calibrated`` the ones the model reports
    (divided by its fitted temperature), so P(TB) is what `predict` would write.
    """
    model.eval()
    device = next(model.parameters()).device
    ids: list[str] = []
    sources: list[str] = []
    logits: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for batch in loader:
        images = batch["image"].to(device)
        if calibrated and hasattr(model, "calibrated_logits"):
            z = _reported(model, images, tta)
        elif tta:
            z = prob_to_logit(tta_probs(model, images).double())
        else:
            z = model(images).double()
        n = z.numel()
        ids += [str(i) for i in batch["id"]]
        sources += [str(s) for s in batch.get("source", [""] * n)]
        logits.append(z.cpu().numpy())
        label = batch.get("label")
        labels.append(np.full(n, np.nan) if label is None else label.double().cpu().numpy())
    z = np.concatenate(logits) if logits else np.array([], dtype=np.float64)
    return {
        "id": np.array(ids, dtype=str),
        "source": np.array(sources, dtype=str),
        "logit": z,
        "prob": 1.0 / (1.0 + np.exp(-z)),
        "label": np.concatenate(labels) if labels else np.array([], dtype=np.float64),
    }


def _reported(model: nn.Module, images: torch.Tensor, tta: bool) -> torch.Tensor:
    """The model's own reported logits (temperature, and TTA when asked), as `predict` does."""
    was = getattr(model, "tta", False)
    model.tta = tta
    try:
        return model.calibrated_logits(images).double()
    finally:
        model.tta = was


def average_scores(scores: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The ensemble of several models' scores on the same images: probabilities averaged
    (the logit is that of the mean probability)."""
    if not scores:
        raise ValueError("average_scores needs at least one model's scores")
    first = scores[0]
    for other in scores[1:]:
        if not np.array_equal(other["id"], first["id"]):
            raise ValueError("the models scored different images (or in another order)")
    prob = np.mean([s["prob"] for s in scores], axis=0)
    clipped = np.clip(prob, 1e-7, 1 - 1e-7)
    return {**first, "prob": prob, "logit": np.log(clipped / (1 - clipped))}
