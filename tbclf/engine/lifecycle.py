"""A run's life as its user sees it: finished or stopped, which run `--ckpt_path last` resumes,
how a stopped run is marked, and the one line each stage ends with.

A run folder holds `finished.json` once its fit ended normally; a run stopped by Ctrl-C or an
error holds `failed.txt` (what stopped it and the command that resumes it); a killed run holds
neither. `fit --ckpt_path last` resumes the newest run that did not finish; a finished run is
trained further only with `--extend true`, which rebuilds the learning-rate schedule for the new
length.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, EarlyStopping

from tbclf.engine.rundir import CLAIMED, RESUMED, existing_versions
from tbclf.errors import ConfigError
from tbclf.io import atomic_write_json

FINISHED = "finished.json"
FAILED = "failed.txt"
# Test hook: raise KeyboardInterrupt (as Ctrl-C does) at the start of this training epoch.
INTERRUPT_ENV = "TBCLF_INTERRUPT_AT_EPOCH"
# What the last fit of this process knew when it stopped on an exception (for failed.txt).
STOPPED: dict[str, Any] = {}


def _last_ckpt(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last.ckpt"


def recorded_config(run_dir: Path) -> tuple[Path | None, dict[str, Any]]:
    """The newest fit config a run recorded (a resumed fit's `config.fit.yaml`, else
    `config.yaml`), parsed; (None, {}) when it has none or it is unreadable."""
    import yaml

    for name in ("config.fit.yaml", "config.yaml"):
        path = run_dir / name
        if path.is_file():
            try:
                doc = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError):
                continue
            if isinstance(doc, dict):
                return path, doc
    return None, {}


def checkpoint_progress(ckpt: Path) -> dict[str, Any]:
    """Epochs completed in a checkpoint and whether its early stopping had fired."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    stopped_early = False
    for key, value in (state.get("callbacks") or {}).items():
        if str(key).startswith("EarlyStopping") and isinstance(value, dict):
            patience = value.get("patience")
            stopped_early = bool(value.get("stopped_epoch")) or (
                patience is not None and value.get("wait_count", 0) >= patience
            )
    return {"epochs": int(state.get("epoch", -1)) + 1, "stopped_early": stopped_early}


def run_state(run_dir: Path) -> tuple[str, str]:
    """(state, description) of a run: state is "finished", "stopped" (interrupted, failed or
    killed: resumable) or "empty" (no last.ckpt: nothing to resume)."""
    last = _last_ckpt(run_dir)
    marker = run_dir / FINISHED
    if marker.is_file():
        try:
            info = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            info = {}
        return "finished", f"finished ({info.get('epochs', '?')} epochs)"
    if not last.is_file():
        return "empty", "no last.ckpt"
    failed = run_dir / FAILED
    if failed.is_file():
        first = failed.read_text(encoding="utf-8", errors="replace").splitlines()[:1]
        return "stopped", f"stopped: {first[0] if first else 'failed'}"
    # No marker: killed, or written by a tbclf that did not mark finished runs.
    try:
        progress = checkpoint_progress(last)
    except Exception:  # noqa: BLE001 - an unreadable checkpoint is not resumable
        return "empty", "last.ckpt unreadable"
    _, config = recorded_config(run_dir)
    max_epochs = (config.get("trainer") or {}).get("max_epochs")
    if progress["stopped_early"] or (max_epochs and progress["epochs"] >= int(max_epochs)):
        return "finished", f"finished ({progress['epochs']} epochs)"
    return "stopped", f"stopped after epoch {progress['epochs']} (killed?)"


def find_resumable(save_dir: str | os.PathLike, name: str) -> Path:
    """`fit --ckpt_path last`: last.ckpt of the newest run that stopped before finishing."""
    seen = []
    for version in reversed(existing_versions(save_dir, name)):
        run_dir = Path(save_dir) / name / f"version_{version}"
        state, description = run_state(run_dir)
        if state == "stopped":
            return _last_ckpt(run_dir)
        seen.append(f"  {run_dir}: {description}")
    listing = "\n".join(seen) if seen else f"  (no runs under {Path(save_dir) / name})"
    raise ConfigError(
        "--ckpt_path last: no stopped run to resume; the runs seen:\n"
        f"{listing}\n"
        "Start a new run without --ckpt_path, or train a finished one further with "
        "--ckpt_path RUN/checkpoints/last.ckpt --extend true --trainer.max_epochs N."
    )


