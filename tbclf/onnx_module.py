"""An exported `.onnx` model as a LightningModule, so it predicts through `Trainer.predict` like a
checkpoint does: the data module's loader (decoding in worker processes), DDP over processes or
nodes, and the same streaming, resumable :class:`~tbclf.engine.writer.PredictionWriter`.

Predict only: ONNX Runtime runs on the CPU, one session per process; the model's input spec,
threshold and the sidecar's record come from the file's metadata (:class:`OnnxPredictor`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from tbclf.data.spec import InputSpec
from tbclf.evaluation.probability import decide
from tbclf.inference import OnnxPredictor


class OnnxModule(pl.LightningModule):
    """``predict_step`` answers in the same dict as :class:`TBClassifier.predict_step`."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.threads = threads
        self.predictor = OnnxPredictor(self.path, threads)

    @property
    def input_spec(self) -> InputSpec:
        """What the data module prepares images as (it asks the model, as for a checkpoint)."""
        return self.predictor.spec

    @property
    def threshold(self) -> float:
        return self.predictor.threshold

    def prediction_record(self) -> dict[str, Any]:
        """The predictions sidecar's account of the model (threshold, origin, spec, file)."""
        return dict(self.predictor.record)

    def predict_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Any]:
        images = batch["image"].detach().cpu().numpy()
        probs = self.predictor.probabilities(images, batch_size=max(1, len(images)))
        n = len(probs)
        label = batch.get("label")
        return {
            "id": [str(i) for i in batch["id"]],
            "prob": torch.from_numpy(np.asarray(probs, dtype=np.float32)),
            "decision": torch.from_numpy(decide(probs, self.predictor.threshold)),
            "label": torch.full((n,), float("nan")) if label is None else label.float().cpu(),
        }
