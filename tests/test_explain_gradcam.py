"""Grad-CAM: maps at the image's size that point at the evidence, overlays and contact sheets."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from tbclf.data.records import Record
from tbclf.data.spec import InputSpec
from tbclf.errors import ConfigError
from tbclf.explain.gradcam import (
    compute_cams,
    contact_sheet,
    explain_images,
    find_target_layer,
    select_cases,
)
from tbclf.models import SimpleCNNClassifier, TimmClassifier


class BlobNet(nn.Module):
    """Logit = mean activation of a filter that fires on bright blobs (minus a small bias);
    a second filter fires on dark background and does not feed the logit."""

    def __init__(self, with_target_layer: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 5, padding=2)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0] = 1 / 25
            self.conv.weight[1] = -1 / 25
            self.conv.bias.copy_(torch.tensor([-0.5, 0.5]))
        self.act = nn.ReLU()
        self.register_buffer("threshold", torch.tensor(0.3))
        if with_target_layer:
            self.target_layer = lambda: self.act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(self.conv(x))
        return 20 * (a[:, 0].mean(dim=(1, 2)) - 0.01)


def _blob_image(h: int, w: int, cy: int, cx: int, r: int = 4) -> torch.Tensor:
    img = np.full((h, w), 0.1, np.float32)
    cv2.circle(img, (cx, cy), r, 1.0, -1)
    return torch.from_numpy(img)[None, None]


@pytest.mark.parametrize("with_target_layer", [True, False])
@pytest.mark.parametrize("center", [(12, 14), (44, 50)])
def test_heatmap_peaks_at_the_blob(with_target_layer, center):
    model = BlobNet(with_target_layer)
    cy, cx = center
    x = _blob_image(56, 64, cy, cx)
    cams, probs = compute_cams(model, x)
    assert cams.shape == (1, 56, 64)  # the image's size, non-square included
    cam = cams[0]
    assert 0.0 <= cam.min() and cam.max() <= 1.0 + 1e-6
    # the heatmap's centre of mass sits on the blob, and the blob outshines the rest
    yy, xx = np.mgrid[0:56, 0:64]
    com = (float((cam * yy).sum() / cam.sum()), float((cam * xx).sum() / cam.sum()))
    assert abs(com[0] - cy) < 3 and abs(com[1] - cx) < 3, com
    blob = (yy - cy) ** 2 + (xx - cx) ** 2 <= 16
    assert cam[blob].mean() > 5 * cam[~blob].mean()
    with torch.no_grad():
        expected = torch.sigmoid(model(x)).item()
    assert probs[0] == pytest.approx(expected, abs=1e-6)


def test_target_layer_lookup():
    m = BlobNet(True)
    assert find_target_layer(m) is m.act
    m = BlobNet(False)
    assert find_target_layer(m) is m.conv  # the last Conv2d
    with pytest.raises(ConfigError, match="Conv2d"):
        find_target_layer(nn.Sequential(nn.Flatten(), nn.Linear(4, 1)))


def test_restores_mode_and_works_under_no_grad_with_frozen_weights():
    model = BlobNet()
    model.train()
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        cams, _ = compute_cams(model, _blob_image(32, 32, 16, 16))
    assert model.training
    assert cams[0].max() > 0.9


@pytest.mark.parametrize(
    "factory",
    [
        lambda: SimpleCNNClassifier(
            channels=[4, 8], kernel_sizes=[3, 3], head=[8], image_size=32, channels_last=False
        ),
        lambda: TimmClassifier(
            backbone="mobilenetv2_100", pretrained=False, freeze_epochs=0, channels_last=False
        ),
    ],
    ids=["simple_cnn", "timm"],
)
def test_both_tbclf_models(factory):
    model = factory()
    x = torch.rand(2, 1, 32, 32)
    cams, probs = compute_cams(model, x)
    assert cams.shape == (2, 32, 32)
    assert np.all((probs >= 0) & (probs <= 1))
    assert np.isfinite(cams).all()


def _write_records(root, n: int = 3):
    recs = []
    for i in range(n):
        img = np.full((40, 40), 30, np.uint8)
        cv2.circle(img, (10 + 8 * i, 20), 5, 250, -1)
        path = root / f"case/{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), img)
        recs.append(Record(id=f"case/{i}", path=path, label=i % 2, source="s"))
    return recs


def test_explain_images_from_records_and_batches(tmp_path):
    model = BlobNet()
    recs = _write_records(tmp_path)
    res = explain_images(
        model,
        recs,
        tmp_path / "out",
        spec=InputSpec(image_size=32, preprocessing="none", crop_border=False),
        batch_size=2,
        progress=False,
    )
    assert [r["id"] for r in res] == ["case/0", "case/1", "case/2"]
    for r in res:
        assert (tmp_path / "out" / r["file"]).stat().st_size > 5000
        assert "/" not in r["file"]
        assert r["decision"] == int(r["prob"] >= 0.3)  # the model's stored threshold
    rows = list(csv.DictReader((tmp_path / "out" / "explanations.csv").open()))
    assert [row["ID"] for row in rows] == ["case/0", "case/1", "case/2"]
    assert [row["TRUE_LABEL"] for row in rows] == ["0", "1", "0"]

    batch = {
        "image": torch.cat([_blob_image(32, 32, 8, 8), _blob_image(32, 32, 20, 20)]),
        "label": torch.tensor([1.0, float("nan")]),
        "id": ["a", "b"],
        "source": ["x", "y"],
    }
    res = explain_images(model, [batch], tmp_path / "out2", threshold=0.99, progress=False)
    assert [r["label"] for r in res] == [1, None]
    assert all(r["decision"] == 0 for r in res)
    with pytest.raises(ConfigError, match="overwrite"):
        explain_images(model, [batch], tmp_path / "out2", progress=False)
    res = explain_images(
        model, [batch], tmp_path / "out2", overwrite=True, max_images=1, progress=False
    )
    assert len(res) == 1


def test_select_cases():
    p = np.array([0.95, 0.9, 0.6, 0.2, 0.8, 0.55, 0.1, 0.45, 0.3])
    y = np.array([1, 1, 1, 1, 0, 0, 0, 1, 0])
    cases = select_cases(p, y, 0.5, n_per_group=2)
    assert cases["true_positive"] == [0, 1]
    assert cases["false_positive"] == [4, 5]
    assert cases["false_negative"] == [3, 7]  # lowest scores first


def test_contact_sheet(tmp_path):
    recs = _write_records(tmp_path, n=4)
    ids = [r.id for r in recs]
    paths = [r.path for r in recs]
    p = np.array([0.9, 0.2, 0.7, 0.8])
    y = np.array([1, 1, 0, 0])
    shown = contact_sheet(
        p,
        y,
        ids,
        paths,
        tmp_path / "sheet.png",
        threshold=0.5,
        n_per_group=3,
        model=BlobNet(),
        spec=InputSpec(image_size=32, preprocessing="clahe"),
    )
    assert [c["id"] for c in shown["true_positive"]] == ["case/0"]
    assert [c["id"] for c in shown["false_positive"]] == ["case/3", "case/2"]
    assert [c["id"] for c in shown["false_negative"]] == ["case/1"]
    assert (tmp_path / "sheet.png").stat().st_size > 10000
    # without a model: plain images; a mapping of paths works too
    contact_sheet(
        p,
        y,
        ids,
        dict(zip(ids, paths, strict=True)),
        tmp_path / "plain.png",
        spec=InputSpec(image_size=32, preprocessing="none"),
    )
    assert (tmp_path / "plain.png").exists()
    with pytest.raises(ConfigError, match="overwrite"):
        contact_sheet(p, y, ids, paths, tmp_path / "plain.png", spec=InputSpec(image_size=32))
