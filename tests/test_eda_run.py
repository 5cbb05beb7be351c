"""run_eda end to end on small image sets of known content (and on the dev set, if present)."""

from __future__ import annotations

import csv
import json
import re
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from imaging import make_png, write_image

from tbclf.eda.run import FIGURES, run_eda
from tbclf.errors import ConfigError

DEVSET = Path(__file__).parents[1].parent / "shared/data/tb-cxr-dev"


def _dataset(root: Path) -> dict[str, list[np.ndarray]]:
    """healthy: dark random images + a constant one + a byte copy; tb: bright random images."""
    rng = np.random.default_rng(0)
    imgs: dict[str, list[np.ndarray]] = {"healthy": [], "tb": []}
    for i in range(3):
        img = rng.integers(20, 100, (32, 32), dtype=np.uint8)
        write_image(root / "healthy" / f"h{i}.png", img)
        imgs["healthy"].append(img)
    const = np.full((32, 32), 60, np.uint8)
    write_image(root / "healthy" / "const.png", const)
    imgs["healthy"].append(const)
    shutil.copyfile(root / "healthy" / "h0.png", root / "healthy" / "h0_copy.png")
    imgs["healthy"].append(imgs["healthy"][0])
    for i in range(3):
        img = rng.integers(120, 250, (32, 32), dtype=np.uint8)
        write_image(root / "tb" / f"t{i}.png", img)
        imgs["tb"].append(img)
    return imgs


def _rows(out: Path) -> dict[str, dict[str, str]]:
    return {r["id"]: r for r in csv.DictReader((out / "per_image.csv").open())}


def _eda_of_known_images(tmp_path: Path, **options) -> tuple[dict, Path, dict]:
    """The images of `_dataset`, their EDA at their own size in tmp_path/eda, and its stats."""
    imgs = _dataset(tmp_path / "data")
    out = tmp_path / "eda"
    stats = run_eda(
        tmp_path / "data", out, image_size=32, crop_border=False, progress=False, **options
    )
    return imgs, out, stats


def test_eda_numbers_on_known_images(tmp_path):
    imgs, out, stats = _eda_of_known_images(
        tmp_path, preprocessing="none", num_workers=1, pca_components=2
    )
    assert stats["counts"]["by_class"] == {"healthy": 5, "tb": 3}
    assert stats["views"] == ["raw"]
    arrays = np.load(out / "arrays.npz")
    for cls in ("healthy", "tb"):
        stack = np.stack(imgs[cls]).astype(np.float64)
        np.testing.assert_allclose(arrays[f"mean_raw_{cls}"], stack.mean(axis=0), atol=1e-4)
        np.testing.assert_allclose(arrays[f"std_raw_{cls}"], stack.std(axis=0), atol=1e-3)
    # TB images are brighter everywhere: the class difference is positive at every pixel
    assert np.all(arrays["diff_raw"] > 0)
    assert stats["class_difference"]["raw"]["min"] > 0
    all_stack = np.stack(imgs["healthy"] + imgs["tb"]).astype(np.float64)
    np.testing.assert_allclose(arrays["mean_raw_all"], all_stack.mean(axis=0), atol=1e-4)

    rows = _rows(out)
    assert float(rows["healthy/const"]["rms_contrast_raw"]) == 0
    assert float(rows["healthy/const"]["michelson_contrast_raw"]) == 0
    assert float(rows["healthy/const"]["mean_raw"]) == 60
    assert float(rows["tb/t1"]["mean_raw"]) == pytest.approx(imgs["tb"][1].mean(), abs=1e-5)
    assert float(rows["tb/t1"]["rms_contrast_raw"]) == pytest.approx(
        (imgs["tb"][1] / 255).std(), abs=1e-5
    )
    means = [imgs["healthy"][i].mean() for i in range(5)]
    assert stats["intensity"]["raw"]["healthy"]["mean"]["median"] == pytest.approx(np.median(means))

    assert stats["duplicates"]["n_groups"] == 1
    assert stats["duplicates"]["groups"] == [["healthy/h0", "healthy/h0_copy"]]
    assert stats["image_sizes"] == {"folders": {"32x32": 8}} or list(stats["image_sizes"].values())[
        0
    ] == {"32x32": 8}
    assert set(stats["pca"]) == {"healthy", "tb"}
    assert stats["pca"]["tb"]["n_images"] == 3

    # every figure exists and summary.md links them relatively
    md = (out / "summary.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert set(links) == set(FIGURES.values())
    for link in links:
        assert not Path(link).is_absolute()
        assert (out / link).stat().st_size > 3000, link
    assert json.loads((out / "stats.json").read_text())["n_analysed"] == 8

    with pytest.raises(ConfigError, match="overwrite"):
        run_eda(tmp_path / "data", out, progress=False)


def test_eda_preprocessed_view_matches_cv2_clahe(tmp_path):
    imgs, out, stats = _eda_of_known_images(
        tmp_path, preprocessing="clahe", clahe_clip_limit=2.0, clahe_tile_grid=4, figures=False
    )
    assert stats["figures"] == {}
    assert "class difference" not in (out / "summary.md").read_text()
    assert "| clahe | tb |" in (out / "summary.md").read_text()
    assert stats["views"] == ["raw", "clahe"]
    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4))
    stack = np.stack([clahe.apply(i) for i in imgs["tb"]]).astype(np.float64)
    arrays = np.load(out / "arrays.npz")
    np.testing.assert_allclose(arrays["mean_clahe_tb"], stack.mean(axis=0), atol=1e-4)
    assert "clahe" in stats["intensity"]


