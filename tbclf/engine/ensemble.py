"""Ensembles of trained tbclf models: several checkpoints score the same images and their
probabilities are averaged; the operating threshold (and an optional temperature) is chosen
on the ensemble's own validation predictions, never taken from one member."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from tbclf.data.records import Record
from tbclf.engine.rundir import run_dir_of, run_split, split_lists
from tbclf.engine.scoring import average_scores, score_loader
from tbclf.errors import ConfigError
from tbclf.io import read_output_csv
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
    return average_scores([score_loader(m, batches, tta, calibrated=True) for m in models])


def group_members(group: str | Path) -> list[Path]:
    """The fold checkpoints a `tbclf cv` run group lists in its cv.json."""
    cv_json = Path(group) / "cv.json"
    try:
        doc = json.loads(cv_json.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{cv_json} does not exist: --group takes the folder `tbclf cv` wrote "
            "(runs/<name>_cv<k>)."
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ConfigError(f"{cv_json} is unreadable ({error}).") from None
    members = doc.get("members") if isinstance(doc, dict) else None
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise ConfigError(f"{cv_json} has no 'members' list of checkpoints.")
    paths = [Path(m) for m in members]
    for path in paths:
        if not path.is_file():
            raise ConfigError(
                f"{cv_json} lists {path}, which is not there (moved?); name the members with "
                "--ckpt_path instead."
            )
    return paths


def oof_scores(group: str | Path) -> dict[str, np.ndarray]:
    """The group's pooled out-of-fold P(TB) and labels (oof_predictions.csv of `tbclf cv`)."""
    path = Path(group) / "oof_predictions.csv"
    header, rows = read_output_csv(path)
    if not {"LABEL", "TRUE_LABEL"} <= set(header) or not rows:
        raise ConfigError(f"{path} has no LABEL/TRUE_LABEL rows: rerun `tbclf cv`.")
    try:
        prob = np.array([float(r["LABEL"]) for r in rows])
        label = np.array([float(r["TRUE_LABEL"]) for r in rows])
    except ValueError as error:
        raise ConfigError(f"{path}: {error}") from None
    return {"prob": prob, "label": label}


def shared_validation(paths: Sequence[str | Path]) -> tuple[list[Record], Path] | None:
    """The validation images every member held out, when all members sit in run folders
    with the same validation split (e.g. one recipe fitted with several seeds): no member
    trained on them, so they are the ensemble's own validation set. None otherwise."""
    dirs = [run_dir_of(p) for p in paths]
    if any(d is None for d in dirs):
        return None
    lists = [split_lists(d) for d in dirs]
    if any(lst is None or not lst.get("val") for lst in lists):
        return None
    first = lists[0]
    if any((lst["root"], lst["val"]) != (first["root"], first["val"]) for lst in lists[1:]):
        return None
    records = run_split(
        dirs[0],
        "the ensemble's threshold is chosen on its members' shared validation split",
        "Pass --val_root with labelled images the members never trained on.",
    )["val"]
    return records, dirs[0] / "split.json"
