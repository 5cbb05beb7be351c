"""ReportCallback in a real `trainer.test`: report in <log_dir>/report, figures in TensorBoard."""

from __future__ import annotations

import json

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, Dataset

from tbclf.engine.report_callback import ReportCallback, threshold_info_of
from tbclf.evaluation.bootstrap import point_metrics
from tbclf.models import SimpleCNNClassifier


class _Blobs(Dataset):
    def __init__(self, n: int = 24, size: int = 16) -> None:
        rng = np.random.default_rng(0)
        self.images = rng.random((n, 1, size, size)).astype(np.float32)
        self.labels = np.array([i % 2 for i in range(n)], dtype=np.float32)
        self.images[self.labels == 1, :, 4:10, 4:10] = 1.0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {
            "image": torch.from_numpy(self.images[i]),
            "label": torch.tensor(self.labels[i]),
            "id": f"img{i:02d}",
            "source": "sa" if i < 12 else "sb",
        }


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
    trainer.test(model, dataloaders=DataLoader(_Blobs(), batch_size=8))

    out = tmp_path / "run" / "version_0" / "report"
    assert cb.report_dir == out
    metrics = json.loads((out / "metrics.json").read_text())
    outputs = model.test_outputs
    ref = point_metrics(outputs["prob"], outputs["label"], 0.4)
    assert metrics["threshold"] == pytest.approx(0.4)
    assert metrics["n"] == 24
    for name in ("accuracy", "sensitivity", "specificity"):
        assert metrics["metrics"][name]["value"] == pytest.approx(ref[name])
    assert set(metrics["per_source"]) == {"sa", "sb"}
    assert metrics["threshold_info"] == {
        "source": "validation",
        "strategy": "sensitivity",
        "target_sensitivity": 0.9,
    }
    assert (out / "roc.png").exists() and (out / "report.md").exists()
    assert len((out / "predictions.csv").read_text().splitlines()) == 25

    acc = EventAccumulator(str(logger.log_dir), size_guidance={"images": 0})
    acc.Reload()
    tags = set(acc.Tags()["images"])
    assert {"report/roc", "report/confusion_matrix", "report/calibration"} <= tags

    # testing again in the same run folder updates the report
    trainer.test(model, dataloaders=DataLoader(_Blobs(), batch_size=8))
    assert (out / "metrics.json").exists()


def test_threshold_info_prefers_module_attribute():
    class M(pl.LightningModule):
        threshold_info = {"strategy": "youden", "source": "validation"}

    assert threshold_info_of(M()) == {"strategy": "youden", "source": "validation"}
