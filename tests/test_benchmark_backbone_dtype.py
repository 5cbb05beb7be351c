"""The fp16 check of the pretraining table: only the backbone is rounded, as the export does."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from tbclf.models import SimpleCNNClassifier
from tbclf.models.backbone_file import headless_state

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SPEC = importlib.util.spec_from_file_location("backbone_dtype", BENCHMARKS / "backbone_dtype.py")
backbone_dtype = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(backbone_dtype)


def test_rounding_touches_the_backbone_and_leaves_the_head() -> None:
    torch.manual_seed(0)
    model = SimpleCNNClassifier(class_names=["a", "b", "c"])
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(torch.randn_like(p) * 1e-3)  # digits fp16 cannot hold
    out = backbone_dtype.rounded(model, "float16")
    before, after = model.net.state_dict(), out.net.state_dict()
    body = set(headless_state(model))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= body
    assert set(model.head_keys()).isdisjoint(changed)
    for key in changed:
        assert torch.equal(after[key], before[key].half().float())
        assert after[key].dtype == before[key].dtype


def test_scores_rank_and_count_every_class() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    two = torch.tensor([[2.0, -2.0], [0.5, 0.0], [0.0, 0.2], [-1.0, 1.0]])
    assert backbone_dtype.scores(two, labels)["auroc_macro"] == pytest.approx(1.0)
    flipped = backbone_dtype.scores(two.flip(1), labels)
    assert flipped["auroc_macro"] == pytest.approx(0.0)
    assert flipped["balanced_accuracy"] == pytest.approx(0.0)


def test_a_folder_that_is_not_a_run_is_named(tmp_path: Path) -> None:
    from tbclf.errors import ConfigError

    with pytest.raises(ConfigError, match="no readable config.yaml"):
        backbone_dtype.validation_module(tmp_path, None, None)
