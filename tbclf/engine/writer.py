"""Writes `predictions.csv` (Zindi's `ID,LABEL` plus the decision) and beside it
`predictions.json`: the threshold behind DECISION and where it came from, the model class and
input spec, and the images left out or unreadable with why, so `tbclf report` never has to
guess them from the CSV.

Every predict path (a checkpoint, or an ONNX file through :mod:`tbclf.onnx_module`) runs
`Trainer.predict` with this writer, in one process or several (DDP: `--trainer.devices N`,
`--trainer.num_nodes`). Rows go to disk as they come, each rank in its own parts
(:mod:`tbclf.engine.shards`); when every rank is done, rank 0 merges them into the one CSV,
atomically. A rerun of the same command after a kill skips the images already written.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter

from tbclf.engine import shards
from tbclf.engine.predictions import FIELDS, check_output_free, write_prediction_files
from tbclf.engine.provenance import model_record
from tbclf.errors import DataError
from tbclf.evaluation.report import sidecar_path
from tbclf.io import write_csv

__all__ = ["FIELDS", "PredictionWriter", "prediction_record"]

NOT_SCORED_FIELDS = ["ID", "PATH", "STATUS", "WHY"]


def prediction_record(pl_module: pl.LightningModule, checkpoint: str | None) -> dict[str, Any]:
    """The sidecar's account of the model: a module may give its own (an ONNX file's
    metadata), a tbclf classifier is described from its buffers and hyperparameters."""
    own = getattr(pl_module, "prediction_record", None)
    if callable(own):
        return own()
    ckpt = None if checkpoint is None else str(Path(checkpoint).resolve())
    return model_record(pl_module, ckpt, tta=bool(getattr(pl_module, "tta", False)))


class PredictionWriter(BasePredictionWriter):
    """Streams the predict loop's rows to parts on disk and merges them into one CSV.

    Args:
        output: CSV path. Default: `predictions.csv` in the checkpoint's run folder (or the
            trainer's log folder when the checkpoint sits elsewhere).
        overwrite: replace existing files. Without it an existing CSV or sidecar stops the run
            before any image is predicted, so a user's earlier predictions are never lost.
        part_rows: rows per part file (`<output>.parts/`); a kill loses at most this many
            rows per process, which a rerun of the same command scores again.

    The sidecar is the CSV's path with ``.json`` (``predictions.json``).
    """

    def __init__(self, output: str | None = None, overwrite: bool = False, part_rows: int = 1000):
        super().__init__(write_interval="batch")
        if int(part_rows) < 1:
            raise DataError(f"writer.part_rows={part_rows} must be >= 1.")
        self.output = output
        self.overwrite = overwrite
        self.part_rows = int(part_rows)
        self.default_dir: Path | None = None
        self.written: Path | None = None
        self._parts: shards.PartWriter | None = None
        self._path: Path | None = None
        self._counter = 0

    def resolve_output(self, trainer: pl.Trainer) -> Path:
        if self.output is not None:
            return Path(self.output)
        folder = self.default_dir or Path(trainer.log_dir or ".")
        return folder / "predictions.csv"

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Before any loader exists: claim the parts folder and tell the data module which
        images earlier attempts already wrote, so they are not even decoded again."""
        if str(getattr(stage, "value", stage)) != "predict":
            return
        path = self.resolve_output(trainer)  # every rank asks: log_dir broadcasts under DDP
        check_output_free(path, self.overwrite)
        folder = shards.parts_dir(path)
        datamodule = trainer.datamodule
        records = getattr(datamodule, "predict_records", None)
        inputs = (
            shards.inputs_digest((r.id, str(r.path)) for r in records)
            if records is not None
            else None
        )
        ckpt = getattr(trainer, "ckpt_path", None)
        digest = shards.file_digest(ckpt) if ckpt and Path(ckpt).is_file() else None
        key = shards.run_key(prediction_record(pl_module, ckpt), inputs, digest)
        resumable = inputs is not None and hasattr(datamodule, "exclude_predicted")
        if trainer.is_global_zero:
            if not resumable:
                shards.remove(folder)
            shards.prepare(folder, key)
        trainer.strategy.barrier("tbclf-predict-parts")
        if resumable:
            done = shards.done_ids(folder)
            if done and trainer.is_global_zero:
                print(f"resuming: {len(done)} image(s) already written in {folder} are skipped")
            datamodule.exclude_predicted(done)
        self._path = path
        self._parts = shards.PartWriter(folder, trainer.global_rank, self.part_rows)
        self._counter = 0
        self.written = None

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        assert self._parts is not None, "PredictionWriter.setup did not run"
        skip_bad = bool(getattr(trainer.datamodule, "skip_bad_images", True))
        for row in _rows(prediction, batch, self._counter):
            if row.status == shards.UNREADABLE and not skip_bad:
                self._parts.flush()
                raise DataError(row.why)
            self._parts.add(row)
        self._counter += len(prediction["id"])

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self._parts is not None:  # what was scored stays: a rerun starts after it
            try:
                self._parts.flush()
            except OSError:
                pass

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Every rank has finished its images: rank 0 merges the parts into the CSV."""
        if str(getattr(stage, "value", stage)) != "predict" or self._parts is None:
            return
        self._parts.flush()
        trainer.strategy.barrier("tbclf-predict-merge")
        if trainer.is_global_zero:
            ckpt = getattr(trainer, "ckpt_path", None)
            self.written = merge(self._path, prediction_record(pl_module, ckpt))
        self._parts = None
        trainer.strategy.barrier("tbclf-predict-merged")


def merge(path: Path, record: dict[str, Any] | None) -> Path:
    """The parts beside ``path`` as the one CSV and its sidecar; then the parts are removed."""
    folder = shards.parts_dir(path)
    summary = shards.summarize(folder)
    extra = {
        "unreadable": summary.unreadable,
        "left_out": summary.left_out,
        "n_unreadable": summary.n_unreadable,
        "n_left_out": summary.n_left_out,
        "not_scored_csv": write_not_scored(path, folder, summary.n_not_scored),
    }
    where = extra["not_scored_csv"] or sidecar_path(path).name
    for entries, total, what in (
        (summary.unreadable, summary.n_unreadable, "unreadable"),
        (summary.left_out, summary.n_left_out, "left out"),
    ):
        if total:
            warnings.warn(
                f"{total} image(s) {what}, listed with why in {path.parent / where}: "
                f"{shards.listing(entries, total)}",
                stacklevel=2,
            )
    rows = ((r.id, r.prob, r.decision, r.truth) for r in shards.scored_rows(folder))
    written = write_prediction_files(
        path, rows, summary.n_scored, summary.with_truth, record, extra
    )
    shards.remove(folder)
    told = f" (threshold and model: {sidecar_path(written)})" if record else ""
    print(f"wrote {summary.n_scored} predictions to {written}{told}")
    return written


def not_scored_path(path: Path) -> Path:
    """Beside predictions.csv: every image the run did not score, with why."""
    return path.with_name(f"{path.stem}.not_scored.csv")


def write_not_scored(path: Path, folder: Path, n: int) -> str | None:
    """All images not scored as a CSV (streamed, atomic), or none, so that an older run's list
    never sits beside new predictions; its name, for the sidecar."""
    target = not_scored_path(path)
    if not n:
        target.unlink(missing_ok=True)
        return None
    write_csv(target, NOT_SCORED_FIELDS, shards.not_scored_rows(folder))
    return target.name


def _rows(prediction: dict[str, Any], batch: Any, counter: int):
    """A batch's outcomes as part rows: IDs and list positions from the batch itself."""
    ids = [str(i) for i in prediction["id"]]
    n = len(ids)
    probs = _as_list(prediction["prob"])
    decisions = _as_list(prediction["decision"])
    labels = _as_list(prediction.get("label", [math.nan] * n))
    given = batch if isinstance(batch, dict) else {}
    index = _as_list(given["index"]) if "index" in given else range(counter, counter + n)
    status = list(given.get("status", [shards.SCORED] * n))
    paths = list(given.get("path", [""] * n))
    why = list(given.get("why", [""] * n))
    for i in range(n):
        label = labels[i]
        truth = None if label is None or math.isnan(float(label)) else int(label)
        scored = status[i] in ("", shards.SCORED)
        yield shards.PartRow(
            index=int(index[i]),
            id=ids[i],
            prob=float(probs[i]) if scored else math.nan,
            decision=int(decisions[i]) if scored else 0,
            truth=truth,
            status=shards.SCORED if scored else str(status[i]),
            path=str(paths[i]),
            why=str(why[i]),
        )


def _as_list(value: Any) -> list:
    if isinstance(value, torch.Tensor):
        return (
            value.detach().float().cpu().tolist()
            if value.is_floating_point()
            else (value.detach().cpu().tolist())
        )
    return list(value)
