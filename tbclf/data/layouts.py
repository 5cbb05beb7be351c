"""Find labelled images on disk in the three layouts public TB chest X-ray sets come in.

1. NLM file names (``CHNCXR_0001_0.png`` Shenzhen, ``MCUCXR_0104_1.png`` Montgomery): the last
   digit is the label, wherever the file sits under the root.
2. Zindi: a CSV at the root with ``ID`` and ``LABEL`` columns (optionally ``filename``).
3. Class folders ``healthy|normal|0`` and ``tb|tuberculosis|1`` anywhere under the root.

``layout="auto"`` mixes 1 and 3 per file (NLM name first), or uses 2 when a root CSV has an ID
column, because real collections are assembled from several of these at once.

``layout="classes"`` is for other tasks than TB (pretraining on public chest X-rays): every
folder directly under the root is a class, whatever its name, labelled in sorted name order
(:func:`class_folder_names`); any number of classes.

Images are found by content as well as by name: a PACS export's extension-less DICOM files are
images too. Lateral DICOM views are left out (one warning) unless ``keep_lateral``; a file that
is neither an image tbclf reads nor a known companion (CSV, text, ...) is listed in one warning.
"""

from __future__ import annotations

import csv
import io
import os
import re
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path, PurePosixPath

from tbclf.data import dicom, path_list
from tbclf.data.imageio import SNIFF_BYTES, sniff_format
from tbclf.data.records import HEALTHY, IMAGE_EXTENSIONS, TB, Record
from tbclf.errors import ConfigError, DataError

LAYOUTS = ("auto", "nlm", "zindi", "folders", "classes")
FORMATS_TEXT = "PNG, JPEG, TIFF, BMP, WebP or DICOM"
# Files that sit beside X-rays in public sets and exports; not worth a warning when skipped.
COMPANION_EXTENSIONS = (
    ".csv", ".tsv", ".txt", ".md", ".json", ".xml", ".html", ".htm", ".pdf", ".yaml", ".yml",
    ".log", ".rtf", ".doc", ".docx", ".xls", ".xlsx", ".ini", ".md5", ".sha256", ".zip", ".gz",
    ".tar", ".tgz", ".7z", ".py", ".ipynb", ".db",
)  # fmt: skip
_SHOWN = 10
README_HINT = 'See "Data layouts" in docs/data.md.'
NLM_PATTERN = re.compile(r"^(CHNCXR|MCUCXR)_(\d+)_([01])$", re.IGNORECASE)
NLM_SOURCES = {"CHNCXR": "shenzhen", "MCUCXR": "montgomery"}
CLASS_FOLDERS = {
    "healthy": HEALTHY,
    "normal": HEALTHY,
    "0": HEALTHY,
    "tb": TB,
    "tuberculosis": TB,
    "1": TB,
}
# Zindi images may sit next to the CSV or in one of these folders.
ZINDI_IMAGE_DIRS = (
    "",
    "train",
    "Train",
    "images",
    "Images",
    "train_images",
    "test",
    "Test",
    "test_images",
)
_IGNORED_DIRS = {"__macosx"}
_LAYOUT_DESCRIPTIONS = {
    "nlm": "NLM file names (CHNCXR_0001_0.png, MCUCXR_0001_1.png)",
    "zindi": "a Zindi CSV at the root with ID and LABEL columns",
    "folders": "class folders (healthy|normal|0 and tb|tuberculosis|1)",
    "classes": "one folder per class directly under the root, any names",
}


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.casefold() in _IGNORED_DIRS


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _stem(rel: PurePosixPath) -> str:
    """The file name without an image extension; other names stay whole (1.2.840.113.4)."""
    return rel.stem if _is_image(rel.name) else rel.name


def _without_ext(rel: PurePosixPath) -> str:
    return (rel.with_suffix("") if _is_image(rel.name) else rel).as_posix()


