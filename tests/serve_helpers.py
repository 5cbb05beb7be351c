"""Tiny trained models in real run folders, for the export/inference/serve tests.

Not collected by pytest. A run folder is what `tbclf fit` leaves: checkpoints/best.ckpt and
split.json over a small learnable image set (tests/cli_helpers.make_learnable).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytorch_lightning as pl

from tbclf.data.datamodule import TBDataModule
from tbclf.models.backbone import offline_mobilenetv2_weights
from tbclf.models.classifiers import SimpleCNNClassifier, TimmClassifier
from tests.cli_helpers import make_learnable
from tests.models_fakes import tiny_trainer

# ../shared beside the repository (CI, main); one level up for worktrees under wt/.
_REPO = Path(__file__).resolve().parents[1]
DEV = next(
    (
        p
        for p in (
            _REPO.parent / "shared/data/tb-cxr-dev",
            _REPO.parent.parent / "shared/data/tb-cxr-dev",
        )
        if p.is_dir()
    ),
    _REPO.parent / "shared/data/tb-cxr-dev",
)


def build_model(kind: str, image_size: int) -> pl.LightningModule:
    if kind == "simple":
        return SimpleCNNClassifier(image_size=image_size, scheduler="none")
    weights = offline_mobilenetv2_weights()
    return TimmClassifier(weights=str(weights), pretrained=False, freeze_epochs=0, scheduler="none")


def train_run(
    base: Path, kind: str = "simple", image_size: int = 64, epochs: int = 2, n_per_class: int = 10
) -> Path:
    """Train `kind` ("simple" or "timm") on learnable images; returns best.ckpt in a run folder."""
    pl.seed_everything(0, workers=True)
    data_root = make_learnable(base / "data", n_per_class=n_per_class, size=96)
    dm = TBDataModule(
        root=str(data_root),
        image_size=image_size,
        batch_size=8,
        num_workers=0,
        val_fraction=0.25,
        test_fraction=0.25,
        cache_dir=str(base / "cache"),
    )
    run_dir = base / "runs" / kind / "version_0"
    model = build_model(kind, image_size)
    trainer = tiny_trainer(base, max_epochs=epochs, deterministic=True)
    trainer.fit(model, datamodule=dm)
    dm.save_split(run_dir / "split.json")
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    trainer.save_checkpoint(ckpt)
    return ckpt


def write_png(path: Path, height: int = 120, width: int = 100, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    img = rng.normal(100, 30, (height, width)).clip(0, 255).astype(np.uint8)
    cv2.circle(img, (width // 2, height // 2), min(height, width) // 5, 240, -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)
    return path


def dev_images(n: int) -> list[Path]:
    """n dev-set images spread over its sources (sorted, deterministic)."""
    exts = {".png", ".jpg", ".jpeg"}
    paths = sorted(p for p in DEV.rglob("*") if p.suffix.lower() in exts)
    if len(paths) <= n:
        return paths
    idx = np.linspace(0, len(paths) - 1, n).round().astype(int)
    return [paths[i] for i in idx]


@contextlib.contextmanager
def running_server(app, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve `app` with uvicorn in a thread on a free port; yields its base URL."""
    import uvicorn

    with socket.socket() as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
