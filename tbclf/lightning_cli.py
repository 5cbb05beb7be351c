"""The fit/validate/test/predict commands: LightningCLI with tbclf's run folders.

The run folder is the source of truth for a trained model: given a checkpoint, validate, test
and predict take the model's input spec from it and validate/test take the run's own
`split.json`, so changed `data.*` options can never score a model on images it trained on; the
options the run recorded (data.root among them) fill in what the command line leaves out.
Imported only when one of these commands runs, so `tbclf --help` starts without torch.
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

import torch
from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.plugins.io import TorchCheckpointIO

from tbclf.data.datamodule import TBDataModule
from tbclf.data.layouts import class_folder_names
from tbclf.data.records import BINARY_CLASSES
from tbclf.data.spec import PIXEL_FIELDS, InputSpec
from tbclf.engine.checkpoint_io import AtomicCheckpointIO
from tbclf.engine.lifecycle import (
    STOPPED,
    RunLifecycle,
    check_resume,
    describe_stop,
    find_resumable,
    recorded_config,
    resume_command,
)
from tbclf.engine.progress import count_images
from tbclf.engine.quiet import quiet_lightning
from tbclf.engine.report_callback import ReportCallback
from tbclf.engine.rng_state import RNGStateCallback
from tbclf.engine.rundir import discard_failed, find_checkpoint, run_dir_of, stage_version
from tbclf.engine.writer import PredictionWriter
from tbclf.errors import ConfigError, tbclf_cause
from tbclf.models.loading import (
    check_state_dict_fits,
    checkpoint_input_spec,
    model_hparams,
    read_checkpoint,
)
from tbclf.models.module import TBClassifier

# The data options that choose the split; a run's split.json records them.
SPLIT_OPTIONS = (
    "seed",
    "val_fraction",
    "test_fraction",
    "num_folds",
    "fold",
    "test_sources",
    "train_sources",
)


class TBArgumentParser(LightningArgumentParser):
    """Argument errors first and short: the error, the closest valid option names, where the
    full list is; no page of usage before them."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        parser = getattr(ex, "subcommand_parser", None) or self
        if not parser.exit_on_error:
            super().error(message, ex)
        print(f"error: {message.strip()}", file=sys.stderr)
        hints = suggest_options(message, option_names(parser))
        if hints:
            print(f"did you mean: {', '.join(hints)}?", file=sys.stderr)
        prog = parser.prog.replace(" [options]", "")
        print(f"`{prog} --help` lists the options.", file=sys.stderr)
        raise SystemExit(2)


def option_names(parser: Any) -> list[str]:
    """Every --option a parser knows, its subcommands' included."""
    names: list[str] = []
    for action in getattr(parser, "_actions", []):
        names += [o for o in action.option_strings if o.startswith("--")]
        for sub in (getattr(action, "_name_parser_map", None) or {}).values():
            names += option_names(sub)
    return names


def suggest_options(message: str, known: list[str]) -> list[str]:
    """The known options closest to each --option a message names that is not known."""
    import difflib

    hints: list[str] = []
    for token in re.findall(r"--[\w.\-]+", message):
        if token in known:
            continue
        for match in difflib.get_close_matches(token, known, n=3, cutoff=0.6):
            if match not in hints:
                hints.append(match)
    return hints[:3]