def sniff(path: Path) -> str | None:
    """The image format of a file from its first bytes (None: not an image tbclf reads)."""
    return _sniff(str(path))


def _sniff(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return sniff_format(f.read(SNIFF_BYTES))
    except OSError:
        return None


def _listing(paths: list, total: int | None = None) -> str:
    total = len(paths) if total is None else total
    shown = ", ".join(str(p) for p in paths[:_SHOWN])
    return shown + (f" ... and {total - _SHOWN} more" if total > _SHOWN else "")


def _warn_unread(root: Path, unread: list[PurePosixPath]) -> None:
    """Never drop files silently: one warning counts and names what was not read."""
    if unread:
        warnings.warn(
            f"{len(unread)} file(s) under {root} are not images tbclf reads ({FORMATS_TEXT}) "
            f"and were ignored: {_listing(unread)}.",
            stacklevel=3,
        )


def _inside(path: str, root_real: str) -> bool:
    return path == root_real or path.startswith(root_real.rstrip(os.sep) + os.sep)


def _walk_images(root: Path, unread: list[PurePosixPath] | None = None) -> Iterator[PurePosixPath]:
    """Relative paths of image files under root, skipping hidden entries and __MACOSX.

    A file counts as an image by its extension or, failing that, by content (DICOM exports
    are often extension-less); other files that are no known companion go into `unread`.

    Symlinks are followed only while they resolve inside the root: a link out of the data
    folder is most likely a mistake and would make splits depend on files elsewhere.
    """
    root_real = os.path.realpath(root)
    seen_dirs = {root_real}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        keep = []
        for name in sorted(dirnames):
            if _is_hidden(name):
                continue
            full = os.path.join(dirpath, name)
            real = os.path.realpath(full)
            if os.path.islink(full) and not _inside(real, root_real):
                warnings.warn(
                    f"Skipping {full}: it is a symlink to {real}, outside the data root {root}.",
                    stacklevel=3,
                )
                continue
            if real in seen_dirs:  # symlink loop or second link to the same folder
                continue
            seen_dirs.add(real)
            keep.append(name)
        dirnames[:] = keep
        rel_dir = Path(dirpath).relative_to(root)
        for name in sorted(filenames):
            if _is_hidden(name) or name.lower().endswith(COMPANION_EXTENSIONS):
                continue
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                real = os.path.realpath(full)
                if not _inside(real, root_real) or not os.path.isfile(real):
                    warnings.warn(
                        f"Skipping {full}: it is a symlink to {real}, which is outside the data "
                        f"root {root} or missing.",
                        stacklevel=3,
                    )
                    continue
            elif not os.path.isfile(full):  # a FIFO or device: reading it would block or hang
                warnings.warn(f"Skipping {full}: not a regular file.", stacklevel=3)
                continue
            rel = PurePosixPath((rel_dir / name).as_posix())
            if not _is_image(name) and _sniff(full) is None:
                if unread is not None:
                    unread.append(rel)
                continue
            yield rel


def _nlm_label(rel: PurePosixPath) -> tuple[int, str] | None:
    """(label, source) for an NLM-named scan; None for other files and NLM lung masks."""
    m = NLM_PATTERN.match(_stem(rel))
    if m is None or _is_nlm_mask(rel):
        return None
    return int(m.group(3)), NLM_SOURCES[m.group(1).upper()]


def _is_nlm_mask(rel: PurePosixPath) -> bool:
    """Montgomery ships lung masks with the scans' file names under ManualMask/{left,right}Mask:
    known non-scans, skipped without a warning."""
    return NLM_PATTERN.match(_stem(rel)) is not None and any(
        "mask" in part.casefold() for part in rel.parts[:-1]
    )


def _folder_label(rel: PurePosixPath) -> tuple[int, str] | None:
    """(label, source) from the deepest class folder in the path; None when there is none."""
    dirs = rel.parts[:-1]
    for i in range(len(dirs) - 1, -1, -1):
        label = CLASS_FOLDERS.get(dirs[i].casefold())
        if label is not None:
            source = dirs[0] if i > 0 else "folders"
            return label, source
    return None


def class_folder_names(root: Path) -> list[str]:
    """The class names of a ``classes`` layout: the folders directly under root, sorted; a
    class's label is its position here."""
    root = _check_root(root)
    if not root.is_dir():
        raise DataError(f"data.layout=classes needs a folder of class folders; {root} is a file.")
    names = sorted(e.name for e in root.iterdir() if e.is_dir() and not _is_hidden(e.name))
    if len(names) < 2:
        raise DataError(
            f"data.layout=classes takes each folder directly under {root} as a class, but it "
            f"has {len(names)} ({', '.join(names) or 'none'}); a classifier needs two or more."
        )
    return names


def _class_label(rel: PurePosixPath, labels: dict[str, int]) -> tuple[int, str] | None:
    """(label, source) from the top folder of a ``classes`` layout; None at the root."""
    if len(rel.parts) < 2 or rel.parts[0] not in labels:
        return None
    return labels[rel.parts[0]], rel.parts[0]


def _unique_ids(items: list[tuple[str, PurePosixPath]]) -> list[str]:
    """Keep the preferred id unless it collides; colliding ones become the relative path with
    extension, which is unique by construction."""
    counts: dict[str, int] = defaultdict(int)
    for ident, _ in items:
        counts[ident] += 1
    ids = [ident if counts[ident] == 1 else rel.as_posix() for ident, rel in items]
    seen: dict[str, PurePosixPath] = {}
    for ident, (_, rel) in zip(ids, items, strict=True):
        if ident in seen:
            raise DataError(
                f"Two images get the same id {ident!r}: {seen[ident]} and {rel}. Rename one."
            )
        seen[ident] = rel
    return ids


def _check_root(root: Path) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(
            f"Data root {root} does not exist. Set data.root to the folder with the images "
            f"(or data.download=true for the public NLM sets). {README_HINT}"
        )
    return root.absolute()


def _root_csvs(root: Path) -> list[tuple[Path, list[str]]]:
    """Root-level CSVs with an ID column, with their (stripped) header."""
    found = []
    for entry in sorted(root.iterdir()):
        if entry.suffix.lower() != ".csv" or _is_hidden(entry.name) or not entry.is_file():
            continue
        header = _csv_header(entry)
        if "id" in {h.casefold() for h in header}:
            found.append((entry, header))
    return found


def _pick_zindi_csv(root: Path) -> Path | None:
    """The training CSV at the root: the one with ID and LABEL (Train.csv preferred, sample
    submissions ignored), else one with ID only (an unlabeled set)."""
    csvs = [(p, h) for p, h in _root_csvs(root) if "submission" not in p.stem.casefold()]
    if not csvs:
        return None
    labeled = [p for p, h in csvs if "label" in {x.casefold() for x in h}]
    pool = labeled or [p for p, _ in csvs]
    if len(pool) == 1:
        return pool[0]
    train = [p for p in pool if p.stem.casefold() == "train"]
    if len(train) == 1:
        return train[0]
    names = ", ".join(p.name for p in pool)
    raise DataError(
        f"Several CSVs with an ID column at {root}: {names}. Keep only the training CSV at the "
        "root, name it Train.csv, or set data.root to the CSV file itself."
    )


def _scan(
    root: Path, layout: str, keep_unlabeled: bool
) -> tuple[list[Record], list[PurePosixPath], list[PurePosixPath]]:
    """Records from file names / class folders, the images that matched neither, and the
    files that are no image tbclf reads."""
    items: list[tuple[str, PurePosixPath, int | None, str]] = []
    labels = (
        {name: i for i, name in enumerate(class_folder_names(root))} if layout == "classes" else {}
    )
    ignored: list[PurePosixPath] = []
    unread: list[PurePosixPath] = []
    for rel in _walk_images(root, unread):
        if _is_nlm_mask(rel):
            continue
        found = None
        if layout in ("auto", "nlm"):
            nlm = _nlm_label(rel)
            if nlm is not None:
                found = (_stem(rel), rel, *nlm)
        if layout == "classes":
            label = _class_label(rel, labels)
            if label is not None:
                found = (_without_ext(rel), rel, *label)
        if found is None and layout in ("auto", "folders"):
            folder = _folder_label(rel)
            if folder is not None:
                found = (_without_ext(rel), rel, *folder)
        if found is None and keep_unlabeled:
            source = rel.parts[0] if len(rel.parts) > 1 else "predict"
            found = (_without_ext(rel), rel, None, source)
        if found is None:
            ignored.append(rel)
            continue
        items.append(found)
    items.sort(key=lambda t: t[1].as_posix())
    ids = _unique_ids([(ident, rel) for ident, rel, _, _ in items])
    records = [
        Record(id=ident, path=root / rel, label=label, source=source)
        for ident, (_, rel, label, source) in zip(ids, items, strict=True)
    ]
    return records, ignored, unread


def _no_images(root: Path, tried: list[str], ignored: int, unread: int) -> DataError:
    tried_text = "; ".join(_LAYOUT_DESCRIPTIONS[t] for t in tried)
    if ignored:
        extra = f" {ignored} image file(s) were found but matched none of these layouts."
    else:
        extra = f" No {FORMATS_TEXT} images were found at all"
        extra += f" ({unread} other file(s) were not images)." if unread else "."
    return DataError(
        f"No labelled images found under {root}. Layouts tried: {tried_text}.{extra} {README_HINT}"
    )


def with_dicom_views(records: list[Record]) -> list[Record]:
    """Records of DICOM files get their ViewPosition; DICOMDIR index files are left out.

    Only the header is read (no pixels). A DICOM whose header does not parse is kept as is:
    decoding it later fails with a message that names the file.
    """
    out = []
    for r in records:
        if _sniff(str(r.path)) != "dicom":
            out.append(r)
            continue
        try:
            info = dicom.read_info(Path(r.path))
        except DataError:
            out.append(r)
            continue
        if info.is_directory:
            continue
        out.append(replace(r, view=info.view) if info.view else r)
    return out


def drop_lateral(records: list[Record], keep_lateral: bool = False) -> list[Record]:
    """Chest models are trained on frontal views: lateral ones are left out with one warning
    that lists them, unless keep_lateral (data.keep_lateral=true)."""
    lateral = [r for r in records if r.view in dicom.LATERAL_VIEWS]
    if keep_lateral or not lateral:
        return records
    warnings.warn(
        f"Skipping {len(lateral)} lateral view(s) (DICOM ViewPosition "
        f"{'/'.join(sorted({r.view for r in lateral}))}); models are trained on frontal PA/AP "
        f"views. Set data.keep_lateral=true to keep them: {_listing([r.path for r in lateral])}.",
        stacklevel=3,
    )
    return [r for r in records if r.view not in dicom.LATERAL_VIEWS]


def discover(root: Path, layout: str = "auto", keep_lateral: bool = False) -> list[Record]:
    """All labelled images under root (or in a Zindi CSV file), sorted by relative path."""
    if layout not in LAYOUTS:
        raise ConfigError(f"data.layout={layout!r} is not one of {LAYOUTS}.")
    root = _check_root(root)
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return drop_lateral(with_dicom_views(read_zindi_csv(root)), keep_lateral)
        raise DataError(f"Data root {root} is a file; set data.root to a folder or a Zindi CSV.")
    if layout == "classes":
        pass  # a folder of class folders; a CSV beside them is a companion file
    elif layout == "zindi" or (layout == "auto" and _root_csvs(root)):
        csv_path = _pick_zindi_csv(root)
        if csv_path is None:
            raise DataError(
                f"data.layout=zindi but no CSV with an ID column is at the root of {root}. "
                f"{README_HINT}"
            )
        return drop_lateral(with_dicom_views(read_zindi_csv(csv_path, root)), keep_lateral)
    records, ignored, unread = _scan(root, layout, keep_unlabeled=False)
    _warn_unread(root, unread)
    if ignored:
        warnings.warn(
            f"{len(ignored)} image(s) under {root} match no layout ({layout}) and were ignored: "
            f"{_listing(ignored)}.",
            stacklevel=2,
        )
    if not records:
        tried = ["nlm", "zindi", "folders"] if layout == "auto" else [layout]
        raise _no_images(root, tried, len(ignored), len(unread))
    records = drop_lateral(with_dicom_views(records), keep_lateral)
    if not records:
        raise DataError(
            f"Every image under {root} is a lateral view; set data.keep_lateral=true to use them."
        )
    return records


def discover_predict(
    path: Path, keep_lateral: bool = False, read_headers: bool = True
) -> list[Record]:
    """Images to predict on: a folder (labels kept where a layout gives them, else None), one
    image, a Zindi CSV, or a list of paths (a text file, or a CSV with a ``path`` column;
    see :mod:`tbclf.data.path_list`). Ids are file stems, or relative paths where stems
    collide.

    ``read_headers=False`` leaves the DICOM header checks (views, DICOMDIR) to the reader of
    each image (the predict loader's workers), so an archive's list is ready at once.
    """
    path = _check_root(path)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".csv" and path_list.has_path_column(_csv_header(path)):
            records = path_list.read_csv_list(path)
        elif suffix == ".csv":
            records = read_zindi_csv(path)
        elif suffix in path_list.TEXT_SUFFIXES:
            records = path_list.read_text_list(path)
        elif _is_image(path.name) or _sniff(str(path)) is not None:
            records = [Record(id=_stem(PurePosixPath(path.name)), path=path, label=None,
                              source="predict")]  # fmt: skip
        else:
            raise DataError(
                f"{path} is neither an image ({FORMATS_TEXT}), a CSV, nor a list of paths "
                f"({', '.join(path_list.TEXT_SUFFIXES)})."
            )
    elif _root_csvs(path):
        csv_path = _pick_zindi_csv(path)
        assert csv_path is not None
        records = read_zindi_csv(csv_path, path)
    else:
        records, _, unread = _scan(path, "auto", keep_unlabeled=True)
        _warn_unread(path, unread)
        rels = [PurePosixPath(r.path.relative_to(path).as_posix()) for r in records]
        ids = _unique_ids([(_stem(rel), rel) for rel in rels])
        records = [
            Record(id=i, path=r.path, label=r.label, source=r.source)
            for i, r in zip(ids, records, strict=True)
        ]
    if read_headers:
        records = drop_lateral(with_dicom_views(records), keep_lateral)
    if not records:
        raise DataError(
            f"No images to predict on in {path}: put {FORMATS_TEXT} files in it or point to a "
            f"CSV with an ID column. {README_HINT}"
        )
    return records


# --------------------------------------------------------------------------- Zindi CSV


def _read_csv_text(csv_path: Path) -> str:
    try:
        data = csv_path.read_bytes()
    except OSError as exc:
        raise DataError(f"Cannot read CSV {csv_path}: {exc.strerror or exc}.") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"CSV {csv_path} is not valid UTF-8 (byte {exc.start}). Save it as UTF-8 and retry."
        ) from None


