"""Write the evaluation report into the run folder when `test` finishes.

`python -m tbclf test` then leaves <run>/report/report.md (metrics with confidence intervals,
figures, plain-language summary) next to the checkpoints, and the same figures in TensorBoard.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from tbclf.evaluation.report import write_report

log = logging.getLogger(__name__)

# The module's test_outputs keys (module.py) and the longer names some callers use.
_KEYS = {
    "prob": ("prob", "probs"),
    "label": ("label", "labels"),
    "id": ("id", "ids"),
    "source": ("source", "sources"),
}


def _get(outputs: dict[str, Any], key: str) -> Any:
    for name in _KEYS[key]:
        if name in outputs and outputs[name] is not None:
            return outputs[name]
    return None


def threshold_info_of(pl_module: pl.LightningModule) -> dict[str, Any]:
    """How the module's threshold was chosen (strategy and target, on validation)."""
    info = getattr(pl_module, "threshold_info", None)
    if isinstance(info, dict):
        return dict(info)
    out: dict[str, Any] = {"source": "validation"}
    strategy = getattr(pl_module, "threshold_strategy", None)
    if strategy is not None:
        out["strategy"] = str(strategy)
        if strategy == "sensitivity":
            out["target_sensitivity"] = float(getattr(pl_module, "target_sensitivity", 0.9))
    return out


class ReportCallback(Callback):
    """At the end of `test`, write the report to <log_dir>/<subdir>/ and log its figures.

    Args:
        subdir: Folder inside the run's log folder.
        n_boot: Bootstrap replicates for the confidence intervals.
        seed: Bootstrap seed.
        log_figures: Also add the figures to TensorBoard (loggers that have add_figure).
    """

    def __init__(
        self, subdir: str = "report", n_boot: int = 2000, seed: int = 0, log_figures: bool = True
    ) -> None:
        super().__init__()
        self.subdir = subdir
        self.n_boot = n_boot
        self.seed = seed
        self.log_figures = log_figures
        self.report_dir: Path | None = None
        self.last_report: dict[str, Any] | None = None

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # trainer.log_dir is a broadcast under DDP: every rank must ask, or rank 0 waits in it
        # for ranks that have left ("Connection closed by peer").
        log_dir = trainer.log_dir or trainer.default_root_dir
        try:
            if trainer.is_global_zero:  # test_outputs are gathered from all ranks: one writer
                self._write(trainer, pl_module, Path(log_dir))
        finally:  # the other ranks wait for the report, and never for a rank that failed
            trainer.strategy.barrier("ReportCallback.on_test_end")

    def _write(self, trainer: pl.Trainer, pl_module: pl.LightningModule, log_dir: Path) -> None:
        outputs = getattr(pl_module, "test_outputs", None)
        if not outputs or _get(outputs, "prob") is None:
            warnings.warn(
                "ReportCallback: the module has no test_outputs; no report written",
                RuntimeWarning,
                stacklevel=2,
            )
            return
        probs = np.asarray(_get(outputs, "prob"), dtype=np.float64).reshape(-1)
        labels = np.asarray(_get(outputs, "label"), dtype=np.float64).reshape(-1)
        ids = _get(outputs, "id")
        sources = _get(outputs, "source")
        keep = ~np.isnan(labels)
        if not keep.any():
            warnings.warn(
                "ReportCallback: the test images have no labels; no report written",
                RuntimeWarning,
                stacklevel=2,
            )
            return
        if not keep.all():
            log.warning("report: %d unlabeled test images left out", int((~keep).sum()))
        ids = None if ids is None else [str(i) for i, k in zip(ids, keep, strict=True) if k]
        sources = (
            None if sources is None else [str(s) for s, k in zip(sources, keep, strict=True) if k]
        )
        threshold = getattr(pl_module, "threshold", 0.5)
        threshold = float(threshold.item() if hasattr(threshold, "item") else threshold)
        out = log_dir / self.subdir
        step = trainer.global_step
        experiments = (
            [
                lg.experiment
                for lg in trainer.loggers
                if hasattr(getattr(lg, "experiment", None), "add_figure")
            ]
            if self.log_figures
            else []
        )

        def on_figure(name: str, fig: Any) -> None:
            for exp in experiments:
                exp.add_figure(f"report/{name}", fig, global_step=step, close=False)

        self.last_report = write_report(
            probs[keep],
            labels[keep],
            threshold,
            out,
            sources=sources,
            ids=ids,
            threshold_info=threshold_info_of(pl_module),
            n_boot=self.n_boot,
            seed=self.seed,
            split_name="test",
            overwrite=True,
            on_figure=on_figure,
        )
        for exp in experiments:
            if hasattr(exp, "flush"):
                exp.flush()
        self.report_dir = out
        m = self.last_report["metrics"]
        log.info(
            "report written to %s: sensitivity %.3f, specificity %.3f, AUROC %.3f",
            out,
            m["sensitivity"]["value"],
            m["specificity"]["value"],
            m["auroc"]["value"],
        )
