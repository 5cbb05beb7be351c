"""`tbclf report`: the evaluation report from a predictions.csv with true labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tbclf.commands.common import OUT, REPLACE, command_parser, parsed_options


def main(argv: list[str]) -> dict[str, Any]:
    """Evaluation report from a predictions.csv with true labels."""
    from tbclf.evaluation.report import report_from_csv

    parser = command_parser(
        "report",
        "Evaluation report (AUROC and operating-point metrics with 95% "
        "intervals, ROC/PR, confusion, calibration, per source and view) from "
        "a predictions.csv that has TRUE_LABEL or a labels CSV. The threshold "
        "comes from the predictions.json `predict` writes beside the CSV.",
        required={"predictions": "predictions.csv", "out": OUT},
        overwrite=REPLACE,
    )
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
    cfg = parsed_options(parser, argv)
    out = cfg.pop("out")
    result = report_from_csv(cfg.pop("predictions"), out, labels_csv=cfg.pop("labels"), **cfg)
    print(f"report written to {Path(out) / 'report.md'}")
    return result
