"""One record per image: the unit that readers produce and splits, caches and datasets consume."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HEALTHY = 0
TB = 1
# Class names in label order for the healthy-vs-TB task (the two-class case).
BINARY_CLASSES = ("healthy", "tb")

# The file extensions of the image formats tbclf reads (content decides; names are a hint).
IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".dcm", ".dicom",
)  # fmt: skip


@dataclass(frozen=True)
class Record:
    """An image on disk with its identity, label (None when unlabeled) and source set.

    ``view`` is the DICOM ViewPosition (PA, AP, LL, ...) upper-cased, "" when the file does
    not say (PNG/JPEG, or a DICOM without the tag).
    """

    id: str
    path: Path
    label: int | None
    source: str
    view: str = ""
