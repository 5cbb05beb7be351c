"""Images to predict on named in a list, so a PACS export is scored without walking its tree.

Two forms: a text file with one path per line (blank lines and ``#`` comments skipped), or a
CSV with a ``path`` column (optional ``ID`` and ``LABEL`` columns). Relative paths are taken
from the list's folder; absolute paths are used as given (the list is the user's own choice of
files, like data.predict_root itself). Nothing is opened here: a file that is missing or does
not decode is reported by the predict loop, listed in the sidecar with why.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path, PurePath

from tbclf.data.records import IMAGE_EXTENSIONS, Record
from tbclf.errors import DataError

TEXT_SUFFIXES = (".txt", ".lst", ".list")
PATH_COLUMN = "path"


def _text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise DataError(f"Cannot read the path list {path}: {exc.strerror or exc}.") from None
    except UnicodeDecodeError as exc:
        raise DataError(
            f"The path list {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8."
        ) from None


def has_path_column(header: list[str]) -> bool:
    return PATH_COLUMN in {h.strip().casefold() for h in header}


def read_text_list(path: Path) -> list[Record]:
    """One image path per line."""
    entries = []
    for line_no, line in enumerate(_text(path).splitlines(), start=1):
        value = line.strip()
        if value and not value.startswith("#"):
            entries.append((line_no, value, None, None))
    return _records(path, entries)


def read_csv_list(path: Path) -> list[Record]:
    """A CSV whose ``path`` column names the images (``ID`` and ``LABEL`` optional)."""
    reader = csv.reader(io.StringIO(_text(path), newline=""))
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise DataError(f"{path} line {reader.line_num}: not a readable CSV ({exc}).") from None
    rows = [(i + 1, r) for i, r in enumerate(rows) if any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"The path list {path} is empty.")
    header = [h.strip().casefold() for h in rows[0][1]]
    column = {name: header.index(name) for name in ("path", "id", "label") if name in header}

    def cell(cells: list[str], name: str) -> str | None:
        i = column.get(name)
        return cells[i].strip() if i is not None and i < len(cells) else None

    entries = []
    for line_no, cells in rows[1:]:
        value = cell(cells, "path")
        if not value:
            raise DataError(f"{path} line {line_no}: empty path. Fill it in or remove the row.")
        label = cell(cells, "label")
        if label not in (None, "") and label not in ("0", "1", "0.0", "1.0"):
            raise DataError(f"{path} line {line_no}: LABEL {label!r} is not 0 or 1.")
        truth = None if label in (None, "") else int(float(label))
        entries.append((line_no, value, cell(cells, "id") or None, truth))
    return _records(path, entries)


def _records(path: Path, entries: list[tuple[int, str, str | None, int | None]]) -> list[Record]:
    if not entries:
        raise DataError(f"The path list {path} names no images.")
    base = path.parent.absolute()
    resolved = [(line, base / Path(value).expanduser(), ident, label)
                for line, value, ident, label in entries]  # fmt: skip
    seen: dict[Path, int] = {}
    for line, image, _, _ in resolved:
        if image in seen:
            raise DataError(
                f"{path}: {image} is listed on line {seen[image]} and line {line}; list each "
                "image once."
            )
        seen[image] = line
    stems = Counter(_stem(image) for _, image, ident, _ in resolved if ident is None)
    records, ids = [], {}
    for line, image, ident, label in resolved:
        if ident is None:
            ident = _stem(image) if stems[_stem(image)] == 1 else str(image)
        if ident in ids:
            raise DataError(
                f"{path}: ID {ident!r} on line {ids[ident]} and line {line}; IDs must be unique."
            )
        ids[ident] = line
        records.append(Record(id=ident, path=image, label=label, source="predict"))
    return records


def _stem(image: PurePath) -> str:
    return image.stem if image.suffix.lower() in IMAGE_EXTENSIONS else image.name
