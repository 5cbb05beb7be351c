"""What predict scores: lists of paths, unreadable files, and only chest radiographs among
DICOMs; plus the parts merge that keeps each image once. In-process Trainer.predict with the
ONNX module (the CLI runs the same objects; tests/test_predict_archive.py runs the CLI)."""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
from dicoms import make_dicom_dataset, save, write_dicom
from predict_helpers import tiny_models, write_images
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGExtended12Bit

from tbclf.data import dicom
from tbclf.data.datamodule import TBDataModule
from tbclf.data.predict_set import LEFT_OUT
from tbclf.engine import shards
from tbclf.engine.writer import PredictionWriter, merge
from tbclf.errors import DataError
from tbclf.io import read_output_csv
from tbclf.onnx_module import OnnxModule


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    return tiny_models(tmp_path_factory.mktemp("model"))["onnx"]


def _predict(onnx_model: Path, root: Path, out: Path, **data: object) -> dict:
    dm = TBDataModule(
        predict_root=root, num_workers=0, batch_size=3, cache_dir=out.parent / "c", **data
    )
    writer = PredictionWriter(output=str(out), part_rows=2)
    trainer = pl.Trainer(
        callbacks=[writer], logger=False, accelerator="cpu", devices=1,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.predict(OnnxModule(onnx_model), datamodule=dm, return_predictions=False)
    header, rows = read_output_csv(out)
    return {
        "header": header,
        "rows": rows,
        "sidecar": json.loads(out.with_suffix(".json").read_text()),
    }


def test_a_text_list_of_paths(onnx_model: Path, tmp_path: Path) -> None:
    a = write_images(tmp_path / "pacs" / "a", 3)
    b = write_images(tmp_path / "elsewhere" / "b", 2, seed=1)  # same names: IDs from paths
    listing = tmp_path / "pacs" / "todo.txt"
    lines = ["# export of 2026-12-01", "a/img_002.png", "", str(b[0]), "a/img_000.png", str(b[1])]
    listing.write_text("\n".join(lines) + "\n")
    got = _predict(onnx_model, listing, tmp_path / "out" / "p.csv")
    assert got["header"] == ["ID", "LABEL", "DECISION"]
    # the list's order; the stem img_000 is in both folders, so those two IDs are the paths
    expected = ["img_002", str(b[0]), str(a[0]), "img_001"]
    assert [r["ID"] for r in got["rows"]] == expected
    assert got["sidecar"]["n"] == 4


def test_a_csv_list_with_ids_labels_and_an_unreadable_file(
    onnx_model: Path, tmp_path: Path
) -> None:
    paths = write_images(tmp_path / "imgs", 3)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    listing = tmp_path / "list.csv"
    listing.write_text(
        "ID,path,LABEL\n"
        f"p1,{paths[0]},1\n"
        "p2,imgs/broken.png,0\n"
        "p3,imgs/missing.png,\n"
        f"p4,{paths[2]},0\n"
    )
    with pytest.raises(DataError, match="broken.png.*skip_bad_images"):
        _predict(onnx_model, listing, tmp_path / "strict" / "p.csv")
    assert not (tmp_path / "strict" / "p.csv").exists()
    with pytest.warns(UserWarning, match="2 image\\(s\\) unreadable.*broken.png.*missing.png"):
        got = _predict(onnx_model, listing, tmp_path / "out" / "p.csv", skip_bad_images=True)
    assert got["header"] == ["ID", "LABEL", "DECISION", "TRUE_LABEL"]
    assert [(r["ID"], r["TRUE_LABEL"]) for r in got["rows"]] == [("p1", "1"), ("p4", "0")]
    bad = got["sidecar"]["unreadable"]
    assert [e["id"] for e in bad] == ["p2", "p3"]
    assert "broken.png" in bad[0]["path"] and "unreadable" in bad[0]["why"]
    assert "does not exist" in bad[1]["why"]
    assert got["sidecar"]["n"] == 2 and got["sidecar"]["left_out"] == []


def _chest(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4096, (24, 24)).astype(np.uint16)


def test_only_chest_radiographs_among_dicoms(onnx_model: Path, tmp_path: Path) -> None:
    root = tmp_path / "export"
    kept = {"pa": {}, "chest_dx": {"BodyPartExamined": "CHEST"}, "cr": {"Modality": "CR"}}
    other = {
        "ct": {"Modality": "CT"},
        "mr": {"Modality": "MR"},
        "us": {"Modality": "US"},
        "knee": {"BodyPartExamined": "KNEE"},
    }
    for i, (name, tags) in enumerate({**kept, **other}.items()):
        write_dicom(root / f"{name}.dcm", _chest(i), bits_stored=12, **tags)
    write_dicom(root / "lateral.dcm", _chest(9), bits_stored=12, view="LL")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = _predict(onnx_model, root, tmp_path / "out" / "p.csv")
    ours = [str(w.message) for w in caught if "left out" in str(w.message)]
    assert len(ours) == 1 and ours[0].startswith("5 image(s) left out")
    for name in ("ct.dcm", "mr.dcm", "us.dcm", "knee.dcm", "lateral.dcm"):
        assert name in ours[0]
    assert sorted(r["ID"] for r in got["rows"]) == sorted(kept)
    why = {e["id"]: e["why"] for e in got["sidecar"]["left_out"]}
    assert set(why) == {"ct", "mr", "us", "knee", "lateral"}
    assert why["ct"].startswith("Modality CT is not a radiograph")
    assert why["knee"].startswith("BodyPartExamined KNEE is not the chest")
    assert "keep_non_chest" in why["mr"] and "keep_lateral" in why["lateral"]
    # opting in scores them all
    got = _predict(
        onnx_model, root, tmp_path / "all" / "p.csv", keep_non_chest=True, keep_lateral=True
    )
    assert len(got["rows"]) == 8 and got["sidecar"]["left_out"] == []


def test_12bit_jpeg_dicom_that_pylibjpeg_cannot_decode_names_gdcm(tmp_path: Path) -> None:
    ds = make_dicom_dataset(_chest(0), bits_stored=12)
    # A 12-bit extended-process JPEG frame that pylibjpeg (and Pillow) refuse.
    ds.PixelData = encapsulate([b"not a JPEG stream pylibjpeg reads" * 2])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGExtended12Bit
    path = save(ds, tmp_path / "jpeg12.dcm")
    with pytest.raises(DataError, match=r"(?s)jpeg12\.dcm.*pip install python-gdcm"):
        dicom.decode(path.read_bytes(), path, 10**8)


def test_merge_keeps_each_image_once_in_list_order(tmp_path: Path) -> None:
    folder = tmp_path / "p.csv.parts"
    shards.prepare(folder, "k")
    row = lambda i: shards.PartRow(index=i, id=f"id{i}", prob=i / 10, decision=i % 2)  # noqa: E731
    rank0, rank1 = shards.PartWriter(folder, 0, 2), shards.PartWriter(folder, 1, 2)
    for i in (0, 2, 4, 6):
        rank0.add(row(i))
    for i in (1, 3, 5, 0):  # DistributedSampler pads rank 1 with image 0 again
        rank1.add(row(i))
    rank0.flush()
    rank1.flush()
    assert rank1.stream == 1  # the repeat went back in the list: a stream of its own
    merged = list(shards.merged_rows(folder))
    assert [r.index for r in merged] == list(range(7))
    assert shards.done_ids(folder) == {f"id{i}" for i in range(7)}
    assert not math.isnan(merged[3].prob)
    # the same key keeps the parts (a resume); another model or list starts afresh
    assert shards.prepare(folder, "k") is True
    assert shards.prepare(folder, "other") is False and shards.done_ids(folder) == set()


def test_many_images_not_scored_keep_the_sidecar_small_and_list_them_all(tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    folder = shards.parts_dir(out)
    shards.prepare(folder, "k")
    writer = shards.PartWriter(folder, 0, 1)
    for i in range(130):
        if i % 40 == 0:  # 4 scored, the rest a PACS export's CT series
            writer.add(shards.PartRow(index=i, id=f"xr{i}", prob=0.25, decision=0))
            continue
        writer.add(shards.PartRow(
            index=i, id=f"ct{i}", prob=math.nan, decision=0, status=LEFT_OUT,
            path=f"/pacs/ct{i}.dcm", why="Modality CT is not a radiograph",
        ))  # fmt: skip
    writer.add(shards.PartRow(
        index=130, id="bad", prob=math.nan, decision=0, status=shards.UNREADABLE,
        path="/pacs/bad.dcm", why="unreadable",
    ))  # fmt: skip
    writer.flush()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merge(out, {"model": "m"})
    told = sorted(str(w.message) for w in caught)
    assert len(told) == 2 and told[0].startswith("1 image(s) unreadable")
    assert re.match(r"126 image\(s\) left out.*not_scored\.csv.*116 more", told[1])
    side = json.loads(out.with_suffix(".json").read_text())
    assert (side["n"], side["n_left_out"], side["n_unreadable"]) == (4, 126, 1)
    assert len(side["left_out"]) == shards.LISTED and side["left_out"][0]["id"] == "ct1"
    assert side["not_scored_csv"] == "p.not_scored.csv"
    header, rows = read_output_csv(tmp_path / "p.not_scored.csv")
    assert header == ["ID", "PATH", "STATUS", "WHY"] and len(rows) == 127
    assert rows[0]["ID"] == "ct1" and rows[-1]["ID"] == "bad" and rows[-1]["STATUS"] == "unreadable"
    assert [r["ID"] for r in read_output_csv(out)[1]] == ["xr0", "xr40", "xr80", "xr120"]
    # a later run that scored everything leaves no stale list behind
    shards.prepare(folder, "k2")
    writer = shards.PartWriter(folder, 0, 1)
    writer.add(shards.PartRow(index=0, id="xr0", prob=0.5, decision=1))
    writer.flush()
    merge(out, {"model": "m"})
    assert not (tmp_path / "p.not_scored.csv").exists()
    assert json.loads(out.with_suffix(".json").read_text())["not_scored_csv"] is None
