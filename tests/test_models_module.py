from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from models_fakes import FakeDataModule, FakeImages, tiny_trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from tbclf.errors import ConfigError, DataError
from tbclf.evaluation.threshold import sensitivity_specificity
from tbclf.models import SimpleCNNClassifier, TBClassifier, TimmClassifier
from tbclf.models.backbone import offline_mobilenetv2_weights

METRICS = ("auroc", "accuracy", "sensitivity", "specificity", "f1")


def small_cnn(**kwargs) -> SimpleCNNClassifier:
    args = dict(channels=[8, 16], kernel_sizes=[3, 3], head=[16], image_size=32, lr=3e-3)
    args.update(kwargs)
    return SimpleCNNClassifier(**args)


def test_fit_logs_metrics_picks_threshold_and_checkpoints_it(tmp_path):
    pl.seed_everything(0)
    model = small_cnn(target_sensitivity=0.75, scheduler="cosine")
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/auroc", mode="max")
    trainer = tiny_trainer(
        tmp_path, max_epochs=2, enable_checkpointing=True, callbacks=[ckpt], num_sanity_val_steps=2
    )
    trainer.fit(model, datamodule=FakeDataModule())

    logged = trainer.callback_metrics
    for name in METRICS + ("loss", "threshold"):
        assert f"val/{name}" in logged, name
    assert "train/loss" in logged
    assert 0.0 <= float(logged["val/auroc"]) <= 1.0

    out = model.val_outputs
    assert set(out) == {"id", "source", "view", "logit", "prob", "label"} and len(out["id"]) == 24
    assert out["id"][0] == "img1_000" and set(out["source"]) == {"fake_a", "fake_b"}
    threshold = float(model.threshold)
    assert float(logged["val/threshold"]) == pytest.approx(threshold)
    sens, spec = sensitivity_specificity(out["prob"], out["label"], threshold)
    assert sens >= 0.75  # the operating point reaches the target on validation
    assert float(logged["val/sensitivity"]) == pytest.approx(sens)
    assert float(logged["val/specificity"]) == pytest.approx(spec)

    saved = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=False)
    assert "threshold" in saved["state_dict"]
    assert "input_adapter.mean" in saved["state_dict"]
    restored = SimpleCNNClassifier.load_from_checkpoint(ckpt.best_model_path)
    assert float(restored.threshold) == pytest.approx(float(saved["state_dict"]["threshold"]))


def test_test_metrics_and_predict_use_the_stored_threshold(tmp_path):
    pl.seed_everything(1)
    model = small_cnn()
    trainer = tiny_trainer(tmp_path, max_epochs=1)
    dm = FakeDataModule()
    trainer.fit(model, datamodule=dm)
    model.threshold.fill_(0.37)  # whatever is stored must be used unchanged
    logged = trainer.test(model, datamodule=dm, verbose=False)[0]
    out = model.test_outputs
    assert float(model.threshold) == pytest.approx(0.37)
    assert logged["test/threshold"] == pytest.approx(0.37)
    sens, spec = sensitivity_specificity(out["prob"], out["label"], 0.37)
    assert logged["test/sensitivity"] == pytest.approx(sens)
    assert logged["test/specificity"] == pytest.approx(spec)
    acc = np.mean((out["prob"] >= 0.37) == (out["label"] == 1))
    assert logged["test/accuracy"] == pytest.approx(acc)
    for name in METRICS + ("loss",):
        assert f"test/{name}" in logged

    batches = trainer.predict(model, datamodule=dm)
    first = batches[0]
    assert set(first) == {"id", "source", "view", "prob", "decision", "label"}
    assert first["prob"].shape == (8,) and first["decision"].dtype == torch.int64
    torch.testing.assert_close(first["decision"], (first["prob"] >= 0.37).long())
    assert torch.isnan(first["label"]).all()  # predict images are unlabeled
    probs = torch.cat([b["prob"] for b in batches])
    assert probs.shape == (24,) and ((probs >= 0) & (probs <= 1)).all()


def test_unlabeled_test_set_keeps_outputs_without_metrics(tmp_path):
    model = small_cnn()
    loader = DataLoader(FakeImages(10, labeled=False), batch_size=4)
    trainer = tiny_trainer(tmp_path)
    logged = trainer.test(model, dataloaders=loader, verbose=False)[0]
    assert "test/auroc" not in logged and len(model.test_outputs["prob"]) == 10


