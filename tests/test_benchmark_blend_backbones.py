"""The weight-space blend of two backbones that the pretraining table measures."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from tbclf.models import TimmClassifier
from tbclf.models.backbone_file import headless_state

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SPEC = importlib.util.spec_from_file_location("blend_backbones", BENCHMARKS / "blend_backbones.py")
blend_backbones = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(blend_backbones)


def test_blend_mixes_floats_and_keeps_counters() -> None:
    a = {"w": torch.zeros(3), "bn.num_batches_tracked": torch.tensor(5)}
    b = {"w": torch.full((3,), 4.0), "bn.num_batches_tracked": torch.tensor(9)}
    out = blend_backbones.blend(a, b, share_b=0.25)
    assert torch.equal(out["w"].float(), torch.full((3,), 1.0))
    assert out["w"].dtype == torch.float16
    assert int(out["bn.num_batches_tracked"]) == 9
    with pytest.raises(SystemExit, match="differ in keys"):
        blend_backbones.blend(a, {"w": b["w"]}, 0.5)


def test_blended_file_starts_a_model_between_its_two_ends(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ends = []
    for name in ("a", "b"):
        body = headless_state(TimmClassifier(pretrained=False, channels_last=False))
        save_file(body, tmp_path / f"{name}.safetensors")
        ends.append(body)
    a = blend_backbones.backbone_of(str(tmp_path / "a.safetensors"), "mobilenetv2_100")
    b = blend_backbones.backbone_of(str(tmp_path / "b.safetensors"), "mobilenetv2_100")
    save_file(blend_backbones.blend(a, b, 0.5), tmp_path / "mid.safetensors")
    mid = TimmClassifier(pretrained=False, weights=str(tmp_path / "mid.safetensors"))
    key = "conv_stem.weight"
    expected = (ends[0][key] + ends[1][key]) / 2
    assert torch.allclose(mid.net.state_dict()[key], expected, atol=1e-3)
    assert mid.weights_origin["file"] == "mid.safetensors"
