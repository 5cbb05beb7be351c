"""InputSpec: how an image file becomes the tensor a trained model takes.

A model carries its InputSpec in its hyperparameters (``model.input_spec``), like timm's
``pretrained_cfg``: test, predict, explain, export and serve ask the model for it instead of
trusting today's ``data.*`` settings, so inputs always match training. This module defines the
spec and the one deterministic pipeline that applies it; the data module, the cache and every
consumer use it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tbclf.data import imageio
from tbclf.data.pixel_defaults import PIXEL_DEFAULTS
from tbclf.data.transforms import PREPROCESSING, contrast_transform
from tbclf.errors import ConfigError

BIT_DEPTH_RULES = ("auto",)


@dataclass(frozen=True)
class InputSpec:
    """What a model was trained on.

    Pixel pipeline (the ``data.*`` options of the same names): decode to one gray channel
    (16-bit images scaled by ``bit_depth``: "auto" = the smallest of 8/10/12/14/16 bits that
    holds the image's values), crop black bands (``crop_border``), fit to ``image_size``
    squared (``resize``: pad or squash), then the contrast step (``preprocessing`` with the
    CLAHE settings). The result is a float (1, S, S) tensor in [0, 1].

    Network side (informational, filled in by the model; the model applies them itself):
    ``in_chans`` channels after gray expansion, normalised with ``mean``/``std``.
    """

    image_size: int = PIXEL_DEFAULTS.image_size
    resize: str = PIXEL_DEFAULTS.resize
    crop_border: bool = PIXEL_DEFAULTS.crop_border
    preprocessing: str = PIXEL_DEFAULTS.preprocessing
    clahe_clip_limit: float = PIXEL_DEFAULTS.clahe_clip_limit
    clahe_tile_grid: int = PIXEL_DEFAULTS.clahe_tile_grid
    bit_depth: str = "auto"
    in_chans: int = 1
    mean: tuple[float, ...] | None = field(default=None)
    std: tuple[float, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        if int(self.image_size) < 8:
            raise ConfigError(f"data.image_size={self.image_size} must be at least 8 pixels.")
        if self.resize not in imageio.RESIZE_MODES:
            raise ConfigError(f"data.resize={self.resize!r} is not one of {imageio.RESIZE_MODES}.")
        if self.preprocessing not in PREPROCESSING:
            raise ConfigError(
                f"data.preprocessing={self.preprocessing!r} is not one of {PREPROCESSING}."
            )
        if self.bit_depth not in BIT_DEPTH_RULES:
            raise ConfigError(
                f"input_spec.bit_depth={self.bit_depth!r} is not one of {BIT_DEPTH_RULES}."
            )
        object.__setattr__(self, "image_size", int(self.image_size))
        object.__setattr__(self, "crop_border", bool(self.crop_border))
        object.__setattr__(self, "clahe_clip_limit", float(self.clahe_clip_limit))
        object.__setattr__(self, "clahe_tile_grid", int(self.clahe_tile_grid))
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(float(v) for v in value))
        contrast_transform(self.preprocessing, self.clahe_clip_limit, self.clahe_tile_grid)

    # ------------------------------------------------------------------ conversions
    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(
        cls, values: Mapping[str, Any] | InputSpec | None, where: str = "input_spec"
    ) -> InputSpec:
        """From a checkpoint's or config's mapping; unknown keys are refused by name."""
        if values is None:
            return cls()
        if isinstance(values, InputSpec):
            return values
        unknown = sorted(set(values) - set(cls.fields()))
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(cls.fields())}."
            )
        return cls(**dict(values))

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> InputSpec:
        """From ``data.*``-style options (other keys are ignored)."""
        return cls(
            **{k: options[k] for k in PIXEL_FIELDS if k in options and options[k] is not None}
        )

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for name in ("mean", "std"):
            if out[name] is not None:
                out[name] = list(out[name])
        return out

    def pixel_options(self) -> dict[str, Any]:
        """The ``data.*`` options this spec fixes."""
        return {k: getattr(self, k) for k in PIXEL_FIELDS}

    def with_network(self, in_chans: int, mean: Any, std: Any) -> InputSpec:
        return dataclasses.replace(
            self,
            in_chans=int(in_chans),
            mean=None if mean is None else tuple(float(v) for v in mean),
            std=None if std is None else tuple(float(v) for v in std),
        )

    def differences(self, options: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
        """``{key: (given, spec's)}`` for the pixel options in `options` that differ."""
        return {
            k: (options[k], getattr(self, k))
            for k in PIXEL_FIELDS
            if k in options and options[k] is not None and options[k] != getattr(self, k)
        }

    # ------------------------------------------------------------------ the pipeline
    def contrast(self):
        """The albumentations contrast step, or None."""
        return contrast_transform(self.preprocessing, self.clahe_clip_limit, self.clahe_tile_grid)

    def load_square(
        self, path: str | Path, max_pixels: int = imageio.DEFAULT_MAX_PIXELS
    ) -> np.ndarray:
        """Decode, crop and fit: the uint8 (S, S) square before the contrast step."""
        return self.load_square_geometry(path, max_pixels)[0]

    def load_square_geometry(
        self, path: str | Path, max_pixels: int = imageio.DEFAULT_MAX_PIXELS
    ) -> tuple[np.ndarray, imageio.SquareGeometry]:
        """:meth:`load_square` and where that square sits in the stored image (crop box, pad
        offsets and scale), so maps on the model's input can be put back on the image."""
        return imageio.load_prepared_geometry(
            Path(path), self.image_size, self.resize, self.crop_border, max_pixels
        )

    def square_from_gray(self, gray: np.ndarray) -> np.ndarray:
        """Crop and fit an already decoded uint8 gray image (uploads decoded from memory)."""
        img = imageio.crop_black_border(gray) if self.crop_border else gray
        return np.ascontiguousarray(imageio.fit_to_square(img, self.image_size, self.resize))

    def enhance(self, square: np.ndarray) -> np.ndarray:
        """The deterministic contrast step on a uint8 square."""
        step = self.contrast()
        return square if step is None else step(image=square)["image"]

    def to_tensor(self, enhanced: np.ndarray) -> torch.Tensor:
        """uint8 (S, S) -> float32 (1, S, S) in [0, 1]."""
        # numpy's float32 division: bit-identical to the training loader's conversion.
        out = np.divide(enhanced, np.float32(255.0), dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(out)).unsqueeze(0)

    def prepare(
        self, path: str | Path, max_pixels: int = imageio.DEFAULT_MAX_PIXELS
    ) -> torch.Tensor:
        """The model's input for one file: float32 (1, S, S) in [0, 1], as at test time."""
        return self.to_tensor(self.enhance(self.load_square(path, max_pixels)))

    def prepare_gray(self, gray: np.ndarray) -> torch.Tensor:
        """The model's input for a decoded uint8 gray image."""
        return self.to_tensor(self.enhance(self.square_from_gray(gray)))


# The fields that are data.* options (the pixel pipeline); the rest describe the network.
PIXEL_FIELDS = (
    "image_size",
    "resize",
    "crop_border",
    "preprocessing",
    "clahe_clip_limit",
    "clahe_tile_grid",
)
