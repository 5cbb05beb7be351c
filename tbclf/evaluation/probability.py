"""The one P(TB) every tbclf output reports, and the one decision rule.

A model gives a score logit per image (its network's logit, or with test-time augmentation the
logit of the mean probability over the views); the reported probability is
``sigmoid(score / temperature)`` with the temperature fitted on validation (1 = none). Every
consumer (the Trainer's test and predict steps, the predictor for `.onnx` and `.ckpt`, the web
service, export's checks, ensembles, rethreshold, Grad-CAM, saliency, the benchmarks) goes
through :func:`reported_probability`, in float32, the dtype of the networks' logits, of the
ONNX graph and of the stored threshold, and every decision through :func:`decide`: an image
exactly at the threshold gets the same decision from every one of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

DTYPE = torch.float32
DECISION_RULE = "TB (DECISION 1) if LABEL = P(TB) >= threshold"

ArrayLike = torch.Tensor | np.ndarray | Sequence[float] | float


def reported_logit(scores: ArrayLike, temperature: ArrayLike = 1.0) -> torch.Tensor:
    """``score / temperature`` in float32: the logit whose sigmoid tbclf reports (an exported
    ONNX graph ends with this division, so its output is already the reported logit)."""
    z = torch.as_tensor(scores).to(DTYPE)
    t = torch.as_tensor(temperature).to(device=z.device, dtype=DTYPE)
    return z / t


def reported_probability(scores: ArrayLike, temperature: ArrayLike = 1.0) -> torch.Tensor:
    """P(TB) = sigmoid(score / temperature), float32, for score logits of any shape."""
    return torch.sigmoid(reported_logit(scores, temperature))


def decide(prob: ArrayLike, threshold: ArrayLike) -> np.ndarray:
    """1 (TB) where ``prob >= threshold``, else 0 (int64 array; 0-d for a scalar:
    ``int(decide(p, t))``). Compared in float64, which holds every float32 probability and
    stored threshold exactly, so the rule gives the same answer whichever container (tensor,
    array, Python float, a CSV's value) carries the numbers."""
    if isinstance(prob, torch.Tensor):
        prob = prob.detach().cpu().numpy()
    if isinstance(threshold, torch.Tensor):
        threshold = threshold.detach().cpu().numpy()
    p = np.asarray(prob, dtype=np.float64)
    return (p >= np.asarray(threshold, dtype=np.float64)).astype(np.int64)
