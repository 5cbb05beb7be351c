"""`tbclf` / `python -m tbclf`: dispatches to the Trainer commands (fit/validate/test/predict,
in :mod:`tbclf.lightning_cli`) and the commands in :mod:`tbclf.commands`.

Nothing heavy is imported here: `tbclf --help` and `--version` answer without torch.
"""

from __future__ import annotations

import errno
import sys

from tbclf import __version__
from tbclf.commands import COMMANDS, run_command
from tbclf.errors import tbclf_cause

PROG = "tbclf"
TRAINER_COMMANDS = {
    "fit": "train a model (a run folder under runs/<name>/version_N)",
    "validate": "score a checkpoint on its run's validation split",
    "test": "score a checkpoint on its run's test split and write the report",
    "predict": "P(TB) and decisions for new images, written to predictions.csv",
}


def usage() -> str:
    """`tbclf --help`: every command, Lightning's and tbclf's own."""
    width = max(len(n) for n in (*TRAINER_COMMANDS, *COMMANDS))
    lines = [
        f"usage: {PROG} COMMAND [options]   (also: python -m tbclf COMMAND ...)",
        "",
        "Tell tuberculosis from healthy lungs on chest X-rays.",
        "",
        "commands:",
    ]
    lines += [f"  {n:<{width}}  {t}" for n, t in {**TRAINER_COMMANDS, **COMMANDS}.items()]
    lines += [
        "",
        f"`{PROG} COMMAND --help` lists a command's options; fit/validate/test/predict take",
        "--config FILE (configs/*.yaml) and any --trainer.*, --model.*, --data.* option.",
    ]
    return "\n".join(lines)


# The options people use, per Trainer command: (option, what it is). `--help` lists these first,
# with the values of the --config file given, then Lightning's full list.
COMMON_OPTIONS: dict[str, list[tuple[str, str]]] = {
    "fit": [
        ("--data.root", "folder (or Zindi CSV) with the images"),
        ("--model.init_args.weights", "start from: ImageNet file, tbclf checkpoint or backbone"),
        ("--trainer.max_epochs", "epochs to train"),
        ("--data.image_size", "side of the square model input, pixels"),
        ("--seed_everything", "seed of weights init and augmentation"),
        ("--data.seed", "seed of the train/val/test split"),
        ("--data.batch_size", "images per step"),
        ("--trainer.accelerator", "cpu, gpu or auto"),
        ("--ckpt_path", "last: resume the newest stopped run of this config; or a .ckpt"),
        ("--extend", "true: train a finished run (--ckpt_path) to a larger max_epochs"),
    ],
    "validate": [
        ("--ckpt_path", "the run's checkpoint (best.ckpt); data.root etc. come from its run"),
        ("--data.root", "only where the run's images moved"),
        ("--tta", "test-time augmentation"),
    ],
    "predict": [
        ("--ckpt_path", "the run's checkpoint (best.ckpt)"),
        ("--data.predict_root", "folder of images to score"),
        ("--writer.output", "CSV path (default: predictions.csv in the run folder)"),
        ("--tta", "test-time augmentation"),
    ],
}
COMMON_OPTIONS["test"] = COMMON_OPTIONS["validate"]


def short_help(command: str, argv: list[str]) -> str:
    """The options people use for a Trainer command, with the --config file's values."""
    values: dict = {}
    config = _option_value(argv, "--config") or _option_value(argv, "-c")
    if config:
        import yaml

        try:
            values = yaml.safe_load(open(config, encoding="utf-8")) or {}  # noqa: SIM115
        except (OSError, yaml.YAMLError) as exc:
            return f"error: --config {config}: {exc}"
    rows = []
    for option, text in COMMON_OPTIONS[command]:
        value: object = values
        for part in option[2:].split("."):
            value = value.get(part) if isinstance(value, dict) else None
        shown = f" (now {value})" if config and value is not None else ""
        rows.append(f"  {option:<27} {text}{shown}")
    head = f"{PROG} {command}: the options people use" + (
        f", with {config}'s values" if config else ""
    )
    return "\n".join(
        [
            head,
            *rows,
            "",
            "All options (Lightning's list; defaults there are not the config's):",
            "",
        ]
    )


def _option_value(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


def _onnx_model(argv: list[str]) -> bool:
    """`predict --model X.onnx`: an exported model, not a LightningCLI model class."""
    for i, arg in enumerate(argv):
        value = argv[i + 1] if arg == "--model" and i + 1 < len(argv) else None
        if arg.startswith("--model="):
            value = arg.split("=", 1)[1]
        if value is not None and value.lower().endswith(".onnx"):
            return True
    return False


def cli_main(args: list[str] | None = None) -> None:
    """Entry point of `python -m tbclf` and the `tbclf` script."""
    argv = list(sys.argv[1:] if args is None else args)
    try:
        if not argv or argv[0] in ("-h", "--help", "help"):
            print(usage())
            return
        if argv[0] in ("-V", "--version", "version"):
            print(f"{PROG} {__version__}")
            return
        if argv[0] in COMMANDS:
            run_command(argv[0], argv[1:])
            return
        if argv[0] == "predict" and _onnx_model(argv):
            run_command("predict_onnx", argv[1:])
            return
        if argv[0] in COMMON_OPTIONS and ("-h" in argv or "--help" in argv):
            print(short_help(argv[0], argv), flush=True)
        from tbclf.lightning_cli import run_trainer_command

        run_trainer_command(argv, args is None, PROG, usage())
    except Exception as error:
        _report_stop(error, argv)
        cause = tbclf_cause(error)
        if cause is not None:
            print(f"error: {cause}", file=sys.stderr)
            raise SystemExit(2) from None
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            print(
                f"error: {error}. Free some space (or point the output elsewhere) and rerun; "
                "files written before stay valid.",
                file=sys.stderr,
            )
            raise SystemExit(2) from None
        raise
    except BaseException as error:  # SystemExit from a refused argument, KeyboardInterrupt
        if not (isinstance(error, SystemExit) and error.code in (0, None)):
            _report_stop(error, argv)
        raise


def _report_stop(error: BaseException, argv: list[str]) -> None:
    """Clean up after a Trainer command (nothing to do when none ran)."""
    if "tbclf.lightning_cli" in sys.modules:
        from tbclf.lightning_cli import report_stop

        report_stop(error, argv)
    elif "tbclf.engine.rundir" in sys.modules:
        from tbclf.engine.rundir import discard_failed

        discard_failed(error)
