"""Lightning's progress bar, counting images while predicting: images/s and the time left."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar


class ImageProgressBar(TQDMProgressBar):
    """The predict bar in images (batches times the batch size), so an archive's run shows
    images per second and its ETA; training and evaluation bars are Lightning's own."""

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_predict_start(trainer, pl_module)
        loaders = trainer.predict_dataloaders
        loader = loaders[0] if isinstance(loaders, list | tuple) and loaders else loaders
        # Lightning rebuilds the loader around a batch sampler that tracks indices.
        sampler = getattr(loader, "batch_sampler", None)
        batch_size = getattr(loader, "batch_size", None) or getattr(sampler, "batch_size", None)
        bar = self.predict_progress_bar
        bar.unit = "img"
        if isinstance(batch_size, int) and batch_size > 1:
            bar.unit_scale = batch_size


def count_images(trainer: pl.Trainer) -> None:
    """Swap Lightning's default bar (when it is on) for :class:`ImageProgressBar`."""
    for i, callback in enumerate(trainer.callbacks):
        if type(callback) is TQDMProgressBar:
            bar = ImageProgressBar(callback.refresh_rate, callback.process_position)
            trainer.callbacks[i] = bar
