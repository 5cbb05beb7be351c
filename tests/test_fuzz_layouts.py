"""Hostile and odd Zindi CSVs and folder trees: a clean DataError or the right records.

"Right" means every record's label is the label its own row (or class folder) gives, and its
file is the one named for that ID, never another row's image under this row's label.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
import warnings
from pathlib import Path

import pytest
from fuzzing import fuzz
from hypothesis import event, given
from hypothesis import strategies as st

from tbclf.data.layouts import IMAGE_EXTENSIONS, discover, discover_predict, read_zindi_csv
from tbclf.data.records import Record
from tbclf.data.splits import find_duplicates, hash_files
from tbclf.errors import ConfigError, DataError

pytestmark = pytest.mark.timeout(300)

# Any character a Linux file name can hold ("/" and NUL cannot), including commas, quotes,
# CR/LF, non-Latin scripts, combining marks and emoji; surrogates cannot be UTF-8 encoded.
NAME_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="/\\\x00")
HOSTILE_CHARS = st.characters(blacklist_categories=("Cs",))


def _own_file_name(image_id: str) -> str:
    """The file name the reader looks for first: the ID itself when it has an image
    extension, else <ID>.png."""
    return image_id if image_id.lower().endswith(IMAGE_EXTENSIONS) else image_id + ".png"


def _plain_id(image_id: str) -> bool:
    """An ID that must round-trip: no surrounding blanks (cells are stripped), not a path
    escape or drive letter, a legal file name, and not one that doubles as another's file."""
    return (
        bool(image_id)
        and image_id == image_id.strip()
        and image_id not in (".", "..")
        and not (len(image_id) >= 2 and image_id[1] == ":" and image_id[0].isascii())
        and len(_own_file_name(image_id).encode()) <= 255
        and not image_id.lower().endswith(IMAGE_EXTENSIONS)
    )


plain_ids = st.one_of(
    st.text(NAME_CHARS, min_size=1, max_size=40),
    st.text(NAME_CHARS, min_size=200, max_size=250),  # long, still a legal file name
    st.from_regex(r"ID_[0-9A-Za-z]{4,12}", fullmatch=True),
).filter(_plain_id)


def _write_csv(
    path: Path,
    header: list[str],
    rows: list[list[str]],
    *,
    bom: bool = False,
    terminator: str = "\r\n",
    blank_every: int = 0,
    pad: bool = False,
) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=terminator)
    writer.writerow([f" {h} " if pad else h for h in header])
    for i, row in enumerate(rows):
        if blank_every and i % blank_every == 0:
            buffer.write(terminator)
        writer.writerow(row)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + buffer.getvalue().encode("utf-8"))


def _make_file(root: Path, name: str, owner: int) -> bool:
    """Create root/name holding the owner's index; False when the OS refuses the name."""
    path = root / name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            return False
        path.write_bytes(b"image-of-row-%d" % owner)
    except OSError:
        return False
    return True


def _owner(path: Path) -> int:
    return int(path.read_bytes().rsplit(b"-", 1)[1])


# --------------------------------------------------------------------------- round trip


@fuzz(150)
@given(
    ids=st.lists(plain_ids, min_size=1, max_size=12, unique=True),
    labels=st.lists(st.sampled_from(["0", "1", "1.0", "0.0", " 1", "0 "]), min_size=12),
    order=st.sampled_from([("ID", "LABEL"), ("LABEL", "ID"), ("id", "Label", "extra")]),
    bom=st.booleans(),
    terminator=st.sampled_from(["\r\n", "\n"]),
    blank_every=st.integers(min_value=0, max_value=3),
    pad=st.booleans(),
)
def test_zindi_csv_round_trip(ids, labels, order, bom, terminator, blank_every, pad) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # Linux names are case-sensitive but the reader falls back to a case-insensitive
        # match, so IDs differing only in case must each have their own file (they do here).
        for i, image_id in enumerate(ids):
            assert _make_file(root, _own_file_name(image_id), i)
        expected = {image_id: int(float(labels[i])) for i, image_id in enumerate(ids)}
        rows = []
        for i, image_id in enumerate(ids):
            cells = {"id": image_id, "label": labels[i], "extra": 'x,y"z'}
            rows.append([cells[h.casefold()] for h in order])
        _write_csv(
            root / "Train.csv",
            list(order),
            rows,
            bom=bom,
            terminator=terminator,
            blank_every=blank_every,
            pad=pad,
        )
        for records in (
            read_zindi_csv(root / "Train.csv"),
            discover(root),
            discover(root, "zindi"),
        ):
            got = {r.id: r.label for r in records}
            assert got == expected
            for r in records:
                assert r.path.name == _own_file_name(r.id)
                assert _owner(r.path) == ids.index(r.id)
                assert r.source == "zindi"


# --------------------------------------------------------------------------- hostile rows


