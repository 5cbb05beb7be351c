"""Data loading speed: the cached training loader vs re-decoding the originals every epoch.

Measures, side by side in one run:
  (a) images/s of the cached train loader (CLAHE + train augmentation, like training uses),
      over several epochs after a warm-up epoch;
  (b) the time of one epoch that decodes the originals (load_prepared per item, no cache) vs
      one epoch from the cache, and their ratio.

Synthetic mode writes full-resolution 16-bit PNGs (default 4020x4892, Montgomery's size) in a
temp folder; --data DIR adds a real image folder (e.g. ../shared/data/tb-cxr-dev).

    python benchmarks/loader_speed.py --synthetic 64 --data ../shared/data/tb-cxr-dev
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tbclf.data import imageio  # noqa: E402
from tbclf.data.cache import DecodeCache  # noqa: E402
from tbclf.data.dataset import CachedImageDataset, TBDataLoader, build_loader  # noqa: E402
from tbclf.data.layouts import discover  # noqa: E402
from tbclf.data.records import Record  # noqa: E402
from tbclf.data.splits import hash_files  # noqa: E402
from tbclf.data.transforms import build_transforms  # noqa: E402

# --------------------------------------------------------------------------- synthetic data


def _xray_like(height: int, width: int, seed: int, bits: int = 12) -> np.ndarray:
    """Smooth anatomy-like shading plus sensor noise, 12-bit values in uint16 (as NLM PNGs)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx = height * rng.uniform(0.4, 0.6), width * rng.uniform(0.4, 0.6)
    r = np.sqrt(((yy - cy) / height) ** 2 + ((xx - cx) / width) ** 2)
    base = 0.7 - 0.6 * r + 0.1 * np.sin(xx / rng.uniform(40, 90)) * np.cos(yy / 70.0)
    noise = rng.normal(0.0, 0.01, (height, width)).astype(np.float32)
    top = (1 << bits) - 1
    img = np.clip(base + noise, 0.0, 1.0) * top
    img[-height // 20 :, :] = 0  # a black band at the bottom, like Montgomery scans
    return img.astype(np.uint16)


def _with_text_chunk(png: bytes, text: str) -> bytes:
    """Insert a tEXt chunk before IEND: a byte-different file with identical pixels.

    Encoding a 20-megapixel 16-bit PNG takes seconds; variants of a few bases keep the setup
    short while every file still has its own content hash (so the cache cannot share entries).
    """
    assert png[-12:-8] == b"\x00\x00\x00\x00" and png[-8:-4] == b"IEND"
    data = b"Comment\x00" + text.encode()
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data
    chunk += struct.pack(">I", zlib.crc32(b"tEXt" + data) & 0xFFFFFFFF)
    return png[:-12] + chunk + png[-12:]


def make_synthetic(folder: Path, n: int, height: int, width: int, bases: int = 8) -> list[Record]:
    folder.mkdir(parents=True, exist_ok=True)
    pngs = []
    for b in range(min(bases, n)):
        ok, buf = cv2.imencode(".png", _xray_like(height, width, seed=b))
        assert ok
        pngs.append(buf.tobytes())
    records = []
    for i in range(n):
        label = i % 2
        path = folder / f"MCUCXR_{i:04d}_{label}.png"
        path.write_bytes(_with_text_chunk(pngs[i % len(pngs)], f"variant {i}"))
        records.append(Record(path.stem, path, label, "synthetic"))
    return records


# --------------------------------------------------------------------------- loaders


class UncachedDataset(Dataset):
    """The baseline: decode, crop and resize the original on every access."""

    def __init__(self, records: list[Record], image_size: int, transform) -> None:
        self.records, self.image_size, self.transform = records, image_size, transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        r = self.records[i]
        img = imageio.load_prepared(r.path, self.image_size)
        label = torch.tensor(float(r.label), dtype=torch.float32)
        return {"image": self.transform(image=img)["image"], "label": label, "id": r.id,
                "source": r.source}  # fmt: skip


def make_loader(dataset: Dataset, args, fast: bool = True) -> DataLoader:
    """The train loader exactly as TBDataModule builds it (fast=False: a plain DataLoader)."""
    generator = torch.Generator().manual_seed(args.seed)
    cls = TBDataLoader if fast else DataLoader
    return build_loader(dataset, args.batch_size, args.workers, True, generator, cls)


def _worker_cpu_s(loader: DataLoader) -> float:
    """CPU seconds (user + system) used so far by the loader's live worker processes."""
    it = getattr(loader, "_iterator", None)
    total = 0.0
    for w in getattr(it, "_workers", []) or []:
        try:
            fields = Path(f"/proc/{w.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def run_epoch(loader: DataLoader) -> tuple[int, float]:
    n = 0
    t0 = time.perf_counter()
    for batch in loader:
        n += batch["image"].shape[0]
    return n, time.perf_counter() - t0


# --------------------------------------------------------------------------- benchmark


def bench_set(name: str, records: list[Record], args, cache_dir: Path) -> dict:
    out: dict = {"name": name, "n": len(records)}
    sizes = [imageio.image_header(r.path.read_bytes(), r.path)[1:] for r in records[:1]]
    out["orig"] = f"{sizes[0][1]}x{sizes[0][0]}"
    out["orig_mb"] = sum(r.path.stat().st_size for r in records) / len(records) / 1e6

    t0 = time.perf_counter()
    hashes = hash_files(records)
    out["hash_s"] = time.perf_counter() - t0
    # What TBDataModule does: CLAHE cached with the image, uint8 augmentation in the workers,
    # float32 conversion per batch in TBDataLoader.
    cache = DecodeCache(cache_dir, args.image_size, preprocessing="clahe")
    t0 = time.perf_counter()
    cache.warm(records, hashes, num_workers=args.workers, progress=False)
    out["warm_s"] = time.perf_counter() - t0
    fast_tf = build_transforms("train", "clahe", seed=args.seed, contrast=False, to_float=False)
    # The textbook pipeline on the same cache: CLAHE + augmentation + ToFloat in the workers.
    plain_cache = cache.plain()
    full_tf = build_transforms("train", "clahe", seed=args.seed)

    # (a) cached train loader over several epochs; records repeated up to --min-epoch items.
    repeat = max(1, -(-args.min_epoch // len(records)))
    out["epoch_items"] = len(records) * repeat
    for key, ds, fast in (
        ("cached_img_s", CachedImageDataset(records * repeat, hashes, cache, fast_tf), True),
        ("plain_img_s", CachedImageDataset(records * repeat, hashes, plain_cache, full_tf), False),
    ):
        loader = make_loader(ds, args, fast)
        run_epoch(loader)  # warm-up: starts the workers, fills the page cache
        total_n, total_t = 0, 0.0
        cpu0 = time.process_time() + _worker_cpu_s(loader)
        for _ in range(args.epochs):
            n, t = run_epoch(loader)
            total_n, total_t = total_n + n, total_t + t
        cpu = time.process_time() + _worker_cpu_s(loader) - cpu0
        out[key] = total_n / total_t
        # CPU time per image over all processes: what 2 otherwise idle cores could sustain.
        out[key.replace("img_s", "cpu_ms")] = 1000.0 * cpu / total_n
        del loader

    # (b) one epoch of the same records: decode every original vs read the cache.
    loader = make_loader(CachedImageDataset(records, hashes, cache, fast_tf), args)
    run_epoch(loader)  # warm-up
    times = [run_epoch(loader)[1] for _ in range(max(3, args.epochs))]
    out["cached_epoch_s"] = float(np.median(times))
    del loader
    loader = make_loader(UncachedDataset(records, args.image_size, full_tf), args, fast=False)
    _, out["uncached_epoch_s"] = run_epoch(loader)  # worker start (a fork) is negligible here
    del loader
    out["ratio"] = out["uncached_epoch_s"] / out["cached_epoch_s"]
    return out


def markdown(results: list[dict], args) -> str:
    lines = [
        "| data | originals | images | cache build (s) | (a) cached train loader: img/s "
        "(CPU ms/img) | textbook pipeline: img/s (CPU ms/img) | (b) epoch decoding originals (s) "
        "| epoch from cache (s) | (b) ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['name']} | {r['orig']}, {r['orig_mb']:.1f} MB avg | {r['n']} "
            f"| {r['warm_s']:.1f} | {r['cached_img_s']:.0f} ({r['cached_cpu_ms']:.2f}) "
            f"| {r['plain_img_s']:.0f} ({r['plain_cpu_ms']:.2f}) "
            f"| {r['uncached_epoch_s']:.2f} | {r['cached_epoch_s']:.3f} | {r['ratio']:.0f}x |"
        )
    lines.append("")
    for r in results:
        lines.append(
            f"{r['name']}: CPU time of all loader processes is {r['cached_cpu_ms']:.2f} ms/img, "
            f"so two otherwise idle cores could sustain about "
            f"{2000.0 / r['cached_cpu_ms']:.0f} img/s."
        )
    lines.append("")
    lines.append(
        f"Settings: image_size={args.image_size}, CLAHE + train augmentation, batch "
        f"{args.batch_size}, {args.workers} workers (persistent), (a) over {args.epochs} epochs "
        f"of >= {args.min_epoch} items after a warm-up epoch. Targets: (a) >= 1500 img/s, "
        "(b) >= 100x."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, help="a real image folder (any tbclf layout)")
    p.add_argument("--synthetic", type=int, default=64,
                   help="number of synthetic full-resolution 16-bit PNGs (0: none)")  # fmt: skip
    p.add_argument("--synthetic-size", default="4892x4020", help="HEIGHTxWIDTH")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--min-epoch", type=int, default=2048,
                   help="repeat the records up to this many items per epoch in (a)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", type=Path, help="keep synthetic images and cache in this folder")
    args = p.parse_args(argv)

    work = args.keep or Path(tempfile.mkdtemp(prefix="tbclf-bench-"))
    results = []
    try:
        if args.synthetic:
            h, w = (int(x) for x in args.synthetic_size.lower().split("x"))
            t0 = time.perf_counter()
            records = make_synthetic(work / "synthetic", args.synthetic, h, w)
            print(f"wrote {len(records)} synthetic PNGs in {time.perf_counter() - t0:.0f}s",
                  file=sys.stderr)  # fmt: skip
            results.append(bench_set("synthetic 16-bit PNG", records, args, work / "cache"))
        if args.data:
            records = discover(args.data)
            results.append(bench_set(args.data.name, records, args, work / "cache"))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"{datetime.date.today().isoformat()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, OpenCV {cv2.__version__}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(markdown(results, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
