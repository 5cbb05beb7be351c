"""data.group_by: a patient's images never straddle train/val/test or folds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from dicoms import write_dicom
from imaging import make_png

from tbclf.data import dicom
from tbclf.data.datamodule import TBDataModule
from tbclf.data.grouping import group_keys
from tbclf.data.layouts import discover
from tbclf.data.records import Record
from tbclf.data.splits import (
    SPLIT_NAMES,
    hash_files,
    link_groups,
    make_fold_split,
    make_split,
)
from tbclf.errors import ConfigError


def patient_of(records: list[Record], keys: dict[Path, str]) -> dict[Path, str]:
    return {Path(r.path): keys.get(Path(r.path), str(r.path)) for r in records}


def assert_groups_in_one_split(split: dict[str, list[Record]], keys: dict[Path, str]) -> None:
    where: dict[str, str] = {}
    for name in SPLIT_NAMES:
        for r in split.get(name, []):
            key = keys[Path(r.path)]
            assert where.setdefault(key, name) == name, f"{key} in {where[key]} and {name}"


def make_patients(root: Path, n_patients: int = 16, per_patient: int = 3) -> None:
    """DICOMs of n_patients, several each, in class folders; each patient has one label."""
    for p in range(n_patients):
        label = p % 2
        for i in range(per_patient):
            write_dicom(
                root / ("tb" if label else "healthy") / f"IM{p:02d}{i}",
                np.random.default_rng(100 * p + i).integers(0, 4096, (16, 16)).astype(np.uint16),
                bits_stored=12,
                patient_id=f"MRN{p:04d}",
            )


def test_patient_groups_never_straddle_splits_or_folds(tmp_path: Path) -> None:
    make_patients(tmp_path)
    records = discover(tmp_path)
    hashes = hash_files(records)
    keys = group_keys(records, "patient")
    assert len(set(keys.values())) == 16 and len(keys) == 48
    assert all("MRN" not in k for k in keys.values())
    groups = link_groups(records, hashes, keys)
    patients = patient_of(records, keys)
    for seed in range(5):
        split = make_split(records, hashes, seed, 0.25, 0.25, groups=groups)
        assert_groups_in_one_split(split, patients)
        assert sum(len(v) for v in split.values()) == 48
    for fold in range(4):
        split = make_fold_split(records, hashes, 0, 4, fold, 0.25, groups=groups)
        assert_groups_in_one_split(split, patients)
    # Without the grouping, some seed puts one patient on both sides (the leak this prevents).
    leaks = 0
    for seed in range(5):
        split = make_split(records, hashes, seed, 0.25, 0.25)
        sides = {}
        for name, members in split.items():
            for r in members:
                sides.setdefault(patients[Path(r.path)], set()).add(name)
        leaks += sum(len(s) > 1 for s in sides.values())
    assert leaks > 0


def test_no_links_give_the_same_split_as_before(tmp_path: Path) -> None:
    for i in range(20):
        make_png(tmp_path / ("tb" if i % 2 else "healthy") / f"x{i}.png", (8, 8), seed=i)
    records = discover(tmp_path)
    hashes = hash_files(records)
    groups = link_groups(records, hashes)
    assert groups == {Path(r.path): hashes[Path(r.path)] for r in records}
    assert make_split(records, hashes, 3, 0.25, 0.25, groups=groups) == make_split(
        records, hashes, 3, 0.25, 0.25
    )


def test_regex_on_the_file_path(tmp_path: Path) -> None:
    for p in range(6):
        for i in range(2):
            cls = "tb" if p % 2 else "healthy"
            make_png(tmp_path / cls / f"P{p:03d}_{i}.png", (8, 8), seed=10 * p + i)
    make_png(tmp_path / "tb" / "other.png", (8, 8), seed=99)
    records = discover(tmp_path)
    with pytest.warns(UserWarning, match=r"1 image\(s\) do not match.*other\.png"):
        keys = group_keys(records, r"regex:/(P\d+)_", tmp_path)
    assert sorted(set(keys.values())) == [f"regex:P{p:03d}" for p in range(6)]
    with pytest.warns(UserWarning):
        assert group_keys(records, r"(P\d+)_", tmp_path) == keys  # bare text is a regex
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        group_keys(records, "regex:(P", tmp_path)
    with pytest.raises(ConfigError, match="matches none"):
        group_keys(records, "regex:^zzz", tmp_path)


def test_csv_column(tmp_path: Path) -> None:
    rows = ["ID,LABEL,patient_id"]
    for i in range(8):
        make_png(tmp_path / f"img{i}.png", (8, 8), seed=i)
        rows.append(f"img{i},{i % 2},{'' if i == 7 else 'pt' + str(i // 2)}")
    (tmp_path / "Train.csv").write_text("\n".join(rows) + "\n")
    records = discover(tmp_path)
    with pytest.warns(UserWarning, match=r"1 image\(s\) have an empty 'patient_id' cell"):
        keys = group_keys(records, "patient_id", tmp_path)
    assert keys[tmp_path / "img0.png"] == keys[tmp_path / "img1.png"] == "column:pt0"
    assert tmp_path / "img7.png" not in keys
    with pytest.warns(UserWarning):
        assert group_keys(records, "column:PATIENT_ID", tmp_path) == keys
    with pytest.raises(ConfigError, match="no column 'site'"):
        group_keys(records, "column:site", tmp_path)


def test_patient_on_images_without_patient_id_is_a_config_error(tmp_path: Path) -> None:
    make_png(tmp_path / "tb" / "a.png", (8, 8))
    with pytest.raises(ConfigError, match="no image is a DICOM file with a PatientID"):
        group_keys(discover(tmp_path), "patient")


def test_datamodule_split_file_records_the_grouping(tmp_path: Path) -> None:
    make_patients(tmp_path / "data", n_patients=12)
    dm = TBDataModule(
        root=tmp_path / "data", image_size=16, num_workers=0, cache_dir=tmp_path / "cache",
        group_by="patient", val_fraction=0.25, test_fraction=0.25, seed=1,
    )  # fmt: skip
    dm.setup("fit")
    doc = json.loads(dm.save_split(tmp_path / "split.json").read_text())
    assert doc["group_by"] == "patient"
    assert len(doc["groups"]) == 12 and all(len(g) == 3 for g in doc["groups"])
    side = {p: name for name in SPLIT_NAMES for p in doc["splits"][name]}
    for group in doc["groups"]:
        assert len({side[p] for p in group}) == 1
    hashed = {dicom.hash_patient_id(f"MRN{p:04d}") for p in range(12)}
    assert not any(h in json.dumps(doc) for h in hashed)
