"""The decode cache under kills and change: no truncated entry is ever read back, and a changed
source file or preprocessing setting is never served a stale entry."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from imaging import make_png

from tbclf.data.cache import DecodeCache, read_entry
from tbclf.data.imageio import load_prepared
from tbclf.data.records import Record
from tbclf.data.splits import hash_files
from tbclf.data.transforms import contrast_transform

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[1]
SIZE = 512  # 256 KiB entries

# The child writes entries through the real DecodeCache.write on a slowed-down disk (every
# write() of an open file under the cache is cut in 16 KiB chunks with a pause), announcing each
# entry before it starts, so the parent can SIGKILL it in the middle of one particular write.
CHILD = textwrap.dedent(
    """
    import builtins, io, os, sys, time
    import numpy as np
    from tbclf.data.cache import DecodeCache

    cache_dir, size, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    real_open = io.open

    class Slow:
        def __init__(self, handle):
            self._h = handle
        def write(self, data):
            view = memoryview(data).cast("B")
            for i in range(0, len(view), 16384):
                self._h.write(view[i : i + 16384])
                self._h.flush()
                time.sleep(0.01)
            return len(view)
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self._h.close()
        def __getattr__(self, name):
            return getattr(self._h, name)

    def slow_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        return Slow(handle) if "w" in mode else handle

    builtins.open = io.open = slow_open
    cache = DecodeCache(cache_dir, size)
    for i in range(count):
        print(f"writing {i}", flush=True)
        cache.write(f"{i:064x}", np.full((size, size), i % 251, dtype=np.uint8))
        print(f"wrote {i}", flush=True)
    """
)


def _expected(i: int) -> np.ndarray:
    return np.full((SIZE, SIZE), i % 251, dtype=np.uint8)


@pytest.mark.parametrize("kill_during", [0, 3])
def test_sigkill_during_a_cache_write_leaves_no_readable_torn_entry(
    tmp_path: Path, kill_during: int
) -> None:
    cache_dir = tmp_path / "cache"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(cache_dir), str(SIZE), "8"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == f"writing {kill_during}":
                time.sleep(0.06)  # ~6 of its 16 chunks: well inside the write
                break
        else:
            pytest.fail(f"child ended early: {proc.stderr.read() if proc.stderr else ''}")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    cache = DecodeCache(cache_dir, SIZE)
    temps = [p for p in cache_dir.rglob("*.tmp")]
    assert temps and all(0 < p.stat().st_size < SIZE * SIZE for p in temps), (
        "the kill should have landed mid-write, leaving a partial temp file"
    )
    # The entry being written is a miss, not a truncated array; earlier ones are intact.
    assert cache.read(f"{kill_during:064x}") is None
    assert not cache.has(f"{kill_during:064x}")
    for i in range(kill_during):
        np.testing.assert_array_equal(cache.read(f"{i:064x}"), _expected(i))
    # Every file that looks like an entry is complete (the temp file does not look like one).
    entries = [p for p in cache_dir.rglob("*.u8")]
    assert len(entries) == kill_during
    for p in entries:
        assert read_entry(p, (SIZE, SIZE)) is not None


def test_truncated_or_oversized_entry_is_a_miss_and_is_rebuilt(tmp_path: Path) -> None:
    src = tmp_path / "img.png"
    make_png(src, (70, 50), seed=3)
    record = Record(id="img", path=src, label=0, source="t")
    file_hash = hash_files([record])[src]
    cache = DecodeCache(tmp_path / "cache", 32)
    good = cache.get(record, file_hash)
    entry = cache.path_for(file_hash)
    for damage in (entry.read_bytes()[:100], entry.read_bytes() + b"\0", b""):
        entry.write_bytes(damage)
        assert cache.read(file_hash) is None and not cache.has(file_hash)
        np.testing.assert_array_equal(cache.get(record, file_hash), good)
        assert entry.stat().st_size == 32 * 32


def test_changed_source_or_settings_never_get_a_stale_entry(tmp_path: Path) -> None:
    src = tmp_path / "img.png"
    make_png(src, (80, 60), seed=1, border_bottom=10)
    record = Record(id="img", path=src, label=1, source="t")
    memo = tmp_path / "cache" / "file-hashes.json"
    base = DecodeCache(tmp_path / "cache", 32)
    first = base.get(record, hash_files([record], memo)[src])

    # Same settings, new pixels (same size and, with a forced mtime, same stat): new entry.
    stat = src.stat()
    make_png(src, (80, 60), seed=2, border_bottom=10)
    os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    new_hash = hash_files([record], memo)[src]
    second = base.get(record, new_hash)
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(second, load_prepared(src, 32))

    # Each setting that shapes the cached pixels gives its own entry, equal to a fresh decode.
    variants = [
        DecodeCache(tmp_path / "cache", 48),
        DecodeCache(tmp_path / "cache", 32, resize="squash"),
        DecodeCache(tmp_path / "cache", 32, crop_border=False),
        DecodeCache(tmp_path / "cache", 32, preprocessing="clahe"),
        DecodeCache(tmp_path / "cache", 32, preprocessing="clahe", clahe_clip_limit=4.0),
        DecodeCache(tmp_path / "cache", 32, preprocessing="clahe", clahe_tile_grid=4),
        DecodeCache(tmp_path / "cache", 32, preprocessing="equalize"),
    ]
    paths = {base.path_for(new_hash)} | {c.path_for(new_hash) for c in variants}
    assert len(paths) == 1 + len(variants)
    for c in variants:
        got = c.get(record, new_hash)
        want = load_prepared(src, c.image_size, resize=c.resize, crop_border=c.crop_border)
        step = contrast_transform(c.preprocessing, c.clahe_clip_limit, c.clahe_tile_grid)
        if step is not None:
            want = step(image=want)["image"]
        np.testing.assert_array_equal(got, want)
