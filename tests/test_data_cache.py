"""Decode cache: hits never touch the original, keys follow content and settings, broken entries
are rebuilt, and warm-up is the validation pass for bad images."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from imaging import make_png

import tbclf.data.imageio as imageio
from tbclf.data.cache import CACHE_VERSION, DecodeCache
from tbclf.data.records import Record
from tbclf.data.splits import hash_files
from tbclf.errors import ConfigError, DataError


def make_records(root: Path, n: int, shape=(40, 56)) -> list[Record]:
    records = []
    for i in range(n):
        path = root / f"img{i}.png"
        make_png(path, shape, seed=i)
        records.append(Record(f"img{i}", path, i % 2, "s"))
    return records


@pytest.fixture
def count_decodes(monkeypatch) -> list[Path]:
    calls: list[Path] = []
    real = imageio.load_prepared

    def counting(path, *args, **kwargs):
        calls.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(imageio, "load_prepared", counting)
    return calls


def test_get_decodes_once_then_hits(tmp_path: Path, count_decodes) -> None:
    records = make_records(tmp_path / "img", 3)
    hashes = hash_files(records)
    cache = DecodeCache(tmp_path / "cache", 32)
    expected = [imageio.load_prepared(r.path, 32) for r in records]
    count_decodes.clear()
    kept = cache.warm(records, hashes, num_workers=0)
    assert kept == records and len(count_decodes) == 3
    for _ in range(3):
        for r, want in zip(records, expected, strict=True):
            got = cache.get(r, hashes[r.path])
            assert got.dtype == np.uint8 and got.shape == (32, 32)
            np.testing.assert_array_equal(got, want)
    assert len(count_decodes) == 3  # no decode after warm-up
    # A second warm-up finds everything cached.
    cache.warm(records, hashes, num_workers=0)
    assert len(count_decodes) == 3


def test_entries_live_under_key_prefix_and_are_raw(tmp_path: Path) -> None:
    records = make_records(tmp_path / "img", 1)
    hashes = hash_files(records)
    cache = DecodeCache(tmp_path / "cache", 32)
    img = cache.get(records[0], hashes[records[0].path])
    entry = cache.path_for(hashes[records[0].path])
    key = cache.key(hashes[records[0].path])
    assert entry.parent.name == key[:2] and entry.name.startswith(key)
    assert entry.stat().st_size == 32 * 32
    assert entry.read_bytes() == img.tobytes()
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]  # no temp files left


def test_key_changes_with_settings_and_content(tmp_path: Path) -> None:
    base = DecodeCache(tmp_path, 32)
    h = "ab" * 32
    keys = {
        base.key(h),
        DecodeCache(tmp_path, 48).key(h),
        DecodeCache(tmp_path, 32, resize="squash").key(h),
        DecodeCache(tmp_path, 32, crop_border=False).key(h),
        base.key("cd" * 32),
    }
    assert len(keys) == 5
    assert DecodeCache(tmp_path / "other", 32, max_pixels=10).key(h) == base.key(h)
    assert str(CACHE_VERSION) in base.fingerprint


def test_changed_source_file_gets_a_new_entry(tmp_path: Path) -> None:
    records = make_records(tmp_path / "img", 1)
    cache = DecodeCache(tmp_path / "cache", 32)
    old = cache.get(records[0], hash_files(records)[records[0].path]).copy()
    make_png(records[0].path, (40, 56), seed=99)
    new_hash = hash_files(records)[records[0].path]
    assert not cache.has(new_hash)
    new = cache.get(records[0], new_hash)
    assert not np.array_equal(old, new)
    np.testing.assert_array_equal(new, imageio.load_prepared(records[0].path, 32))


@pytest.mark.parametrize("damage", ["truncate", "extend", "empty", "directory"])
def test_broken_entry_is_a_miss_and_rebuilt(tmp_path: Path, count_decodes, damage: str) -> None:
    records = make_records(tmp_path / "img", 1)
    r, h = records[0], hash_files(records)[records[0].path]
    cache = DecodeCache(tmp_path / "cache", 32)
    good = cache.get(r, h).copy()
    entry = cache.path_for(h)
    if damage == "truncate":
        entry.write_bytes(entry.read_bytes()[:100])
    elif damage == "extend":
        entry.write_bytes(entry.read_bytes() + b"x")
    elif damage == "empty":
        entry.write_bytes(b"")
    else:
        entry.unlink()
        entry.mkdir()
    assert cache.read(h) is None and not cache.has(h)
    if damage == "directory":
        entry.rmdir()
    n = len(count_decodes)
    np.testing.assert_array_equal(cache.get(r, h), good)
    assert len(count_decodes) == n + 1
    assert entry.stat().st_size == 32 * 32


def test_failed_write_leaves_no_entry_and_no_temp_file(tmp_path: Path, monkeypatch) -> None:
    cache = DecodeCache(tmp_path / "cache", 8)
    h = "ef" * 32

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        cache.write(h, np.zeros((8, 8), np.uint8))
    monkeypatch.undo()
    assert cache.read(h) is None
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_warm_fails_before_training_listing_every_bad_image(tmp_path: Path) -> None:
    records = make_records(tmp_path / "img", 3)
    bad1 = tmp_path / "img" / "bad1.png"
    bad1.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    bad2 = tmp_path / "img" / "bad2.jpg"
    bad2.write_bytes(b"")
    records += [Record("bad1", bad1, 0, "s"), Record("bad2", bad2, 1, "s")]
    hashes = hash_files(records)
    cache = DecodeCache(tmp_path / "cache", 32)
    with pytest.raises(DataError) as err:
        cache.warm(records, hashes, num_workers=0)
    msg = str(err.value)
    assert "2 image(s)" in msg and str(bad1) in msg and str(bad2) in msg
    assert "data.skip_bad_images" in msg


def test_warm_can_skip_bad_images_with_one_warning(tmp_path: Path) -> None:
    records = make_records(tmp_path / "img", 3)
    bads = []
    for i in range(2):
        p = tmp_path / "img" / f"bad{i}.png"
        p.write_bytes(b"garbage" * (i + 1))
        bads.append(Record(f"bad{i}", p, 0, "s"))
    hashes = hash_files(records + bads)
    cache = DecodeCache(tmp_path / "cache", 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept = cache.warm(records + bads, hashes, num_workers=0, skip_bad_images=True)
    assert kept == records
    ours = [w for w in caught if "unreadable" in str(w.message)]
    assert len(ours) == 1
    assert "2 unreadable" in str(ours[0].message)
    assert all(str(b.path) in str(ours[0].message) for b in bads)


def test_warm_with_worker_processes(tmp_path: Path) -> None:
    records = make_records(tmp_path / "img", 6)
    bad = tmp_path / "img" / "bad.png"
    bad.write_bytes(b"nope")
    hashes = hash_files([*records, Record("bad", bad, 0, "s")])
    cache = DecodeCache(tmp_path / "cache", 32)
    with pytest.warns(UserWarning, match="1 unreadable"):
        kept = cache.warm(
            [*records, Record("bad", bad, 0, "s")], hashes, num_workers=2, skip_bad_images=True
        )
    assert kept == records
    for r in records:
        np.testing.assert_array_equal(cache.read(hashes[r.path]), imageio.load_prepared(r.path, 32))


def test_contrast_step_is_cached_on_top_of_the_plain_entry(tmp_path: Path, count_decodes) -> None:
    records = make_records(tmp_path / "img", 2)
    hashes = hash_files(records)
    plain = DecodeCache(tmp_path / "cache", 32)
    clahe = DecodeCache(tmp_path / "cache", 32, preprocessing="clahe", clahe_clip_limit=3.0)
    clahe.warm(records, hashes, num_workers=0)
    assert len(count_decodes) == 2
    for r in records:
        h = hashes[r.path]
        base = plain.read(h)  # the plain entry is kept, so other CLAHE settings skip decoding
        assert base is not None
        want = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(8, 8)).apply(base)
        np.testing.assert_array_equal(clahe.read(h), want)
        assert not np.array_equal(want, base)
    other = DecodeCache(tmp_path / "cache", 32, preprocessing="equalize")
    other.warm(records, hashes, num_workers=0)
    assert len(count_decodes) == 2
    h = hashes[records[0].path]
    np.testing.assert_array_equal(other.read(h), cv2.equalizeHist(plain.read(h)))


def test_contrast_settings_are_in_the_key(tmp_path: Path) -> None:
    h = "01" * 32
    keys = {
        DecodeCache(tmp_path, 32).key(h),
        DecodeCache(tmp_path, 32, preprocessing="clahe").key(h),
        DecodeCache(tmp_path, 32, preprocessing="clahe", clahe_clip_limit=3.0).key(h),
        DecodeCache(tmp_path, 32, preprocessing="clahe", clahe_tile_grid=4).key(h),
        DecodeCache(tmp_path, 32, preprocessing="equalize").key(h),
    }
    assert len(keys) == 5
    # CLAHE settings do not matter when CLAHE is off.
    assert DecodeCache(tmp_path, 32, preprocessing="equalize", clahe_clip_limit=9.0).key(
        h
    ) == DecodeCache(tmp_path, 32, preprocessing="equalize").key(h)
    with pytest.raises(ConfigError, match="data.preprocessing"):
        DecodeCache(tmp_path, 32, preprocessing="sharpen")
