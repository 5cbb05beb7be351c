"""Test-time augmentation: a small fixed set of views of each image, probabilities averaged.

The views are deterministic (identity, a slight zoom, slight shifts), so TTA scores are
reproducible; borders are replicated, so an image whose content does not change under the
views (a constant image) gets exactly the plain probability.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tbclf.evaluation.probability import reported_probability

# (scale, shift_x, shift_y) in affine_grid units: scale < 1 zooms in; shifts are fractions of
# the half-width (0.06 = 3% of the image side).
DEFAULT_VIEWS: tuple[tuple[float, float, float], ...] = (
    (1.0, 0.0, 0.0),
    (0.95, 0.0, 0.0),
    (1.0, 0.06, 0.0),
    (1.0, -0.06, 0.0),
    (1.0, 0.0, 0.06),
)


def view(images: torch.Tensor, scale: float, dx: float, dy: float) -> torch.Tensor:
    """(B, C, H, W) images resampled by one zoom/shift (identity returns the input).

    The sampling grid is what ``F.affine_grid`` gives for ``[[scale, 0, dx], [0, scale, dy]]``
    (align_corners=False), written with plain arithmetic so the view also exports to ONNX
    (affine_grid has no ONNX form before opset 20; GridSample has one from 16).
    """
    if scale == 1.0 and dx == 0.0 and dy == 0.0:
        return images
    b, _, h, w = images.shape
    xs = (torch.arange(w, dtype=images.dtype, device=images.device) * 2 + 1) / w - 1
    ys = (torch.arange(h, dtype=images.dtype, device=images.device) * 2 + 1) / h - 1
    gx = (xs * scale + dx).view(1, 1, w, 1).expand(b, h, w, 1)
    gy = (ys * scale + dy).view(1, h, 1, 1).expand(b, h, w, 1)
    grid = torch.cat([gx, gy], dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


@torch.no_grad()
def tta_probs(
    model: nn.Module,
    images: torch.Tensor,
    views: tuple[tuple[float, float, float], ...] = DEFAULT_VIEWS,
) -> torch.Tensor:
    """(B,) TB probability (before any temperature) averaged over the views; the model
    returns (B,) logits."""
    if not views:
        raise ValueError("tta_probs needs at least one view")
    probs = [reported_probability(model(view(images, *v))) for v in views]
    return torch.stack(probs).mean(0)


def prob_to_logit(probs: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """The logit of a probability, clipped away from 0 and 1 (for averaged probabilities)."""
    return torch.logit(probs.clamp(eps, 1 - eps))
