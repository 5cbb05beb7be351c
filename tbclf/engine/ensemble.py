"""Ensembles of trained tbclf models: several checkpoints score the same images and their
probabilities are averaged; the operating threshold (and an optional temperature) is chosen
on the ensemble's own validation predictions, never taken from one member."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tbclf.data.records import Record
from tbclf.engine.scoring import average_scores, score_loader
from tbclf.errors import ConfigError
from tbclf.models.loading import load_classifier
from tbclf.models.module import TBClassifier


def load_members(paths: Sequence[str | Path]) -> list[TBClassifier]:
    """The checkpoints' models; they must take the same input (one preprocessing for all)."""
    if not paths:
        raise ConfigError("an ensemble needs at least one --ckpt_path")
    models = [load_classifier(p) for p in paths]
    first = models[0].input_spec.pixel_options()
    for path, model in zip(paths, models, strict=True):
        if model.input_spec.pixel_options() != first:
            raise ConfigError(
                f"{path} takes other inputs ({model.input_spec.pixel_options()}) than "
                f"{paths[0]} ({first}); ensemble only models trained with the same data.* "
                "image options."
            )
    return models


def record_batches(models: Sequence[TBClassifier], records: Sequence[Record], batch_size: int):
    """Batches in the batch-dict contract, prepared once through the members' input spec."""
    spec = models[0].input_spec
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        yield {
            "image": torch.stack([spec.prepare(r.path) for r in chunk]),
            "id": [r.id for r in chunk],
            "source": [r.source or "" for r in chunk],
            "label": torch.tensor(
                [float("nan") if r.label is None else float(r.label) for r in chunk]
            ),
        }


def ensemble_scores(
    models: Sequence[TBClassifier],
    records: Sequence[Record],
    tta: bool = False,
    batch_size: int = 16,
) -> dict[str, np.ndarray]:
    """Mean probability of the members per record (images decoded once, kept in memory
    only one batch at a time per member pass)."""
    batches = list(record_batches(models, records, batch_size))
    return average_scores([score_loader(m, batches, tta) for m in models])


def summary(models: Sequence[TBClassifier], paths: Sequence[str | Path]) -> dict[str, Any]:
    return {
        "members": [str(p) for p in paths],
        "member_thresholds": [float(m.threshold) for m in models],
    }
