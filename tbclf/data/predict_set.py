"""The images to predict on, decoded on demand in the loader's worker processes.

Prediction reads each image once, so it skips the decode cache that training fills up front:
decoding runs in the DataLoader workers in parallel with the model, memory stays flat and the
first batch comes at once, whatever the archive's size. An image that cannot be decoded is
not an exception in a worker: its item says ``status="unreadable"`` and ``why``, and the
prediction writer records it (or stops, naming it, unless data.skip_bad_images). A DICOM that
is not a frontal chest radiograph by its header (another modality or body part, a lateral
view) is ``"left out"`` unless the user opts in (data.keep_non_chest, data.keep_lateral).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tbclf.data import dicom
from tbclf.data.imageio import DEFAULT_MAX_PIXELS, SNIFF_BYTES, sniff_format
from tbclf.data.records import Record
from tbclf.data.spec import InputSpec
from tbclf.errors import DataError

SCORED, UNREADABLE, LEFT_OUT = "scored", "unreadable", "left out"


class PredictDataset(Dataset):
    """Items in the batch contract (uint8 image, the loader converts) plus ``path``,
    ``status`` and ``why``; ``index`` is the image's position in the full list ``records``,
    also when ``positions`` leaves out images an earlier attempt already scored."""

    def __init__(
        self,
        records: Sequence[Record],
        spec: InputSpec,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        positions: Sequence[int] | None = None,
        keep_lateral: bool = False,
        keep_non_chest: bool = False,
    ) -> None:
        self.all_records = list(records)
        self.spec = spec
        self.max_pixels = int(max_pixels)
        self.positions = list(range(len(self.all_records)) if positions is None else positions)
        self.keep_lateral = bool(keep_lateral)
        self.keep_non_chest = bool(keep_non_chest)

    @property
    def records(self) -> list[Record]:
        return [self.all_records[p] for p in self.positions]

    def without(self, ids: set[str]) -> PredictDataset:
        """The same list without the images whose IDs are in ``ids``."""
        keep = [p for p in self.positions if self.all_records[p].id not in ids]
        return PredictDataset(
            self.all_records, self.spec, self.max_pixels, keep, self.keep_lateral,
            self.keep_non_chest,
        )  # fmt: skip

    def left_out(self, record: Record) -> str | None:
        """Why a DICOM is not a frontal chest radiograph, from its header (None otherwise)."""
        try:
            with open(record.path, "rb") as handle:
                head = handle.read(SNIFF_BYTES)
        except OSError:
            return None  # the decoder says why, naming the file
        if sniff_format(head) != "dicom":
            return None
        try:
            info = dicom.read_info(Path(record.path))
        except DataError:
            return None
        return dicom.left_out_reason(info, self.keep_lateral, self.keep_non_chest)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        position = self.positions[i]
        record = self.all_records[position]
        status, why = SCORED, ""
        square = None
        reason = self.left_out(record)
        if reason is not None:
            status, why = LEFT_OUT, reason
        else:
            try:
                square = self.spec.enhance(self.spec.load_square(record.path, self.max_pixels))
            except DataError as exc:
                status, why = UNREADABLE, str(exc)
        if square is None:
            square = np.zeros((self.spec.image_size, self.spec.image_size), np.uint8)
        label = math.nan if record.label is None else float(record.label)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(square, dtype=np.uint8))[None],
            "label": torch.tensor(label, dtype=torch.float32),
            "id": record.id,
            "source": record.source,
            "view": record.view,
            "index": position,
            "path": str(record.path),
            "status": status,
            "why": why,
        }
