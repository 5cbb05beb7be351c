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

from tbclf.engine.provenance import model_record, module_threshold, operating_point_of
from tbclf.engine.rundir import run_dir_of
from tbclf.evaluation.probability import reported_probability
from tbclf.evaluation.report import sidecar_path, write_report
from tbclf.io import atomic_write_json

log = logging.getLogger(__name__)


def _held_out(trainer: pl.Trainer) -> bool | None:
    """True when the test images are the checkpoint's own run's test split (its split.json),
    which took no part in training; None when that is not known."""
    ckpt = trainer.ckpt_path
    split_file = getattr(getattr(trainer, "datamodule", None), "split_file", None)
    run_dir = run_dir_of(ckpt) if ckpt else None
    if run_dir is None or split_file is None:
        return None
    try:
        same = Path(split_file).resolve() == (run_dir / "split.json").resolve()
    except OSError:
        return None
    return True if same else None


def _before_temperature(
    pl_module: pl.LightningModule, outputs: dict[str, Any], keep: np.ndarray
) -> tuple[np.ndarray, float] | None:
    """P(TB) before the model's fitted temperature (its raw logits), when it has one."""
    temperature = float(getattr(pl_module, "temperature", 1.0))
    if temperature == 1.0 or outputs.get("logit") is None:
        return None
    logits = np.asarray(outputs["logit"]).reshape(-1)[keep]
    return reported_probability(logits).numpy(), temperature


def _column(outputs: dict[str, Any], key: str, keep: np.ndarray) -> list[str] | None:
    values = outputs.get(key)
    if values is None:
        return None
    return [str(v) for v, k in zip(values, keep, strict=True) if k]


class ReportCallback(Callback):
    """At the end of `test`, write the report to <log_dir>/<subdir>/ and log its figures.

    Args:
        subdir: Folder inside the run's log folder.
        n_boot: Bootstrap replicates of the F1 interval (the others are exact or DeLong).
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
        if getattr(pl_module, "multiclass", False):
            log.info("report: a multi-class (pretraining) model has its metrics logged; the TB "
                     "report is for two-class models")  # fmt: skip
            return
        outputs = getattr(pl_module, "test_outputs", None)
        if not outputs or outputs.get("prob") is None:
            warnings.warn(
                "ReportCallback: the module has no test_outputs; no report written",
                RuntimeWarning,
                stacklevel=2,
            )
            return
        probs = np.asarray(outputs["prob"], dtype=np.float64).reshape(-1)
        labels = np.asarray(outputs["label"], dtype=np.float64).reshape(-1)
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
        threshold = module_threshold(pl_module)
        out = log_dir / self.subdir
        step = trainer.global_step
        experiments = _figure_experiments(trainer) if self.log_figures else []

        def on_figure(name: str, fig: Any) -> None:
            for exp in experiments:
                exp.add_figure(f"report/{name}", fig, global_step=step, close=False)

        self.last_report = write_report(
            probs[keep],
            labels[keep],
            threshold,
            out,
            sources=_column(outputs, "source", keep),
            ids=_column(outputs, "id", keep),
            views=_column(outputs, "view", keep),
            held_out=_held_out(trainer),
            threshold_info=operating_point_of(pl_module, trainer.ckpt_path).to_dict(),
            before_temperature=_before_temperature(pl_module, outputs, keep),
            n_boot=self.n_boot,
            seed=self.seed,
            split_name="test",
            overwrite=True,
            on_figure=on_figure,
        )
        if self.last_report.get("predictions_csv"):
            csv = out / self.last_report["predictions_csv"]
            _write_sidecar(csv, int(keep.sum()), pl_module, trainer.ckpt_path)
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


def _figure_experiments(trainer: pl.Trainer) -> list[Any]:
    """The loggers' experiments that take figures (TensorBoard's), to show the report there."""
    return [
        lg.experiment
        for lg in trainer.loggers
        if hasattr(getattr(lg, "experiment", None), "add_figure")
    ]


def _write_sidecar(csv: Path, n: int, pl_module: pl.LightningModule, ckpt_path: Any) -> None:
    """The run's threshold beside the report's CSV, as `predict` records it: `tbclf report` on
    this CSV then uses it instead of inferring one from the DECISION column."""
    record = model_record(pl_module, ckpt_path, tta=bool(getattr(pl_module, "tta", False)))
    atomic_write_json(sidecar_path(csv), {"predictions_csv": csv.name, "n": n, **record})
