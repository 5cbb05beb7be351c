"""`tbclf report`: the evaluation report from a predictions.csv with true labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tbclf.commands.common import command_parser


def main(argv: list[str]) -> dict[str, Any]:
    """Evaluation report from a predictions.csv with true labels."""
    from tbclf.evaluation.report import report_from_csv

    parser = command_parser(
        "report",
        "Evaluation report (AUROC and operating-point metrics with 95% "
        "intervals, ROC/PR, confusion, calibration, per source and view) from "
        "a predictions.csv that has TRUE_LABEL or a labels CSV. The threshold "
        "comes from the predictions.json `predict` writes beside the CSV.",
    )
    parser.add_argument("--predictions", type=str, required=True, help="predictions.csv")
    parser.add_argument("--out", type=str, required=True, help="output folder")
    parser.add_argument(
        "--labels",
        type=str | None,
        default=None,
        help="CSV with ID,LABEL when predictions.csv has no TRUE_LABEL",
    )
    parser.add_argument(
        "--threshold",
        type=float | None,
        default=None,
        help="overrides the threshold in predictions.json; without either, one is inferred "
        "from the DECISION column (and the report says so)",
    )
    parser.add_argument("--n_boot", type=int, default=2000, help="bootstrap of the F1 interval")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", type=bool, default=False)
    cfg = parser.parse_args(argv)
    result = report_from_csv(
        cfg.predictions,
        cfg.out,
        threshold=cfg.threshold,
        labels_csv=cfg.labels,
        n_boot=cfg.n_boot,
        seed=cfg.seed,
        overwrite=cfg.overwrite,
    )
    print(f"report written to {Path(cfg.out) / 'report.md'}")
    return result
