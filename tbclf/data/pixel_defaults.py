"""The pixel pipeline's default options, in a module without torch.

:class:`tbclf.data.spec.InputSpec` takes its field defaults from here, and so do the cache, eda
and the commands' options, which must import without torch (the CLI front door starts in well
under a second): one place to change a default.
"""

from __future__ import annotations

from typing import NamedTuple


class PixelDefaults(NamedTuple):
    image_size: int = 224
    resize: str = "pad"
    crop_border: bool = True
    preprocessing: str = "clahe"
    clahe_clip_limit: float = 2.0
    clahe_tile_grid: int = 8


PIXEL_DEFAULTS = PixelDefaults()
