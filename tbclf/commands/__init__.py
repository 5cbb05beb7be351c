"""The commands that are not a Trainer method; each lives in its own module with a `main(argv)`.

Add a command by writing ``tbclf/commands/NAME.py`` with ``main(argv: list[str])`` and one line
in :data:`COMMANDS`.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> one-line help; the module tbclf.commands.<name> holds main(argv).
COMMANDS: dict[str, str] = {
    "eda": "explore a data set: mean/std images, contrast, eigen-images, histograms",
    "report": "evaluation report (intervals, ROC/PR, calibration) from a predictions.csv",
    "explain": "Grad-CAM overlays for a folder of images and a checkpoint",
    "saliency": "saliency maps scored against radiologists' boxes (energy, pointing, ROAD)",
    "export": "a checkpoint as a self-describing ONNX model (optionally also INT8)",
    "serve": "HTTP API and web page for a .onnx or .ckpt model (127.0.0.1 by default)",
    "ensemble": "predict/test with several checkpoints or a cv group: P(TB) averaged",
    "rethreshold": "a copy of a checkpoint with its threshold re-picked on a new site's images",
    "backbone": "a checkpoint's network without its head, as .safetensors (to start from)",
    "cv": "k-fold cross-validation: a run folder per fold, pooled out-of-fold estimate",
}


def run_command(name: str, argv: list[str]) -> Any:
    """Run `tbclf NAME ARGV` (imports only that command's module)."""
    return importlib.import_module(f"tbclf.commands.{name}").main(argv)
