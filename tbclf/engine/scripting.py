"""A Trainer for scripts, benchmarks and notebooks, where the CLI's run folders are not wanted."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl


def quiet_trainer(**overrides: Any) -> pl.Trainer:
    """One device, no logger, no checkpoints, no progress bar or summary, no sanity check;
    ``overrides`` win (e.g. ``callbacks``, ``max_epochs``, ``precision``)."""
    options: dict[str, Any] = {
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        **overrides,
    }
    return pl.Trainer(**options)
