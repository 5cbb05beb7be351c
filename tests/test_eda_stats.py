"""EDA numbers checked against independent numpy/cv2 computations on images of known content."""

from __future__ import annotations

import numpy as np
import pytest
from imaging import make_png, write_image

from tbclf.data.imageio import file_info
from tbclf.eda.stats import (
    RunningImageMoments,
    histogram,
    intensity_stats,
    pca,
    summarize,
)


def test_intensity_stats_match_numpy():
    rng = np.random.default_rng(0)
    img = rng.integers(20, 230, (37, 53), dtype=np.uint8)
    s = intensity_stats(img)
    assert s["mean"] == pytest.approx(img.mean())
    assert s["std"] == pytest.approx(img.std())
    assert s["rms_contrast"] == pytest.approx((img / 255.0).std())
    lo, hi = np.percentile(img, [1, 99], method="inverted_cdf")
    assert s["michelson_contrast"] == pytest.approx((hi - lo) / (hi + lo))


@pytest.mark.parametrize("value", [0, 1, 128, 255])
def test_constant_image_has_zero_contrast(value):
    s = intensity_stats(np.full((16, 16), value, np.uint8))
    assert s["mean"] == value
    assert s["std"] == 0 and s["rms_contrast"] == 0 and s["michelson_contrast"] == 0


def test_michelson_known_values_and_robustness():
    half = np.zeros((10, 10), np.uint8)
    half[:, :5] = 100
    half[:, 5:] = 200
    assert intensity_stats(half)["michelson_contrast"] == pytest.approx(100 / 300)
    # one burned-in white pixel (a marker) does not change the robust contrast
    marked = half.copy()
    marked[0, 0] = 255
    assert intensity_stats(marked)["michelson_contrast"] == pytest.approx(100 / 300)
    black_and_white = np.zeros((10, 10), np.uint8)
    black_and_white[5:] = 255
    assert intensity_stats(black_and_white)["michelson_contrast"] == 1.0


def test_running_moments_equal_numpy():
    rng = np.random.default_rng(1)
    stack = rng.integers(0, 256, (7, 12, 9), dtype=np.uint8)
    m = RunningImageMoments((12, 9))
    for img in stack:
        m.add(img)
    assert m.n == 7
    np.testing.assert_allclose(m.mean, stack.mean(axis=0), atol=1e-9)
    np.testing.assert_allclose(m.std, stack.std(axis=0), atol=1e-6)
    np.testing.assert_array_equal(m.hist, np.bincount(stack.ravel(), minlength=256))
    with pytest.raises(ValueError):
        m.add(np.zeros((3, 3), np.uint8))


def test_pca_recovers_planted_components():
    rng = np.random.default_rng(2)
    h = w = 8
    v1 = np.zeros((h, w))
    v1[:4] = 1
    v1 -= v1.mean()
    v1 /= np.linalg.norm(v1)
    v2 = np.zeros((h, w))
    v2[:, :4] = 1
    v2 -= v2.mean()
    v2 /= np.linalg.norm(v2)
    a = rng.normal(0, 30, 200)
    b = rng.normal(0, 10, 200)
    stack = 100 + a[:, None, None] * v1 + b[:, None, None] * v2
    res = pca(stack, 3)
    ratio = res["explained_variance_ratio"]
    assert ratio[0] + ratio[1] == pytest.approx(1.0, abs=1e-9)
    assert ratio[0] == pytest.approx(np.var(a) / (np.var(a) + np.var(b)), abs=0.05)
    assert abs(np.sum(res["components"][0] * v1)) == pytest.approx(1.0, abs=0.02)
    assert abs(np.sum(res["components"][1] * v2)) == pytest.approx(1.0, abs=0.02)
    np.testing.assert_allclose(res["mean"], stack.mean(axis=0))


def test_file_info_reads_headers(tmp_path):
    make_png(tmp_path / "a.png", (20, 30), np.uint16, bit_depth=12)
    make_png(tmp_path / "b.png", (10, 12), np.uint8, channels=3)
    write_image(tmp_path / "c.jpg", np.zeros((9, 11), np.uint8))
    (tmp_path / "d.png").write_bytes(b"not an image")
    a = file_info(tmp_path / "a.png")
    assert (a["format"], a["width"], a["height"], a["bit_depth"], a["color"]) == (
        "png",
        30,
        20,
        16,
        "gray",
    )
    b = file_info(tmp_path / "b.png")
    assert (b["bit_depth"], b["color"]) == (8, "RGB")
    c = file_info(tmp_path / "c.jpg")
    assert (c["format"], c["width"], c["height"], c["bit_depth"], c["color"]) == (
        "jpeg",
        11,
        9,
        8,
        "gray",
    )
    assert file_info(tmp_path / "d.png")["format"] == "unknown"


def test_histogram_and_summarize():
    img = np.array([[0, 0, 255]], np.uint8)
    h = histogram(img)
    assert h[0] == 2 and h[255] == 1 and h.sum() == 3
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert s["n"] == 4 and s["median"] == 2.5 and s["min"] == 1 and s["max"] == 4
    assert summarize([])["median"] is None
