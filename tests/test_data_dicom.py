"""DICOM reading: pixels as a viewer shows them (checked against the values written), refusals
with a message naming the file, discovery by content, the lateral-view rule and privacy."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicoms import PATIENT_BIRTH, PATIENT_NAME, make_dicom_dataset, save, write_dicom
from dicoms import write_structured_report as write_sr
from imaging import make_array
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, RLELossless

from tbclf.data import dicom
from tbclf.data.cache import DecodeCache
from tbclf.data.imageio import decode_bytes, file_info, image_header, load_prepared, read_gray
from tbclf.data.layouts import discover, discover_predict, read_zindi_csv
from tbclf.data.records import Record
from tbclf.data.splits import hash_files
from tbclf.errors import DataError


def scaled(values: np.ndarray, top: int) -> np.ndarray:
    """What a viewer shows for values in [0, top] on an 8-bit display."""
    return np.round(np.asarray(values, dtype=np.float64) * 255.0 / top).astype(np.uint8)


def pattern(bits: int, shape: tuple[int, int] = (48, 40), seed: int = 0) -> np.ndarray:
    return make_array(shape, np.uint16, bit_depth=bits, seed=seed).astype(np.uint16)


# --------------------------------------------------------------------------- pixel values


def test_8bit_monochrome2_is_read_exactly(tmp_path: Path) -> None:
    pixels = make_array((40, 48), np.uint8, seed=3)
    path = write_dicom(tmp_path / "a.dcm", pixels)
    assert np.array_equal(read_gray(path), pixels)


@pytest.mark.parametrize("bits", [12, 16])
def test_monochrome2_is_scaled_by_bits_stored(tmp_path: Path, bits: int) -> None:
    pixels = pattern(bits)
    path = write_dicom(tmp_path / "a.dcm", pixels, bits_stored=bits)
    assert np.array_equal(read_gray(path), scaled(pixels, (1 << bits) - 1))


def test_bits_stored_not_the_maximum_sets_brightness(tmp_path: Path) -> None:
    """A dim 12-bit image (peak 2000) stays dim: scaled by 4095, not by its own maximum."""
    pixels = (pattern(12).astype(np.float64) * 2000 / 4095).astype(np.uint16)
    assert pixels.max() == 2000
    path = write_dicom(tmp_path / "dim.dcm", pixels, bits_stored=12)
    got = read_gray(path)
    assert got.max() == scaled(np.array([2000]), 4095)[0] == 125
    assert np.array_equal(got, scaled(pixels, 4095))


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_monochrome1_is_inverted_so_bone_is_bright(tmp_path: Path, bits: int) -> None:
    pixels = make_array((40, 48), np.uint8, seed=1) if bits == 8 else pattern(bits)
    path = write_dicom(tmp_path / "m1.dcm", pixels, bits_stored=bits, photometric="MONOCHROME1")
    expected = 255 - scaled(pixels, (1 << bits) - 1)
    assert np.array_equal(read_gray(path), expected)


def test_rescale_slope_and_intercept_without_window_keep_the_full_range(tmp_path: Path) -> None:
    pixels = pattern(12)
    path = write_dicom(
        tmp_path / "r.dcm", pixels, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1000
    )
    # Modality values 2v-1000 over their full range [-1000, 7190]: the same picture as v/4095.
    assert np.array_equal(read_gray(path), scaled(pixels, 4095))


def linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR window onto [0, 1], written out independently."""
    x = np.asarray(x, dtype=np.float64)
    out = (x - (center - 0.5)) / (width - 1) + 0.5
    return np.clip(out, 0.0, 1.0)


def test_window_center_width_after_rescale(tmp_path: Path) -> None:
    pixels = pattern(12)
    slope, intercept, center, width = 2.0, -1000.0, 3000.0, 4000.0
    path = write_dicom(
        tmp_path / "w.dcm", pixels, bits_stored=12, RescaleSlope=slope,
        RescaleIntercept=intercept, WindowCenter=center, WindowWidth=width,
    )  # fmt: skip
    expected = np.round(linear_window(pixels * slope + intercept, center, width) * 255)
    got = read_gray(path).astype(np.int64)
    assert np.abs(got - expected).max() <= 1  # the window's own float rounding
    assert (got == 0).any() and (got == 255).any()  # values outside the window are clipped