def test_eda_on_16bit_non_square_originals_ignores_padding(tmp_path):
    root = tmp_path / "nlm"
    # 12-bit data in 16-bit PNGs, portrait, with a black band at the bottom (Montgomery-like)
    make_png(
        root / "MontgomerySet/CXR_png/MCUCXR_0001_0.png",
        (120, 80),
        np.uint16,
        bit_depth=12,
        value=2000,
        border_bottom=10,
    )
    make_png(
        root / "MontgomerySet/CXR_png/MCUCXR_0002_1.png", (120, 80), np.uint16, bit_depth=12, seed=3
    )
    make_png(root / "ChinaSet_AllFiles/CXR_png/CHNCXR_0001_1.png", (64, 64), np.uint8)
    out = tmp_path / "eda"
    stats = run_eda(root, out, image_size=32, progress=False)
    assert stats["image_sizes"]["montgomery"] == {"80x120": 2}
    assert stats["bit_depths"]["montgomery"] == {"png 16-bit gray": 2}
    assert stats["counts"]["by_source"]["montgomery"] == {"healthy": 1, "tb": 1, "total": 2}
    row = _rows(out)["MCUCXR_0001_0"]
    # constant 2000/4095 -> 125 in 8 bits, band cropped, padding excluded from the stats
    assert float(row["mean_raw"]) == pytest.approx(round(2000 * 255 / 4095), abs=1)
    assert float(row["michelson_contrast_raw"]) == 0
    arrays = np.load(out / "arrays.npz")
    assert arrays["mean_raw_all"].shape == (32, 32)


def test_max_images_takes_a_stratified_subset(tmp_path):
    for cls in ("healthy", "tb"):
        for i in range(10):
            make_png(
                tmp_path / "d" / cls / f"{i}.png", (24, 24), seed=i + (100 if cls == "tb" else 0)
            )
    stats = run_eda(
        tmp_path / "d", tmp_path / "e", max_images=4, image_size=16, progress=False, figures=False
    )
    assert stats["n_analysed"] == 4 and stats["n_found"] == 20
    assert stats["counts"]["by_class"] == {"healthy": 2, "tb": 2}
    assert stats["subset"] == {"max_images": 4, "seed": 0}


def test_unreadable_images_are_listed_not_fatal(tmp_path):
    _dataset(tmp_path / "data")
    (tmp_path / "data" / "tb" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    stats = run_eda(
        tmp_path / "data", tmp_path / "eda", image_size=32, progress=False, figures=False
    )
    assert [u["id"] for u in stats["unreadable"]] == ["tb/broken"]
    assert stats["n_analysed"] == 8


@pytest.mark.devset
def test_eda_on_devset_subset(tmp_path):
    if not DEVSET.is_dir():
        pytest.skip(f"dev set not found at {DEVSET}")
    t0 = time.perf_counter()
    stats = run_eda(DEVSET, tmp_path / "eda", max_images=60, image_size=128, progress=False)
    assert time.perf_counter() - t0 < 120
    assert stats["n_analysed"] == 60
    by_class = stats["counts"]["by_class"]
    assert by_class["healthy"] > 0 and by_class["tb"] > 0
    saved = json.loads((tmp_path / "eda" / "stats.json").read_text())
    assert set(saved["counts"]["by_class"]) == {"healthy", "tb"}
    assert set(saved["pca"]) == {"healthy", "tb"}
    for name in FIGURES.values():
        assert (tmp_path / "eda" / name).exists(), name