def _csv_rows(csv_path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) per row; newline="" accepts CR-only (old Mac/Excel) line ends, and
    csv's own errors (a field over its size limit, a stray quote) become a DataError."""
    reader = csv.reader(io.StringIO(_read_csv_text(csv_path), newline=""))
    try:
        for row in reader:
            yield reader.line_num, row
    except csv.Error as exc:
        raise DataError(
            f"{csv_path} line {reader.line_num}: not a readable CSV ({exc}). Check for a stray "
            "quote or a huge field, and save it as a plain comma-separated UTF-8 file."
        ) from None


def zindi_csv(root: Path) -> Path | None:
    """The Zindi CSV that discover() would read at root, or None."""
    return _pick_zindi_csv(Path(root)) if _root_csvs(Path(root)) else None


def csv_header(csv_path: Path) -> list[str]:
    return _csv_header(Path(csv_path))


def csv_column(csv_path: Path, column: str) -> dict[str, str]:
    """{ID: stripped value of `column`} for a Zindi CSV (column matched case-insensitively)."""
    header: list[str] | None = None
    index = -1
    id_index = -1
    out: dict[str, str] = {}
    for _, row in _csv_rows(Path(csv_path)):
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip().casefold() for cell in row]
            if column.casefold() not in header or "id" not in header:
                raise ConfigError(
                    f"data.group_by: CSV {csv_path} has no column {column!r} (its columns: "
                    f"{', '.join(cell.strip() for cell in row)})."
                )
            index, id_index = header.index(column.casefold()), header.index("id")
            continue
        ident = row[id_index].strip() if id_index < len(row) else ""
        out[ident] = row[index].strip() if index < len(row) else ""
    return out


