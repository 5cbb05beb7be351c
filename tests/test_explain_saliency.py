"""Saliency against boxes: geometry back to the stored image, metrics, baselines, outputs."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from imaging import write_image
from torch import nn

from tbclf.data.records import Record
from tbclf.data.spec import InputSpec
from tbclf.errors import ConfigError
from tbclf.explain.boxes import Box, BoxSet, box_mask
from tbclf.explain.saliency import (
    ellipse_map,
    method_maps,
    pointing_game,
    prepare_image,
    proportional_energy,
    road_scores,
    run_saliency,
    score_map,
    uniform_map,
)
from tbclf.explain.saliency_report import write_outputs
from tbclf.io import read_output_csv
from tbclf.models import SimpleCNNClassifier


def _banded_original(path, h=120, w=200, band=20, dot=(50, 140)):
    """A non-square image with a black band at the bottom and one bright pixel block."""
    img = np.full((h, w), 90, np.uint8)
    img[-band:, :] = 0
    y, x = dot
    img[y - 2 : y + 3, x - 2 : x + 3] = 255
    return write_image(path, img)


@pytest.mark.parametrize("resize", ["pad", "squash"])
def test_geometry_undoes_crop_and_padding_on_a_non_square_original(tmp_path, resize):
    path = _banded_original(tmp_path / "o.png")
    spec = InputSpec(image_size=64, resize=resize, preprocessing="none")
    square, geo = spec.load_square_geometry(path)
    assert np.array_equal(square, spec.load_square(path))  # the one pipeline
    assert torch.equal(spec.to_tensor(spec.enhance(square)), spec.prepare(path))
    assert (geo.height, geo.width) == (120, 200)
    assert geo.crop == pytest.approx((0, 100, 0, 200))  # the 20-row band is cropped
    if resize == "pad":
        assert geo.placed == (16, 0, 32, 64)  # 100x200 -> 32x64, centred: 16 rows of bars
    # the square itself, mapped back, lands where the image was
    back = geo.to_image(square.astype(np.float32))
    y, x = np.unravel_index(np.argmax(back), back.shape)
    assert abs(y - 50) <= 2 and abs(x - 140) <= 2
    assert np.all(back[100:] == 0)  # cropped rows: never seen by the model
    assert np.all(geo.visible()[:100] == 1) and np.all(geo.visible()[100:] == 0)
    # a square map that is 1 on the image part only comes back 1 on the whole visible image
    ones = geo.to_image(geo.content())
    assert np.allclose(ones[:100], 1.0)


def test_geometry_maps_a_square_point_to_the_original_pixel(tmp_path):
    path = _banded_original(tmp_path / "o.png")
    spec = InputSpec(image_size=100, resize="pad", preprocessing="none")
    _, geo = spec.load_square_geometry(path)
    m = geo.image_to_square()
    sx, sy = m @ np.array([139.5, 49.5, 1.0])  # pixel centre (x=139.5, y=49.5)
    # 100x200 crop -> 50x100 at rows 25..75: scale 0.5, pixel centres stay centres
    assert sx == pytest.approx(139.5 * 0.5 - 0.25 + 0.0, abs=1e-9)
    assert sy == pytest.approx(25 + 49.5 * 0.5 - 0.25, abs=1e-9)


def _blob_case(h=40, w=60, cy=12, cx=40, r=4):
    img = np.full((h, w), 0.1, np.float32)
    cv2.circle(img, (cx, cy), r, 1.0, -1)
    box = Box(cx - r - 1, cy - r - 1, cx + r + 2, cy + r + 2)
    return img, box_mask([box], h, w), (cy, cx)


def _gauss(h, w, cy, cx, s=3.0):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s)).astype(np.float32)


def test_energy_and_pointing_reward_the_blob_and_penalise_elsewhere():
    img, mask, (cy, cx) = _blob_case()
    on = _gauss(40, 60, cy, cx)
    off = _gauss(40, 60, 30, 10)
    uniform = np.ones_like(on)
    fraction = mask.mean()
    assert proportional_energy(on, mask) > 0.8
    assert proportional_energy(off, mask) < 0.01
    assert proportional_energy(uniform, mask) == pytest.approx(fraction)
    assert pointing_game(on, mask) == 1.0
    assert pointing_game(off, mask) == 0.0
    assert pointing_game(uniform, mask) == pytest.approx(fraction)  # a tie: the expected hit


class BlobNet(nn.Module):
    """Logit grows with the bright blob's activation (a 5x5 mean filter through ReLU)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 5, padding=2)
        with torch.no_grad():
            self.conv.weight.fill_(1 / 25)
            self.conv.bias.fill_(-0.5)
        self.act = nn.ReLU()
        self.target_layer = lambda: self.act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 40 * (self.act(self.conv(x)).mean(dim=(1, 2, 3)) - 0.01)


