"""A callback the DDP CLI test loads into `python -m tbclf` (tests/ on PYTHONPATH).

Each rank writes what it saw to <out>/rank<R>.json: the image indices of every validation and
test epoch's gathered outputs, and a digest of the training augmentation of one fixed image
drawn from its own training stream at the end of fit.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback


class DDPProbe(Callback):
    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.seen: dict[str, list] = {"val": [], "test": [], "augmented": []}

    def _dump(self, trainer: pl.Trainer) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        fn = getattr(trainer.state.fn, "value", trainer.state.fn)
        path = self.out / f"{fn}-rank{trainer.global_rank}.json"
        path.write_text(json.dumps({"world_size": trainer.world_size, **self.seen}))

    # *_end, not *_epoch_end: callbacks' epoch-end hooks run before the module's, which
    # gathers the outputs.
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.seen["val"].append([str(i) for i in pl_module.val_outputs["id"]])

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        train = trainer.datamodule._datasets["train"]
        image = train[0]["image"].numpy().tobytes()  # the rank's augmentation stream, in place
        self.seen["augmented"].append(hashlib.sha256(image).hexdigest())

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._dump(trainer)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seen["test"].append([str(i) for i in pl_module.test_outputs["id"]])
        self._dump(trainer)
