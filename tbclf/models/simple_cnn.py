"""The original project's small from-scratch CNN, made configurable.

Kept as a baseline: it shows what transfer learning buys on a few hundred X-rays.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

PADDINGS = ("same", "valid")


class SimpleCNN(nn.Module):
    """conv -> [BatchNorm] -> ReLU -> MaxPool2d(2) blocks, flatten, dense ReLU head, 1 logit.

    With ``adaptive_pool=None`` the feature map is flattened as is (as the original), so the
    first dense layer's size depends on ``image_size``; an int ``adaptive_pool`` first
    average-pools to ``adaptive_pool x adaptive_pool`` so any input size works.
    ``padding`` is ``"same"``/``"valid"`` for all convs or one value per conv.
    """

    def __init__(
        self,
        in_chans: int = 1,
        channels: Sequence[int] = (16, 32, 32, 64),
        kernel_sizes: Sequence[int] = (3, 3, 6, 6),
        padding: str | Sequence[str] = "same",
        batch_norm: bool = False,
        dropout: float = 0.0,
        head: Sequence[int] = (64, 32, 16),
        adaptive_pool: int | None = None,
        image_size: int = 224,
        num_classes: int = 1,
    ) -> None:
        super().__init__()
        channels, kernel_sizes, head = list(channels), list(kernel_sizes), list(head)
        paddings = [padding] * len(channels) if isinstance(padding, str) else list(padding)
        if not channels:
            raise ValueError("channels needs at least one conv block")
        if len(kernel_sizes) != len(channels) or len(paddings) != len(channels):
            raise ValueError(
                f"channels ({len(channels)}), kernel_sizes ({len(kernel_sizes)}) and padding "
                f"({len(paddings)}) need one entry per conv block"
            )
        if any(p not in PADDINGS for p in paddings):
            raise ValueError(f"padding values must be in {PADDINGS}, got {paddings}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if adaptive_pool is not None and adaptive_pool < 1:
            raise ValueError(f"adaptive_pool must be a positive int or None, got {adaptive_pool}")

        layers: list[nn.Module] = []
        prev = in_chans
        for out, k, pad in zip(channels, kernel_sizes, paddings, strict=True):
            if pad == "same" and k % 2 == 0:
                # Even kernel: pad 1 more after than before, as Keras/TF 'same' does; explicit
                # so PyTorch does not warn about (and copy for) asymmetric 'same' padding.
                before, after = (k - 1) // 2, k - 1 - (k - 1) // 2
                layers.append(nn.ZeroPad2d((before, after, before, after)))
                pad = "valid"
            layers.append(nn.Conv2d(prev, out, k, padding=pad, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers += [nn.ReLU(inplace=False), nn.MaxPool2d(2)]
            prev = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(adaptive_pool) if adaptive_pool else nn.Identity()
        self.in_chans = in_chans
        self.image_size = image_size
        self.adaptive_pool = adaptive_pool

        with torch.no_grad():
            dummy = torch.zeros(1, in_chans, image_size, image_size)
            try:
                self.flat_features = int(self.pool(self.features(dummy)).flatten(1).shape[1])
            except RuntimeError:  # a conv or pool ran out of pixels
                self.flat_features = 0
        if self.flat_features == 0:
            raise ValueError(
                f"image_size {image_size} is too small for {len(channels)} conv/pool blocks"
            )

        dense: list[nn.Module] = []
        width = self.flat_features
        for h in head:
            dense += [nn.Linear(width, h), nn.ReLU(inplace=False)]
            if dropout > 0:
                dense.append(nn.Dropout(dropout))
            width = h
        dense.append(nn.Linear(width, num_classes))
        self.head = nn.Sequential(*dense)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, num_classes) logits."""
        x = self.pool(self.features(x)).flatten(1)
        if x.shape[1] != self.flat_features:
            raise ValueError(
                f"SimpleCNN was built for {self.image_size}x{self.image_size} images "
                f"({self.flat_features} features) but got {x.shape[1]} features: set the "
                "model's image_size to the data's image_size, or use adaptive_pool"
            )
        return self.head(x)

    def head_keys(self) -> set[str]:
        """The state-dict keys of the last dense layer (the logits): what a transfer drops."""
        return {f"head.{len(self.head) - 1}.weight", f"head.{len(self.head) - 1}.bias"}

    def target_layer(self) -> nn.Module:
        """The activation after the last conv: the last full-resolution feature map."""
        relus = [m for m in self.features if isinstance(m, nn.ReLU)]
        return relus[-1]