hostile_ids = st.one_of(
    st.text(HOSTILE_CHARS, max_size=30),
    st.sampled_from(
        [
            "..",
            ".",
            "../x",
            "/etc/passwd",
            "C:\\x",
            "a/../../b",
            " ",
            "a\\b",
            "sub/x",
            "x.png",
            "X.PNG",
            "x",
            "X",
            "ID_1",
            "id_1",
            "\ufeffID_1",
            "a\x00b",
        ]
    ),
)
hostile_labels = st.one_of(
    st.sampled_from(
        [
            "0",
            "1",
            "2",
            "-1",
            "",
            " ",
            "nan",
            "inf",
            "1e0",
            "+1",
            "-0",
            "0.5",
            "yes",
            "True",
            "１",
            "0x1",
            "1_0",
            "１.０",
        ]
    ),
    st.text(HOSTILE_CHARS, max_size=6),
)


def _expected_label(value: str) -> int | None:
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return int(number) if number in (0.0, 1.0) else None


@fuzz(200)
@given(
    rows=st.lists(
        st.tuples(
            st.one_of(plain_ids, plain_ids, hostile_ids),
            st.one_of(st.sampled_from(["0", "1"]), hostile_labels),
        ),
        min_size=1,
        max_size=6,
    ),
    with_files=st.lists(st.sampled_from([True, True, True, False]), min_size=6, max_size=6),
    terminator=st.sampled_from(["\r\n", "\n", "\r"]),
)
def test_hostile_rows_give_data_error_or_correct_records(rows, with_files, terminator) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        root.mkdir()
        (Path(tmp) / "outside.png").write_bytes(b"image-of-row-999")
        for i, (image_id, _) in enumerate(rows):
            stripped = image_id.strip()
            if with_files[i] and stripped and "\x00" not in stripped:
                _make_file(root, _own_file_name(stripped).replace("\\", "/"), i)
        _write_csv(
            root / "Train.csv", ["ID", "LABEL"], [list(r) for r in rows], terminator=terminator
        )
        records = _read_or_refuse(root / "Train.csv")
        if records is None:
            return
        csv_labels: dict[str, int | None] = {}
        for image_id, label in rows:
            csv_labels.setdefault(image_id.strip(), _expected_label(label))
        root_real = os.path.realpath(root)
        for r in records:
            assert r.id in csv_labels, f"record {r.id!r} is not a row of the CSV"
            assert r.label is not None and r.label == csv_labels[r.id], "silently wrong label"
            assert os.path.realpath(r.path).startswith(root_real + os.sep), r.path
            owner = rows[_owner(r.path)][0].strip()
            # Only the documented case-insensitive fallback may pick another row's file.
            assert owner == r.id or _own_file_name(owner).lower() in {
                (r.id + ext).lower() for ext in ("", *IMAGE_EXTENSIONS)
            }
        # Two rows sharing one file with different labels must stop the run at the split.
        by_path: dict[Path, set[int | None]] = {}
        for r in records:
            by_path.setdefault(r.path, set()).add(r.label)
        if any(len(v) > 1 for v in by_path.values()):
            with pytest.raises(DataError, match="different labels"):
                find_duplicates(records, hash_files(records))


def _read_or_refuse(path: Path) -> list[Record] | None:
    """The CSV's records, or None where it is refused with a DataError (both are fine)."""
    try:
        records = read_zindi_csv(path)
    except DataError:
        event("DataError")
        return None
    event("read")
    return records


@fuzz(150)
@given(data=st.binary(max_size=400), name=st.sampled_from(["Train.csv", "test.CSV"]))
def test_random_bytes_as_csv(data: bytes, name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / name).write_bytes(data)
        for call in (
            lambda: read_zindi_csv(root / name),
            lambda: discover(root),
            lambda: discover_predict(root),
        ):
            try:
                records = call()
            except DataError:
                continue
            pytest.fail(f"{len(records)} records from random bytes with no images beside them")


