"""A Dataset over cached images: the originals are decoded once (cache warm-up), never per epoch."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from tbclf.data.cache import DecodeCache, read_entry
from tbclf.data.records import Record


class CachedImageDataset(Dataset):
    """Items are dicts {"image": (1,S,S) tensor, "label": float32 scalar (NaN if unlabeled),
    "id": str, "source": str, "view": str (DICOM ViewPosition, "" when unknown)}; the default
    collate turns them into the batch contract.

    "image" is whatever the transform returns: float32 in [0,1] for build_transforms' full
    pipeline, or uint8 for the data module's fast path (TBDataLoader converts whole batches).
    """

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
            "view": record.view,
            # Position in the data set: lets evaluation drop the repeats DDP's sampler pads with.
            "index": index,
        }


def rank_seed(seed: int, rank: int) -> int:
    """The training RNG seed of one DDP rank: rank 0 keeps ``seed`` (single-process runs are
    unchanged), other ranks get independent streams from numpy's SeedSequence."""
    if rank == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1)[0])


def reseed_transform(dataset: Dataset, seed: int) -> None:
    """Point the dataset's augmentation pipeline at a fresh stream (albumentations' own RNGs
    ignore numpy's and Python's global seeds)."""
    transform = getattr(dataset, "transform", None)
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(int(seed) % 2**32)


def seed_worker(worker_id: int) -> None:
    """Give each loader worker its own augmentation stream, derived from the loader's seed.

    Forked workers inherit the same albumentations RNG state, so without this every worker
    would apply identical "random" augmentations. torch.initial_seed() differs per worker and
    follows the DataLoader's generator, so runs stay reproducible.
    """
    # No cv2.setNumThreads() here: in a forked child it can deadlock joining the parent's
    # (non-existent) OpenCV threads.
    info = get_worker_info()
    if info is None:
        return
    reseed_transform(info.dataset, torch.initial_seed())


def to_float_batch(batch: dict[str, Any], pin: bool = False) -> dict[str, Any]:
    """uint8 images -> float32 in [0,1], bit-identical to albumentations' ToFloat(255).

    numpy, single-threaded: torch's intra-op threads would spin against the loader workers for
    the same two cores (10x the CPU time for this op on a 2-core machine).
    """
    image = batch.get("image")
    if isinstance(image, torch.Tensor) and image.dtype == torch.uint8:
        out = torch.empty(image.shape, dtype=torch.float32, pin_memory=pin)
        np.divide(image.numpy(), np.float32(255.0), out=out.numpy(), dtype=np.float32)
        batch = {**batch, "image": out}
    return batch


class TBDataLoader(DataLoader):
    """A DataLoader whose workers ship uint8 images and whose batches arrive as float32.

    Moving uint8 between processes instead of float32 is 4x less shared memory to allocate,
    fill and map per batch; on two cores that transport alone capped a float32 loader below
    the 1500 images/s target. The conversion (one vectorised op per batch) runs here, in the
    consuming process, so every batch still follows the float32 [0,1] contract.

    With a ``generator`` (every data module loader has one; only training's pipeline draws
    random numbers) every epoch's augmentation stream is drawn from it when the epoch starts:
    in this process (``num_workers=0``) here, in workers through :func:`seed_worker` (the
    workers' seeds come from the same generator). An epoch's shuffle and augmentation are then
    a function of the generator's state alone, which a checkpoint saves
    (:mod:`tbclf.engine.rng_state`), so a resumed run draws exactly what it would have.
    """

    def __iter__(self):
        if self.generator is not None and self.num_workers == 0:
            seed = torch.empty((), dtype=torch.int64).random_(generator=self.generator).item()
            reseed_transform(self.dataset, seed)
        pin = bool(self.pin_memory) and torch.cuda.is_available()
        for batch in super().__iter__():
            yield to_float_batch(batch, pin)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    shuffle: bool,
    generator: torch.Generator | None = None,
    loader_class: type[DataLoader] = TBDataLoader,
    persistent_workers: bool | None = None,
    sampler: Sampler | None = None,
) -> DataLoader:
    """The loader settings every TBDataModule loader (and the loader benchmark) uses.

    ``persistent_workers`` (default: whenever there are workers) is off for the data module's
    training loader: workers started afresh each epoch take their augmentation seeds from the
    loader's generator, which makes a resumed run bit-exact (persistent workers would carry
    their streams over from epochs the resumed process never ran).
    """
    if persistent_workers is None:
        persistent_workers = num_workers > 0
    return loader_class(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        # A training batch of one image breaks BatchNorm; drop the tail only in that case, so
        # small data sets keep every image in every epoch.
        drop_last=shuffle and len(dataset) > batch_size and len(dataset) % batch_size == 1,
        num_workers=num_workers,
        persistent_workers=persistent_workers and num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=seed_worker,
        generator=generator,
        sampler=sampler,
    )
