"""Checkpoints written like every other output (atomically) and read like untrusted input."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import torch
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.plugins.io import TorchCheckpointIO

from tbclf.io import atomic_write_bytes
from tbclf.models.loading import read_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Atomic saves and weights-only loads for every checkpoint the Trainer touches.

    Saving: Lightning's default stages a checkpoint in $TMPDIR and shutil.move()s it into place.
    When $TMPDIR is another filesystem (a tmpfs /tmp, a container volume) that move is a copy
    straight into last.ckpt, so a full disk or a kill during the copy destroys the previous
    checkpoint and the run cannot resume. Writing the temp file in the checkpoint's own folder
    keeps the final rename atomic, and a full disk names the checkpoint in its error.

    Loading (`--ckpt_path` for fit, validate, test and predict): ``torch.load`` with
    ``weights_only=True`` through :func:`tbclf.models.loading.read_checkpoint`, so a crafted
    checkpoint cannot run code whatever Lightning's own default is.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):  # remote: Lightning's own path
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getbuffer())

    def load_checkpoint(
        self,
        path: _PATH,
        map_location: Callable | None = None,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        return read_checkpoint(path, cached=False)
