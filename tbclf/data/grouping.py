"""data.group_by: which images belong to one patient, so a split never puts them on both sides.

Several images of one patient in train and test leak (the model recognises the patient). The
grouping comes from the DICOM PatientID (hashed with a salt; the ID itself is never kept or
written), from a column of the Zindi CSV, or from a regular expression on the file path.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path

from tbclf.data import dicom, layouts
from tbclf.data.records import Record
from tbclf.errors import ConfigError, DataError

PATIENT = "patient"
_COLUMN_PREFIX = "column:"
_REGEX_PREFIX = "regex:"
_SHOWN = 5


def _relative(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            pass
    return Path(path).as_posix()


def _keys(
    records: Sequence[Record], key_of, kind: str, why: str, none_matched: str | None = None
) -> dict[Path, str]:
    """{path: "kind:key"} for the records ``key_of`` gives a key; the others are warned about
    (each becomes its own group), or refused with ``none_matched`` when no record has one."""
    out: dict[Path, str] = {}
    missing: list[Record] = []
    for r in records:
        key = key_of(r)
        if key:
            out[Path(r.path)] = f"{kind}:{key}"
        else:
            missing.append(r)
    if none_matched and records and len(missing) == len(records):
        raise ConfigError(none_matched)
    if missing:
        shown = ", ".join(str(r.path) for r in missing[:_SHOWN])
        more = f" ... and {len(missing) - _SHOWN} more" if len(missing) > _SHOWN else ""
        warnings.warn(
            f"data.group_by: {len(missing)} image(s) {why}; each is its own group: {shown}{more}.",
            stacklevel=3,
        )
    return out


def _patient_hash(record: Record) -> str:
    if layouts.sniff(Path(record.path)) != "dicom":
        return ""
    try:
        return dicom.read_info(Path(record.path)).patient_hash
    except DataError:
        return ""


def patient_keys(records: Sequence[Record]) -> dict[Path, str]:
    """{path: salted hash of the DICOM PatientID}; images without one are left out."""
    return _keys(
        records,
        _patient_hash,
        PATIENT,
        "are not DICOM files with a PatientID",
        "data.group_by=patient, but no image is a DICOM file with a PatientID. Use a CSV "
        "column (data.group_by=column:NAME) or a regular expression on the file path "
        "(data.group_by='regex:^(P\\d+)_'), or leave data.group_by unset.",
    )


def _csv_path(root: Path | None) -> Path | None:
    if root is None:
        return None
    root = Path(root)
    if root.is_file() and root.suffix.lower() == ".csv":
        return root
    if root.is_dir():
        try:
            return layouts.zindi_csv(root)
        except DataError:
            return None
    return None


def column_keys(records: Sequence[Record], column: str, csv_path: Path) -> dict[Path, str]:
    """{path: value of `column` in the row of the image's ID}; empty cells are left out."""
    values = layouts.csv_column(csv_path, column)
    why = f"have an empty {column!r} cell in {csv_path}"
    return _keys(records, lambda r: values.get(r.id, ""), "column", why)


def regex_keys(records: Sequence[Record], pattern: str, root: Path | None) -> dict[Path, str]:
    """{path: first capture group (or whole match) of `pattern` searched in the root-relative
    posix path}; images it does not match are left out."""
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(
            f"data.group_by: {pattern!r} is not a valid regular expression ({exc}). Example: "
            "'regex:^(P\\d+)_' groups P0012_a.png and P0012_b.png."
        ) from None

    def key_of(r: Record) -> str | None:
        m = regex.search(_relative(Path(r.path), root))
        return (m.group(1) if regex.groups else m.group(0)) if m else None

    example = _relative(Path(records[0].path), root) if records else ""
    return _keys(
        records,
        key_of,
        "regex",
        f"do not match {pattern!r}",
        f"data.group_by: the regular expression {pattern!r} matches none of the "
        f"{len(records)} image paths (e.g. {example!r}).",
    )


def group_keys(
    records: Sequence[Record], group_by: str | None, root: Path | None = None
) -> dict[Path, str]:
    """{path: group key} for data.group_by: "patient", "column:NAME" (or a bare column name
    of the root CSV), "regex:PATTERN" (or any other string, taken as a regex). None: {}."""
    if group_by is None or str(group_by).strip() == "":
        return {}
    spec = str(group_by).strip()
    if spec == PATIENT:
        return patient_keys(records)
    csv_path = _csv_path(root)
    if spec.startswith(_COLUMN_PREFIX):
        column = spec[len(_COLUMN_PREFIX) :]
        if csv_path is None:
            raise ConfigError(
                f"data.group_by={spec!r} needs a Zindi CSV at data.root, but there is none."
            )
        return column_keys(records, column, csv_path)
    if spec.startswith(_REGEX_PREFIX):
        return regex_keys(records, spec[len(_REGEX_PREFIX) :], root)
    if csv_path is not None and spec.casefold() in {
        h.casefold() for h in layouts.csv_header(csv_path)
    }:
        return column_keys(records, spec, csv_path)
    return regex_keys(records, spec, root)