def _csv_header(csv_path: Path) -> list[str]:
    for _, row in _csv_rows(csv_path):
        if any(cell.strip() for cell in row):
            return [cell.strip() for cell in row]
    return []


def _safe_relative(value: str, csv_path: Path, line: int, column: str) -> PurePosixPath:
    """A CSV value as a path inside the data root; absolute paths and .. are refused so a CSV
    cannot make the tool read arbitrary files."""
    rel = PurePosixPath(value.replace("\\", "/"))
    if rel.is_absolute() or re.match(r"^[A-Za-z]:", value) or ".." in rel.parts or not rel.parts:
        raise DataError(
            f"{csv_path} line {line}: {column} {value!r} would point outside the data root. "
            "Use a plain name or a path relative to the CSV's folder."
        )
    return rel


def _parse_label(value: str, csv_path: Path, line: int) -> int:
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        number = None
    if number in (0.0, 1.0):
        return int(number)
    raise DataError(
        f"{csv_path} line {line}: LABEL {value!r} is not 0 (healthy) or 1 (TB). Fix the value "
        "or remove the row."
    )


class _ImageIndex:
    """Which of the usual folders hold which file names, listed once instead of per row."""

    def __init__(self, image_root: Path) -> None:
        self.image_root = image_root
        self._listings: dict[str, dict[str, str]] = {}

    def _listing(self, sub: str) -> dict[str, str]:
        if sub not in self._listings:
            folder = self.image_root / sub
            names = {}
            if folder.is_dir():
                # Every file: an ID may name an extension-less DICOM.
                images = [n for n in sorted(os.listdir(folder)) if (folder / n).is_file()]
                names = {n: n for n in images}
                for name in images:  # case-insensitive fallback; never shadows an exact name
                    names.setdefault(name.lower(), name)
            self._listings[sub] = names
        return self._listings[sub]

    def find(self, rel: PurePosixPath, with_ext: bool) -> Path | None:
        subdirs = ZINDI_IMAGE_DIRS if len(rel.parts) == 1 else ("",)
        parent = rel.parent.as_posix() if len(rel.parts) > 1 else ""
        for sub in subdirs:
            folder = sub if not parent else parent
            listing = self._listing(folder)
            candidates = [rel.name]
            if not with_ext:  # <ID>.png ... first, then a file named <ID> itself
                candidates = [rel.name + e for e in IMAGE_EXTENSIONS] + [rel.name]
            for cand in candidates:
                hit = listing.get(cand) or listing.get(cand.lower())
                if hit is not None:
                    return self.image_root / folder / hit
        return None


