"""`python -m tbclf`: LightningCLI for fit/validate/test/predict, plus eda, report and explain."""

from __future__ import annotations

import errno
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.plugins.io import TorchCheckpointIO

from tbclf.data.datamodule import MODEL_INPUT_KEYS, TBDataModule
from tbclf.engine.checkpoint_io import AtomicCheckpointIO
from tbclf.engine.checkpoints import check_checkpoint_matches, read_checkpoint
from tbclf.engine.report_callback import ReportCallback
from tbclf.engine.rundir import find_checkpoint, run_dir_of
from tbclf.engine.writer import PredictionWriter
from tbclf.errors import TbclfError
from tbclf.models.module import TBClassifier

EXTRA_COMMANDS = {
    "eda": "explore a data set: mean/std images, contrast, eigen-images, histograms",
    "report": "evaluation report (bootstrap CIs, ROC/PR, calibration) from a predictions.csv",
    "explain": "Grad-CAM overlays for a folder of images and a checkpoint",
}

DESCRIPTION = (
    "tbclf: tuberculosis vs healthy chest X-ray classification.\n\n"
    "Lightning subcommands: fit, validate, test, predict (each takes --config FILE; "
    "see `python -m tbclf fit --help`).\nOther commands: "
    + "; ".join(f"{name}: {text}" for name, text in EXTRA_COMMANDS.items())
    + " (see `python -m tbclf eda --help`)."
)


class TBCLI(LightningCLI):
    """LightningCLI with the defaults a tbclf user expects (run folders, checkpoints, writer)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/auroc",
                "checkpoint.mode": "max",
                "checkpoint.filename": "best",
                "checkpoint.save_top_k": 1,
                "checkpoint.save_last": False,
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults(
            {
                "early_stopping.monitor": "val/auroc",
                "early_stopping.mode": "max",
                "early_stopping.patience": 10,
            }
        )
        parser.add_lightning_class_args(PredictionWriter, "writer")
        parser.set_defaults(
            {
                "trainer.logger": {
                    "class_path": "tbclf.engine.rundir.RunLogger",
                    "init_args": {"save_dir": "runs", "name": "tbclf"},
                },
            }
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        cfg = self.config[subcommand]
        ckpt = cfg.get("ckpt_path")
        if ckpt in ("best", "last"):
            save_dir, name = _logger_location(cfg)
            cfg.ckpt_path = str(find_checkpoint(save_dir, name, ckpt))
            ckpt = cfg.ckpt_path
        if ckpt:
            if not Path(ckpt).is_file():
                raise TbclfError(f"--ckpt_path {ckpt}: no such file.")
            _use_checkpoint_preprocessing(cfg, ckpt)
            run_dir = run_dir_of(ckpt)
            if run_dir is not None:
                _set_logger_location(cfg, run_dir)

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand]
        model_args = cfg.model.get("init_args") if cfg.get("model") else None
        if model_args is not None and "image_size" in model_args and cfg.get("data"):
            # A model that sizes its layers from the input takes the data's image size.
            model_args.image_size = cfg.data.image_size
        trainer = cfg.trainer
        if trainer.get("precision") is None:
            accelerator = str(trainer.get("accelerator") or "auto")
            on_cuda = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
            if on_cuda:
                trainer.precision = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        if self.subcommand != "fit" or cfg.get("ckpt_path"):
            # config.yaml is the training config; a resumed fit or a later test/predict in the
            # same run folder keeps it and writes config.<subcommand>.yaml beside it.
            self.save_config_kwargs = {
                "config_filename": f"config.{self.subcommand}.yaml",
                "overwrite": True,
            }
        if self.subcommand == "predict" and cfg.get("ckpt_path"):
            run_dir = run_dir_of(cfg.ckpt_path)
            self._predict_dir = run_dir
        else:
            self._predict_dir = None

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            # Atomic checkpoints: a kill or a full disk never leaves a torn last.ckpt.
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def after_instantiate_classes(self) -> None:
        writer = self._get(self.config_init, "writer")
        if self._predict_dir is not None and isinstance(writer, PredictionWriter):
            writer.default_dir = self._predict_dir
        ckpt = self.config[self.subcommand].get("ckpt_path")
        if ckpt:
            check_checkpoint_matches(self.model, ckpt)


def last_checkpoint() -> ModelCheckpoint:
    """`last.ckpt` after every epoch, for `--ckpt_path last`.

    Lightning's own `save_last` only writes when a top-k checkpoint is written, so a run whose
    best epoch was early would resume from that epoch; this one does not depend on the monitor.
    """
    return ModelCheckpoint(
        filename="last", monitor=None, save_top_k=1, enable_version_counter=False
    )


def _logger_location(cfg: Any) -> tuple[str, str]:
    logger = cfg.trainer.get("logger")
    init = _init_args(logger)
    return str(init.get("save_dir", "runs")), str(init.get("name", "tbclf"))


def _init_args(logger: Any) -> Any:
    if logger is None or isinstance(logger, bool):
        return {}
    if isinstance(logger, list):
        logger = logger[0] if logger else None
        if logger is None:
            return {}
    return logger.get("init_args", {}) or {}


def _set_logger_location(cfg: Any, run_dir: Path) -> None:
    """Point the run's logger at the checkpoint's own folder (resume, test and predict)."""
    logger = cfg.trainer.get("logger")
    if logger is None or isinstance(logger, bool) or isinstance(logger, list):
        return
    class_path = str(logger.get("class_path", ""))
    if not class_path.endswith(("RunLogger", "TensorBoardLogger")):
        return
    init = logger.init_args
    init.save_dir = str(run_dir.parent.parent)
    init.name = run_dir.parent.name
    init.version = int(run_dir.name.split("_", 1)[1])


def _use_checkpoint_preprocessing(cfg: Any, ckpt: str) -> None:
    """Predict/test with the preprocessing the model was trained with, not today's config."""
    trained = read_checkpoint(ckpt).get("datamodule_hyper_parameters") or {}
    data = cfg.get("data")
    if data is None:
        return
    for key in MODEL_INPUT_KEYS:
        if key in trained and key in data and data[key] != trained[key]:
            warnings.warn(
                f"data.{key}={data[key]!r} differs from the checkpoint's {trained[key]!r}; "
                f"using the checkpoint's value so inputs match training ({ckpt}).",
                stacklevel=2,
            )
            data[key] = trained[key]


