"""`tbclf eda`: figures, stats.json and summary.md describing a data set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tbclf.commands.common import DATA_OPTIONS, OUT, REPLACE, command_parser


def main(argv: list[str]) -> dict[str, Any]:
    """Figures, stats.json and summary.md describing a data set."""
    from tbclf.eda.run import run_eda

    parser = command_parser(
        "eda",
        "Explore a data set: mean/std images per class, class difference, "
        "contrast and variability, eigen-images, histograms, CLAHE/HE.",
        required={"data.root": "data folder", "out": OUT},
        overwrite=REPLACE,
    )
    for key, (kind, default, text) in DATA_OPTIONS.items():
        parser.add_argument(f"--data.{key}", type=kind, default=default, help=text)
    parser.add_argument(
        "--max_images",
        type=int | None,
        default=None,
        help="class-balanced random subset of this size",
    )
    parser.add_argument("--seed", type=int, default=0)
    cfg = parser.parse_args(argv).as_dict()
    cfg.pop("config", None)
    stats = run_eda(**cfg.pop("data"), **cfg)
    print(f"EDA of {stats['n_analysed']} images written to {Path(cfg['out']) / 'summary.md'}")
    return stats