class RunConfigCallback(SaveConfigCallback):
    """config.yaml with the pixel options the data module used: the model's own, from a
    checkpoint, whatever the command line said (callbacks set up after the data module)."""

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        spec = getattr(trainer.datamodule, "input_spec", None)
        data = self.config.get("data") if isinstance(spec, InputSpec) else None
        if data:
            for key, value in spec.pixel_options().items():
                if key in data:
                    data[key] = value
        super().setup(trainer, pl_module, stage)


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
        parser.add_argument(
            "--tta",
            type=bool,
            default=False,
            help="test-time augmentation: average P(TB) over a fixed set of slight zooms and "
            "shifts (validate/test/predict; with fit, also the validation epochs)",
        )
        parser.add_argument(
            "--extend",
            type=bool,
            default=False,
            help="fit: train a finished run (--ckpt_path) further, to a larger "
            "--trainer.max_epochs; the learning-rate schedule is rebuilt for the new length",
        )
        parser.set_defaults(
            {
                "trainer.logger": {
                    "class_path": "tbclf.engine.rundir.RunLogger",
                    "init_args": {"save_dir": "runs", "name": "tbclf"},
                },
            }
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        argv = sys.argv[1:] if args is None else args
        self._explicit = explicit_options(argv) if isinstance(argv, list) else set()
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        cfg = self.config[subcommand]
        ckpt = cfg.get("ckpt_path")
        if ckpt in ("best", "last"):
            save_dir, name = _logger_location(cfg)
            if subcommand == "fit" and ckpt == "last" and not cfg.get("extend"):
                cfg.ckpt_path = str(find_resumable(save_dir, name))
            else:
                cfg.ckpt_path = str(find_checkpoint(save_dir, name, ckpt))
            ckpt = cfg.ckpt_path
            print(f"--ckpt_path {ckpt} ({subcommand})", file=sys.stderr)
        if ckpt:
            if not Path(ckpt).is_file():
                raise ConfigError(f"--ckpt_path {ckpt}: no such file.")
            run_dir = run_dir_of(ckpt)
            if run_dir is not None:
                _set_logger_location(cfg, run_dir, subcommand)

    def _parse_ckpt_path(self) -> None:
        """The model's hyperparameters (its input spec included) from the checkpoint.

        Lightning's own version imports whatever class the checkpoint names; this one only
        accepts tbclf classifiers and reads the file weights-only.
        """
        subcommand = self.config.get("subcommand")
        ckpt = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt:
            return
        checkpoint = read_checkpoint(ckpt)
        if not (checkpoint.get("hyper_parameters") or {}).get("_class_path"):
            return  # an older or foreign checkpoint: the config's model, checked on load
        cls, hparams = model_hparams(checkpoint, ckpt)
        model = {"class_path": f"{cls.__module__}.{cls.__qualname__}", "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": model}}, self.config)
        except SystemExit:
            sys.stderr.write(f"the hyperparameters in {ckpt} do not parse\n")
            raise

    def _user_set(self, section: str) -> dict[str, Any]:
        """The `section.*` values that differ from the parser's defaults (what the user set)."""
        cfg = self.config[self.subcommand].get(section) or {}
        parser = self._subcommand_parsers.get(self.subcommand)
        defaults = parser.get_defaults().get(section) if parser is not None else None
        defaults = defaults or {}
        return {k: v for k, v in dict(cfg).items() if k not in defaults or defaults[k] != v}

    def _data_from_checkpoint(self, ckpt: str) -> None:
        """Say which pixel options the model's spec overrides (the data module takes the
        model's spec in its setup); validate/test split from the run folder."""
        cfg = self.config[self.subcommand]
        data = cfg.get("data")
        if data is None:
            return
        user = self._user_set("data")
        spec = checkpoint_input_spec(read_checkpoint(ckpt))
        for key, (given, trained) in spec.differences(
            {k: v for k, v in user.items() if k in PIXEL_FIELDS}
        ).items():
            warnings.warn(
                f"data.{key}={given!r} differs from the model's {trained!r}; using the model's "
                f"value so inputs match training ({ckpt}).",
                stacklevel=2,
            )
        if self.subcommand in ("validate", "test", "fit"):  # fit: a resumed run
            _use_run_split(data, user, ckpt)

    def _recorded_options(self, ckpt: str) -> None:
        """What the checkpoint's run recorded (data.root and the rest) for the options the
        command line does not set; a command-line option that differs wins, with a warning."""
        run_dir = run_dir_of(ckpt)
        if run_dir is None:
            return
        source, recorded = recorded_config(run_dir)
        if source is None:
            return
        cfg = self.config[self.subcommand]
        sections = None if self.subcommand == "fit" else ("data",)
        taken = []
        for key, value in _flatten(recorded):
            if key.split(".")[0] in RUN_ONLY or key in RUN_ONLY:
                continue
            if sections is not None and key.split(".")[0] not in sections:
                continue
            if key.startswith("data.predict") or key not in cfg:
                continue
            if key in self._explicit:
                if cfg[key] != value and key.split(".")[-1] not in PIXEL_FIELDS:
                    warnings.warn(
                        f"{key}={cfg[key]!r} differs from {value!r} recorded in {source}; "
                        f"using {cfg[key]!r}.",
                        stacklevel=2,
                    )
                continue
            if cfg[key] != value:
                cfg[key] = value
                taken.append(f"{key}={value}")
        if taken:
            print(f"from {source}: {', '.join(taken)}", file=sys.stderr)
        root = cfg.get("data.root") if "data" in cfg and cfg.get("data") else None
        recorded_root = (recorded.get("data") or {}).get("root")
        if (
            self.subcommand != "predict"
            and root is not None
            and not Path(str(root)).exists()
            and recorded_root is not None
        ):
            given = "" if str(root) == str(recorded_root) else f"data.root {root} and "
            raise ConfigError(
                f"{given}the data root {recorded_root} that {source} records do not exist here. "
                "Pass --data.root with the folder that holds the run's images."
            )

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand]
        ckpt = cfg.get("ckpt_path")
        if ckpt:
            self._recorded_options(ckpt)
            self._data_from_checkpoint(ckpt)
            if self.subcommand == "fit" and run_dir_of(ckpt) is not None:
                check_resume(Path(ckpt), bool(cfg.get("extend")), cfg.trainer.get("max_epochs"))
        model_args = cfg.model.get("init_args") if cfg.get("model") else None
        if model_args is not None and cfg.get("data") and not ckpt:
            # A new model's head has one output per class of its data (one for two). Its input
            # spec comes from the data module in its setup (see tbclf.models.module).
            model_args.class_names = data_class_names(cfg.data)
        trainer = cfg.trainer
        if trainer.get("precision") is None:
            accelerator = str(trainer.get("accelerator") or "auto")
            on_cuda = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
            if on_cuda:
                trainer.precision = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        if self.subcommand != "fit" or ckpt:
            # config.yaml is the training config; a resumed fit or a later test/predict in the
            # same run folder keeps it and writes config.<subcommand>.yaml beside it.
            self.save_config_kwargs = {
                "config_filename": f"config.{self.subcommand}.yaml",
                "overwrite": True,
            }
        self._predict_dir = run_dir_of(ckpt) if self.subcommand == "predict" and ckpt else None

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as error:  # jsonargparse wraps errors raised in __init__
            cause = tbclf_cause(error)
            if cause is None:
                raise
            raise cause from None

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if subcommand == "predict" and kwargs.get("return_predictions") is None:
            # The writer streams rows to disk; Lightning would also keep them all in memory.
            kwargs["return_predictions"] = False
        return kwargs

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        count_images(trainer)  # predict's bar: images/s and the time left
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            # Atomic checkpoints: a kill or a full disk never leaves a torn last.ckpt.
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def after_instantiate_classes(self) -> None:
        if self.subcommand == "fit":
            for callback in self.trainer.callbacks:
                if isinstance(callback, RunLifecycle):
                    callback.extend = bool(self.config.fit.get("extend"))
        writer = self._get(self.config_init, "writer")
        if self._predict_dir is not None and isinstance(writer, PredictionWriter):
            writer.default_dir = self._predict_dir
        self.model.tta = bool(self.config[self.subcommand].get("tta"))
        ckpt = self.config[self.subcommand].get("ckpt_path")
        if ckpt:
            check_state_dict_fits(self.model, read_checkpoint(ckpt), ckpt)