def test_window_on_monochrome1_is_inverted_too(tmp_path: Path) -> None:
    pixels = pattern(12)
    path = write_dicom(
        tmp_path / "w1.dcm", pixels, bits_stored=12, photometric="MONOCHROME1",
        WindowCenter=2048, WindowWidth=2048,
    )  # fmt: skip
    expected = 255 - np.round(linear_window(pixels, 2048, 2048) * 255)
    assert np.abs(read_gray(path).astype(np.int64) - expected).max() <= 1


def test_voi_lut_sequence_is_applied_and_preferred_over_the_window(tmp_path: Path) -> None:
    pixels = pattern(12)
    first, entries = 100, 3000
    lut = (np.sqrt(np.arange(entries) / (entries - 1)) * 1023).astype(np.uint16)  # 10-bit out
    ds = make_dicom_dataset(pixels, bits_stored=12, WindowCenter=10, WindowWidth=5)
    item = pydicom.Dataset()
    item.LUTDescriptor = [entries, first, 10]
    item.add_new("LUTData", "OW", lut.astype("<u2").tobytes())
    ds.VOILUTSequence = pydicom.Sequence([item])
    path = save(ds, tmp_path / "lut.dcm")
    index = np.clip(pixels.astype(np.int64) - first, 0, entries - 1)
    assert np.array_equal(read_gray(path), scaled(lut[index], 1023))


def test_signed_pixels(tmp_path: Path) -> None:
    pixels = (pattern(12).astype(np.int32) - 2048).astype(np.int16)
    path = write_dicom(tmp_path / "s.dcm", pixels, bits_stored=12, signed=True)
    assert np.array_equal(read_gray(path), scaled(pixels.astype(np.int64) + 2048, 4095))


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_transfer_syntaxes_decode_to_the_same_pixels(
    tmp_path: Path, syntax: str
) -> None:
    pixels = pattern(12)
    plain = read_gray(write_dicom(tmp_path / "plain.dcm", pixels, bits_stored=12))
    path = write_dicom(tmp_path / "c.dcm", pixels, bits_stored=12, syntax=syntax)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(read_gray(path), plain)
    assert np.array_equal(plain, scaled(pixels, 4095))


def test_rgb_dicom_is_converted_to_gray(tmp_path: Path) -> None:
    gray = make_array((32, 32), np.uint8, seed=2)
    path = write_dicom(tmp_path / "rgb.dcm", np.stack([gray] * 3, axis=-1), photometric="RGB")
    assert np.array_equal(read_gray(path), gray)


def test_decode_bytes_reads_dicom_uploads(tmp_path: Path) -> None:
    pixels = pattern(16)
    data = write_dicom(tmp_path / "u.dcm", pixels).read_bytes()
    assert np.array_equal(decode_bytes(data, "upload.dcm"), scaled(pixels, 65535))
    assert image_header(data, Path("upload"))[1:] == pixels.shape


def test_load_prepared_and_file_info(tmp_path: Path) -> None:
    pixels = pattern(12, shape=(60, 30))
    path = write_dicom(tmp_path / "p.dcm", pixels, bits_stored=12)
    assert load_prepared(path, 32).shape == (32, 32)
    info = file_info(path)
    assert info == {
        "format": "dicom", "height": 60, "width": 30, "bit_depth": 12, "color": "MONOCHROME2",
    }  # fmt: skip


# --------------------------------------------------------------------------- refusals


def test_structured_report_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = write_sr(tmp_path / "report.dcm")
    with pytest.raises(DataError, match=r"report\.dcm.*no pixel data.*Basic Text SR"):
        read_gray(path)


def test_multi_frame_is_refused(tmp_path: Path) -> None:
    frames = np.stack([make_array((16, 16), np.uint8, seed=i) for i in range(3)])
    ds = make_dicom_dataset(frames[0])
    ds.NumberOfFrames = 3
    ds.PixelData = frames.tobytes()
    path = save(ds, tmp_path / "cine.dcm")
    with pytest.raises(DataError, match=r"cine\.dcm.*multi-frame.*3 frames"):
        read_gray(path)


