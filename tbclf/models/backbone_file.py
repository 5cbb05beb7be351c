"""A trained network without its head, as a small safetensors file: what tbclf ships (chest
X-ray pretrained backbones) and what ``model.weights`` takes to start a new model from.

safetensors holds tensors and string metadata only, so reading one never runs code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tbclf.errors import ConfigError
from tbclf.io import atomic_write_bytes
from tbclf.models.loading import load_classifier

if TYPE_CHECKING:
    from tbclf.models.module import TBClassifier

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def headless_state(model: TBClassifier) -> dict[str, torch.Tensor]:
    """A classifier's network without its head: what ``model.weights`` transfers."""
    head = model.head_keys()
    return {k: v for k, v in model.net.state_dict().items() if k not in head}


def headless_state_as(model: TBClassifier, dtype: str = "float16") -> dict[str, torch.Tensor]:
    """What a backbone file stores: ``headless_state`` with floating tensors cast to ``dtype``,
    counters (BatchNorm's num_batches_tracked) kept as they are."""
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    return {
        k: (v.to(DTYPES[dtype]) if v.is_floating_point() else v).contiguous()
        for k, v in headless_state(model).items()
    }


def backbone_tensors(ckpt_path: str | Path, dtype: str = "float16") -> tuple[dict, dict]:
    """(tensors, metadata) of a checkpoint's network without its head, as stored in ``dtype``."""
    model = load_classifier(ckpt_path, two_class=False)
    tensors = headless_state_as(model, dtype)
    hparams = dict(model.hparams)
    metadata = {
        "tbclf_model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "backbone": str(hparams.get("backbone", "")),
        "class_names": json.dumps(model.class_names),
        "input_spec": json.dumps(model.input_spec.to_dict()),
        "source_checkpoint": Path(ckpt_path).name,
        "dtype": dtype,
    }
    return tensors, metadata


def export_backbone(
    ckpt_path: str | Path, out: str | Path, dtype: str = "float16", overwrite: bool = False
) -> dict[str, Any]:
    """Write the backbone of ``ckpt_path`` to ``out`` (.safetensors), atomically."""
    from safetensors.torch import save

    out = Path(out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out {out}: name the file *.safetensors")
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists; pass --overwrite true to replace it.")
    tensors, metadata = backbone_tensors(ckpt_path, dtype)
    atomic_write_bytes(out, save(tensors, metadata=metadata))
    return {"path": str(out), "tensors": len(tensors), **metadata}
