"""The module's accuracy levers: temperature scaling stored in the checkpoint, test-time
augmentation at test/predict, pos_weight from class counts, label smoothing."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from models_fakes import FakeDataModule, FakeImages, tiny_trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from tbclf.errors import ConfigError
from tbclf.evaluation import calibration as cal
from tbclf.evaluation.probability import reported_probability
from tbclf.explain.gradcam import compute_cams
from tbclf.export import onnx_probabilities, ort_session, to_onnx_proto
from tbclf.models import SimpleCNNClassifier
from tbclf.models.loading import load_classifier
from tbclf.models.tta import tta_probs


def small_cnn(**kwargs) -> SimpleCNNClassifier:
    args = dict(channels=[8, 16], kernel_sizes=[3, 3], head=[16], image_size=32, lr=3e-3,
                input_spec={"image_size": 32})  # fmt: skip
    return SimpleCNNClassifier(**{**args, **kwargs})


def fit(tmp_path, model, epochs: int = 4):
    pl.seed_everything(0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last")
    trainer = tiny_trainer(tmp_path, max_epochs=epochs, enable_checkpointing=True,
                           callbacks=[ckpt])  # fmt: skip
    trainer.fit(model, datamodule=FakeDataModule())
    return trainer, ckpt.best_model_path


def test_temperature_is_fitted_on_validation_saved_and_used_everywhere(tmp_path):
    model = small_cnn(calibrate=True)
    trainer, path = fit(tmp_path, model)
    temperature = float(model.temperature)
    val = model.val_outputs
    assert temperature != 1.0
    assert temperature == pytest.approx(cal.fit_temperature(val["logit"], val["label"]), rel=1e-5)
    # The reported probabilities are the calibrated ones, and the threshold was picked on them.
    assert np.allclose(
        val["prob"], reported_probability(val["logit"], temperature).numpy(), atol=1e-6
    )
    loaded = load_classifier(path)
    assert float(loaded.temperature) == pytest.approx(temperature)
    images = FakeImages(8, seed=5).images
    with torch.no_grad():
        raw = loaded(images)
        reported = torch.sigmoid(loaded.calibrated_logits(images))
    assert torch.allclose(reported, torch.sigmoid(raw / temperature))
    preds = trainer.predict(loaded, dataloaders=DataLoader(FakeImages(8, seed=5), batch_size=4))
    assert torch.allclose(torch.cat([p["prob"] for p in preds]), reported, atol=1e-6)
    _, cam_probs = compute_cams(loaded, images)  # Grad-CAM's P(TB) (explain, serve) too
    assert np.allclose(cam_probs, reported.numpy(), atol=1e-5)
    # The exported model carries the temperature inside its logit.
    session = ort_session(to_onnx_proto(loaded).SerializeToString())
    assert np.allclose(onnx_probabilities(session, images.numpy()), reported.numpy(), atol=1e-4)


def test_calibration_lowers_the_nll_on_held_data(tmp_path):
    model = small_cnn(calibrate=True)
    fit(tmp_path, model, epochs=6)
    test = trainer_scores(model, FakeImages(64, seed=9))
    temperature = float(model.temperature)
    assert cal.nll(test["logit"], test["label"], temperature) < cal.nll(
        test["logit"], test["label"]
    )


def trainer_scores(model, data) -> dict[str, np.ndarray]:
    model.eval()
    with torch.no_grad():
        logit = model(data.images).double().numpy()
    return {"logit": logit, "label": data.labels.double().numpy()}


def test_without_calibrate_the_temperature_stays_one_and_old_checkpoints_load(tmp_path):
    model = small_cnn()
    _, path = fit(tmp_path, model, epochs=2)
    assert float(model.temperature) == 1.0
    # A checkpoint from before the temperature buffer (no "temperature" key) loads as T = 1.
    saved = torch.load(path, map_location="cpu", weights_only=True)
    del saved["state_dict"]["temperature"]
    old = tmp_path / "old.ckpt"
    torch.save(saved, old)
    loaded = load_classifier(old)
    assert float(loaded.temperature) == 1.0
    res = tiny_trainer(tmp_path).test(small_cnn(), dataloaders=DataLoader(FakeImages(16)),
                                      ckpt_path=str(old), verbose=False)  # fmt: skip
    assert 0.0 <= res[0]["test/auroc"] <= 1.0


def test_tta_at_test_and_predict_averages_the_views(tmp_path):
    model = small_cnn()
    trainer, _ = fit(tmp_path, model, epochs=2)
    data = FakeImages(8, seed=4)
    loader = DataLoader(data, batch_size=4)
    plain = torch.cat([p["prob"] for p in trainer.predict(model, dataloaders=loader)])
    model.tta = True
    tta = torch.cat([p["prob"] for p in trainer.predict(model, dataloaders=loader)])
    expected = tta_probs(model.eval(), data.images)
    assert torch.allclose(tta, expected, atol=1e-5)
    assert not torch.allclose(tta, plain)
    trainer.test(model, dataloaders=loader, verbose=False)
    assert np.allclose(model.test_outputs["prob"], expected.numpy(), atol=1e-5)


def test_pos_weight_auto_counts_the_training_split(tmp_path):
    class Split(FakeDataModule):
        split = {"train": [type("R", (), {"label": y})() for y in [0, 0, 0, 1]]}

    model = small_cnn(pos_weight="auto")
    trainer = tiny_trainer(tmp_path, max_epochs=1)
    trainer.fit(model, datamodule=Split())
    assert model.pos_weight == 3.0
    assert model.hparams.pos_weight == "auto"  # the checkpoint keeps the rule, not the number
    with pytest.raises(ConfigError, match="pos_weight"):
        small_cnn(pos_weight=-1)


def test_label_smoothing_pulls_the_targets_to_one_half():
    logits, labels = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 0.0])
    smoothed = small_cnn(label_smoothing=0.2)._loss(logits, labels)
    expected = F.binary_cross_entropy_with_logits(logits, torch.tensor([0.9, 0.1]))
    assert torch.isclose(smoothed, expected)
    with pytest.raises(ConfigError, match="label_smoothing"):
        small_cnn(label_smoothing=1.0)