def test_road_rewards_a_map_on_the_evidence():
    img, _, (cy, cx) = _blob_case()
    x = torch.from_numpy(img)[None, None].repeat(2, 1, 1, 1)
    maps = np.stack([_gauss(40, 60, cy, cx), _gauss(40, 60, 30, 10)])
    model = BlobNet().eval()
    scores = road_scores(model, x, maps, percentiles=(20, 50, 80), seed=0)
    assert scores[0] > 0.01 and scores[1] < 0  # on the blob: faithful; elsewhere: not
    again = road_scores(model, x, maps, percentiles=(20, 50, 80), seed=0)
    assert np.array_equal(scores, again)  # seeded imputation noise: reproducible


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "hirescam", "scorecam", "eigencam"])
def test_every_method_finds_the_blob(method):
    img, mask, _ = _blob_case()
    x = torch.from_numpy(img)[None, None]
    maps = method_maps(BlobNet(), x, method, scorecam_batch_size=4)
    assert maps.shape == (1, 40, 60)
    assert proportional_energy(maps[0], mask) > 3 * mask.mean()
    assert pointing_game(maps[0], mask) == 1.0


def _dataset(tmp_path, n=4, h=72, w=96):
    """Non-square images with a bright blob, a black band below, and a box around the blob
    annotated on a 2x larger original (so boxes are scaled on reading)."""
    pairs = []
    for i in range(n):
        img = np.full((h, w), 60, np.uint8)
        img[-8:, :] = 0
        cy, cx = 20 + 6 * i, 25 + 12 * i
        cv2.circle(img, (cx, cy), 6, 250, -1)
        path = write_image(tmp_path / f"img{i}.png", img)
        box = Box(2 * (cx - 8), 2 * (cy - 8), 2 * (cx + 9), 2 * (cy + 9), "TB")
        pairs.append(
            (Record(f"img{i}", path, None, "x"), BoxSet(f"img{i}", "a.xml", 2 * w, 2 * h, (box,)))
        )
    return pairs


def test_boxes_follow_the_image_through_prepare(tmp_path):
    (rec, boxes), *_ = _dataset(tmp_path, 1)
    item = prepare_image(rec, boxes, InputSpec(image_size=32, preprocessing="none"))
    assert item.mask.shape == (72, 96)
    (b,) = item.boxes
    assert (b.x0, b.y0, b.x1, b.y1) == pytest.approx((17, 12, 34, 29))
    blob = item.geometry.to_image(item.image[0].numpy())  # the model's input, put back
    assert proportional_energy(blob**4, item.mask) > 0.5
    # the uniform map's energy is the box's share of the pixels the model saw (band excluded)
    u = score_map(item, uniform_map(item.geometry))
    assert u["energy"] == pytest.approx(item.mask.sum() / (64 * 96), rel=1e-3)
    assert item.box_fraction == pytest.approx(u["energy"], rel=1e-3)
    assert ellipse_map(item.geometry).max() > 0.99


def test_run_and_outputs_with_a_tbclf_model(tmp_path):
    spec = InputSpec(image_size=32, preprocessing="none")
    torch.manual_seed(0)
    model = SimpleCNNClassifier(
        channels=[4, 8],
        kernel_sizes=[3, 3],
        head=[8],
        image_size=32,
        channels_last=False,
        input_spec=spec.to_dict(),
    ).eval()
    pairs = _dataset(tmp_path / "data")
    run = run_saliency(
        model,
        pairs,
        batch_size=2,
        scorecam_batch_size=4,
        method_max_images={"scorecam": 2},
        road_max_images=3,
        road_percentiles=(50,),
        progress=False,
    )
    names = {r["method"] for r in run.rows}
    assert names == {
        "gradcam",
        "gradcam++",
        "hirescam",
        "scorecam",
        "eigencam",
        "uniform",
        "ellipse",
        "mean_map",
        "random_weights",
    }
    assert sum(r["method"] == "scorecam" for r in run.rows) == 2
    assert sum(np.isfinite(r["road"]) for r in run.rows if r["method"] == "gradcam") == 3
    out = tmp_path / "out"
    summary = write_outputs(run, out, per_row=2)
    header, rows = read_output_csv(out / "saliency.csv")
    assert "energy" in header and len(rows) == len(run.rows)
    saved = json.loads((out / "summary.json").read_text())
    assert saved["sensitivity"]["n"] == 4 and saved["maps"]["uniform"]["verdict"] == "reference"
    assert summary["maps"]["scorecam"]["n_images"] == 2
    assert "| gradcam |" in (out / "summary.md").read_text()
    assert (out / "contact_sheet_gradcampp.png").stat().st_size > 1000
    with pytest.raises(ConfigError, match="overwrite"):
        write_outputs(run, out)
    with pytest.raises(ConfigError, match="choose from"):
        run_saliency(model, pairs, methods=["lime"], progress=False)
