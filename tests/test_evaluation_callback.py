"""ReportCallback in a real `trainer.test`: report in <log_dir>/report, figures in TensorBoard."""

from __future__ import annotations

import json

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from models_fakes import FakeImages
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

from tbclf.engine.report_callback import ReportCallback
from tbclf.evaluation.metrics import point_metrics
from tbclf.models import SimpleCNNClassifier


def test_report_written_on_test_end_and_logged(tmp_path):
    model = SimpleCNNClassifier(
        channels=[4], kernel_sizes=[3], head=[4], image_size=16, channels_last=False
    )
    model.threshold.fill_(0.4)
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    cb = ReportCallback(n_boot=100)
    trainer = pl.Trainer(
        logger=logger,
        callbacks=[cb],
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.test(model, dataloaders=DataLoader(FakeImages(24, size=16), batch_size=8))

    out = tmp_path / "run" / "version_0" / "report"
    assert cb.report_dir == out
    metrics = json.loads((out / "metrics.json").read_text())
    outputs = model.test_outputs
    ref = point_metrics(outputs["prob"], outputs["label"], 0.4)
    assert metrics["threshold"] == pytest.approx(0.4)
    assert metrics["n"] == 24
    for name in ("accuracy", "sensitivity", "specificity"):
        assert metrics["metrics"][name]["value"] == pytest.approx(ref[name])
    assert set(metrics["per_source"]) == {"fake_a", "fake_b"}
    assert metrics["threshold_info"] == {
        "source": "validation",
        "strategy": "sensitivity",
        "target_sensitivity": 0.9,
        "threshold": pytest.approx(0.4),
        "temperature": 1.0,
    }
    assert (out / "roc.png").exists() and (out / "report.md").exists()
    assert len((out / "predictions.csv").read_text().splitlines()) == 25

    acc = EventAccumulator(str(logger.log_dir), size_guidance={"images": 0})
    acc.Reload()
    tags = set(acc.Tags()["images"])
    assert {"report/roc", "report/confusion_matrix", "report/calibration"} <= tags

    assert metrics["held_out"] is None  # no run folder says these images were held out
    assert "not recorded" in (out / "report.md").read_text()

    # testing again in the same run folder replaces the report with the new numbers
    model.threshold.fill_(0.9)
    trainer.test(model, dataloaders=DataLoader(FakeImages(24, size=16), batch_size=8))
    again = json.loads((out / "metrics.json").read_text())
    assert again["threshold"] == pytest.approx(0.9)
    assert again["confusion"] == {k: int(v) for k, v in _counts(model.test_outputs, 0.9).items()}
    assert again["confusion"] != metrics["confusion"]


def _counts(outputs, threshold):
    from tbclf.evaluation.metrics import confusion_counts

    return confusion_counts(outputs["prob"], outputs["label"], threshold)


class _Viewed(pl.LightningModule):
    """A module that provides test_outputs with a "view" column, as the data side will."""

    def __init__(self, views):
        super().__init__()
        rng = np.random.default_rng(1)
        y = np.array([i % 2 for i in range(len(views))], dtype=np.float32)
        self.test_outputs = {
            "id": np.array([f"i{i}" for i in range(len(views))]),
            "source": np.array([""] * len(views)),
            "prob": np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, y.size), 0, 1),
            "label": y,
            "view": np.array(views),
        }
        self.register_buffer("threshold", torch.tensor(0.5))


def test_callback_passes_views_when_the_module_has_them(tmp_path):
    trainer = pl.Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    cb = ReportCallback(n_boot=50, log_figures=False)
    cb.on_test_end(trainer, _Viewed(["PA", "AP", "AP", "PA"] * 6))
    assert set(cb.last_report["per_view"]) == {"PA", "AP"}
    assert cb.last_report["per_view"]["AP"]["n"] == 12
    module = _Viewed(["PA"] * 8)
    del module.test_outputs["view"]  # modules without views still get a report
    cb.on_test_end(trainer, module)
    assert "per_view" not in cb.last_report and cb.last_report["n"] == 8
