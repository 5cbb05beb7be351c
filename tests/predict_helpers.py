"""Tiny untrained models (a checkpoint and its ONNX export) and small images, for the predict
tests; not collected by pytest. An untrained network still gives each image its own P(TB),
which is all that comparing two predict runs needs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytorch_lightning as pl
import torch

from tbclf import export
from tbclf.models import SimpleCNNClassifier

IMAGE_SIZE = 16


def tiny_models(folder: Path, threshold: float = 0.5) -> dict[str, Path]:
    """best.ckpt and model.onnx of one small random CNN (seeded), threshold set."""
    torch.manual_seed(0)
    spec = {"image_size": IMAGE_SIZE, "preprocessing": "none", "crop_border": False}
    model = SimpleCNNClassifier(
        channels=[4], kernel_sizes=[3], head=[4], image_size=IMAGE_SIZE, channels_last=False,
        input_spec=spec,
    )  # fmt: skip
    model.threshold.fill_(threshold)
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = folder / "best.ckpt"
    hparams = {**model.hparams, "_class_path": "tbclf.models.SimpleCNNClassifier"}
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": hparams,
            "pytorch-lightning_version": pl.__version__,
        },
        ckpt,
    )
    onnx_path, _ = export.export_onnx(model, folder / "model.onnx")
    return {"ckpt": ckpt, "onnx": onnx_path}


def write_images(folder: Path, n: int, size: int = 24, seed: int = 0) -> list[Path]:
    """n gray PNGs of random texture, each different."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        img = rng.integers(0, 256, (size, size), dtype=np.uint8)
        path = folder / f"img_{i:03d}.png"
        cv2.imwrite(str(path), img)
        paths.append(path)
    return paths
