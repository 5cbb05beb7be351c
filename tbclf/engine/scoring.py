"""Score a loader with a trained model outside the Trainer: logits per image, optionally with
test-time augmentation, for ensembles and calibration (which need raw scores of several
models on the same images)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from tbclf.evaluation.probability import reported_logit, reported_probability
from tbclf.models.tta import prob_to_logit, tta_probs


@torch.no_grad()
def score_loader(
    model: nn.Module, loader: Any, tta: bool = False, calibrated: bool = False
) -> dict[str, np.ndarray]:
    """{"id", "source", "logit", "prob", "label"} arrays over the loader, in its order.

    The logits are the model's score logits (with ``tta``, of the probability averaged over
    the test-time views), or with ``calibrated`` the ones it reports (divided by its fitted
    temperature), so P(TB) is what `predict` would write.
    """
    model.eval()
    device = next(model.parameters()).device
    temperature = getattr(model, "temperature", 1.0) if calibrated else 1.0
    ids: list[str] = []
    sources: list[str] = []
    logits: list[torch.Tensor] = []
    labels: list[np.ndarray] = []
    for batch in loader:
        z = reported_logit(_score_logits(model, batch["image"].to(device), tta), temperature)
        n = z.numel()
        ids += [str(i) for i in batch["id"]]
        sources += [str(s) for s in batch.get("source", [""] * n)]
        logits.append(z.cpu())
        label = batch.get("label")
        labels.append(np.full(n, np.nan) if label is None else label.double().cpu().numpy())
    z = torch.cat(logits) if logits else torch.zeros(0)
    return {
        "id": np.array(ids, dtype=str),
        "source": np.array(sources, dtype=str),
        "logit": z.numpy(),
        "prob": reported_probability(z).numpy(),
        "label": np.concatenate(labels) if labels else np.array([], dtype=np.float64),
    }


def _score_logits(model: nn.Module, images: torch.Tensor, tta: bool) -> torch.Tensor:
    """A tbclf classifier's score logits; a bare module's logits (for tests and benchmarks)."""
    score = getattr(model, "score_logits", None)
    if score is not None:
        return score(images, tta)
    return prob_to_logit(tta_probs(model, images)) if tta else model(images)


def average_scores(scores: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The ensemble of several models' scores on the same images: probabilities averaged
    (the logit is that of the mean probability)."""
    if not scores:
        raise ValueError("average_scores needs at least one model's scores")
    first = scores[0]
    for other in scores[1:]:
        if not np.array_equal(other["id"], first["id"]):
            raise ValueError("the models scored different images (or in another order)")
    prob = torch.from_numpy(np.stack([s["prob"] for s in scores])).mean(0)
    return {**first, "prob": prob.numpy(), "logit": prob_to_logit(prob).numpy()}
