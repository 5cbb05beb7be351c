"""Turn the data contract's (B,1,H,W) [0,1] images into what a network expects.

Living inside the model (buffers, not config) means a checkpoint carries its own normalisation:
predict cannot pair weights with the wrong mean/std or channel count.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class InputAdapter(nn.Module):
    """Expand gray input to ``in_chans`` channels and normalise with fixed mean/std buffers.

    ``mean``/``std`` are per output channel (length 1 or ``in_chans``); ``None`` skips
    normalisation. ``channels_last`` converts the output's memory layout on CUDA only, where it
    speeds up convolutions (on CPU it mostly costs copies).
    """

    def __init__(
        self,
        in_chans: int = 1,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans}")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        self.in_chans = int(in_chans)
        self.channels_last = bool(channels_last)
        self.normalize = mean is not None
        if mean is not None and std is not None:
            mean_t = self._per_channel(mean, "mean")
            std_t = self._per_channel(std, "std")
            if torch.any(std_t <= 0):
                raise ValueError(f"std must be positive, got {list(std)}")
        else:
            mean_t = torch.zeros(1, 1, 1, 1)
            std_t = torch.ones(1, 1, 1, 1)
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def _per_channel(self, values: Sequence[float], what: str) -> torch.Tensor:
        t = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
        if t.numel() not in (1, self.in_chans):
            raise ValueError(f"{what} needs 1 or {self.in_chans} values, got {t.numel()}")
        return t.expand(self.in_chans).clone().view(1, self.in_chans, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, self.in_chans):
            raise ValueError(
                f"expected images shaped (B, 1, H, W) (or (B, {self.in_chans}, H, W)), "
                f"got {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_chans:
            x = x.expand(-1, self.in_chans, -1, -1)
        if self.normalize:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        if self.channels_last and x.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def extra_repr(self) -> str:
        norm = (
            f"mean={[round(v, 4) for v in self.mean.flatten().tolist()]}, "
            f"std={[round(v, 4) for v in self.std.flatten().tolist()]}"
            if self.normalize
            else "no normalisation"
        )
        return f"in_chans={self.in_chans}, {norm}, channels_last={self.channels_last}"


def timm_input_adapter(model: nn.Module, in_chans: int, channels_last: bool) -> InputAdapter:
    """Adapter with the timm model's pretraining mean/std.

    For a 1-channel model (first conv summed over RGB) the RGB means/stds are averaged: the
    closest single-channel match to what the summed filters saw during pretraining.
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    if len(mean) != in_chans:
        mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
    return InputAdapter(in_chans=in_chans, mean=mean, std=std, channels_last=channels_last)
