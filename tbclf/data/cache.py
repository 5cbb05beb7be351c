"""On-disk cache of decoded, border-cropped, resized uint8 images.

Decoding a 4020x4892 16-bit PNG takes ~0.5 s; reading its 224x224 cache entry takes ~20 us.
Entries are raw uint8 bytes (no header to parse) named by a key that covers the file content and
every setting that shapes the cached pixels, so a changed file or setting can never be served a
stale entry. Writes go through a temp file + os.replace, and an entry of the wrong size is
treated as a miss, so a killed run never leaves an entry that is read back truncated.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import multiprocessing
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tbclf.data import imageio
from tbclf.data.pixel_defaults import PIXEL_DEFAULTS
from tbclf.data.records import Record
from tbclf.data.transforms import contrast_transform
from tbclf.errors import DataError
from tbclf.io import atomic_write_bytes

if TYPE_CHECKING:
    from tbclf.data.spec import InputSpec

log = logging.getLogger(__name__)

# Bump when imageio.load_prepared changes what it returns for the same inputs.
CACHE_VERSION = 3  # 2: PNG sBIT bit depth, JPEG EXIF orientation, DICOM; 3: robust depth


@dataclass(frozen=True)
class DecodeCache:
    """Maps (file content hash, settings) to the uint8 (S,S) array that load_prepared returns,
    optionally followed by the deterministic contrast step (preprocessing="clahe"/"equalize").

    Caching the contrast step too takes CLAHE (a third of the per-image CPU time of the training
    pipeline) out of every epoch. An enhanced entry is derived from the plain entry, which is
    kept, so changing CLAHE settings does not decode the originals again.
    """

    cache_dir: Path
    image_size: int
    resize: str = PIXEL_DEFAULTS.resize
    crop_border: bool = PIXEL_DEFAULTS.crop_border
    max_pixels: int = imageio.DEFAULT_MAX_PIXELS
    preprocessing: str = "none"
    clahe_clip_limit: float = PIXEL_DEFAULTS.clahe_clip_limit
    clahe_tile_grid: int = PIXEL_DEFAULTS.clahe_tile_grid

    def __post_init__(self) -> None:
        object.__setattr__(self, "cache_dir", Path(self.cache_dir))
        # Validates the preprocessing settings (ConfigError) before any work.
        contrast_transform(self.preprocessing, self.clahe_clip_limit, self.clahe_tile_grid)

    @property
    def fingerprint(self) -> str:
        """The settings that change the cached pixels (max_pixels only guards, so it is not in)."""
        settings: dict[str, object] = {
            "v": CACHE_VERSION,
            "image_size": int(self.image_size),
            "resize": self.resize,
            "crop_border": bool(self.crop_border),
        }
        if self.preprocessing != "none":
            settings["preprocessing"] = self.preprocessing
        if self.preprocessing == "clahe":
            settings["clahe"] = [float(self.clahe_clip_limit), int(self.clahe_tile_grid)]
        return json.dumps(settings, sort_keys=True)

    @classmethod
    def for_spec(
        cls, cache_dir: str | Path, spec: InputSpec, max_pixels: int = imageio.DEFAULT_MAX_PIXELS
    ) -> DecodeCache:
        """The cache of the pixels `spec` describes (before augmentation)."""
        return cls(
            Path(cache_dir),
            spec.image_size,
            spec.resize,
            spec.crop_border,
            max_pixels,
            preprocessing=spec.preprocessing,
            clahe_clip_limit=spec.clahe_clip_limit,
            clahe_tile_grid=spec.clahe_tile_grid,
        )

    def plain(self) -> DecodeCache:
        """The same cache without the contrast step (the output of load_prepared)."""
        return replace(self, preprocessing="none")

    def key(self, file_hash: str) -> str:
        return hashlib.sha256(f"{file_hash}|{self.fingerprint}".encode()).hexdigest()

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.image_size), int(self.image_size))

    def path_for(self, file_hash: str) -> Path:
        key = self.key(file_hash)
        h, w = self.shape
        return self.cache_dir / key[:2] / f"{key}_{h}x{w}.u8"

    # ------------------------------------------------------------------ read / write

    def read(self, file_hash: str) -> np.ndarray | None:
        """The cached array, or None when missing or corrupt (wrong size / unreadable)."""
        return read_entry(self.path_for(file_hash), self.shape)

    def has(self, file_hash: str) -> bool:
        h, w = self.shape
        try:
            return self.path_for(file_hash).stat().st_size == h * w
        except OSError:
            return False

    def build(self, record: Record, file_hash: str) -> np.ndarray:
        """Decode the original (or enhance the plain entry) and store the result atomically."""
        if self.preprocessing != "none":
            plain = self.plain().get(record, file_hash)
            step = contrast_transform(
                self.preprocessing, self.clahe_clip_limit, self.clahe_tile_grid
            )
            img = np.ascontiguousarray(step(image=plain)["image"], dtype=np.uint8)
            self.write(file_hash, img)
            return img
        img = imageio.load_prepared(
            Path(record.path),
            self.image_size,
            resize=self.resize,
            crop_border=self.crop_border,
            max_pixels=self.max_pixels,
        )
        img = np.ascontiguousarray(img, dtype=np.uint8)
        if img.shape != self.shape:
            raise RuntimeError(f"load_prepared returned {img.shape}, expected {self.shape}")
        self.write(file_hash, img)
        return img

    def get(self, record: Record, file_hash: str) -> np.ndarray:
        img = self.read(file_hash)
        if img is None:
            img = self.build(record, file_hash)
        return img

    def write(self, file_hash: str, img: np.ndarray) -> None:
        """Atomic write: a killed run leaves no partial entry under the final name.

        No fsync: an entry is derived data that is rebuilt when its size is wrong, and syncing
        every small entry would dominate warm-up on slow disks.
        """
        path = self.path_for(file_hash)
        try:
            atomic_write_bytes(path, img.tobytes(), fsync=False)
        except OSError as exc:
            raise self._write_error(exc, path) from exc

    def _write_error(self, exc: OSError, path: Path) -> OSError:
        """The kernel's message names no file: say which entry, which cache and what to do."""
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            hint = "the disk is full; free some space or point data.cache_dir at a larger disk"
        else:
            hint = "make data.cache_dir writable or point it at another folder"
        return OSError(
            exc.errno,
            f"{why}: cannot write cache entry {path} (data.cache_dir={self.cache_dir}): {hint}",
            str(path),
        )

    # ------------------------------------------------------------------ warm-up

    def warm(
        self,
        records: Sequence[Record],
        hashes: Mapping[Path, str],
        num_workers: int = 2,
        skip_bad_images: bool = False,
        progress: bool = True,
    ) -> list[Record]:
        """Decode every record missing from the cache; returns the records that are usable.

        This is also the validation pass: a bad image fails here, before any training, with
        every bad file listed (or, with skip_bad_images, is dropped with one warning).
        """
        todo = [r for r in records if not self.has(hashes[Path(r.path)])]
        bad: dict[Path, str] = {}
        if todo:
            jobs = [(r, hashes[Path(r.path)]) for r in todo]
            for path, error in self._run(jobs, num_workers, progress):
                if error is not None:
                    bad[path] = error
        if not bad:
            return list(records)
        listing = "\n".join(f"  {p}: {msg}" for p, msg in list(bad.items())[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        if not skip_bad_images:
            raise DataError(
                f"{len(bad)} image(s) cannot be used:\n{listing}{more}\nRemove or replace them, "
                "or pass --data.skip_bad_images true to go on without them."
            )
        warnings.warn(
            f"Skipping {len(bad)} unreadable image(s) (--data.skip_bad_images true):\n"
            f"{listing}{more}",
            stacklevel=2,
        )
        return [r for r in records if Path(r.path) not in bad]

    def _run(self, jobs: list[tuple[Record, str]], num_workers: int, progress: bool):
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(jobs),
            desc=f"Caching {self.image_size}px images",
            unit="img",
            disable=None if progress else True,
        )
        try:
            if num_workers <= 1 or len(jobs) < 4:
                for job in jobs:
                    yield _build_one(self, job)
                    bar.update()
            else:
                ctx = multiprocessing.get_context()
                with ctx.Pool(min(num_workers, len(jobs))) as pool:
                    for result in pool.imap_unordered(partial(_build_one, self), jobs, chunksize=1):
                        yield result
                        bar.update()
        finally:
            bar.close()


def read_entry(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """Raw uint8 read; any size mismatch or OS error is a miss (rebuilt by the caller).

    readinto a preallocated buffer (a third of np.fromfile's cost per entry); asking for one
    byte more than expected detects an overlong entry without a stat call.
    """
    h, w = shape
    n = h * w
    buf = np.empty(n + 1, dtype=np.uint8)
    view = memoryview(buf)
    got = 0
    try:
        with open(path, "rb", buffering=0) as f:
            while got <= n:  # raw reads may be short; loop until EOF
                k = f.readinto(view[got:])
                if not k:
                    break
                got += k
    except OSError:
        return None
    if got != n:
        return None
    return buf[:n].reshape(h, w)


def _build_one(cache: DecodeCache, job: tuple[Record, str]) -> tuple[Path, str | None]:
    record, file_hash = job
    try:
        cache.build(record, file_hash)
    except DataError as exc:
        return Path(record.path), str(exc)
    return Path(record.path), None
