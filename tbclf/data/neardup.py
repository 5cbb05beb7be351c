"""Near-duplicates: the same X-ray re-saved at another size, format or contrast.

TBX11K's `extra` folder holds the Shenzhen and Montgomery images re-saved at 512x512; combined
with the NLM originals, one X-ray sits in the data twice and the content hash does not see it.
Each cached square is reduced to a 32x32 thumbnail (black bands and padding cropped first, so
the aspect ratio and padding do not matter); a 64-bit DCT perceptual hash finds candidate pairs
cheaply, and a Pearson correlation of the thumbnails confirms them (contrast changes are linear
or close to it, so they keep the correlation near 1; two patients' chest X-rays do not).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from tbclf.data.imageio import crop_black_border
from tbclf.data.records import Record

THUMB = 32
# Calibrated on the 376 dev images at 64 and 224 px (tests/test_data_neardup.py): resized,
# JPEG q90, contrast-stretched and gamma 0.7 copies land at <= 6 bits and correlation >= 0.989;
# the closest pairs of different X-rays within 10 bits reach 0.962 at most.
MAX_HAMMING = 10
MIN_CORRELATION = 0.98
_BLOCK = 1024


@dataclass(frozen=True)
class Fingerprints:
    """Per image: a 64-bit perceptual hash and a unit-norm, zero-mean thumbnail."""

    hashes: np.ndarray  # (n,) uint64
    vectors: np.ndarray  # (n, THUMB*THUMB) float32


def _trim_padding(img: np.ndarray) -> np.ndarray:
    """Drop all-zero edge rows and columns (fit_to_square's padding), however wide."""
    rows = np.flatnonzero(img.max(axis=1))
    cols = np.flatnonzero(img.max(axis=0))
    if rows.size == 0 or cols.size == 0:
        return img
    return img[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def thumbnail(square: np.ndarray) -> np.ndarray:
    """float32 THUMB x THUMB of the image content (padding and black bands cropped)."""
    img = crop_black_border(_trim_padding(np.asarray(square, dtype=np.uint8)))
    return cv2.resize(img, (THUMB, THUMB), interpolation=cv2.INTER_AREA).astype(np.float32)


def _phash(thumb: np.ndarray) -> np.uint64:
    low = cv2.dct(thumb)[:8, :8].flatten()[1:]  # 63 low frequencies, DC left out
    bits = low > np.median(low)
    return np.uint64(int("".join("1" if b else "0" for b in bits), 2))


def _unit(thumb: np.ndarray) -> np.ndarray:
    v = thumb.flatten().astype(np.float64)
    v -= v.mean()
    norm = np.linalg.norm(v)
    return (v / norm if norm > 0 else v).astype(np.float32)


def fingerprints(squares: Sequence[np.ndarray]) -> Fingerprints:
    thumbs = [thumbnail(s) for s in squares]
    hashes = np.array([_phash(t) for t in thumbs], dtype=np.uint64)
    vectors = (
        np.stack([_unit(t) for t in thumbs])
        if thumbs
        else np.zeros((0, THUMB * THUMB), dtype=np.float32)
    )
    return Fingerprints(hashes, vectors)


def similar_pairs(
    fp: Fingerprints, max_hamming: int = MAX_HAMMING, min_correlation: float = MIN_CORRELATION
) -> list[tuple[int, int, int, float]]:
    """(i, j, hamming, correlation) for i < j whose hashes are close and thumbnails agree."""
    n = len(fp.hashes)
    out = []
    for start in range(0, n, _BLOCK):
        block = fp.hashes[start : start + _BLOCK]
        dist = np.bitwise_count(block[:, None] ^ fp.hashes[None, :])
        rows, cols = np.nonzero(dist <= max_hamming)
        for r, j in zip(rows.tolist(), cols.tolist(), strict=True):
            i = start + r
            if j <= i:
                continue
            corr = float(fp.vectors[i] @ fp.vectors[j])
            if corr >= min_correlation:
                out.append((i, j, int(dist[r, j]), corr))
    return out


def find_near_duplicates(
    records: Sequence[Record],
    load: Callable[[Record], np.ndarray],
    hashes: dict[Path, str] | None = None,
) -> list[list[Record]]:
    """Groups (2+ members, sorted) of images that are one X-ray; byte-identical files (same
    content hash) are left to splits.find_duplicates and not reported again here."""
    records = list(records)
    fp = fingerprints([load(r) for r in records])
    parent = list(range(len(records)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, _, _ in similar_pairs(fp):
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    members: dict[int, list[Record]] = {}
    for i, r in enumerate(records):
        members.setdefault(root(i), []).append(r)
    groups = []
    for group in members.values():
        if len(group) < 2:
            continue
        if hashes is not None and len({hashes[Path(r.path)] for r in group}) == 1:
            continue  # all byte-identical: already a duplicate group
        groups.append(sorted(group, key=lambda r: (str(r.path), r.id)))
    groups.sort(key=lambda g: str(g[0].path))
    return groups