def _run_extra(command: str, argv: list[str]) -> None:
    from tbclf import commands

    getattr(commands, command)(argv)


def _model_from_checkpoint(argv: list[str]) -> list[str]:
    """`predict --ckpt_path X` without --config: name the checkpoint's model class.

    LightningCLI fills the model's arguments from the checkpoint, but only once a model class
    is chosen; the class is in the checkpoint too.
    """
    if not argv or argv[0] not in ("validate", "test", "predict"):
        return argv
    if any(
        a in ("-c", "--config", "--model") or a.startswith(("--config=", "--model=")) for a in argv
    ):
        return argv
    ckpt = None
    for i, arg in enumerate(argv):
        if arg == "--ckpt_path" and i + 1 < len(argv):
            ckpt = argv[i + 1]
        elif arg.startswith("--ckpt_path="):
            ckpt = arg.split("=", 1)[1]
    if not ckpt or not Path(ckpt).is_file():
        return argv
    hparams = read_checkpoint(ckpt).get("hyper_parameters")
    class_path = (hparams or {}).get("_class_path")
    return [*argv, "--model", class_path] if class_path else argv


def cli_main(args: list[str] | None = None) -> None:
    """Entry point of `python -m tbclf` and the `tbclf` script."""
    argv = list(sys.argv[1:] if args is None else args)
    try:
        if argv and argv[0] in EXTRA_COMMANDS:
            _run_extra(argv[0], argv[1:])
            return
        argv = _model_from_checkpoint(argv)
        if args is None:
            # LightningCLI (and DDP's re-launch of this command) read sys.argv themselves.
            sys.argv[1:] = argv
        TBCLI(
            model_class=TBClassifier,
            datamodule_class=TBDataModule,
            subclass_mode_model=True,
            save_config_callback=SaveConfigCallback,
            seed_everything_default=42,
            trainer_defaults={
                "callbacks": [
                    last_checkpoint(),
                    ReportCallback(),
                    LearningRateMonitor(logging_interval="epoch"),
                ]
            },
            parser_kwargs={"description": DESCRIPTION, "env_prefix": "TBCLF"},
            args=None if args is None else argv,
        )
    except TbclfError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        print(
            f"error: {error}. Free some space (or point the output elsewhere) and rerun; "
            "files written before stay valid.",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
