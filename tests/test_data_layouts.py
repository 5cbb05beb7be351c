"""Discovery of labelled images in NLM, Zindi, class-folder and mixed layouts."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from imaging import make_dataset, make_png

from tbclf.data.imageio import read_gray
from tbclf.data.layouts import discover, discover_predict, read_zindi_csv
from tbclf.data.records import Record
from tbclf.errors import ConfigError, DataError

DEVSET = Path(__file__).parents[1].parent / "shared/data/tb-cxr-dev"


def as_dict(records: list[Record]) -> dict[str, int | None]:
    return {r.id: r.label for r in records}


def rel_paths(records: list[Record], root: Path) -> list[str]:
    return [r.path.relative_to(root.absolute()).as_posix() for r in records]


# ------------------------------------------------------------------ the layouts


@pytest.mark.parametrize("layout", ["auto", "nlm"])
def test_nlm_layout(tmp_path: Path, layout: str) -> None:
    expected = make_dataset(tmp_path, "nlm", n_per_class=2)
    records = discover(tmp_path, layout)
    assert as_dict(records) == expected
    sources = {r.id: r.source for r in records}
    assert sources["CHNCXR_0001_0"] == "shenzhen" and sources["MCUCXR_0004_1"] == "montgomery"
    assert all(r.path.is_file() and r.path.is_absolute() for r in records)


def _one_source_set(tmp_path: Path, kind: str, layout: str) -> tuple[list, dict]:
    """A `kind` set of 3 images per class at tmp_path, discovered whole as one source: the
    records and the {id: label} that was written."""
    expected = make_dataset(tmp_path, kind, n_per_class=3)
    records = discover(tmp_path, layout)
    assert as_dict(records) == expected
    assert {r.source for r in records} == {kind}
    return records, expected


@pytest.mark.parametrize("layout", ["auto", "zindi"])
def test_zindi_layout(tmp_path: Path, layout: str) -> None:
    records, _ = _one_source_set(tmp_path, "zindi", layout)
    assert all(r.path == tmp_path / f"{r.id}.png" for r in records)


def test_zindi_csv_without_label_is_an_unlabeled_set(tmp_path: Path) -> None:
    expected = make_dataset(
        tmp_path, "zindi", n_per_class=2, csv_name="Test.csv", with_labels=False
    )
    records = discover(tmp_path)
    assert as_dict(records) == expected and all(r.label is None for r in records)


@pytest.mark.parametrize("layout", ["auto", "folders"])
def test_folders_layout_at_the_root(tmp_path: Path, layout: str) -> None:
    records, expected = _one_source_set(tmp_path, "folders", layout)
    assert [r.id for r in records] == sorted(expected)


def test_mixed_layout_like_the_dev_set(tmp_path: Path) -> None:
    expected = make_dataset(tmp_path, "mixed", n_per_class=2)
    records = discover(tmp_path)
    assert as_dict(records) == expected
    counts = Counter((r.source, r.label) for r in records)
    for source in ("shenzhen", "montgomery", "da", "db"):
        assert counts[(source, 0)] == 2 and counts[(source, 1)] == 2
    # Sorted by relative path, so the order does not depend on the file system.
    assert rel_paths(records, tmp_path) == sorted(rel_paths(records, tmp_path))


def test_explicit_layout_overrides_auto_on_mixed_data(tmp_path: Path) -> None:
    make_dataset(tmp_path, "mixed", n_per_class=1)
    with pytest.warns(UserWarning, match="match no layout"):
        nlm = discover(tmp_path, "nlm")
    assert {r.source for r in nlm} == {"shenzhen", "montgomery"}
    with pytest.warns(UserWarning, match="match no layout"):
        folders = discover(tmp_path, "folders")
    assert {r.source for r in folders} == {"da", "db"}
    assert len(nlm) + len(folders) == len(discover(tmp_path))


def test_class_folder_names_any_case_and_depth(tmp_path: Path) -> None:
    paths = {
        "siteA/Normal/a.png": 0,
        "siteA/TUBERCULOSIS/b.PNG": 1,
        "siteB/x/y/0/c.jpeg": 0,
        "siteB/x/y/1/d.JPG": 1,
        "siteC/Healthy/sub/e.png": 0,  # class folder need not be the parent
        "siteC/tb/f.jpg": 1,
    }
    for i, rel in enumerate(paths):
        make_png(tmp_path / rel, (16, 16), seed=i)
    records = discover(tmp_path)
    got = {rel_paths([r], tmp_path)[0]: (r.label, r.source, r.id) for r in records}
    assert {k: v[0] for k, v in got.items()} == paths
    assert got["siteB/x/y/0/c.jpeg"][1:] == ("siteB", "siteB/x/y/0/c")
    assert got["siteC/Healthy/sub/e.png"][1] == "siteC"


def test_nlm_name_wins_over_class_folder(tmp_path: Path) -> None:
    make_png(tmp_path / "tb" / "CHNCXR_0001_0.png", (16, 16))
    (record,) = discover(tmp_path)
    assert (record.id, record.label, record.source) == ("CHNCXR_0001_0", 0, "shenzhen")
    (folder_record,) = discover(tmp_path, "folders")
    assert (folder_record.id, folder_record.label) == ("tb/CHNCXR_0001_0", 1)


def test_ignores_hidden_macosx_non_images_and_montgomery_masks(tmp_path: Path) -> None:
    expected = make_dataset(tmp_path, "folders", n_per_class=2)
    make_png(tmp_path / "healthy" / ".hidden.png", (16, 16))
    make_png(tmp_path / ".trash" / "tb" / "x.png", (16, 16))
    make_png(tmp_path / "__MACOSX" / "tb" / "._y.png", (16, 16))
    make_png(tmp_path / "MontgomerySet" / "ManualMask" / "leftMask" / "MCUCXR_0001_0.png", (8, 8))
    (tmp_path / "tb" / "notes.txt").write_text("x")
    (tmp_path / "tb" / "Thumbs.db").write_bytes(b"x")
    assert as_dict(discover(tmp_path)) == expected


def test_same_stem_twice_gets_path_ids(tmp_path: Path) -> None:
    make_png(tmp_path / "a" / "CHNCXR_0001_0.png", (16, 16), seed=1)
    make_png(tmp_path / "b" / "CHNCXR_0001_0.png", (16, 16), seed=2)
    make_png(tmp_path / "tb" / "x.png", (16, 16), seed=3)
    make_png(tmp_path / "tb" / "x.jpg", (16, 16), seed=4)
    ids = [r.id for r in discover(tmp_path)]
    assert ids == ["a/CHNCXR_0001_0.png", "b/CHNCXR_0001_0.png", "tb/x.jpg", "tb/x.png"]


def test_symlink_outside_root_is_skipped_with_a_warning(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    expected = make_dataset(root, "folders", n_per_class=1)
    make_png(outside / "tb" / "z.png", (16, 16))
    os.symlink(outside / "tb", root / "tb" / "linked_dir")
    os.symlink(outside / "tb" / "z.png", root / "healthy" / "linked.png")
    with pytest.warns(UserWarning, match="outside the data root"):
        records = discover(root)
    assert as_dict(records) == expected


def test_symlink_inside_root_is_followed_once(tmp_path: Path) -> None:
    make_png(tmp_path / "healthy" / "img.png", (16, 16))
    (tmp_path / "tb").mkdir()
    os.symlink(tmp_path / "healthy" / "img.png", tmp_path / "tb" / "linked.png")
    os.symlink(tmp_path, tmp_path / "tb" / "loop")  # a loop must not hang discovery
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        records = discover(tmp_path)
    assert as_dict(records) == {"healthy/img": 0, "tb/linked": 1}


# ------------------------------------------------------------------ Zindi CSV details


def test_zindi_images_in_train_subfolder_bom_blank_lines_and_case(tmp_path: Path) -> None:
    make_png(tmp_path / "train" / "ID_a.png", (16, 16), seed=1)
    make_png(tmp_path / "train" / "ID_b.JPG", (16, 16), seed=2)
    (tmp_path / "Train.csv").write_bytes(
        "\ufeffid,Label\r\nID_a,0\r\n\r\nID_b,1.0\r\n,\r\n".encode()
    )
    records = discover(tmp_path)
    assert as_dict(records) == {"ID_a": 0, "ID_b": 1}
    assert records[1].path == tmp_path / "train" / "ID_b.JPG"


def test_zindi_filename_column(tmp_path: Path) -> None:
    make_png(tmp_path / "imgs" / "first.png", (16, 16), seed=1)
    make_png(tmp_path / "imgs" / "second.jpg", (16, 16), seed=2)
    (tmp_path / "Train.csv").write_text(
        "ID,LABEL,filename\nA,1,imgs/first.png\nB,0,imgs/second.jpg\n"
    )
    records = discover(tmp_path)
    assert [(r.id, r.label, r.path.name) for r in records] == [
        ("A", 1, "first.png"),
        ("B", 0, "second.jpg"),
    ]


def test_zindi_prefers_train_csv_and_ignores_sample_submission(tmp_path: Path) -> None:
    expected = make_dataset(tmp_path, "zindi", n_per_class=1)
    (tmp_path / "SampleSubmission.csv").write_text("ID,LABEL\nID_T1,0\n")
    (tmp_path / "Test.csv").write_text("ID\nID_T1\n")
    assert as_dict(discover(tmp_path)) == expected


def test_read_zindi_csv_directly_and_as_root(tmp_path: Path) -> None:
    expected = make_dataset(tmp_path, "zindi", n_per_class=2)
    assert as_dict(read_zindi_csv(tmp_path / "Train.csv")) == expected
    assert as_dict(discover(tmp_path / "Train.csv")) == expected


# ------------------------------------------------------------------ bad input


def test_root_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"does not exist.*data\.root"):
        discover(tmp_path / "nowhere")


def test_unknown_layout(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.layout"):
        discover(tmp_path, "kaggle")


def test_no_images_found(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DataError) as err:
        discover(tmp_path)
    msg = str(err.value)
    assert "NLM file names" in msg and "Zindi" in msg and "class folders" in msg
    assert "Data layouts" in msg and "docs/data.md" in msg


def test_images_matching_no_layout(tmp_path: Path) -> None:
    make_png(tmp_path / "scans" / "a.png", (16, 16))
    with pytest.warns(UserWarning), pytest.raises(DataError, match="1 image file"):
        discover(tmp_path)


def test_zindi_layout_without_csv(tmp_path: Path) -> None:
    make_dataset(tmp_path, "folders", n_per_class=1)
    with pytest.raises(DataError, match="no CSV with an ID column"):
        discover(tmp_path, "zindi")


def test_missing_image_names_line_and_expected_path(tmp_path: Path) -> None:
    make_png(tmp_path / "ID_1.png", (16, 16))
    (tmp_path / "Train.csv").write_text("ID,LABEL\nID_1,0\nID_2,1\n")
    with pytest.raises(DataError) as err:
        discover(tmp_path)
    msg = str(err.value)
    assert "line 3" in msg and "ID_2" in msg and str(tmp_path / "ID_2.png") in msg
    assert str(tmp_path / "Train.csv") in msg


def test_csv_without_needed_columns(tmp_path: Path) -> None:
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("image,target\na,0\n")
    with pytest.raises(DataError, match=r"no ID column \(its columns: image, target\)"):
        read_zindi_csv(csv_path)


def test_empty_csv(tmp_path: Path) -> None:
    (tmp_path / "Train.csv").write_text("\n\n")
    with pytest.raises(DataError, match="empty"):
        read_zindi_csv(tmp_path / "Train.csv")


@pytest.mark.parametrize("value", ["2", "yes", "", "-1", "0.5"])
def test_bad_labels(tmp_path: Path, value: str) -> None:
    make_png(tmp_path / "a.png", (16, 16))
    (tmp_path / "Train.csv").write_text(f"ID,LABEL\na,{value}\n")
    with pytest.raises(DataError, match=rf"line 2: LABEL '{value}' is not 0 \(healthy\) or 1"):
        discover(tmp_path)


def test_duplicate_ids(tmp_path: Path) -> None:
    make_png(tmp_path / "a.png", (16, 16))
    (tmp_path / "Train.csv").write_text("ID,LABEL\na,0\nb,1\na,1\n")
    with pytest.raises(DataError, match=r"'a' appears on line 2 and line 4"):
        discover(tmp_path)


@pytest.mark.parametrize(
    ("header", "row"),
    [
        ("ID,LABEL", "../escape,0"),
        ("ID,LABEL", "/etc/passwd,0"),
        ("ID,LABEL", "sub/../../x,1"),
        ("ID,LABEL,filename", "a,0,../outside.png"),
        ("ID,LABEL,filename", "a,0,/tmp/abs.png"),
        ("ID,LABEL,filename", "a,0,C:\\x.png"),
    ],
)
def test_ids_and_filenames_cannot_escape_the_root(tmp_path: Path, header: str, row: str) -> None:
    root = tmp_path / "root"
    make_png(tmp_path / "escape.png", (16, 16))
    make_png(tmp_path / "outside.png", (16, 16))
    make_png(root / "a.png", (16, 16))
    (root / "Train.csv").write_text(f"{header}\n{row}\n")
    with pytest.raises(DataError, match="outside the data root"):
        discover(root)


def test_csv_image_symlinked_outside_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_png(tmp_path / "real.png", (16, 16))
    root.mkdir()
    os.symlink(tmp_path / "real.png", root / "a.png")
    (root / "Train.csv").write_text("ID,LABEL\na,0\n")
    with pytest.raises(DataError, match="resolves outside the data root"):
        discover(root)


def test_non_utf8_csv(tmp_path: Path) -> None:
    (tmp_path / "Train.csv").write_bytes("ID,LABEL\nbéb\xe9,0\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"Train\.csv is not valid UTF-8.*Save it as UTF-8"):
        discover(tmp_path)


def test_several_labelled_csvs_are_ambiguous(tmp_path: Path) -> None:
    make_dataset(tmp_path, "zindi", n_per_class=1, csv_name="a.csv")
    (tmp_path / "b.csv").write_text("ID,LABEL\nID_00000,0\n")
    with pytest.raises(DataError, match="Several CSVs"):
        discover(tmp_path)


# ------------------------------------------------------------------ prediction inputs


def test_predict_folder_of_unlabeled_images(tmp_path: Path) -> None:
    make_png(tmp_path / "p1.png", (16, 16), seed=1)
    make_png(tmp_path / "more" / "p2.jpg", (16, 16), seed=2)
    records = discover_predict(tmp_path)
    assert [(r.id, r.label, r.source) for r in records] == [
        ("p2", None, "more"),
        ("p1", None, "predict"),
    ]


def test_predict_keeps_labels_where_the_layout_gives_them(tmp_path: Path) -> None:
    make_dataset(tmp_path, "mixed", n_per_class=1)
    make_png(tmp_path / "new" / "scan.png", (16, 16), seed=99)
    records = {r.id: r for r in discover_predict(tmp_path)}
    assert records["CHNCXR_0001_0"].label == 0 and records["MCUCXR_0002_1"].label == 1
    assert records["h0"].label == 0 and records["h0"].source == "da"
    assert records["n0"].label == 0 and records["n0"].source == "db"
    # da/tb/t0.png and db/TB/t0.jpg share a stem, so both get their relative path as id.
    assert records["da/tb/t0.png"].label == 1 and records["db/TB/t0.jpg"].label == 1
    assert records["scan"].label is None and records["scan"].source == "new"


def test_predict_stem_collisions_use_relative_paths(tmp_path: Path) -> None:
    make_png(tmp_path / "a" / "x.png", (16, 16), seed=1)
    make_png(tmp_path / "b" / "x.png", (16, 16), seed=2)
    make_png(tmp_path / "b" / "y.png", (16, 16), seed=3)
    assert [r.id for r in discover_predict(tmp_path)] == ["a/x.png", "b/x.png", "y"]


def test_predict_zindi_test_csv_and_single_image(tmp_path: Path) -> None:
    expected = make_dataset(
        tmp_path, "zindi", n_per_class=1, csv_name="Test.csv", with_labels=False
    )
    assert as_dict(discover_predict(tmp_path / "Test.csv")) == expected
    assert as_dict(discover_predict(tmp_path)) == expected
    (one,) = discover_predict(tmp_path / "ID_00000.png")
    assert (one.id, one.label) == ("ID_00000", None)


def test_predict_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="No images to predict on"):
        discover_predict(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        discover_predict(tmp_path / "missing")


# ------------------------------------------------------------------ the real dev set


@pytest.mark.devset
@pytest.mark.skipif(not DEVSET.is_dir(), reason=f"dev set not found at {DEVSET}")
def test_devset_discovery() -> None:
    records = discover(DEVSET)
    assert len(records) == 376
    counts = Counter((r.source, r.label) for r in records)
    assert counts == {
        ("shenzhen", 0): 75,
        ("shenzhen", 1): 89,
        ("montgomery", 0): 22,
        ("montgomery", 1): 14,
        ("da", 0): 50,
        ("da", 1): 22,
        ("db", 0): 52,
        ("db", 1): 52,
    }
    assert len({r.id for r in records}) == 376
    assert all(r.path.is_file() for r in records)
    first_per_source = {r.source: r for r in reversed(records)}
    for record in first_per_source.values():  # PNG and JPEG, 8-bit RGB 512x512
        img = read_gray(record.path)
        assert img.shape == (512, 512) and img.dtype == np.uint8 and img.std() > 10


# ------------------------------------------------------------------ formats found by content


def test_unread_files_are_counted_and_listed_in_one_warning(tmp_path: Path) -> None:
    expected = make_dataset(tmp_path, "folders", n_per_class=2)
    (tmp_path / "tb" / "scan.gif").write_bytes(b"GIF89a" + b"\x00" * 200)
    (tmp_path / "healthy" / "IM0007").write_bytes(b"\x00" * 300)  # no magic: not DICOM
    (tmp_path / "healthy" / "notes.txt").write_text("companion files are not listed")
    with pytest.warns(UserWarning) as caught:
        assert as_dict(discover(tmp_path)) == expected
    texts = [str(w.message) for w in caught]
    (unread,) = [t for t in texts if "not images tbclf reads" in t]
    assert unread.startswith("2 file(s)") and "scan.gif" in unread and "IM0007" in unread
    assert "notes.txt" not in unread


def test_other_formats_and_extensionless_files_are_found(tmp_path: Path) -> None:
    import cv2
    from dicoms import write_dicom

    img = np.full((16, 16), 77, np.uint8)
    for name in ("a.tif", "b.bmp", "c.webp"):
        ok, buf = cv2.imencode(os.path.splitext(name)[1], img)
        (tmp_path / "tb").mkdir(exist_ok=True)
        (tmp_path / "tb" / name).write_bytes(buf.tobytes())
    write_dicom(tmp_path / "healthy" / "0001", img)
    make_png(tmp_path / "healthy" / "untitled.png", (16, 16))
    (tmp_path / "healthy" / "untitled.png").rename(tmp_path / "healthy" / "untitled")
    records = discover(tmp_path)
    assert as_dict(records) == {
        "healthy/0001": 0, "healthy/untitled": 0, "tb/a": 1, "tb/b": 1, "tb/c": 1,
    }  # fmt: skip
    for r in records:
        assert read_gray(r.path).shape == (16, 16)


def test_folder_of_dicoms_matching_no_layout_is_not_called_empty(tmp_path: Path) -> None:
    from dicoms import write_dicom

    write_dicom(tmp_path / "export" / "IM1", np.zeros((8, 8), np.uint8))
    with pytest.warns(UserWarning, match="export/IM1"), pytest.raises(DataError) as err:
        discover(tmp_path)
    assert "1 image file(s) were found but matched none" in str(err.value)
    assert [r.id for r in discover_predict(tmp_path)] == ["IM1"]


def test_no_images_message_names_the_formats(tmp_path: Path) -> None:
    (tmp_path / "a.gif").write_bytes(b"GIF89a")
    with pytest.warns(UserWarning, match="a.gif"), pytest.raises(DataError) as err:
        discover(tmp_path)
    assert "PNG, JPEG, TIFF, BMP, WebP or DICOM" in str(err.value)
    assert "1 other file(s) were not images" in str(err.value)
