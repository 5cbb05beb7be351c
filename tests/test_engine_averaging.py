from __future__ import annotations

import pytest
import torch
from models_fakes import FakeDataModule, tiny_trainer
from pytorch_lightning.callbacks import ModelCheckpoint

from tbclf.engine.averaging import EMA
from tbclf.errors import ConfigError
from tbclf.models import SimpleCNNClassifier
from tbclf.models.loading import load_classifier, read_checkpoint


def test_ema_checkpoint_holds_averaged_weights_and_this_epochs_threshold(tmp_path):
    torch.manual_seed(0)
    model = SimpleCNNClassifier(channels=[8, 16], kernel_sizes=[3, 3], head=[16], image_size=32,
                                lr=3e-3)  # fmt: skip
    ckpt = ModelCheckpoint(dirpath=tmp_path, filename="last")  # the last epoch's weights
    trainer = tiny_trainer(tmp_path, max_epochs=3, enable_checkpointing=True,
                           callbacks=[ckpt, EMA(decay=0.8)])  # fmt: skip
    trainer.fit(model, datamodule=FakeDataModule())
    raw = read_checkpoint(ckpt.best_model_path, cached=False)
    averaged, current = raw["state_dict"], raw["current_model_state"]
    key = next(k for k in averaged if k.endswith("weight"))
    assert not torch.equal(averaged[key], current[key])  # the average differs from the raw
    loaded = load_classifier(ckpt.best_model_path)
    assert torch.equal(loaded.state_dict()[key], averaged[key])
    # The threshold saved is the one validation picked on the averaged model's predictions.
    assert float(averaged["threshold"]) == pytest.approx(trainer.callback_metrics["val/threshold"])
    # Testing in the training process scores the averaged weights, like load_classifier.
    res = trainer.test(model, datamodule=FakeDataModule(), ckpt_path=ckpt.best_model_path,
                       verbose=False)[0]  # fmt: skip
    assert torch.equal(model.state_dict()[key], averaged[key])
    assert 0.0 <= res["test/auroc"] <= 1.0


def test_ema_rejects_a_bad_decay():
    with pytest.raises(ConfigError, match="decay"):
        EMA(decay=1.5)