def check_resume(ckpt: Path, extend: bool, max_epochs: int | None) -> None:
    """Refuse to continue a finished run on its old schedule; `--extend` needs more epochs."""
    run_dir = ckpt.parent.parent
    done = checkpoint_progress(ckpt)["epochs"]
    if extend:
        if max_epochs is None or max_epochs <= done:
            raise ConfigError(
                f"--extend: {run_dir} has trained {done} epochs; pass --trainer.max_epochs "
                f"larger than {done}."
            )
        return
    state, description = run_state(run_dir)
    if state == "finished" and ckpt.name == "last.ckpt":
        raise ConfigError(
            f"{run_dir} is {description}. To train it further, add --extend true and "
            f"--trainer.max_epochs N (N > {done}); the learning-rate schedule is rebuilt for "
            "the new length."
        )


def resume_command(argv: list[str], ckpt: Path | None) -> str:
    """The command line that reruns this one, resuming from ``ckpt`` when given."""
    prog = "tbclf" if Path(sys.argv[0]).name == "tbclf" else "python -m tbclf"
    args: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--ckpt_path":
            skip = True
            continue
        if arg.startswith("--ckpt_path="):
            continue
        args.append(arg)
    if ckpt is not None:
        args += ["--ckpt_path", str(ckpt)]
    return f"{prog} {shlex.join(args)}"


def describe_stop(error: BaseException) -> str:
    """One line: what stopped the fit, and in which epoch."""
    cause = STOPPED.get("exception", error)
    where = ""
    if "epoch" in STOPPED:
        where = f" in epoch {STOPPED['epoch'] + 1} of {STOPPED.get('max_epochs') or '?'}"
    if isinstance(cause, KeyboardInterrupt):
        return f"interrupted (Ctrl-C){where}"
    text = str(cause).strip().splitlines()
    return f"failed{where}: {type(cause).__name__}" + (f": {text[0]}" if text else "")


def rebuild_schedule(trainer: pl.Trainer) -> None:
    """After `--extend`: a cosine schedule over the new max_epochs, at the epoch reached, so the
    remaining epochs get the learning rates a run of the new length would have had."""
    for config in trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        if isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
            scheduler.T_max = int(trainer.max_epochs)
            lrs = scheduler._get_closed_form_lr()
            for group, lr in zip(scheduler.optimizer.param_groups, lrs, strict=True):
                group["lr"] = lr
            scheduler._last_lr = list(lrs)
    for callback in trainer.callbacks:
        if isinstance(callback, EarlyStopping):
            callback.wait_count = 0
            callback.stopped_epoch = 0
    trainer.should_stop = False


class RunLifecycle(Callback):
    """Marks a fit finished (finished.json) or records what stopped it; applies `--extend`."""

    def __init__(self) -> None:
        self.extend = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        STOPPED.clear()
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank asks, or rank 0 waits
        if trainer.is_global_zero and log_dir:
            run_dir = Path(log_dir)
            (run_dir / FINISHED).unlink(missing_ok=True)
            if run_dir not in CLAIMED and run_dir not in RESUMED:
                RESUMED.append(run_dir)  # a resumed run: marked if it stops again
        if self.extend:
            rebuild_schedule(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        STOPPED.update(epoch=trainer.current_epoch, max_epochs=trainer.max_epochs)
        if os.environ.get(INTERRUPT_ENV) == str(trainer.current_epoch):
            raise KeyboardInterrupt

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        STOPPED["exception"] = exception

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log_dir = trainer.log_dir  # every rank asks (a broadcast under DDP)
        if not trainer.is_global_zero or not log_dir or trainer.interrupted:
            return
        run_dir = Path(log_dir)
        atomic_write_json(
            run_dir / FINISHED,
            {
                "epochs": trainer.current_epoch,
                "max_epochs": trainer.max_epochs,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
        )
        (run_dir / FAILED).unlink(missing_ok=True)
