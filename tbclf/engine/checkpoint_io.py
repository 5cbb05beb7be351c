"""Checkpoints written like every other output: a temp file beside the target, fsync, os.replace."""

from __future__ import annotations

import io
from typing import Any

import torch
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.plugins.io import TorchCheckpointIO

from tbclf.engine.atomic import atomic_write_bytes


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's default stages a checkpoint in $TMPDIR and shutil.move()s it into place.

    When $TMPDIR is another filesystem (a tmpfs /tmp, a container volume) that move is a copy
    straight into last.ckpt, so a full disk or a kill during the copy destroys the previous
    checkpoint and the run cannot resume. Writing the temp file in the checkpoint's own folder
    keeps the final rename atomic, and a full disk names the checkpoint in its error.
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
