"""Weight averaging for tbclf models: Lightning's EMA callback, with two fixes that matter
for a thresholded classifier.

- The operating threshold chosen on validation (the ``threshold`` buffer) is not a weight:
  the checkpoint gets the threshold picked on this epoch's averaged-weight predictions, not an
  average of past thresholds.
- Testing a checkpoint in the process that trained it scores the averaged weights (Lightning's
  callback would reload the raw training weights stored beside them).

Use: ``--trainer.callbacks+=tbclf.engine.averaging.EMA --trainer.callbacks.decay 0.97``.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EMAWeightAveraging
from pytorch_lightning.trainer.states import TrainerFn

# Buffers chosen on validation rather than learned: never averaged into a checkpoint.
CHOSEN_BUFFERS = ("threshold", "temperature")


class EMA(EMAWeightAveraging):
    """Exponential moving average of the weights (and BatchNorm statistics), updated every
    optimizer step; validation, checkpoints and the final model use the averaged weights.

    Args:
        decay: weight of the old average per step (0.97 ~ the last 30 steps, two epochs of
            ~250 images at batch 16).
        update_starting_at_epoch: first epoch that updates the average (None = the first).
    """

    def __init__(self, decay: float = 0.97, update_starting_at_epoch: int | None = None) -> None:
        if not 0.0 < decay < 1.0:
            from tbclf.errors import ConfigError

            raise ConfigError(f"EMA decay must be in (0, 1), got {decay}")
        super().__init__(decay=decay, update_starting_at_epoch=update_starting_at_epoch)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        state = checkpoint.get("state_dict", {})
        for name in CHOSEN_BUFFERS:
            if name in state and hasattr(pl_module, name):
                state[name] = getattr(pl_module, name).detach().clone()

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return  # test/predict: "state_dict" (the averaged weights) is already loaded
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