@fuzz(100)
@given(
    text=st.one_of(
        st.text(st.sampled_from('ID,LABEL01"\r\n \t\ufeffx'), max_size=80),
        st.text(st.sampled_from('x,01"\r\n \t\ufeff'), max_size=40).map(lambda t: "ID,LABEL\n" + t),
    )
)
def test_csv_syntax_soup(text: str) -> None:
    """Stray quotes, CRs, tabs and BOMs in any order: a DataError or consistent records."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _make_file(root, "x.png", 0)
        (root / "Train.csv").write_text(text, encoding="utf-8", newline="")
        records = _read_or_refuse(root / "Train.csv")
        if records is None:
            return
        for r in records:
            assert r.path == root / "x.png" and r.id == "x" and r.label in (0, 1, None)


@pytest.mark.parametrize(
    "payload, why",
    [
        ("ID,LABEL\n" + "a" * 200_000 + ",1\n", "field over the csv module's size limit"),
        ('ID,LABEL\n"abc,1\nx,0\n', "unterminated quote"),
        ("ID,LABEL\na\x00b,1\n", "NUL byte"),
        ("ID,LABEL\r\r\rx,1\r", "CR-only line ends"),
    ],
    ids=["huge_field", "open_quote", "nul", "cr_only"],
)
def test_malformed_csv_is_a_data_error(tmp_path: Path, payload: str, why: str) -> None:
    (tmp_path / "Train.csv").write_text(payload, encoding="utf-8", newline="")
    _make_file(tmp_path, "x.png", 0)
    try:
        records = read_zindi_csv(tmp_path / "Train.csv")
    except DataError as err:
        assert "Train.csv" in str(err), why
        return
    assert [(r.id, r.label) for r in records] == [("x", 1)], why


@pytest.mark.parametrize(
    "encoding, data",
    [
        ("latin-1", "ID,LABEL\nRéné,1\n".encode("latin-1")),
        ("utf-16", "ID,LABEL\nx,1\n".encode("utf-16")),
        ("cp1252-bom", b"\xef\xbb\xbfID,LABEL\n\x80x,1\n"),
    ],
)
def test_non_utf8_csv_names_file_and_encoding(tmp_path: Path, encoding: str, data: bytes) -> None:
    (tmp_path / "Train.csv").write_bytes(data)
    _make_file(tmp_path, "x.png", 0)
    for call in (lambda: read_zindi_csv(tmp_path / "Train.csv"), lambda: discover(tmp_path)):
        with pytest.raises(DataError, match="UTF-8") as err:
            call()
        assert "Train.csv" in str(err.value), encoding


def test_very_long_id_without_file_is_a_clean_missing_error(tmp_path: Path) -> None:
    long_id = "L" * 5000
    _write_csv(tmp_path / "Train.csv", ["ID", "LABEL"], [[long_id, "1"]])
    with pytest.raises(DataError, match="missing"):
        read_zindi_csv(tmp_path / "Train.csv")


# --------------------------------------------------------------------------- symlinked trees

LINK_KINDS = ["file", "in_root_file", "out_file", "out_dir", "dangling", "loop_dir", "root_dir"]


@fuzz(120)
@given(
    entries=st.lists(
        st.tuples(
            st.sampled_from(["healthy", "tb", "healthy/deep", "tb/x/y"]),
            st.sampled_from(LINK_KINDS),
        ),
        min_size=1,
        max_size=10,
    ),
    layout=st.sampled_from(["auto", "folders"]),
)
def test_symlinks_never_reach_outside_the_root(entries, layout) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        root, outside = base / "data", base / "outside"
        (outside / "tb").mkdir(parents=True)
        (outside / "tb" / "o.png").write_bytes(b"outside")
        (outside / "o.png").write_bytes(b"outside")
        anchor = root / "healthy" / "anchor.png"
        anchor.parent.mkdir(parents=True)
        anchor.write_bytes(b"anchor")
        for i, (folder, kind) in enumerate(entries):
            where = root / folder
            where.mkdir(parents=True, exist_ok=True)
            target = {
                "in_root_file": anchor,
                "out_file": outside / "o.png",
                "out_dir": outside,
                "dangling": base / "nowhere.png",
                "loop_dir": where,
                "root_dir": root,
            }.get(kind)
            name = f"e{i}" if kind in ("out_dir", "loop_dir", "root_dir") else f"e{i}.png"
            if kind == "file":
                (where / name).write_bytes(b"file %d" % i)
            else:
                (where / name).symlink_to(target)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            records = discover(root, layout)
            predict = discover_predict(root)
        root_real = os.path.realpath(root)
        for r in [*records, *predict]:
            real = os.path.realpath(r.path)
            assert real.startswith(root_real + os.sep), f"{r.path} -> {real} escapes the root"
            assert Path(real).is_file()
        for r in records:
            rel = r.path.relative_to(root).parts
            # The label is the class folder the image is listed under (deepest one wins).
            classes = [p for p in rel[:-1] if p in ("healthy", "tb")]
            assert r.label == (1 if classes[-1] == "tb" else 0)
        assert len({r.id for r in records}) == len(records)


def test_unknown_layout_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        discover(tmp_path, "zindi ")


@pytest.mark.timeout(60)
def test_fifo_in_the_data_folder_does_not_hang(tmp_path: Path) -> None:
    """A named pipe named like an image is skipped by discovery (hashing it would block)."""
    (tmp_path / "healthy").mkdir()
    (tmp_path / "tb").mkdir()
    (tmp_path / "healthy" / "a.png").write_bytes(b"a")
    (tmp_path / "tb" / "b.png").write_bytes(b"b")
    os.mkfifo(tmp_path / "tb" / "pipe.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        records = discover(tmp_path)
    assert sorted(r.path.name for r in records) == ["a.png", "b.png"]
    hash_files(records)  # must not block


def _record(path: Path, label: int) -> Record:
    return Record(id=path.stem, path=path, label=label, source="t")
