"""Every file tbclf writes goes through here: atomic writes, JSON, figures and one CSV dialect.

Atomic: a temp file beside the target, fsync, os.replace, so a reader never sees a half-written
output and a kill or a full disk never leaves one. CSV: one writer with one escaping rule, so an
ID such as ``=HYPERLINK(...)`` from a stranger's file name never becomes a live spreadsheet
formula, and one reader that gives tbclf's own outputs back exactly.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from tbclf.errors import ConfigError, DataError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_HASH_BLOCK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (hashlib releases the GIL on
    them, so threads hashing several files overlap): tbclf's one file hash (image identity
    and cache keys, download records, checkpoint and model versions). OSError propagates."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


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


# --------------------------------------------------------------------------- JSON and figures


def _json_safe(obj: Any) -> Any:
    """NaN/inf become null (valid JSON); numpy scalars and arrays become Python values."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return _json_safe(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as indented JSON atomically (NaN/inf as null)."""
    text = json.dumps(_json_safe(obj), indent=2, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Render to memory, then write atomically (layout comes from the figure's constrained
    layout; bbox_inches="tight" would draw every figure twice)."""
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi)
    return atomic_write_bytes(path, buf.getvalue())


def new_figure(width: float, height: float) -> Figure:
    """An Agg figure not registered with pyplot.

    No global backend switch (notebooks keep theirs), no pyplot state to leak in long runs or
    callbacks, and no display needed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def image_row(fig: Any, title: str, ncols: int) -> list:
    """A titled row of ``ncols`` axes without ticks or frames, for contact sheets of images."""
    fig.suptitle(title, fontsize=10)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
    return list(axes)


def check_can_write(out_dir: str | os.PathLike, names: Sequence[str], overwrite: bool) -> Path:
    """Refuse to replace earlier outputs unless the caller asked for it explicitly."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output path {out} exists and is not a folder; choose another --out")
    if not overwrite:
        existing = [n for n in names if (out / n).exists()]
        if existing:
            raise ConfigError(
                f"{out} already holds {', '.join(existing)}; pass overwrite=True (--overwrite) "
                "to replace them or choose another output folder"
            )
    out.mkdir(parents=True, exist_ok=True)
    return out


# --------------------------------------------------------------------------- CSV

# OWASP's CSV-injection rule: a cell starting with one of these is a formula to a spreadsheet.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_ESCAPE = "'"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def escape_cell(value: Any) -> str:
    """A cell as text that no spreadsheet evaluates: a leading ``'`` before formula starts.

    Plain numbers ("-0.5") stay as they are; a text cell that already starts with ``'`` is
    escaped too, so :func:`unescape_cell` gives back every value exactly.
    """
    text = "" if value is None else str(value)
    if text.startswith(_ESCAPE) or (text.startswith(FORMULA_STARTS) and not _is_number(text)):
        return _ESCAPE + text
    return text


def unescape_cell(text: str) -> str:
    """Undo :func:`escape_cell` (for files tbclf wrote itself)."""
    return text[1:] if text.startswith(_ESCAPE) else text


def _csv_into(handle: IO[str], header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    writer = csv.writer(handle, lineterminator="\r\n")
    writer.writerow([escape_cell(h) for h in header])
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"CSV row has {len(row)} cells, the header {len(header)}")
        writer.writerow([escape_cell(v) for v in row])


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """The CSV text of tbclf's outputs: RFC 4180 (CRLF line ends, so a cell holding a lone CR
    is quoted too), every cell through :func:`escape_cell`."""
    buf = io.StringIO()
    _csv_into(buf, header, rows)
    return buf.getvalue()


def write_csv(
    path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]
) -> Path:
    """Write a CSV output atomically (see :func:`csv_text`), streaming: ``rows`` may be a
    generator over more rows than fit in memory."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        _csv_into(handle, header, rows)
    return Path(path)


def write_csv_dicts(
    path: str | os.PathLike, fields: Sequence[str], rows: Iterable[dict[str, Any]]
) -> Path:
    """:func:`write_csv` for dict rows; missing keys are empty cells."""
    return write_csv(path, fields, ([row.get(f, "") for f in fields] for row in rows))


def read_output_csv(path: str | os.PathLike) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows) of a CSV that tbclf wrote (or one like it), cells given back exactly.

    Header names are stripped; cells are unescaped but not stripped, so an ID survives a round
    trip byte for byte. Not UTF-8 or not a CSV gives a DataError naming the file.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")  # no newline translation: exact cells
    except FileNotFoundError:
        raise DataError(f"CSV {path} does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"CSV {path} cannot be read as UTF-8 text: {exc}") from None
    try:
        lines = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise DataError(f"CSV {path} is malformed: {exc}") from None
    if not lines:
        return [], []
    header = [unescape_cell(h.strip()) for h in lines[0]]
    rows = []
    for cells in lines[1:]:
        if not any(c.strip() for c in cells):
            continue  # blank lines
        values = [unescape_cell(c) for c in cells] + [""] * (len(header) - len(cells))
        rows.append(dict(zip(header, values[: len(header)], strict=True)))
    return header, rows
