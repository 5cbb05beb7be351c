"""predictions.csv and its predictions.json sidecar: columns, overwrite rule, rows and the
record of the threshold behind DECISION, shared by every predict path.

Lightning's predict (:class:`tbclf.engine.writer.PredictionWriter`) and the ONNX path
(`tbclf predict --model model.onnx`) write through here, so both give the same files and
`tbclf report` reads the threshold of either.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tbclf.errors import ConfigError
from tbclf.evaluation.report import sidecar_path
from tbclf.io import atomic_write_json, write_csv

FIELDS = ["ID", "LABEL", "DECISION"]
# (id, P(TB), decision 0/1, true label or None)
Row = tuple[str, float, int, "int | None"]


def check_output_free(path: Path, overwrite: bool) -> None:
    """Stop before any image is predicted when the CSV or its sidecar exists and overwrite was
    not asked (or when the CSV's name would make it its own sidecar)."""
    if path.suffix.lower() == ".json":
        raise ConfigError(
            f"--writer.output {path}: the CSV needs another suffix than .json (its sidecar "
            "is the same path with .json)."
        )
    for existing in (path, sidecar_path(path)):
        if existing.exists() and not overwrite:
            raise ConfigError(
                f"{existing} already exists. Pass --writer.overwrite true to replace it, or "
                "--writer.output OTHER.csv to keep both."
            )


def write_predictions(
    path: str | Path, rows: Iterable[Row], record: dict[str, Any] | None = None
) -> Path:
    """ID,LABEL,DECISION (plus TRUE_LABEL when any row has one), written atomically; then,
    given the model's ``record`` (threshold, its origin, model, input spec), the sidecar."""
    rows = list(rows)
    with_truth = any(row[3] is not None for row in rows)
    return write_prediction_files(path, rows, len(rows), with_truth, record)


def write_prediction_files(
    path: str | Path,
    rows: Iterable[Row],
    n: int,
    with_truth: bool,
    record: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """The CSV from ``n`` rows streamed in order (memory does not grow with ``n``), then the
    sidecar: ``record`` and ``extra`` (images left out or unreadable, with why)."""
    if not n:
        raise ConfigError("predict produced no rows: is data.predict_root empty?")
    sidecar = sidecar_path(path)
    # A stale sidecar must never describe new rows: gone before the CSV changes, written
    # after it (a failure in between leaves a CSV without sidecar, and `report` says so).
    sidecar.unlink(missing_ok=True)
    written = write_csv(
        Path(path),
        FIELDS + (["TRUE_LABEL"] if with_truth else []),
        (
            [ident, f"{prob:.6f}", decision]
            + (["" if truth is None else truth] if with_truth else [])
            for ident, prob, decision, truth in rows
        ),
    )
    if record is not None:
        atomic_write_json(
            sidecar, {"predictions_csv": written.name, "n": n, **record, **(extra or {})}
        )
    return written