def test_photometric_that_cannot_be_converted_is_refused(tmp_path: Path) -> None:
    ds = make_dicom_dataset(make_array((16, 16), np.uint8))
    ds.PhotometricInterpretation = "HSV"
    path = save(ds, tmp_path / "hsv.dcm")
    with pytest.raises(DataError, match=r"hsv\.dcm.*'HSV' cannot be converted"):
        read_gray(path)


def test_pixel_count_is_checked_from_the_header_before_decoding(tmp_path: Path) -> None:
    ds = make_dicom_dataset(make_array((16, 16), np.uint8))
    ds.Rows, ds.Columns = 50_000, 50_000  # 2.5 gigapixels claimed, 256 bytes present
    path = save(ds, tmp_path / "bomb.dcm")
    with pytest.raises(DataError, match=r"bomb\.dcm is 50000x50000.*data\.max_pixels"):
        read_gray(path)
    with pytest.raises(DataError, match="max_pixels=100"):
        read_gray(write_dicom(tmp_path / "small.dcm", make_array((16, 16), np.uint8)), 100)


def test_syntax_without_a_decoder_names_file_syntax_and_pip_command(tmp_path: Path) -> None:
    ds = make_dicom_dataset(make_array((16, 16), np.uint8))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: nothing decodes it
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    path = save(ds, tmp_path / "video.dcm")
    with pytest.raises(DataError) as err:
        read_gray(path)
    text = str(err.value)
    assert "video.dcm" in text and "MPEG2" in text and "pip install python-gdcm" in text


def test_missing_plugin_names_the_package_that_adds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pydicom.pixels

    class Unavailable:
        is_available = False

    path = write_dicom(tmp_path / "j2k.dcm", pattern(12), bits_stored=12, syntax=JPEG2000Lossless)
    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: Unavailable())
    with pytest.raises(
        DataError, match=r"j2k\.dcm.*JPEG 2000.*pip install pylibjpeg pylibjpeg-openjpeg"
    ):
        read_gray(path)


def test_truncated_dicom_is_refused(tmp_path: Path) -> None:
    data = write_dicom(tmp_path / "a.dcm", pattern(12), bits_stored=12).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.dcm"):
        read_gray(cut)


def test_bad_dicoms_fail_the_warm_up_or_are_skipped(tmp_path: Path) -> None:
    good = write_dicom(tmp_path / "good.dcm", make_array((16, 16), np.uint8))
    report = write_sr(tmp_path / "report.dcm")
    records = [Record(p.stem, p, 0, "s") for p in (good, report)]
    cache = DecodeCache(tmp_path / "cache", 16)
    expected = r"(?s)1 image\(s\) cannot be used.*report\.dcm.*no pixel data"
    with pytest.raises(DataError, match=expected):
        cache.warm(records, hash_files(records), num_workers=0, progress=False)
    with pytest.warns(UserWarning, match="report.dcm"):
        kept = cache.warm(records, hash_files(records), 0, skip_bad_images=True, progress=False)
    assert [r.path for r in kept] == [good]


# --------------------------------------------------------------------------- discovery


def make_export(root: Path) -> dict[str, Path]:
    """Class folders holding DICOMs: with and without extension, one lateral, one report."""
    files = {
        "h_pa": write_dicom(root / "healthy" / "IM0001", pattern(12, seed=1), bits_stored=12),
        "h_ap": write_dicom(root / "healthy" / "b.dcm", pattern(12, seed=2), view="AP"),
        "t_pa": write_dicom(root / "tb" / "1.2.840.99.3", pattern(12, seed=3), bits_stored=12),
        "t_ll": write_dicom(root / "tb" / "side.dicom", pattern(12, seed=4), view="LL"),
        "t_none": write_dicom(root / "tb" / "noview", pattern(12, seed=5), view=None),
    }
    return files


