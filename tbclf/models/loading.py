"""Load a trained tbclf model from a checkpoint, safely: the one loader every command uses.

A `.ckpt` is how people exchange models, so it is untrusted input. It is read with
``torch.load(weights_only=True)`` (tensors and plain values only, no code runs), and only
tbclf's own classifier classes are ever instantiated from the class path it names.
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tbclf.data.spec import PIXEL_FIELDS, InputSpec
from tbclf.errors import ConfigError
from tbclf.models.checkpoint_format import (
    CLASSIFIERS,
    checkpoint_operating_point,
    fill_missing_buffers,
)

if TYPE_CHECKING:
    from tbclf.models.module import TBClassifier


def classifier_classes() -> dict[str, type[TBClassifier]]:
    """Class path -> class, for every class a checkpoint may name (both import paths): the
    classifiers that registered themselves (importing ``tbclf.models`` defines them all)."""
    return dict(CLASSIFIERS)


def classifier_class(class_path: str | None, where: str | Path) -> type[TBClassifier]:
    """The tbclf class a checkpoint names; anything else is refused, never imported."""
    if not class_path:
        raise ConfigError(
            f"{where} has no model class in its hyperparameters; was it written by "
            "`python -m tbclf fit`? Pass --config with the run's config.yaml instead."
        )
    known = classifier_classes()
    if class_path not in known:
        raise ConfigError(
            f"{where} names the model class {class_path!r}, which is not a tbclf classifier; "
            f"tbclf only builds {', '.join(sorted({c.__name__ for c in known.values()}))} "
            "from a checkpoint (it never imports code a checkpoint names)."
        )
    return known[class_path]


def _torch_load(path: str) -> dict[str, Any]:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ConfigError(
            f"{path} cannot be loaded safely: it holds Python objects beyond tensors and plain "
            f"values ({str(error).splitlines()[0][:200]}). tbclf never runs code from a "
            "checkpoint; use a .ckpt written by `python -m tbclf fit`."
        ) from None
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ConfigError(
            f"{path}: not a readable checkpoint ({type(error).__name__}: {error}). "
            "Pass a .ckpt written by `python -m tbclf fit`."
        ) from None
    if not isinstance(checkpoint, dict):
        raise ConfigError(f"{path}: not a tbclf checkpoint; pass a .ckpt written by tbclf fit.")
    return fill_missing_buffers(checkpoint)


@functools.lru_cache(maxsize=2)
def _cached(path: str, mtime_ns: int) -> dict[str, Any]:
    return _torch_load(path)


def read_checkpoint(path: str | Path, cached: bool = True) -> dict[str, Any]:
    """The checkpoint as a dict (weights_only): read once per process when `cached`.

    Callers that mutate the dict (Lightning's restore) pass ``cached=False``.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--ckpt_path {p}: no such file.")
    if not cached:
        return _torch_load(str(p))
    return _cached(str(p), p.stat().st_mtime_ns)


def checkpoint_input_spec(checkpoint: dict[str, Any]) -> InputSpec:
    """The model's input spec; for checkpoints older than the spec, the data module's settings."""
    hparams = checkpoint.get("hyper_parameters") or {}
    if hparams.get("input_spec"):
        return InputSpec.from_dict(hparams["input_spec"], where="checkpoint input_spec")
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    return InputSpec.from_options({k: data[k] for k in PIXEL_FIELDS if k in data})


def model_hparams(checkpoint: dict[str, Any], where: str | Path) -> tuple[type, dict[str, Any]]:
    """(class, init kwargs) of the checkpoint's model, the input spec always included."""
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    cls = classifier_class(hparams.pop("_class_path", None), where)
    hparams.pop("_instantiator", None)
    hparams["input_spec"] = checkpoint_input_spec(checkpoint).to_dict()
    return cls, hparams


def load_classifier(
    path: str | Path, map_location: str | torch.device = "cpu", two_class: bool = True
) -> TBClassifier:
    """A trained tbclf classifier in eval mode, with its threshold and input spec.

    Every P(TB) consumer needs a two-class model; a multi-class (pretraining) checkpoint is
    refused with what it is for, unless ``two_class`` is False (exporting its backbone).

    >>> model = load_classifier("runs/mobilenet/version_0/checkpoints/best.ckpt")
    >>> model.input_spec.prepare("xray.png")  # the tensor the model takes
    """
    checkpoint = read_checkpoint(path)
    cls, hparams = model_hparams(checkpoint, path)
    if "state_dict" not in checkpoint:
        raise ConfigError(f"{path}: has no 'state_dict'; pass a .ckpt written by tbclf fit.")
    try:
        model = cls(**hparams)
    except TypeError as error:
        raise ConfigError(
            f"{path}: its hyperparameters do not fit {cls.__name__}: {error}"
        ) from None
    if two_class and model.multiclass:
        raise ConfigError(
            f"{path} is a {len(model.class_names)}-class model ({', '.join(model.class_names)}): "
            f"a backbone to start a TB model from (--model.init_args.weights {path}), not a TB "
            "classifier."
        )
    check_state_dict_fits(model, checkpoint, path)
    model.load_state_dict(checkpoint["state_dict"])
    model.recorded_operating_point = checkpoint_operating_point(checkpoint, str(path))
    return model.to(map_location).eval()


def check_state_dict_fits(model: nn.Module, checkpoint: dict[str, Any], where: str | Path) -> None:
    """Raise ConfigError naming the checkpoint, its model class and the differing keys."""
    if "state_dict" not in checkpoint:
        raise ConfigError(f"{where}: has no 'state_dict'; pass a .ckpt written by tbclf fit.")
    theirs = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items()}
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(ours) - set(theirs))
    unexpected = sorted(set(theirs) - set(ours))
    mismatched = sorted(k for k in set(ours) & set(theirs) if ours[k] != theirs[k])
    if not (missing or unexpected or mismatched):
        return
    trained = (checkpoint.get("hyper_parameters") or {}).get("_class_path", "another model")
    parts = [
        f"{where} was trained with {trained} and does not fit the model "
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
