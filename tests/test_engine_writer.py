"""predict's outputs: predictions.csv plus the predictions.json sidecar that `report` reads."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
from models_fakes import FakeImages
from torch.utils.data import DataLoader

import tbclf
from tbclf.engine.report_callback import _held_out
from tbclf.engine.writer import PredictionWriter
from tbclf.errors import ConfigError
from tbclf.evaluation.report import report_from_csv
from tbclf.models import SimpleCNNClassifier


def _predict(tmp_path, writer: PredictionWriter, threshold: float) -> SimpleCNNClassifier:
    model = SimpleCNNClassifier(
        channels=[4], kernel_sizes=[3], head=[4], image_size=16, channels_last=False,
        threshold_strategy="youden",
    )  # fmt: skip
    model.threshold.fill_(threshold)
    trainer = pl.Trainer(
        callbacks=[writer], logger=False, accelerator="cpu", devices=1,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.predict(
        model, DataLoader(FakeImages(12, size=16), batch_size=5), return_predictions=False
    )
    return model


def test_sidecar_records_threshold_model_and_spec(tmp_path):
    out = tmp_path / "preds.csv"
    model = _predict(tmp_path, PredictionWriter(output=str(out)), threshold=0.4321)
    sidecar = json.loads((tmp_path / "preds.json").read_text())
    assert sidecar["operating_point"] == {
        "source": "validation",
        "strategy": "youden",
        "threshold": pytest.approx(float(model.threshold)),
        "temperature": 1.0,
    }
    assert sidecar["model_class"] == "tbclf.models.classifiers.SimpleCNNClassifier"
    assert sidecar["input_spec"] == model.input_spec.to_dict()
    assert sidecar["tbclf_version"] == tbclf.__version__
    assert sidecar["predictions_csv"] == "preds.csv" and sidecar["n"] == 12
    # `report` takes the threshold from the sidecar, not from the DECISION column
    res = report_from_csv(out, tmp_path / "rep", n_boot=50)
    assert res["threshold"] == pytest.approx(float(model.threshold))
    assert res["threshold_info"]["strategy"] == "youden"


def test_an_existing_sidecar_is_not_overwritten(tmp_path):
    (tmp_path / "predictions.json").write_text("{}")
    with pytest.raises(ConfigError, match="predictions.json already exists"):
        _predict(tmp_path, PredictionWriter(output=str(tmp_path / "predictions.csv")), 0.5)
    assert (tmp_path / "predictions.json").read_text() == "{}"
    assert not (tmp_path / "predictions.csv").exists()
    _predict(tmp_path, PredictionWriter(str(tmp_path / "predictions.csv"), overwrite=True), 0.5)
    saved = json.loads((tmp_path / "predictions.json").read_text())
    assert saved["operating_point"]["threshold"] == 0.5
    with pytest.raises(ConfigError, match=r"\.json"):
        _predict(tmp_path, PredictionWriter(output=str(tmp_path / "p.json")), 0.5)


def test_held_out_only_for_the_runs_own_split(tmp_path):
    run = tmp_path / "runs" / "m" / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "split.json").write_text("{}")
    ckpt = str(run / "checkpoints" / "best.ckpt")

    def trainer(ckpt_path, split_file):
        return SimpleNamespace(
            ckpt_path=ckpt_path, datamodule=SimpleNamespace(split_file=split_file)
        )

    assert _held_out(trainer(ckpt, run / "split.json")) is True
    assert _held_out(trainer(ckpt, tmp_path / "other.json")) is None
    assert _held_out(trainer(ckpt, None)) is None  # split rebuilt from data.* options
    assert _held_out(trainer(None, run / "split.json")) is None
