"""Albumentations pipelines from the cached uint8 square to the float tensor a model takes.

Contrast enhancement (CLAHE / histogram equalisation) runs at every stage with p=1 so training
and inference see the same kind of image; random augmentation runs only while training and is
kept small, because a chest X-ray's geometry (heart on the left, upright patient) is informative.
"""

from __future__ import annotations

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

from tbclf.data.pixel_defaults import PIXEL_DEFAULTS
from tbclf.errors import ConfigError

PREPROCESSING = ("clahe", "equalize", "none")
STAGES = {
    "train": "train",
    "fit": "train",
    "val": "val",
    "validate": "val",
    "test": "test",
    "predict": "predict",
}


def contrast_transform(
    preprocessing: str,
    clahe_clip_limit: float = PIXEL_DEFAULTS.clahe_clip_limit,
    clahe_tile_grid: int = PIXEL_DEFAULTS.clahe_tile_grid,
) -> A.BasicTransform | None:
    """The deterministic contrast step, or None for "none"."""
    if preprocessing not in PREPROCESSING:
        raise ConfigError(
            f"data.preprocessing={preprocessing!r} is not one of {PREPROCESSING} "
            "(clahe: local contrast, equalize: global histogram equalisation, none)."
        )
    if preprocessing == "clahe":
        if not clahe_clip_limit >= 1.0:
            raise ConfigError(f"data.clahe_clip_limit={clahe_clip_limit} must be >= 1.")
        if int(clahe_tile_grid) < 1:
            raise ConfigError(f"data.clahe_tile_grid={clahe_tile_grid} must be >= 1.")
        grid = int(clahe_tile_grid)
        # A float clip_limit means "uniform in [1, limit]" in albumentations: pin it.
        clip = float(clahe_clip_limit)
        return A.CLAHE(clip_limit=(clip, clip), tile_grid_size=(grid, grid), p=1.0)
    if preprocessing == "equalize":
        return A.Equalize(mode="cv", by_channels=True, p=1.0)
    return None


def build_transforms(
    stage: str,
    preprocessing: str = PIXEL_DEFAULTS.preprocessing,
    clahe_clip_limit: float = PIXEL_DEFAULTS.clahe_clip_limit,
    clahe_tile_grid: int = PIXEL_DEFAULTS.clahe_tile_grid,
    hflip: bool = False,
    seed: int | None = None,
    *,
    contrast: bool = True,
    to_float: bool = True,
) -> A.Compose:
    """uint8 (S,S) -> float32 (1,S,S) in [0,1]; random ops only for stage "train"/"fit".

    seed fixes the pipeline's own RNG (albumentations ignores numpy/random global seeds); data
    loader workers reseed it per worker (see dataset.seed_worker).

    The data module's fast path splits this pipeline: contrast=False when the cache already
    holds the enhanced image (it is deterministic), and to_float=False to ship uint8 (1,S,S)
    tensors from the workers (4x less to copy) that the loader converts per batch.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; use one of {sorted(STAGES)}")
    ops: list[A.BasicTransform] = []
    step = contrast_transform(preprocessing, clahe_clip_limit, clahe_tile_grid)
    if contrast and step is not None:
        ops.append(step)
    if STAGES[stage] == "train":
        ops += [
            A.Affine(
                scale=(0.9, 1.1),
                translate_percent=(-0.05, 0.05),
                rotate=(-7, 7),
                interpolation=cv2.INTER_LINEAR,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                p=0.8,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
        ]
        if hflip:
            ops.append(A.HorizontalFlip(p=0.5))
    if to_float:
        ops.append(A.ToFloat(max_value=255.0))
    ops.append(ToTensorV2())
    return A.Compose(ops, seed=seed)
