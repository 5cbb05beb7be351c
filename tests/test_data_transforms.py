"""Transforms: the contrast step equals OpenCV's own, evaluation is deterministic, training
augments, and every stage ends in a float32 (1,S,S) tensor in [0,1]."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from tbclf.data.transforms import build_transforms
from tbclf.errors import ConfigError


@pytest.fixture
def img() -> np.ndarray:
    """A low-contrast 64x64 image with structure, so contrast steps really change it."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    base = 100 + 20 * np.sin(xx / 6.0) * np.cos(yy / 9.0) + rng.normal(0, 3, (64, 64))
    return np.clip(base, 0, 255).astype(np.uint8)


def run(t: A.Compose, img: np.ndarray) -> torch.Tensor:
    return t(image=img)["image"]


@pytest.mark.parametrize("stage", ["train", "val", "test", "predict"])
@pytest.mark.parametrize("preprocessing", ["clahe", "equalize", "none"])
def test_output_is_float_tensor_in_unit_range(img, stage: str, preprocessing: str) -> None:
    out = run(build_transforms(stage, preprocessing), img)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (1, 64, 64) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


@pytest.mark.parametrize("stage", ["val", "test", "predict"])
def test_evaluation_stages_are_deterministic(img, stage: str) -> None:
    t = build_transforms(stage, "clahe", hflip=True)
    first = run(t, img)
    for _ in range(5):
        assert torch.equal(run(t, img), first)
    assert torch.equal(run(build_transforms(stage, "clahe"), img), first)


@pytest.mark.parametrize("clip, grid", [(2.0, 8), (4.0, 4)])
def test_clahe_matches_opencv_and_changes_the_image(img, clip: float, grid: int) -> None:
    out = run(build_transforms("val", "clahe", clahe_clip_limit=clip, clahe_tile_grid=grid), img)
    expected = cv2.createCLAHE(clipLimit=clip, tileGridSize=(grid, grid)).apply(img)
    np.testing.assert_array_equal(np.round(out[0].numpy() * 255).astype(np.uint8), expected)
    assert not np.array_equal(expected, img)
    assert expected.std() > img.std()  # more contrast


def test_equalize_matches_opencv_and_changes_the_image(img) -> None:
    out = run(build_transforms("test", "equalize"), img)
    expected = cv2.equalizeHist(img)
    np.testing.assert_array_equal(np.round(out[0].numpy() * 255).astype(np.uint8), expected)
    assert not np.array_equal(expected, img)


def test_none_only_scales(img) -> None:
    out = run(build_transforms("val", "none"), img)
    np.testing.assert_allclose(out[0].numpy(), img.astype(np.float32) / 255.0, atol=1e-7)


def test_training_augments_and_is_reproducible_with_a_seed(img) -> None:
    t = build_transforms("train", "clahe", seed=123)
    outs = [run(t, img) for _ in range(6)]
    assert sum(not torch.equal(outs[0], o) for o in outs[1:]) >= 4
    again = build_transforms("train", "clahe", seed=123)
    assert all(torch.equal(o, run(again, img)) for o in outs)


def test_augmentation_is_small(img) -> None:
    """Geometry and intensity stay close: still the same image, not a flip or a big rotation."""
    t = build_transforms("train", "none", seed=0)
    ref = img.astype(np.float32) / 255.0
    inner = (slice(12, 52), slice(12, 52))
    for _ in range(20):
        out = run(t, img)[0].numpy()
        assert np.corrcoef(out[inner].ravel(), ref[inner].ravel())[0, 1] > 0.65  # a flip: 0.49
        assert abs(out[inner].mean() - ref[inner].mean()) < 0.16


def test_hflip_is_opt_in() -> None:
    def names(t: A.Compose) -> list[str]:
        return [type(x).__name__ for x in t.transforms]

    assert "HorizontalFlip" not in names(build_transforms("train"))
    assert "HorizontalFlip" in names(build_transforms("train", hflip=True))
    assert "HorizontalFlip" not in names(build_transforms("val", hflip=True))
    assert {"Affine", "RandomBrightnessContrast"} <= set(names(build_transforms("fit")))
    assert not {"Affine", "RandomBrightnessContrast"} & set(names(build_transforms("val")))


def test_unknown_preprocessing_names_the_option_and_choices() -> None:
    with pytest.raises(ConfigError) as err:
        build_transforms("train", "histeq")
    msg = str(err.value)
    assert "data.preprocessing" in msg and "histeq" in msg
    assert all(v in msg for v in ("clahe", "equalize", "none"))


def test_bad_clahe_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="data.clahe_clip_limit"):
        build_transforms("val", "clahe", clahe_clip_limit=0.5)
    with pytest.raises(ConfigError, match="data.clahe_tile_grid"):
        build_transforms("val", "clahe", clahe_tile_grid=0)


def test_fast_path_variants(img) -> None:
    """contrast=False skips the (cached) contrast step; to_float=False ships uint8."""
    t = build_transforms("val", "clahe", contrast=False, to_float=False)
    out = run(t, img)
    assert out.dtype == torch.uint8 and out.shape == (1, 64, 64)
    np.testing.assert_array_equal(out[0].numpy(), img)
    train = build_transforms("train", "clahe", seed=1, contrast=False, to_float=False)
    assert [type(x).__name__ for x in train.transforms] == [
        "Affine",
        "RandomBrightnessContrast",
        "ToTensorV2",
    ]
    with pytest.raises(ConfigError, match="data.preprocessing"):
        build_transforms("val", "bogus", contrast=False)
