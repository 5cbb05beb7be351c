"""A full disk while writing checkpoints, cache entries or predictions.

Each case runs twice: on a simulated small disk (in-process: writes under a folder fail with
ENOSPC past a byte budget, and a rename into it from elsewhere fails with EXDEV like a real
separate filesystem), and on a real tiny tmpfs, which needs `mount` (root); that variant skips
with a visible reason where mounting is not permitted.

What must hold: a clear error that names the path and says the disk is full, nothing that was
written before is damaged, and no half-written file is left where a reader would find it.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from tbclf.data.cache import DecodeCache
from tbclf.engine import shards
from tbclf.engine.writer import merge
from tbclf.io import atomic_write_bytes, atomic_write_text

pytestmark = pytest.mark.timeout(300)

CAPACITY = 256 * 1024


def _du(root: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                pass
    return total


class _Metered:
    """A file object on the small disk: each write first checks the space left."""

    def __init__(self, handle, disk: SimulatedDisk) -> None:
        self._handle = handle
        self._disk = disk

    def write(self, data):
        self._handle.flush()
        size = len(data.encode()) if isinstance(data, str) else memoryview(data).nbytes
        if _du(self._disk.root) + size > self._disk.capacity:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # write(2) names no file
        written = self._handle.write(data)
        self._handle.flush()
        return written

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._handle.close()
        return False

    def __iter__(self):
        return iter(self._handle)

    def __getattr__(self, name: str):
        return getattr(self._handle, name)


class SimulatedDisk:
    """Files under `root` may hold at most `capacity` bytes; `root` acts as its own filesystem."""

    def __init__(self, root: Path, capacity: int) -> None:
        self.root = os.path.realpath(root)
        self.capacity = capacity

    def _inside(self, file) -> bool:
        if isinstance(file, int):
            try:
                file = os.readlink(f"/proc/self/fd/{file}")
            except OSError:
                return False
        path = os.path.realpath(os.path.abspath(os.fspath(file)))
        return path == self.root or path.startswith(self.root + os.sep)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_open, real_rename, real_replace = io.open, os.rename, os.replace

        def fake_open(file, mode="r", *args, **kwargs):
            handle = real_open(file, mode, *args, **kwargs)
            if any(c in mode for c in "wax+") and self._inside(file):
                return _Metered(handle, self)
            return handle

        def crossing(src, dst) -> bool:
            return self._inside(dst) and not self._inside(src)

        def fake_rename(src, dst, *args, **kwargs):
            if crossing(src, dst):
                raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), src, None, dst)
            return real_rename(src, dst, *args, **kwargs)

        def fake_replace(src, dst, *args, **kwargs):
            if crossing(src, dst):
                raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), src, None, dst)
            return real_replace(src, dst, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(io, "open", fake_open)  # os.fdopen and Path.open go through io.open
        monkeypatch.setattr(os, "rename", fake_rename)
        monkeypatch.setattr(os, "replace", fake_replace)
        monkeypatch.setattr(shutil, "_USE_CP_SENDFILE", False)  # copy through write()


def _mount_tmpfs(where: Path, size: int) -> str | None:
    """Mount a tmpfs of `size` bytes; the reason it cannot be done, or None on success."""
    where.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        return "no mount command"
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        return f"mount -t tmpfs not permitted here ({proc.stderr.strip() or proc.returncode})"
    return None


@pytest.fixture(params=["simulated", "tmpfs"])
def small_disk(request, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on a disk with CAPACITY bytes of room."""
    root = tmp_path / "disk"
    if request.param == "simulated":
        root.mkdir()
        SimulatedDisk(root, CAPACITY).install(monkeypatch)
        yield root
        return
    reason = _mount_tmpfs(root, CAPACITY)
    if reason is not None:
        pytest.skip(f"real full-disk test skipped: {reason}")
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def _assert_disk_full_error(err: BaseException, path: Path | str) -> None:
    """The message a user sees must say the disk is full and name the file (or folder)."""
    text = str(err)
    assert "No space left" in text or "disk is full" in text, text
    assert str(path) in text, f"the error does not name {path}: {text}"


def _temp_leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- atomic writers


@pytest.mark.parametrize("kind", ["bytes", "text"])
def test_atomic_write_on_full_disk_keeps_the_old_file(small_disk: Path, kind: str) -> None:
    target = small_disk / "sub" / "report.json"
    write: Callable = atomic_write_bytes if kind == "bytes" else atomic_write_text
    old = b"old" if kind == "bytes" else "old"
    write(target, old)
    big = b"x" * (2 * CAPACITY) if kind == "bytes" else "x" * (2 * CAPACITY)
    with pytest.raises(OSError) as err:
        write(target, big)
    assert err.value.errno == errno.ENOSPC
    _assert_disk_full_error(err.value, target)
    assert target.read_bytes() == b"old"
    assert _temp_leftovers(small_disk) == []


# --------------------------------------------------------------------------- predictions


