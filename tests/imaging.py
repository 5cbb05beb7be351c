"""Helpers that make small test images and datasets on disk (shared by the data tests).

A plain module (not a conftest) so any test file can `from imaging import make_png, make_dataset`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

LAYOUTS = ("nlm", "zindi", "folders", "mixed")


def _pattern(shape: tuple[int, int], seed: int, max_value: int) -> np.ndarray:
    """A deterministic, non-constant image (gradient + noise) that reaches max_value exactly."""
    h, w = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = (xx / max(w - 1, 1) + yy / max(h - 1, 1)) / 2.0
    noise = rng.random((h, w)) * 0.2
    img = np.clip(base * 0.8 + noise, 0.0, 1.0) * max_value
    img = img.astype(np.int64)
    img[0, 0] = 0
    img[h // 2, w // 2] = max_value
    return img


def make_array(
    shape: tuple[int, int] = (64, 64),
    dtype: type = np.uint8,
    channels: int = 1,
    bit_depth: int | None = None,
    seed: int = 0,
    value: int | None = None,
    equal_channels: bool = True,
    border_bottom: int = 0,
) -> np.ndarray:
    """The array make_png writes: HxW (channels=1) or HxWxC (3 or 4, BGR[A] order as cv2 uses).

    bit_depth caps the maximum value for uint16 images (e.g. 12 -> max 4095), default 8/16 by dtype.
    value fills the image with a constant instead of the pattern. border_bottom rows at the bottom
    are set to 0 (a Montgomery-style black band). RGBA alpha is a constant 255.
    """
    dtype = np.dtype(dtype)
    if bit_depth is None:
        bit_depth = 8 if dtype == np.uint8 else 16
    max_value = (1 << bit_depth) - 1
    if value is not None:
        gray = np.full(shape, value, dtype=np.int64)
    else:
        gray = _pattern(shape, seed, max_value)
    if border_bottom:
        gray[-border_bottom:, :] = 0
    if channels == 1:
        return gray.astype(dtype)
    planes = [gray, gray, gray]
    if not equal_channels:
        planes = [gray, (gray * 3) // 4, gray // 2]  # B, G, R differ
    if channels == 4:
        planes.append(np.full(shape, max_value, dtype=np.int64))
    elif channels != 3:
        raise ValueError(f"channels must be 1, 3 or 4, got {channels}")
    return np.stack(planes, axis=-1).astype(dtype)


def write_image(path: Path, img: np.ndarray, quality: int = 95) -> Path:
    """Write with cv2 via imencode (works for any path); .jpg/.jpeg get the given quality."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = path.suffix.lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, img, params)
    if not ok:
        raise RuntimeError(f"cv2 could not encode {path}")
    path.write_bytes(buf.tobytes())
    return path


def make_png(
    path: Path,
    shape: tuple[int, int] = (64, 64),
    dtype: type = np.uint8,
    channels: int = 1,
    **kwargs,
) -> np.ndarray:
    """Write an image (PNG, or JPEG if path ends in .jpg/.jpeg) and return the array written.

    kwargs: those of :func:`make_array` (dtype, channels, bit_depth, seed, value, ...).
    """
    img = make_array(shape, dtype, channels, **kwargs)
    write_image(path, img)
    return img


def make_jpeg(
    path: Path,
    shape: tuple[int, int] = (64, 64),
    channels: int = 1,
    seed: int = 0,
    value: int | None = None,
) -> np.ndarray:
    """Write an 8-bit JPEG; returns the array before lossy compression."""
    img = make_array(shape, np.uint8, channels, None, seed, value)
    write_image(path, img)
    return img


def make_dataset(
    root: Path,
    layout: str = "folders",
    n_per_class: int = 3,
    size: int = 32,
    channels: int = 1,
    ext: str = ".png",
    seed: int = 0,
    unique: bool = True,
    csv_name: str = "Train.csv",
    with_labels: bool = True,
) -> dict[str, int | None]:
    """Make a small dataset in one layout and return {expected record id: label}.

    layout:
      "nlm"     ChinaSet_AllFiles/CXR_png/CHNCXR_####_{0,1}.png and MontgomerySet/CXR_png/MCUCXR_...
                (n_per_class per class per source; ids are file stems)
      "zindi"   <root>/<csv_name>: ID,LABEL (no LABEL if not with_labels), images <root>/<ID>.png
      "folders" <root>/{healthy,tb}/img_###<ext>; ids "healthy/img_000" etc.
      "mixed"   nlm + <root>/da/{healthy,tb}/ and <root>/db/{Normal,TB}/ (like the dev set)
    unique=True gives every image different content (a different seed), so no duplicate hashes.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    counter = [seed]

    def img(path: Path) -> None:
        s = counter[0]
        counter[0] += 1 if unique else 0
        make_png(path, (size, size), np.uint8, channels, seed=s)

    expected: dict[str, int | None] = {}
    if layout in ("nlm", "mixed"):
        for folder, prefix in (("ChinaSet_AllFiles", "CHNCXR"), ("MontgomerySet", "MCUCXR")):
            k = 1
            for label in (0, 1):
                for _ in range(n_per_class):
                    stem = f"{prefix}_{k:04d}_{label}"
                    img(root / folder / "CXR_png" / f"{stem}.png")
                    expected[stem] = label
                    k += 1
    if layout == "zindi":
        rows = []
        for label in (0, 1):
            for i in range(n_per_class):
                image_id = f"ID_{label}{i:04d}"
                img(root / f"{image_id}.png")
                rows.append((image_id, label))
                expected[image_id] = label if with_labels else None
        with open(root / csv_name, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["ID", "LABEL"] if with_labels else ["ID"])
            for image_id, label in rows:
                w.writerow([image_id, label] if with_labels else [image_id])
    if layout == "folders":
        for label, cls in ((0, "healthy"), (1, "tb")):
            for i in range(n_per_class):
                img(root / cls / f"img_{i:03d}{ext}")
                expected[f"{cls}/img_{i:03d}"] = label
    if layout == "mixed":
        for sub, names in (("da", ("healthy", "tb")), ("db", ("Normal", "TB"))):
            sub_ext = ".png" if sub == "da" else ".jpg"
            for label, cls in zip((0, 1), names, strict=True):
                for i in range(n_per_class):
                    img(root / sub / cls / f"{cls[0].lower()}{i}{sub_ext}")
                    expected[f"{sub}/{cls}/{cls[0].lower()}{i}"] = label
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; use one of {LAYOUTS}")
    return expected


def fake_nlm_download(monkeypatch, n_per_class: int, size: int = 40) -> list[Path]:
    """Replace the NLM download with one that writes a small NLM set where it is asked to (no
    network); returns the roots it was asked for, in order, so a test sees who downloaded."""
    import tbclf.data.download as download

    calls: list[Path] = []

    def fake_download(root, *args, **kwargs):
        calls.append(Path(root))
        make_dataset(root, "nlm", n_per_class=n_per_class, size=size)
        return []

    monkeypatch.setattr(download, "ensure_nlm_data", fake_download)
    return calls
