"""Pretraining on any number of classes and starting a TB model from its backbone."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import pytorch_lightning as pl
import timm
import torch
from models_fakes import tiny_trainer
from torch.utils.data import DataLoader, Dataset

from tbclf.data.layouts import class_folder_names, discover
from tbclf.errors import ConfigError, DataError
from tbclf.models import SimpleCNNClassifier, TimmClassifier
from tbclf.models.backbone_file import export_backbone
from tbclf.models.loading import load_classifier

NAMES = ["covid", "normal", "pneumonia"]


class ThreeClasses(Dataset):
    """Class k has a bright square in the k-th third of the image: learnable in an epoch."""

    def __init__(self, n: int, size: int = 32, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.tensor([i % 3 for i in range(n)], dtype=torch.float32)
        self.images = torch.rand(n, 1, size, size, generator=g) * 0.3
        w = size // 3
        for i, label in enumerate(self.labels.long().tolist()):
            self.images[i, :, :, label * w : (label + 1) * w] += 0.6

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i], "id": f"i{i}", "source": "s"}


class ThreeClassData(pl.LightningDataModule):
    def train_dataloader(self):
        return DataLoader(ThreeClasses(48, seed=0), batch_size=8, shuffle=True)

    def val_dataloader(self):
        return DataLoader(ThreeClasses(24, seed=1), batch_size=8)

    test_dataloader = val_dataloader


def _cnn(**kwargs) -> SimpleCNNClassifier:
    opts = dict(channels=[4, 8], kernel_sizes=[3, 3], head=[8], adaptive_pool=2, image_size=32)
    return SimpleCNNClassifier(channels_last=False, **{**opts, **kwargs})


def _pretrained_cnn(tmp_path: Path) -> tuple[SimpleCNNClassifier, Path]:
    pl.seed_everything(0)
    model = _cnn(class_names=NAMES, lr=0.01)
    trainer = tiny_trainer(tmp_path, max_epochs=3)
    trainer.fit(model, datamodule=ThreeClassData())
    ckpt = tmp_path / "pretrain.ckpt"
    trainer.save_checkpoint(ckpt)
    return model, ckpt


# ------------------------------------------------------------------------ the head
def test_head_size_comes_from_the_classes() -> None:
    assert _cnn().num_outputs == 1 and _cnn()(torch.rand(2, 1, 32, 32)).shape == (2,)
    five = _cnn(class_names=list("abcde"))
    assert five.multiclass and five(torch.rand(2, 1, 32, 32)).shape == (2, 5)
    # Two named classes are the binary case: one logit, the log-odds of the second.
    assert _cnn(class_names=["normal", "pneumonia"]).num_outputs == 1
    timm_model = TimmClassifier(pretrained=False, class_names=NAMES, channels_last=False)
    assert timm_model.net.get_classifier().out_features == 3
    for bad in (["only"], ["a", "a"]):
        with pytest.raises(ConfigError, match="class_names"):
            _cnn(class_names=bad)
    with pytest.raises(ConfigError, match="calibrate"):
        _cnn(class_names=NAMES, calibrate=True)


def test_multiclass_training_learns_and_logs_per_class_metrics(tmp_path: Path) -> None:
    model, ckpt = _pretrained_cnn(tmp_path)
    logged = {k: float(v) for k, v in model.trainer.callback_metrics.items()}
    assert logged["val/auroc"] > 0.8, logged  # macro AUROC on a learnable task
    assert 0.0 <= logged["val/balanced_accuracy"] <= 1.0
    assert {f"val/auroc_{n}" for n in NAMES} <= set(logged)
    per_class = np.mean([logged[f"val/auroc_{n}"] for n in NAMES])
    assert per_class == pytest.approx(logged["val/auroc"], abs=1e-5)
    assert "val/threshold" not in logged  # no P(TB), no threshold
    with pytest.raises(ConfigError, match="3-class model .*not a TB classifier"):
        load_classifier(ckpt)  # what predict, export, serve, explain and saliency load
    loaded = load_classifier(ckpt, two_class=False)
    assert loaded.class_names == NAMES and loaded.num_outputs == 3
    with pytest.raises(ConfigError, match="3-class"):
        loaded.predict_step({"image": torch.rand(1, 1, 32, 32), "id": ["x"]}, 0)


# ------------------------------------------------------------- backbone transfer
def test_tb_model_starts_from_a_pretraining_checkpoint_without_its_head(tmp_path: Path) -> None:
    pretrained, ckpt = _pretrained_cnn(tmp_path)
    tb = _cnn(weights=str(ckpt))
    assert tb.num_outputs == 1
    source = pretrained.net.state_dict()
    head = tb.head_keys()
    assert head == {"head.2.weight", "head.2.bias"}
    for key, value in tb.net.state_dict().items():
        if key in head:
            assert value.shape[0] == 1  # a fresh one-logit head
        else:
            assert torch.equal(value, source[key]), key
    origin = tb.hparams["weights_origin"]
    assert origin["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert origin["file"] == "pretrain.ckpt"
    # The origin survives the TB model's own checkpoint; the file itself is no longer needed.
    trainer = tiny_trainer(tmp_path / "tb", max_epochs=1)
    from models_fakes import FakeDataModule

    trainer.fit(tb, datamodule=FakeDataModule(size=32))
    tb_ckpt = tmp_path / "tb.ckpt"
    trainer.save_checkpoint(tb_ckpt)
    ckpt.unlink()
    reloaded = load_classifier(tb_ckpt)
    assert reloaded.weights_origin == origin


def test_other_architecture_is_refused_naming_the_keys(tmp_path: Path) -> None:
    _, ckpt = _pretrained_cnn(tmp_path)
    with pytest.raises(ConfigError, match=r"pretrain\.ckpt does not fit.*missing keys"):
        _cnn(channels=[4, 8, 8], kernel_sizes=[3, 3, 3], weights=str(ckpt))
    with pytest.raises(ConfigError, match="shape mismatch"):
        _cnn(channels=[4, 6], weights=str(ckpt))


def test_timm_backbone_transfer_and_exported_file(tmp_path: Path) -> None:
    source = TimmClassifier(pretrained=False, class_names=list("abcde"), channels_last=False)
    ckpt = tmp_path / "timm.ckpt"
    hparams = {**source.hparams, "_class_path": "tbclf.models.TimmClassifier"}
    torch.save({"state_dict": source.state_dict(), "hyper_parameters": hparams}, ckpt)
    exported = tmp_path / "backbone.safetensors"
    meta = export_backbone(ckpt, exported, dtype="float16")
    assert meta["class_names"] == '["a", "b", "c", "d", "e"]'
    with pytest.raises(ConfigError, match="already exists"):
        export_backbone(ckpt, exported)
    from safetensors.torch import load_file

    assert not any(k.startswith("classifier.") for k in load_file(str(exported)))
    for weights, atol in ((ckpt, 0.0), (exported, 1e-2)):
        tb = TimmClassifier(pretrained=False, weights=str(weights), channels_last=False)
        assert tb.net.get_classifier().out_features == 1
        theirs = source.net.state_dict()
        for key, value in tb.net.state_dict().items():
            if not key.startswith("classifier."):
                assert torch.allclose(value.float(), theirs[key].float(), atol=atol), key
        assert tb.weights_origin["file"] == Path(weights).name
    # A backbone of another architecture is refused with the keys named.
    other = tmp_path / "resnet.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), other)
    with pytest.raises(ConfigError, match="resnet.pth"):
        TimmClassifier(pretrained=False, weights=str(other))


def test_fp16_backbone_scores_like_the_fp32_one(tmp_path: Path) -> None:
    _, ckpt = _pretrained_cnn(tmp_path)
    for dtype in ("float32", "float16"):
        export_backbone(ckpt, tmp_path / f"{dtype}.safetensors", dtype=dtype)
    torch.manual_seed(0)
    a = _cnn(weights=str(tmp_path / "float32.safetensors")).eval()
    torch.manual_seed(0)
    b = _cnn(weights=str(tmp_path / "float16.safetensors")).eval()
    x = torch.rand(4, 1, 32, 32)
    assert torch.allclose(a(x), b(x), atol=1e-2)
    assert (tmp_path / "float16.safetensors").stat().st_size < (
        tmp_path / "float32.safetensors"
    ).stat().st_size


# ------------------------------------------------------------------- the layout
def _class_folders(root: Path, names: list[str], n: int = 4) -> Path:
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(n):
            img = np.full((24, 24), 40 * names.index(name) + i, np.uint8)
            cv2.imwrite(str(root / name / f"{i}.jpg"), img)
    return root


def test_classes_layout_labels_folders_in_sorted_order(tmp_path: Path) -> None:
    root = _class_folders(tmp_path / "corpus", ["viral", "adult_normal", "covid19"])
    (root / ".hidden").mkdir()
    assert class_folder_names(root) == ["adult_normal", "covid19", "viral"]
    records = discover(root, "classes")
    assert len(records) == 12
    assert {(r.path.parent.name, r.label) for r in records} == {
        ("adult_normal", 0),
        ("covid19", 1),
        ("viral", 2),
    }
    lonely = _class_folders(tmp_path / "one", ["only"])
    with pytest.raises(DataError, match="has 1 .*two or more"):
        class_folder_names(lonely)
