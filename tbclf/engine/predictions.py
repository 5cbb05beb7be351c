"""predictions.csv: its columns, its overwrite rule and its rows, shared by every predict path.

Lightning's predict (:class:`tbclf.engine.writer.PredictionWriter`) and the ONNX path
(`tbclf predict --model model.onnx`) write through here, so both give the same file.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tbclf.errors import ConfigError
from tbclf.io import write_csv

FIELDS = ["ID", "LABEL", "DECISION"]
# (id, P(TB), decision 0/1, true label or None)
Row = tuple[str, float, int, "int | None"]


def check_output_free(path: Path, overwrite: bool) -> None:
    """Stop before any image is predicted when the CSV exists and overwrite was not asked."""
    if path.exists() and not overwrite:
        raise ConfigError(
            f"{path} already exists. Pass --writer.overwrite true to replace it, or "
            "--writer.output OTHER.csv to keep both."
        )


def write_predictions(path: str | Path, rows: Iterable[Row]) -> Path:
    """ID,LABEL,DECISION (plus TRUE_LABEL when any row has one), written atomically."""
    rows = list(rows)
    if not rows:
        raise ConfigError("predict produced no rows: is data.predict_root empty?")
    with_truth = any(row[3] is not None for row in rows)
    return write_csv(
        path,
        FIELDS + (["TRUE_LABEL"] if with_truth else []),
        (
            [ident, f"{prob:.6f}", decision]
            + (["" if truth is None else truth] if with_truth else [])
            for ident, prob, decision, truth in rows
        ),
    )
