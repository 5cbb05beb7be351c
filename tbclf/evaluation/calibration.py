"""Calibration: Brier score, expected calibration error, and temperature scaling.

Temperature scaling divides the logits by one scalar T fitted on validation data by
minimising the negative log-likelihood; it never changes the ranking (AUROC), only how far the
probabilities can be trusted as probabilities. The calibrated probability itself is
:func:`tbclf.evaluation.probability.reported_probability`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

MIN_T, MAX_T = 0.05, 20.0


def _arrays(probs: Sequence[float] | np.ndarray, labels: Sequence[float] | np.ndarray):
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if p.shape != y.shape:
        raise ValueError(f"{p.size} probabilities but {y.size} labels")
    keep = ~np.isnan(y)
    return p[keep], y[keep]


def brier(probs, labels) -> float:
    """Mean squared error of the probabilities (0 is perfect, 0.25 a constant 0.5)."""
    p, y = _arrays(probs, labels)
    return float(np.mean((p - y) ** 2)) if p.size else float("nan")


def ece(probs, labels, n_bins: int = 10) -> float:
    """Expected calibration error: |mean prob - TB rate| per equal-width bin, weighted."""
    p, y = _arrays(probs, labels)
    if p.size == 0:
        return float("nan")
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        inside = bins == b
        if inside.any():
            total += inside.sum() * abs(p[inside].mean() - y[inside].mean())
    return float(total / p.size)


def nll(logits, labels, temperature: float = 1.0) -> float:
    """Mean binary cross-entropy of ``logits / temperature``."""
    z, y = _arrays(logits, labels)
    zt = torch.as_tensor(z / temperature)
    return float(F.binary_cross_entropy_with_logits(zt, torch.as_tensor(y)))


def fit_temperature(logits, labels) -> float:
    """The T > 0 minimising the NLL of ``logits / T`` (LBFGS on log T); 1.0 without both
    classes, since one class alone cannot say how sharp the scores should be."""
    z, y = _arrays(logits, labels)
    if z.size == 0 or y.min() == y.max():
        return 1.0
    zt, yt = torch.as_tensor(z), torch.as_tensor(y)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(zt / log_t.exp(), yt)
        loss.backward()
        return loss

    opt.step(closure)
    return float(np.clip(float(log_t.detach().exp()), MIN_T, MAX_T))


def calibration_metrics(probs, labels, prefix: str = "") -> dict[str, float]:
    """{"<prefix>brier": ..., "<prefix>ece": ...} for a report or metrics.json."""
    return {f"{prefix}brier": brier(probs, labels), f"{prefix}ece": ece(probs, labels)}
