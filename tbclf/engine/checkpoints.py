"""Checks that a checkpoint fits the model a config builds, before Lightning half-loads it."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tbclf.errors import ConfigError


@functools.lru_cache(maxsize=2)
def _load(path: str, mtime_ns: int) -> dict[str, Any]:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ConfigError(
            f"{path}: not a readable checkpoint ({type(error).__name__}: {error}). "
            "Pass a .ckpt written by `python -m tbclf fit`."
        ) from error
    if not isinstance(checkpoint, dict):
        raise ConfigError(f"{path}: not a tbclf checkpoint; pass a .ckpt written by tbclf fit.")
    return checkpoint


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint as a dict, read once per process however many steps look into it."""
    return _load(str(path), Path(path).stat().st_mtime_ns)


def check_checkpoint_matches(model: nn.Module, ckpt_path: str | Path) -> None:
    """Raise ConfigError naming the checkpoint, its model class and the differing keys."""
    checkpoint = read_checkpoint(ckpt_path)
    if "state_dict" not in checkpoint:
        raise ConfigError(f"{ckpt_path}: has no 'state_dict'; pass a .ckpt written by tbclf fit.")
    theirs = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items()}
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(ours) - set(theirs))
    unexpected = sorted(set(theirs) - set(ours))
    mismatched = sorted(k for k in set(ours) & set(theirs) if ours[k] != theirs[k])
    if not (missing or unexpected or mismatched):
        return
    trained = (checkpoint.get("hyper_parameters") or {}).get("_class_path", "another model")
    parts = [
        f"{ckpt_path} was trained with {trained} and does not fit the model "
        f"{type(model).__module__}.{type(model).__qualname__} built from this config."
    ]
    if missing:
        parts.append(f"missing keys ({len(missing)}): {', '.join(missing[:8])}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:8])}")
    if mismatched:
        shown = ", ".join(f"{k} {theirs[k]} vs {ours[k]}" for k in mismatched[:8])
        parts.append(f"shape mismatches ({len(mismatched)}): {shown}")
    parts.append("Use the config the checkpoint was trained with (config.yaml in its run folder).")
    raise ConfigError("\n".join(parts))
