"""A Dataset over cached images: the originals are decoded once (cache warm-up), never per epoch."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from tbclf.data.cache import DecodeCache, read_entry
from tbclf.data.records import Record


class CachedImageDataset(Dataset):
    """Items are dicts {"image": float32 (1,S,S), "label": float32 scalar (NaN if unlabeled),
    "id": str, "source": str}; the default collate turns them into the batch contract."""

    def __init__(
        self,
        records: Sequence[Record],
        hashes: Mapping[Path, str],
        cache: DecodeCache,
        transform: Callable[..., dict[str, Any]] | None,
    ) -> None:
        self.records = list(records)
        self.cache = cache
        self.transform = transform
        self._hashes = [hashes[Path(r.path)] for r in self.records]
        # Resolve entry paths once: __getitem__ is then one raw read, no hashing per item.
        self._entries = [cache.path_for(h) for h in self._hashes]
        self._labels = [
            torch.tensor(math.nan if r.label is None else float(r.label), dtype=torch.float32)
            for r in self.records
        ]

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> np.ndarray:
        img = read_entry(self._entries[index], self.cache.shape)
        if img is None:  # evicted or corrupted since warm-up: rebuild rather than fail
            img = self.cache.build(self.records[index], self._hashes[index])
        return img

    def __getitem__(self, index: int) -> dict[str, Any]:
        img = self.load(index)
        if self.transform is not None:
            image = self.transform(image=img)["image"]
        else:
            image = torch.from_numpy(img.astype(np.float32) / 255.0)[None]
        record = self.records[index]
        return {
            "image": image,
            "label": self._labels[index],
            "id": record.id,
            "source": record.source,
        }


def seed_worker(worker_id: int) -> None:
    """Give each loader worker its own augmentation stream, derived from the loader's seed.

    Forked workers inherit the same albumentations RNG state, so without this every worker
    would apply identical "random" augmentations. torch.initial_seed() differs per worker and
    follows the DataLoader's generator, so runs stay reproducible.
    """
    cv2.setNumThreads(1)
    info = get_worker_info()
    if info is None:
        return
    transform = getattr(info.dataset, "transform", None)
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(torch.initial_seed() % 2**32)