def _score(out: Path, n: int, key: str) -> Path:
    """What predict does on disk: rows streamed into parts, then merged into the CSV."""
    folder = shards.parts_dir(out)
    shards.prepare(folder, key)
    parts = shards.PartWriter(folder, rank=0, rows_per_part=500)
    for i in range(n):
        ident = f"image_{i:06d}_" + "x" * 40
        parts.add(shards.PartRow(index=i, id=ident, prob=i / n, decision=1))
    parts.flush()
    return merge(out, {"threshold": 0.5})


def test_prediction_writer_on_full_disk_keeps_earlier_predictions(small_disk: Path) -> None:
    out = small_disk / "predictions.csv"
    _score(out, 100, "first")
    before = out.read_bytes()
    assert before.count(b"\n") == 101
    # The disk fills while parts are written or while they are merged: either way the error
    # names the file (a part's path starts with the CSV's) and the earlier CSV is untouched.
    with pytest.raises(OSError) as err:
        _score(out, 20_000, "second")
    _assert_disk_full_error(err.value, out)
    assert out.read_bytes() == before
    assert _temp_leftovers(small_disk) == []


# --------------------------------------------------------------------------- decode cache


def _entry(i: int, size: int) -> np.ndarray:
    return np.full((size, size), i % 251, dtype=np.uint8)


def test_cache_on_full_disk_names_the_cache_and_keeps_every_entry_valid(small_disk: Path) -> None:
    size = 128  # 16 KiB per entry: the disk fills after ~15 entries
    cache = DecodeCache(small_disk / "cache", size)
    written: list[str] = []
    with pytest.raises(Exception) as err:
        for i in range(64):
            file_hash = f"{i:064x}"
            cache.write(file_hash, _entry(i, size))
            written.append(file_hash)
    assert 3 < len(written) < 64, "the disk should fill part-way"
    assert isinstance(err.value, OSError | ValueError), f"unexpected {type(err.value)}"
    _assert_disk_full_error(err.value, small_disk / "cache")
    for i, file_hash in enumerate(written):
        np.testing.assert_array_equal(cache.read(file_hash), _entry(i, size))
    failed = f"{len(written):064x}"
    assert cache.read(failed) is None and not cache.has(failed)
    assert _temp_leftovers(small_disk) == []


# --------------------------------------------------------------------------- checkpoints


def _checkpoint_io(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The CheckpointIO that `python -m tbclf fit --config configs/simple_cnn.yaml` trains with:
    cli_main builds the trainer exactly as for a real run, and the fit itself is skipped."""
    from cli_helpers import CONFIGS

    from tbclf import cli, lightning_cli

    built = []
    monkeypatch.setattr(lightning_cli.TBCLI, "_run_subcommand", lambda self, _: built.append(self))
    tmp_path.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PL_GLOBAL_SEED", "42")  # seed_everything sets it; undone after the test
    cli.cli_main(
        [
            "fit",
            "--config", str(CONFIGS / "simple_cnn.yaml"),
            "--data.root", str(tmp_path),
            "--trainer.accelerator", "cpu",
            "--trainer.logger", "false",
        ]
    )  # fmt: skip
    assert len(built) == 1
    return built[0].trainer.strategy.checkpoint_io


def test_checkpoint_on_full_disk_keeps_the_last_good_checkpoint(
    small_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """last.ckpt is overwritten every epoch: a full disk must not destroy the previous one.

    Lightning's default CheckpointIO stages the file in $TMPDIR and shutil.move()s it into place;
    when $TMPDIR is another filesystem (a tmpfs /tmp, a container volume) the move is a copy
    straight into last.ckpt, so a full disk leaves it truncated and the run cannot resume.
    """
    ckpt_io = _checkpoint_io(tmp_path / "cli", monkeypatch)
    path = small_disk / "checkpoints" / "last.ckpt"
    good = {"state_dict": {"w": torch.arange(1000, dtype=torch.float32)}, "epoch": 3}
    ckpt_io.save_checkpoint(good, path)
    huge = {"state_dict": {"w": torch.zeros(CAPACITY // 2, dtype=torch.float32)}, "epoch": 4}
    with pytest.raises(OSError) as err:
        ckpt_io.save_checkpoint(huge, path)
    _assert_disk_full_error(err.value, path)
    loaded = torch.load(path, map_location="cpu", weights_only=False)
    assert loaded["epoch"] == 3, "the previous last.ckpt must stay loadable"
    torch.testing.assert_close(loaded["state_dict"]["w"], good["state_dict"]["w"])
    assert _temp_leftovers(small_disk) == []


def test_simulated_disk_counts_what_is_on_it(tmp_path: Path, monkeypatch) -> None:
    """The simulation itself: writes elsewhere are untouched, writes on the disk are metered."""
    disk = tmp_path / "disk"
    disk.mkdir()
    SimulatedDisk(disk, 1000).install(monkeypatch)
    (tmp_path / "elsewhere.bin").write_bytes(b"y" * 5000)
    (disk / "a.bin").write_bytes(b"x" * 600)
    with pytest.raises(OSError) as err:
        (disk / "b.bin").write_bytes(b"x" * 600)
    assert err.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as err:
        os.replace(tmp_path / "elsewhere.bin", disk / f"{uuid.uuid4().hex}.bin")
    assert err.value.errno == errno.EXDEV
