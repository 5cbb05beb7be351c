"""Writes `predictions.csv` (Zindi's `ID,LABEL` plus the decision) once predict has finished,
and beside it `predictions.json`: the threshold behind DECISION and where it came from, the
model class and input spec, so `tbclf report` never has to guess them from the CSV."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter

from tbclf.engine.predictions import FIELDS, check_output_free, write_predictions
from tbclf.engine.provenance import model_record
from tbclf.errors import ConfigError
from tbclf.evaluation.report import sidecar_path

__all__ = ["FIELDS", "PredictionWriter"]


class PredictionWriter(BasePredictionWriter):
    """Collects the predict loop's outputs and writes them atomically in one go.

    Args:
        output: CSV path. Default: `predictions.csv` in the checkpoint's run folder (or the
            trainer's log folder when the checkpoint sits elsewhere).
        overwrite: replace existing files. Without it an existing CSV or sidecar stops the run
            before any image is predicted, so a user's earlier predictions are never lost.

    The sidecar is the CSV's path with ``.json`` (``predictions.json``).
    """

    def __init__(self, output: str | None = None, overwrite: bool = False) -> None:
        super().__init__(write_interval="epoch")
        self.output = output
        self.overwrite = overwrite
        self.default_dir: Path | None = None
        self.written: Path | None = None

    def resolve_output(self, trainer: pl.Trainer) -> Path:
        if self.output is not None:
            return Path(self.output)
        folder = self.default_dir or Path(trainer.log_dir or ".")
        return folder / "predictions.csv"

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        check_output_free(self.resolve_output(trainer), self.overwrite)
        if trainer.world_size > 1:
            raise ConfigError(
                "predict writes one CSV from one process: run it with --trainer.devices 1 "
                "(prediction is fast; DDP is for fit)."
            )

    def write_on_epoch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        predictions: Any,
        batch_indices: Any,
    ) -> None:
        rows = list(_rows(predictions))
        record = None
        if pl_module is not None:  # called outside a predict loop: no model to describe
            ckpt = getattr(trainer, "ckpt_path", None)
            ckpt = None if ckpt is None else str(Path(ckpt).resolve())
            record = model_record(pl_module, ckpt, tta=bool(getattr(pl_module, "tta", False)))
        path = write_predictions(self.resolve_output(trainer), rows, record)
        self.written = path
        told = f" (threshold and model: {sidecar_path(path)})" if record else ""
        print(f"wrote {len(rows)} predictions to {path}{told}")


def _rows(predictions: Any):
    """Flatten Lightning's per-dataloader, per-batch outputs into (id, prob, decision, label)."""
    batches = predictions
    if batches and isinstance(batches[0], list):
        batches = [b for group in batches for b in group]
    for batch in batches:
        probs = _as_list(batch["prob"])
        decisions = _as_list(batch["decision"])
        labels = _as_list(batch.get("label", [None] * len(probs)))
        for ident, prob, decision, label in zip(batch["id"], probs, decisions, labels, strict=True):
            truth = None if label is None or math.isnan(float(label)) else int(label)
            yield str(ident), float(prob), int(decision), truth


def _as_list(value: Any) -> list:
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu().tolist()
    return list(value)
