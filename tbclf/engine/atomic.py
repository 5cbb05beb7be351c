"""Atomic file writes: a reader never sees a half-written output, a kill never leaves one."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "w", fsync: bool = True, **kwargs
) -> Iterator[IO]:
    """Open a temporary file beside `path`; on success fsync and rename it into place.

    `fsync=False` is for derived data that is rebuilt when lost (cache entries): the rename
    still guarantees no reader sees a partial file, without a disk sync per small entry.

    On any error (a full disk included) the temporary file is removed and `path` keeps its old
    content, so what was already written stays valid.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if _disk_full(exc):
            raise _named(exc, path) from exc
        raise
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and _disk_full(exc):
            raise _named(exc, path) from exc
        raise


def _disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _named(exc: OSError, path: Path) -> OSError:
    """The kernel's ENOSPC from write() names no file; say which one and that the disk is full."""
    return OSError(
        exc.errno,
        f"{os.strerror(exc.errno)}: the disk is full while writing {path}; nothing was changed "
        "there. Free some space (or write elsewhere) and run again",
        str(path),
    )


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically."""
    with atomic_open(path, "w", encoding=encoding, newline="") as handle:
        handle.write(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = True) -> Path:
    """Write `data` to `path` atomically."""
    with atomic_open(path, "wb", fsync=fsync) as handle:
        handle.write(data)
    return Path(path)