def read_zindi_csv(csv_path: Path, image_root: Path | None = None) -> list[Record]:
    """Records from a Zindi CSV (ID, optional LABEL and filename columns).

    Images are looked up as <image_root>/<ID>.png (or another image extension, or a file named
    <ID> itself: extension-less DICOM), then in train/, images/,
    test/ ...; image_root defaults to the CSV's folder. Without a LABEL column every label is
    None (a prediction set).
    """
    csv_path = Path(csv_path).absolute()
    image_root = (Path(image_root) if image_root is not None else csv_path.parent).absolute()
    rows = _zindi_rows(csv_path)
    index = _ImageIndex(image_root)
    records: list[tuple[str, Record]] = []
    missing: list[str] = []
    root_real = os.path.realpath(image_root)
    for line, image_id, label, rel, with_ext in rows:
        found = index.find(rel, with_ext)
        if found is None:
            expected = image_root / (rel if with_ext else rel.with_name(rel.name + ".png"))
            missing.append(f"line {line} (ID {image_id}): expected {expected}")
            continue
        if not _inside(os.path.realpath(found), root_real):
            raise DataError(
                f"{csv_path} line {line}: image {found} resolves outside the data root "
                f"{image_root} (symlink?). Copy the image into the data root."
            )
        rel_found = found.relative_to(image_root).as_posix()
        records.append((rel_found, Record(id=image_id, path=found, label=label, source="zindi")))
    if missing:
        shown = "\n  ".join(missing[:5])
        more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        searched = ", ".join(f"{image_root / d}" for d in ZINDI_IMAGE_DIRS if d) or ""
        raise DataError(
            f"{len(missing)} image(s) listed in {csv_path} are missing:\n  {shown}{more}\n"
            f"Also searched: {searched}. Put the images there (<ID>.png) or add a filename column."
        )
    records.sort(key=lambda t: t[0])
    return [r for _, r in records]


