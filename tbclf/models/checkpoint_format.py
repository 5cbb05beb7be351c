"""What a tbclf checkpoint holds beyond Lightning's own keys: a leaf module, so the
LightningModule, the safe loader and the commands that rewrite checkpoints share it without
importing each other.

- The buffers ``threshold`` and ``temperature`` (in ``state_dict``); checkpoints older than a
  buffer get it at the value that means "as before" (:func:`fill_missing_buffers`).
- The operating point's record under :data:`~tbclf.evaluation.operating_point.KEY`
  (:func:`checkpoint_operating_point`; the older key for a re-picked threshold still reads).
- The classes a checkpoint may name: every tbclf classifier registers itself here
  (:func:`register`), and the loader builds nothing else.
"""

from __future__ import annotations

from typing import Any

import torch

from tbclf.errors import ConfigError
from tbclf.evaluation.operating_point import KEY, LEGACY_CHECKPOINT_KEY, OperatingPoint

BUFFERS = ("threshold", "temperature")
# Buffers added after the first release, with the value that means "as before".
LATER_BUFFERS = {"temperature": 1.0}

# Class path -> class of every tbclf classifier (filled by TBClassifier.__init_subclass__).
CLASSIFIERS: dict[str, type] = {}


def register(cls: type) -> None:
    """Let checkpoints name ``cls`` (a classifier defined inside the tbclf package), under
    its module path and the short ``tbclf.models.<Name>`` path."""
    if not cls.__module__.startswith("tbclf."):
        return  # a subclass made elsewhere (tests, user code) is never built from a file
    CLASSIFIERS[f"{cls.__module__}.{cls.__qualname__}"] = cls
    CLASSIFIERS[f"tbclf.models.{cls.__name__}"] = cls


def fill_missing_buffers(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Older tbclf checkpoints (they have a ``threshold`` buffer) get the buffers added
    since, at their neutral value, so they load and score exactly as they did."""
    state = checkpoint.get("state_dict")
    if isinstance(state, dict) and "threshold" in state:
        for name, value in LATER_BUFFERS.items():
            state.setdefault(name, torch.tensor(value, dtype=torch.float32))
    return checkpoint


def checkpoint_operating_point(checkpoint: dict[str, Any], where: str = "checkpoint"):
    """The recorded operating point (threshold and temperature as the buffers hold them), or
    None when the checkpoint records none: its threshold was chosen on its run's validation
    split, which the model's hyperparameters describe."""
    state = checkpoint.get("state_dict") or {}
    threshold = _buffer(state, "threshold", 0.5)
    temperature = _buffer(state, "temperature", 1.0)
    record = checkpoint.get(KEY)
    if record is not None:
        op = OperatingPoint.from_dict(record, f"{where} ({KEY})")
        return op.with_threshold(threshold, temperature)
    legacy = checkpoint.get(LEGACY_CHECKPOINT_KEY)
    if isinstance(legacy, dict) and legacy:
        return OperatingPoint.from_legacy(threshold, legacy, temperature)
    return None


def _buffer(state: dict[str, Any], name: str, default: float) -> float:
    value = state.get(name, default)
    try:
        return float(value.item() if isinstance(value, torch.Tensor) else value)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"the checkpoint's {name} is not a number ({value!r:.80}).") from None
