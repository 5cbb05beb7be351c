from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from models_fakes import FakeDataModule, tiny_trainer
from pytorch_lightning.callbacks import ModelCheckpoint

from tbclf.engine.averaging import EMA, SWA
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


def _tiny_cnn() -> SimpleCNNClassifier:
    torch.manual_seed(0)
    return SimpleCNNClassifier(channels=[8, 16], kernel_sizes=[3, 3], head=[16], image_size=32,
                               lr=3e-3)  # fmt: skip


class _EpochWeights(pl.Callback):
    """The raw weights at each epoch's end (validation has swapped them back by then)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seen.append({k: v.detach().clone() for k, v in pl_module.named_parameters()})


def test_swa_checkpoint_is_the_mean_of_the_averaged_epochs(tmp_path):
    model, epochs = _tiny_cnn(), _EpochWeights()
    ckpt = ModelCheckpoint(dirpath=tmp_path, filename="last")
    swa = SWA(start=1)
    trainer = tiny_trainer(tmp_path, max_epochs=4, enable_checkpointing=True,
                           callbacks=[ckpt, swa, epochs])  # fmt: skip
    trainer.fit(model, datamodule=FakeDataModule())
    assert swa.averaged_epochs == 3  # epochs 1, 2, 3
    saved = read_checkpoint(ckpt.best_model_path, cached=False)["state_dict"]
    for name in epochs.seen[0]:
        mean = torch.stack([seen[name] for seen in epochs.seen[1:]]).mean(0)
        assert torch.allclose(saved[name], mean, atol=1e-6), name
        assert not torch.allclose(saved[name], epochs.seen[-1][name])  # not the last epoch's
    # The saved threshold is the one validation picked on the averaged weights.
    assert float(saved["threshold"]) == pytest.approx(trainer.callback_metrics["val/threshold"])
    loaded = load_classifier(ckpt.best_model_path)
    key = next(iter(epochs.seen[0]))
    assert torch.equal(loaded.state_dict()[key], saved[key])
    # After fit the module holds the average too (what a same-process test would score).
    assert torch.equal(model.state_dict()[key], saved[key])


def test_swa_before_its_start_validates_and_saves_the_raw_weights(tmp_path):
    model, epochs = _tiny_cnn(), _EpochWeights()
    ckpt = ModelCheckpoint(dirpath=tmp_path, filename="last")
    swa = SWA(start=5)  # later than max_epochs: never averages
    trainer = tiny_trainer(tmp_path, max_epochs=2, enable_checkpointing=True,
                           callbacks=[ckpt, swa, epochs])  # fmt: skip
    trainer.fit(model, datamodule=FakeDataModule())
    assert swa.averaged_epochs == 0
    raw = read_checkpoint(ckpt.best_model_path, cached=False)
    assert "current_model_state" not in raw
    for name, value in epochs.seen[-1].items():
        assert torch.equal(raw["state_dict"][name], value)  # not the initial weights
        assert torch.equal(model.state_dict()[name], value)


def test_swa_start_as_a_fraction_of_max_epochs(tmp_path):
    swa = SWA(start=0.5)
    trainer = tiny_trainer(tmp_path, max_epochs=4, callbacks=[swa])
    trainer.fit(_tiny_cnn(), datamodule=FakeDataModule())
    assert swa.averaged_epochs == 2  # epochs 2 and 3


@pytest.mark.parametrize("start", [-1, 1.0, 0.0, True, "5"])
def test_swa_rejects_a_bad_start(start):
    with pytest.raises(ConfigError, match="SWA start"):
        SWA(start=start)


@pytest.mark.slow
def test_swa_from_the_command_line_as_the_readme_gives_it(tmp_path):
    from cli_helpers import CONFIGS, make_learnable, run_cli, small_run_args

    make_learnable(tmp_path / "data")
    proc = run_cli(
        ["fit", "--config", str(CONFIGS / "simple_cnn.yaml"),
         *small_run_args(tmp_path / "data", epochs=3),
         "--trainer.callbacks+=tbclf.engine.averaging.SWA", "--trainer.callbacks.start", "1"],
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = tmp_path / "runs" / "simple_cnn" / "version_0"
    raw = read_checkpoint(run_dir / "checkpoints" / "last.ckpt", cached=False)
    assert int(raw["averaging_state"]["n_averaged"]) == 2  # epochs 1 and 2
    config = (run_dir / "config.yaml").read_text()
    assert "tbclf.engine.averaging.SWA" in config and "start: 1" in config