# (line, ID, label, path relative to the image root, whether that path has its extension)
_ZindiRow = tuple[int, str, int | None, PurePosixPath, bool]


def _zindi_rows(csv_path: Path) -> list[_ZindiRow]:
    """The CSV's rows checked before any image is looked for: an ID column, no empty or
    repeated ID, paths that stay inside the data root."""
    header: list[str] | None = None
    columns: dict[str, int] = {}
    rows: list[_ZindiRow] = []
    for line, row in _csv_rows(csv_path):
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip() for cell in row]
            columns = {h.casefold(): i for i, h in enumerate(header)}
            if "id" not in columns:
                raise DataError(
                    f"CSV {csv_path} has no ID column (its columns: {', '.join(header)}). A Zindi "
                    f"CSV needs ID and, for training, LABEL. {README_HINT}"
                )
            continue

        def cell(name: str, row: list[str] = row, columns: dict[str, int] = columns) -> str:
            i = columns[name]
            return row[i].strip() if i < len(row) else ""

        image_id = cell("id")
        if not image_id:
            raise DataError(f"{csv_path} line {line}: empty ID. Fill it in or remove the row.")
        label = None
        if "label" in columns:
            label = _parse_label(cell("label"), csv_path, line)
        filename = cell("filename") if "filename" in columns else ""
        if filename:
            rel, with_ext = _safe_relative(filename, csv_path, line, "filename"), True
        else:
            rel = _safe_relative(image_id, csv_path, line, "ID")
            with_ext = _is_image(rel.name)
        rows.append((line, image_id, label, rel, with_ext))
    if header is None:
        raise DataError(f"CSV {csv_path} is empty; it needs an ID column and one row per image.")

    first_line: dict[str, int] = {}
    for line, image_id, *_ in rows:
        if image_id in first_line:
            raise DataError(
                f"{csv_path}: ID {image_id!r} appears on line {first_line[image_id]} and line "
                f"{line}. Each image must be listed once; remove the duplicate."
            )
        first_line[image_id] = line
    return rows
