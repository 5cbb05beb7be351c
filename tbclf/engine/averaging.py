"""Weight averaging for tbclf models: Lightning's EMA and equal-weight (SWA) averaging
callbacks, with two fixes that matter for a thresholded classifier.

- The operating threshold chosen on validation (the ``threshold`` buffer) is not a weight:
  the checkpoint gets the threshold picked on this epoch's averaged-weight predictions, not an
  average of past thresholds.
- Testing a checkpoint in the process that trained it scores the averaged weights (Lightning's
  callback would reload the raw training weights stored beside them).

Use: ``--trainer.callbacks+=tbclf.engine.averaging.EMA --trainer.callbacks.decay 0.97`` or
``--trainer.callbacks+=tbclf.engine.averaging.SWA --trainer.callbacks.start 0.5``.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EMAWeightAveraging
from pytorch_lightning.callbacks.weight_averaging import WeightAveraging
from pytorch_lightning.trainer.states import TrainerFn

from tbclf.errors import ConfigError
from tbclf.models.checkpoint_format import BUFFERS

# Buffers chosen on validation rather than learned: never averaged into a checkpoint.
CHOSEN_BUFFERS = BUFFERS


class _KeepsChosenBuffers(WeightAveraging):
    """The fixes both averages share: chosen buffers stay this epoch's, test scores the average."""

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


class EMA(_KeepsChosenBuffers, EMAWeightAveraging):
    """Exponential moving average of the weights (and BatchNorm statistics), updated every
    optimizer step; validation, checkpoints and the final model use the averaged weights.

    Args:
        decay: weight of the old average per step (0.97 ~ the last 30 steps, two epochs of
            ~250 images at batch 16).
        update_starting_at_epoch: first epoch that updates the average (None = the first).
    """

    def __init__(self, decay: float = 0.97, update_starting_at_epoch: int | None = None) -> None:
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"EMA decay must be in (0, 1), got {decay}")
        super().__init__(decay=decay, update_starting_at_epoch=update_starting_at_epoch)


class SWA(_KeepsChosenBuffers):
    """Stochastic weight averaging: the equal-weight mean of the weights (and BatchNorm
    statistics) at the end of each epoch from `start` on; validation, checkpoints and the final
    model use the mean once it holds at least one epoch, the raw weights before.

    Unlike Lightning's ``StochasticWeightAveraging`` (which swaps the average in only when
    training ends), each validation epoch scores the average, so early stopping, the best
    checkpoint and the operating threshold all see the weights that get saved.

    Args:
        start: first averaged epoch: an epoch index (int >= 0) or a fraction of
            ``trainer.max_epochs`` (float in (0, 1)).
    """

    def __init__(self, start: int | float = 0.5) -> None:
        if isinstance(start, bool) or not (
            (isinstance(start, int) and start >= 0)
            or (isinstance(start, float) and 0.0 < start < 1.0)
        ):
            raise ConfigError(
                f"SWA start must be an epoch index >= 0 or a fraction in (0, 1), got {start!r}"
            )
        super().__init__()  # no avg_fn: AveragedModel's running equal-weight mean
        self.start = start
        self._start_epoch = start if isinstance(start, int) else 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if isinstance(self.start, float):
            max_epochs = trainer.max_epochs
            if max_epochs is None or max_epochs < 0:
                raise ConfigError(
                    "SWA start as a fraction needs a finite trainer.max_epochs; give an epoch "
                    "index instead (--trainer.callbacks.start 5)"
                )
            self._start_epoch = int(self.start * max_epochs)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return False  # the update happens in on_train_batch_end, before validation

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        # The epoch's last batch, not on_train_epoch_end: Lightning validates before that
        # hook, so an epoch-end update would reach validation one epoch late.
        last = batch_idx + 1 >= trainer.num_training_batches
        if last and trainer.current_epoch >= self._start_epoch:
            assert self._average_model is not None
            self._average_model.update_parameters(pl_module)

    @property
    def averaged_epochs(self) -> int:
        """How many epochs the average holds (0 before `start`)."""
        if self._average_model is None:
            return 0
        return int(self._average_model.n_averaged)

    def _holds_average(self) -> bool:
        return self.averaged_epochs > 0

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._holds_average():
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._holds_average():
            super().on_validation_epoch_end(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._holds_average():
            super().on_train_end(trainer, pl_module)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._holds_average():  # before `start` the checkpoint holds the weights validated
            super().on_save_checkpoint(trainer, pl_module, checkpoint)