# Recorded options a later command never takes from the run: where it logs, what it resumes.
RUN_ONLY = (
    "config",
    "ckpt_path",
    "extend",
    "model",
    "trainer.logger",
    "trainer.callbacks",
    "data.split_file",  # the run's split.json is chosen from the checkpoint (_use_run_split)
)


def explicit_options(argv: list[str]) -> set[str]:
    """The dotted option names given on the command line (`--data.root X`, `--a.b=c`)."""
    return {
        a[2:].split("=", 1)[0] for a in argv if isinstance(a, str) and a.startswith("--") and a[2:]
    }


def _flatten(doc: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) for the leaves of a recorded config; class_path blocks stay whole."""
    out: list[tuple[str, Any]] = []
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and "class_path" not in value:
            out += _flatten(value, f"{name}.")
        elif not isinstance(value, dict):
            out.append((name, value))
    return out


def data_class_names(data: Any) -> list[str]:
    """The classes the data options describe: folder names for ``layout: classes``."""
    if data.get("layout") == "classes" and data.get("root"):
        return class_folder_names(Path(data.root))
    return list(BINARY_CLASSES)


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


def _set_logger_location(cfg: Any, run_dir: Path, subcommand: str) -> None:
    """Point the logger at the checkpoint's run folder: the run itself for a resumed fit, a
    fresh `<stage>-<time>` folder inside it for validate, test and predict."""
    logger = cfg.trainer.get("logger")
    if logger is None or isinstance(logger, bool) or isinstance(logger, list):
        return
    class_path = str(logger.get("class_path", ""))
    if not class_path.endswith(("RunLogger", "TensorBoardLogger")):
        return
    init = logger.init_args
    init.save_dir = str(run_dir.parent.parent)
    init.name = run_dir.parent.name
    init.version = (
        int(run_dir.name.split("_", 1)[1])
        if subcommand == "fit"
        else stage_version(run_dir, subcommand)
    )


def _use_run_split(data: Any, user: dict[str, Any], ckpt: str) -> None:
    """validate, test and a resumed fit use the run's own split.json, unless the user names one.

    A split option set to another value than the run's (``--data.seed 7``) would score the
    model on images it trained on, so it stops with an error that says why.
    """
    if user.get("split_file"):
        return  # an explicit split file is the user's informed choice
    run_dir = run_dir_of(ckpt)
    split_json = run_dir / "split.json" if run_dir is not None else None
    if split_json is None or not split_json.is_file():
        warnings.warn(
            f"{ckpt} has no split.json in a run folder beside it: the split is rebuilt from "
            "the data.* options, which must equal training's or the scores include training "
            "images. Pass --data.split_file to choose the split.",
            stacklevel=2,
        )
        return
    try:
        recorded = json.loads(split_json.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{split_json} is unreadable ({exc}); pass --data.split_file.") from None
    clashes = [
        f"data.{k}={user[k]!r} (the run used {recorded.get(k)!r})"
        for k in SPLIT_OPTIONS
        if k in user and k in recorded and user[k] != recorded[k]
    ]
    if clashes:
        raise ConfigError(
            f"{', '.join(clashes)}: a split made with other options would score this model on "
            f"images it was trained on. The run's split is {split_json}; drop these options to "
            "use it, or pass --data.split_file to choose a split yourself."
        )
    data.split_file = str(split_json)


def _model_from_checkpoint(argv: list[str]) -> list[str]:
    """`predict --ckpt_path X` without --config: name the checkpoint's model class.

    LightningCLI fills the model's arguments from the checkpoint, but only once a model class
    is chosen; the class is in the checkpoint too (a tbclf class, or the checkpoint is refused).
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
    if not ckpt or ckpt in ("best", "last"):
        return argv
    cls, _ = model_hparams(read_checkpoint(ckpt), ckpt)
    return [*argv, "--model", f"{cls.__module__}.{cls.__qualname__}"]