def test_folder_of_dicoms_is_found_by_content_with_views(tmp_path: Path) -> None:
    files = make_export(tmp_path)
    with pytest.warns(UserWarning, match=r"Skipping 1 lateral view\(s\).*LL.*side\.dicom"):
        records = discover(tmp_path)
    by_path = {r.path: r for r in records}
    assert set(by_path) == {files[k] for k in ("h_pa", "h_ap", "t_pa", "t_none")}
    assert by_path[files["h_pa"]].id == "healthy/IM0001" and by_path[files["h_pa"]].label == 0
    assert by_path[files["t_pa"]].id == "tb/1.2.840.99.3"  # a dotted name is not an extension
    assert by_path[files["h_ap"]].view == "AP" and by_path[files["t_pa"]].view == "PA"
    assert by_path[files["t_none"]].view == ""
    for r in records:
        assert read_gray(r.path).shape == (48, 40)


def test_keep_lateral_keeps_them_without_a_warning(tmp_path: Path) -> None:
    files = make_export(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        records = discover(tmp_path, keep_lateral=True)
    assert {r.view for r in records if r.path == files["t_ll"]} == {"LL"}


def test_predict_folder_of_extensionless_dicoms_and_dicomdir(tmp_path: Path) -> None:
    for i in range(3):
        write_dicom(tmp_path / "PAT1" / f"IM{i}", make_array((16, 16), np.uint8, seed=i))
    write_dicom(tmp_path / "PAT1" / "IMLAT", make_array((16, 16), np.uint8), view="RL")
    ds = make_dicom_dataset(make_array((4, 4), np.uint8))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    save(ds, tmp_path / "DICOMDIR")
    with pytest.warns(UserWarning, match="IMLAT"):
        records = discover_predict(tmp_path)
    assert [r.id for r in records] == ["IM0", "IM1", "IM2"]
    single = discover_predict(tmp_path / "PAT1" / "IM1")
    assert single[0].id == "IM1" and single[0].view == "PA"


def test_zindi_csv_pointing_at_dicoms(tmp_path: Path) -> None:
    write_dicom(tmp_path / "train" / "a1", make_array((16, 16), np.uint8))
    write_dicom(tmp_path / "b2.dcm", make_array((16, 16), np.uint8, seed=1), view="AP")
    (tmp_path / "Train.csv").write_text("ID,LABEL\na1,0\nb2,1\n")
    records = read_zindi_csv(tmp_path / "Train.csv")
    assert [(r.id, r.label) for r in records] == [("b2", 1), ("a1", 0)]
    assert [r.view for r in discover(tmp_path)] == ["AP", "PA"]


# --------------------------------------------------------------------------- privacy


def test_header_info_holds_no_identifying_tag(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "a.dcm", make_array((16, 16), np.uint8), patient_id="MRN-42")
    info = dicom.read_info(path)
    text = repr(info)
    for secret in (PATIENT_NAME, "DOE", PATIENT_BIRTH, "MRN-42"):
        assert secret not in text
    assert info.patient_hash == dicom.hash_patient_id("MRN-42") != ""
    assert dicom.hash_patient_id("MRN-43") != info.patient_hash


def test_split_file_of_a_dicom_set_holds_no_identifying_tag(tmp_path: Path) -> None:
    from tbclf.data.datamodule import TBDataModule

    root = tmp_path / "data"
    for label, cls in ((0, "healthy"), (1, "tb")):
        for i in range(8):
            write_dicom(
                root / cls / f"img{i}.dcm",
                make_array((24, 24), np.uint8, seed=10 * label + i),
                patient_id=f"MRN-{label}{i // 2}",
            )
    dm = TBDataModule(root=root, image_size=24, num_workers=0, cache_dir=tmp_path / "c",
                      group_by="patient", val_fraction=0.25, test_fraction=0.25)  # fmt: skip
    dm.setup("fit")
    text = dm.save_split(tmp_path / "split.json").read_text()
    for secret in (PATIENT_NAME, "DOE", PATIENT_BIRTH, "MRN-"):
        assert secret not in text
    for key in {dicom.hash_patient_id(f"MRN-{a}{b}") for a in (0, 1) for b in range(4)}:
        assert key not in text  # not even the hashes leave
    doc = json.loads(text)
    assert doc["group_by"] == "patient" and len(doc["groups"]) == 8