def test_one_class_validation_warns_and_logs_nan_auroc(tmp_path):
    model = small_cnn()
    data = FakeImages(8)
    data.labels[:] = 1.0
    trainer = tiny_trainer(tmp_path)
    with pytest.warns(RuntimeWarning, match="both classes"):
        logged = trainer.validate(model, DataLoader(data, batch_size=4), verbose=False)[0]
    assert np.isnan(logged["val/auroc"]) and logged["val/threshold"] == 0.5


def test_timm_classifier_trains_on_cpu_and_checkpoint_loads_without_weights_file(tmp_path):
    pl.seed_everything(0)
    weights = tmp_path / "mnv2.pth"
    weights.write_bytes(offline_mobilenetv2_weights().read_bytes())
    model = TimmClassifier(weights=str(weights), in_chans=1, freeze_epochs=1, pos_weight=2.0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/auroc", mode="max")
    trainer = tiny_trainer(
        tmp_path, max_epochs=2, limit_train_batches=2, enable_checkpointing=True, callbacks=[ckpt]
    )
    trainer.fit(model, datamodule=FakeDataModule())
    assert "val/auroc" in trainer.callback_metrics
    weights.unlink()  # a checkpoint must not need the original weights file (or a download)
    restored = TimmClassifier.load_from_checkpoint(ckpt.best_model_path).eval()
    assert restored.hparams.weights is None and restored.hparams.pretrained is False
    assert model.hparams.weights == str(weights)  # the running model's hparams are untouched
    x = torch.rand(3, 1, 32, 32)
    model.load_state_dict(torch.load(ckpt.best_model_path, weights_only=False)["state_dict"])
    torch.testing.assert_close(restored(x), model.eval()(x))
    assert isinstance(restored.target_layer(), torch.nn.Module)


def test_loss_uses_pos_weight_and_rejects_unlabeled_training_images():
    model = small_cnn(pos_weight=3.0)
    logits, labels = torch.tensor([0.2, -1.0]), torch.tensor([1.0, 0.0])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, labels, pos_weight=torch.tensor(3.0)
    )
    torch.testing.assert_close(model._loss(logits, labels), expected)
    batch = {
        "image": torch.rand(2, 1, 32, 32),
        "label": torch.tensor([1.0, float("nan")]),
        "id": ["a", "b"],
        "source": ["s", "s"],
    }
    with pytest.raises(DataError, match="'b'"):
        model.training_step(batch, 0)


def test_bad_common_options_raise_config_error():
    for kwargs, key in [
        ({"lr": 0}, "lr"),
        ({"scheduler": "step"}, "scheduler"),
        ({"threshold_strategy": "f1"}, "threshold_strategy"),
        ({"target_sensitivity": 1.5}, "target_sensitivity"),
        ({"pos_weight": -1.0}, "pos_weight"),
    ]:
        with pytest.raises(ConfigError, match=key):
            small_cnn(**kwargs)


def test_models_build_from_yaml_in_lightningcli_subclass_mode():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(TBClassifier, "model")
    timm_cfg = parser.parse_string(
        "model:\n"
        "  class_path: tbclf.models.TimmClassifier\n"
        "  init_args: {pretrained: false, in_chans: 1, unfreeze_from: 3, scheduler: plateau}\n"
    )
    model = parser.instantiate_classes(timm_cfg).model
    assert isinstance(model, TimmClassifier) and model.hparams.unfreeze_from == 3
    cnn_cfg = parser.parse_string(
        "model:\n"
        "  class_path: tbclf.models.SimpleCNNClassifier\n"
        "  init_args: {channels: [8, 8], kernel_sizes: [3, 6], head: [4], image_size: 32}\n"
    )
    cnn = parser.instantiate_classes(cnn_cfg).model
    assert cnn.hparams.kernel_sizes == [3, 6] and cnn(torch.rand(1, 1, 32, 32)).shape == (1,)
    with pytest.raises(Exception, match="scheduler"):
        parser.parse_string(
            "model:\n  class_path: tbclf.models.TimmClassifier\n  init_args: {scheduler: step}\n"
        )