def run_trainer_command(argv: list[str], from_sys_argv: bool, prog: str, description: str) -> None:
    """Run `PROG fit|validate|test|predict ARGV[1:]` and print the line it ends with."""
    quiet_lightning()
    argv = _model_from_checkpoint(argv)
    if from_sys_argv:
        # LightningCLI (and DDP's re-launch of this command) read sys.argv themselves.
        sys.argv[1:] = argv
    cli = TBCLI(
        model_class=TBClassifier,
        datamodule_class=TBDataModule,
        subclass_mode_model=True,
        save_config_callback=RunConfigCallback,
        parser_class=TBArgumentParser,
        seed_everything_default=42,
        trainer_defaults={
            "callbacks": [
                last_checkpoint(),
                ReportCallback(),
                LearningRateMonitor(logging_interval="epoch"),
                RNGStateCallback(),
                RunLifecycle(),
            ]
        },
        parser_kwargs={"prog": prog, "description": description, "env_prefix": "TBCLF"},
        args=None if from_sys_argv else argv,
    )
    line = stage_summary(cli)
    if line:
        print(line)


def stage_summary(cli: LightningCLI) -> str | None:
    """The line a stage ends with: its run folder and its main outputs."""
    trainer, stage = getattr(cli, "trainer", None), cli.subcommand
    if trainer is None or stage is None:
        return None
    # trainer.log_dir is a broadcast under DDP: every rank asks, or rank 0 waits for the others.
    log_dir = trainer.log_dir
    if not trainer.is_global_zero or not log_dir:
        return None
    folder = Path(log_dir)
    outputs: list[Path] = []
    if stage == "fit":
        outputs = [p for p in (folder / "checkpoints" / f"{n}.ckpt" for n in ("best", "last"))]
    for callback in trainer.callbacks:
        if stage == "test" and isinstance(callback, ReportCallback) and callback.report_dir:
            outputs.append(callback.report_dir / "report.md")
        if stage == "predict" and isinstance(callback, PredictionWriter) and callback.written:
            outputs.append(callback.written)
    listed = ", ".join(str(p) for p in outputs if p.exists())
    return f"{stage} done: run folder {folder}" + (f"; outputs: {listed}" if listed else "")


def report_stop(error: BaseException, argv: list[str]) -> None:
    """Clean up or mark the folders a stopped command claimed, and tell the user; a stopped
    fit's failed.txt and message give the command that resumes it."""
    fit = bool(argv) and argv[0] == "fit"
    what = describe_stop(error) if fit else f"{type(error).__name__}: {error}"

    def resume(folder: Path) -> str:
        last = folder / "checkpoints" / "last.ckpt"
        if not fit or not last.is_file():
            return ""
        return f"resume with: {resume_command(argv, last)}"

    interrupted = isinstance(error, KeyboardInterrupt) or isinstance(
        STOPPED.get("exception"), KeyboardInterrupt
    )
    for folder, removed in discard_failed(what, resume):
        if not fit or not (interrupted or "epoch" in STOPPED):
            continue  # refused before training: the error says why
        if removed:
            print(
                f"{what}. Removed {folder}: it stopped before its first checkpoint. "
                f"Start again with:\n  {resume_command(argv, None)}",
                file=sys.stderr,
            )
        elif resume(folder):
            print(
                f"{what}. {folder} is kept (see its failed.txt). Resume it with:\n"
                f"  {resume_command(argv, folder / 'checkpoints' / 'last.ckpt')}",
                file=sys.stderr,
            )
