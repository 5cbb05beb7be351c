"""The chest X-ray backbones that ship inside the package load offline, by name."""

from __future__ import annotations

import hashlib
import re
import socket
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tbclf.errors import ConfigError
from tbclf.models import SimpleCNNClassifier, TimmClassifier
from tbclf.models.backbone_file import headless_state
from tbclf.models.shipped_weights import resolve_weights, shipped_weights

REPO = Path(__file__).resolve().parents[1]
CARD = REPO / "tbclf" / "weights" / "MODEL_CARD.md"


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network use in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def _starts_from(model, path: Path) -> None:
    """Every tensor but the head comes from the file (stored fp16, loaded into fp32)."""
    shipped = load_file(str(path))
    state = headless_state(model)
    assert set(shipped) == set(state)
    for key, value in shipped.items():
        assert torch.equal(state[key], value.to(state[key].dtype)), key


def test_every_shipped_file_is_on_the_model_card_with_its_hash():
    shipped = shipped_weights()
    assert {"cxr_mobilenetv2_100", "cxr_simple_cnn"} <= set(shipped)
    card = CARD.read_text()
    for name, path in shipped.items():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        pattern = rf"`tbclf:{name}` \| `{re.escape(path.name)}`[^\n]*`([0-9a-f]{{64}})`"
        row = re.search(pattern, card)
        assert row, f"{path.name} has no row with its SHA-256 on the model card"
        assert row.group(1) == digest, f"{path.name}: the card's hash is not the file's"


def test_shipped_backbone_loads_offline_by_name_and_records_its_origin(no_network):
    path = resolve_weights("tbclf:cxr_mobilenetv2_100")
    model = TimmClassifier(
        backbone="mobilenetv2_100", pretrained=True, weights="tbclf:cxr_mobilenetv2_100"
    )
    origin = model.weights_origin
    assert origin["file"] == "cxr_mobilenetv2_100.safetensors"
    assert origin["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert model.hparams["weights_origin"] == origin

    _starts_from(model, path)
    assert model(torch.rand(2, 3, 64, 64)).shape == (2,)  # one TB logit an image


def test_small_cnn_backbone_fits_the_shipped_config_offline(no_network):
    """The small CNN's file starts the network of configs/simple_cnn.yaml as shipped."""
    config = yaml.safe_load((REPO / "configs" / "simple_cnn.yaml").read_text())
    args = {**config["model"]["init_args"], "weights": "tbclf:cxr_simple_cnn"}
    model = SimpleCNNClassifier(**args)
    path = resolve_weights("tbclf:cxr_simple_cnn")
    assert model.weights_origin["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    _starts_from(model, path)
    assert model(torch.rand(2, 1, 96, 96)).shape == (2,)


def test_unknown_shipped_name_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"tbclf:nope.*shipped: tbclf:cxr_mobilenetv2_100"):
        resolve_weights("tbclf:nope")
    assert resolve_weights("~/w.pt") == Path("~/w.pt").expanduser()
