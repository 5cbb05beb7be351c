"""Helpers for tests that run the real CLI in subprocesses on small, learnable images."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def make_learnable(root: Path, n_per_class: int = 12, size: int = 48, seed: int = 0) -> Path:
    """Class folders under two sources; TB images carry a bright blob a model can learn."""
    rng = np.random.default_rng(seed)
    for source in ("sa", "sb"):
        for label, cls in ((0, "healthy"), (1, "tb")):
            folder = root / source / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n_per_class):
                img = rng.normal(90, 20, (size, size)).clip(0, 255).astype(np.uint8)
                if label:
                    cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
                    cv2.circle(img, (int(cx), int(cy)), size // 6, 250, -1)
                cv2.imwrite(str(folder / f"{cls}_{i:03d}.png"), img)
    return root


def run_cli(
    args: list[str], cwd: Path, timeout: int = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run `python -m tbclf ARGS` in cwd and return the finished process (output captured)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("TBCLF_RUN_VERSION", None)
    return subprocess.run(
        [sys.executable, "-m", "tbclf", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def small_run_args(data_root: Path, image_size: int = 48, epochs: int = 2) -> list[str]:
    """Overrides that make any config train in seconds on CPU."""
    return [
        "--data.root",
        str(data_root),
        "--data.image_size",
        str(image_size),
        "--data.batch_size",
        "8",
        "--data.num_workers",
        "0",
        "--data.cache_dir",
        str(data_root.parent / "cache"),
        "--data.val_fraction",
        "0.25",
        "--data.test_fraction",
        "0.25",
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.accelerator",
        "cpu",
        "--trainer.enable_progress_bar",
        "false",
    ]
