"""Near-duplicates: one X-ray re-saved at another size, format or contrast is one group; two
patients' X-rays are not (checked on the 376 real dev images)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from tbclf.data import imageio
from tbclf.data.datamodule import TBDataModule
from tbclf.data.layouts import discover
from tbclf.data.neardup import find_near_duplicates
from tbclf.data.records import Record
from tbclf.data.splits import SPLIT_NAMES, hash_files

REPO = Path(__file__).resolve().parents[1]
# ../shared/data from the repository; worktrees one level deeper find it one folder up.
DEVSET = next(
    (p for p in (REPO.parent / "shared/data/tb-cxr-dev", REPO.parents[1] / "shared/data/tb-cxr-dev")
     if p.is_dir()),
    REPO.parent / "shared/data/tb-cxr-dev",
)  # fmt: skip
KNOWN_PAIRS = {frozenset(p) for p in (("n1", "n28"), ("n2", "n30"), ("n5", "n31"), ("n6", "n32"))}


def chest_like(seed: int, shape: tuple[int, int] = (300, 260)) -> np.ndarray:
    """A bright thorax with two dark lungs, ribs and noise; geometry varies with the seed."""
    rng = np.random.default_rng(seed)
    h, w = shape
    img = np.full(shape, 200, np.float64)
    for side in (-1, 1):
        cx = w / 2 + side * w * rng.uniform(0.17, 0.25)
        cy = h * rng.uniform(0.4, 0.55)
        axes = (int(w * rng.uniform(0.12, 0.18)), int(h * rng.uniform(0.25, 0.35)))
        mask = np.zeros(shape, np.uint8)
        cv2.ellipse(mask, (int(cx), int(cy)), axes, rng.uniform(-15, 15), 0, 360, 1, -1)
        img -= mask * rng.uniform(90, 130)
    yy = np.arange(h)[:, None]
    img += 18 * np.sin(yy / rng.uniform(8, 14) + rng.uniform(0, 6))
    blobs = rng.normal(0, 1, (h // 10, w // 10))
    img += 25 * cv2.resize(blobs, (w, h), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0, 6, shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write(path: Path, img: np.ndarray, params: list[int] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix, img, params or [])
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def copies(img: np.ndarray) -> dict[str, np.ndarray]:
    """The re-saved versions an X-ray collection really contains."""
    h, w = img.shape
    lo, hi = np.percentile(img, [5, 95])
    return {
        "resized.png": cv2.resize(img, (w // 2, h // 3), interpolation=cv2.INTER_AREA),
        "square512.png": cv2.resize(img, (512, 512), interpolation=cv2.INTER_LINEAR),
        "stretched.png": np.clip((img - lo) * 255.0 / (hi - lo), 0, 255).astype(np.uint8),
    }


def loader(size: int):
    return lambda r: imageio.load_prepared(r.path, size)


def make_set(root: Path, n: int = 12) -> list[Record]:
    records = []
    for i in range(n):
        img = chest_like(i)
        label = i % 2
        out = [write(root / "orig" / f"x{i}.png", img)]
        if i < 3:
            out.append(write(root / "copy" / f"x{i}_q90.jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90]))
            out += [write(root / "copy" / f"x{i}_{name}", c) for name, c in copies(img).items()]
        records += [Record(p.stem, p, label, p.parent.name) for p in out]
    return records


@pytest.mark.parametrize("size", [64, 224])
def test_copies_merge_and_different_images_stay_apart(tmp_path: Path, size: int) -> None:
    records = make_set(tmp_path)
    groups = find_near_duplicates(records, loader(size), hash_files(records))
    assert sorted(sorted(r.path.name for r in g) for g in groups) == [
        sorted([f"x{i}.png", f"x{i}_q90.jpg", f"x{i}_resized.png", f"x{i}_square512.png",
                f"x{i}_stretched.png"])
        for i in range(3)
    ]  # fmt: skip


def test_byte_identical_copies_are_not_reported_again(tmp_path: Path) -> None:
    a = write(tmp_path / "a.png", chest_like(1))
    b = tmp_path / "b.png"
    b.write_bytes(a.read_bytes())
    c = write(tmp_path / "c.png", chest_like(2))
    records = [Record(p.stem, p, 0, "s") for p in (a, b, c)]
    assert find_near_duplicates(records, loader(64), hash_files(records)) == []
    groups = find_near_duplicates(records, loader(64))
    assert [[r.id for r in g] for g in groups] == [["a", "b"]]


def test_datamodule_keeps_near_duplicates_in_one_split_and_reports_them(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for i in range(16):
        cls = "tb" if i % 2 else "healthy"
        img = chest_like(i)
        write(root / "s" / cls / f"x{i}.png", img)
        if i < 4:
            write(root / "s" / cls / f"x{i}_copy.jpg", cv2.resize(img, (200, 200)),
                  [cv2.IMWRITE_JPEG_QUALITY, 90])  # fmt: skip
    for seed in range(3):
        dm = TBDataModule(root=root, image_size=48, num_workers=0, cache_dir=tmp_path / "c",
                          seed=seed, val_fraction=0.25, test_fraction=0.25)  # fmt: skip
        dm.setup("fit")
        doc = json.loads(dm.save_split(tmp_path / f"split{seed}.json").read_text())
        assert sorted(doc["near_duplicates"]) == sorted([
            [f"s/{'tb' if i % 2 else 'healthy'}/x{i}.png",
             f"s/{'tb' if i % 2 else 'healthy'}/x{i}_copy.jpg"]
            for i in range(4)
        ])  # fmt: skip
        side = {p: name for name in SPLIT_NAMES for p in doc["splits"][name]}
        for a, b in doc["near_duplicates"]:
            assert side[a] == side[b]
    off = TBDataModule(root=root, image_size=48, num_workers=0, cache_dir=tmp_path / "c",
                       near_duplicates=False, val_fraction=0.25, test_fraction=0.25)  # fmt: skip
    off.setup("fit")
    assert off.near_duplicate_groups == []


@pytest.mark.devset
@pytest.mark.skipif(not DEVSET.is_dir(), reason=f"dev set not found at {DEVSET}")
def test_devset_no_false_merge_and_real_copies_merge(tmp_path: Path) -> None:
    records = discover(DEVSET)
    assert len(records) == 376
    squares = {Path(r.path): imageio.load_prepared(r.path, 224) for r in records}
    groups = find_near_duplicates(records, lambda r: squares[Path(r.path)])
    names = {frozenset(Path(r.path).stem for r in g) for g in groups}
    assert names == KNOWN_PAIRS  # the four byte-identical pairs, nothing else
    assert find_near_duplicates(records, lambda r: squares[Path(r.path)], hash_files(records)) == []
    # Re-saved copies of real images (one per source) merge with their originals only.
    paired = set().union(*KNOWN_PAIRS)
    picked = [
        next(r for r in records if r.source == s and Path(r.path).stem not in paired)
        for s in sorted({r.source for r in records})
    ]
    extra = []
    for r in picked:
        img = imageio.read_gray(r.path)
        stem = f"{r.source}_{Path(r.path).stem}"
        extra.append(write(tmp_path / f"{stem}_q90.jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90]))
        extra += [write(tmp_path / f"{stem}_{name}", c) for name, c in copies(img).items()]
    for p in extra:
        squares[p] = imageio.load_prepared(p, 224)
    both = records + [Record(p.stem, p, 0, "copy") for p in extra]
    groups = find_near_duplicates(both, lambda r: squares[Path(r.path)], hash_files(both))
    expected = {
        frozenset([Path(r.path)] + [p for p in extra if p.name.startswith(f"{r.source}_")])
        for r in picked
    }
    assert {frozenset(Path(m.path) for m in g) for g in groups} == expected
