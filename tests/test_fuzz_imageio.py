"""Hostile and odd image files: every case is a clean DataError or a correct read.

"Correct" is checkable for PNG (zlib + chunk CRCs catch any corruption, so a PNG that still
decodes must decode to the original pixels). JPEG has no checksum: a flipped bit in the
entropy-coded data decodes to different pixels that no reader can detect, so for JPEG the
property is only "no crash, no hang, and the array has the size the header states".
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from fuzzing import fuzz
from hypothesis import given
from hypothesis import strategies as st
from imaging import make_array

from tbclf.data.imageio import image_header, load_prepared, read_gray
from tbclf.errors import DataError

pytestmark = pytest.mark.timeout(300)


def _encode(ext: str, img: np.ndarray, quality: int = 90) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext == ".jpg" else []
    ok, buf = cv2.imencode(ext, img, params)
    assert ok
    return buf.tobytes()


# Small originals of every kind the readers support (8/16-bit gray, RGB, RGBA, gray/RGB JPEG).
SAMPLES: dict[str, tuple[str, bytes]] = {
    "png_gray8": (".png", _encode(".png", make_array((40, 30), seed=1))),
    "png_gray12in16": (".png", _encode(".png", make_array((30, 40), np.uint16, bit_depth=12))),
    "png_rgb": (".png", _encode(".png", make_array((24, 24), channels=3, equal_channels=False))),
    "png_rgba16": (".png", _encode(".png", make_array((20, 28), np.uint16, channels=4))),
    "jpg_gray": (".jpg", _encode(".jpg", make_array((40, 32), seed=2))),
    "jpg_rgb": (".jpg", _encode(".jpg", make_array((32, 40), channels=3, equal_channels=False))),
}
PNGS = [k for k in SAMPLES if k.startswith("png")]
JPEGS = [k for k in SAMPLES if k.startswith("jpg")]


def _reference(name: str) -> np.ndarray:
    ext, data = SAMPLES[name]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"ref{ext}"
        path.write_bytes(data)
        return read_gray(path)


REFERENCE = {name: _reference(name) for name in SAMPLES}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz_imageio")


def _read_or_error(path: Path, data: bytes, **kwargs) -> np.ndarray | None:
    """read_gray on data; None for a DataError that names the file, any other exception fails."""
    path.write_bytes(data)
    try:
        img = read_gray(path, **kwargs)
    except DataError as err:
        assert str(path) in str(err), f"error does not name the file: {err}"
        return None
    assert isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 2
    return img


def _flip(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, mask in flips:
        out[pos % len(out)] ^= mask
    return bytes(out)


flip_lists = st.lists(
    st.tuples(st.integers(min_value=0, max_value=10**6), st.integers(min_value=1, max_value=255)),
    min_size=1,
    max_size=4,
)


@fuzz(150)
@given(name=st.sampled_from(PNGS), flips=flip_lists)
def test_png_with_flipped_bytes_is_refused_or_exact(workdir: Path, name: str, flips) -> None:
    ext, data = SAMPLES[name]
    img = _read_or_error(workdir / f"flip{ext}", _flip(data, flips))
    if img is not None:
        np.testing.assert_array_equal(img, REFERENCE[name])


@fuzz(100)
@given(name=st.sampled_from(JPEGS), flips=flip_lists)
def test_jpeg_with_flipped_bytes_never_crashes(workdir: Path, name: str, flips) -> None:
    ext, data = SAMPLES[name]
    corrupted = _flip(data, flips)
    path = workdir / f"flip{ext}"
    img = _read_or_error(path, corrupted)
    if img is not None:
        _, height, width = image_header(corrupted, path)
        assert img.shape == (height, width)


@fuzz(120)
@given(name=st.sampled_from(list(SAMPLES)), cut=st.floats(min_value=0.0, max_value=0.9999))
def test_truncated_files_are_refused(workdir: Path, name: str, cut: float) -> None:
    ext, data = SAMPLES[name]
    keep = int(len(data) * cut)
    img = _read_or_error(workdir / f"trunc{ext}", data[:keep])
    if img is not None:
        # Only a PNG cut inside its trailing IEND chunk still holds every pixel.
        assert ext == ".png" and keep >= len(data) - 12, f"{keep}/{len(data)} bytes decoded"
        np.testing.assert_array_equal(img, REFERENCE[name])


@fuzz(100)
@given(
    prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8", b"\xff\xd8\xff\xe0"]),
    tail=st.binary(max_size=600),
)
def test_random_bytes_behind_a_real_signature(workdir: Path, prefix: bytes, tail: bytes) -> None:
    data = prefix + tail
    path = workdir / "random.png"
    img = _read_or_error(path, data)
    if img is not None:
        _, height, width = image_header(data, path)
        assert img.shape == (height, width)


# --------------------------------------------------------------------------- decompression bombs


def _png_claiming(width: int, height: int, depth: int = 8, color: int = 0) -> bytes:
    """A ~60-byte, CRC-valid PNG whose IHDR claims width x height (too little pixel data)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A real tiny JPEG with its SOF0 size fields rewritten."""
    data = bytearray(SAMPLES["jpg_gray"][1])
    sof = data.find(b"\xff\xc0")
    assert sof > 0
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.parametrize(
    "data",
    [_png_claiming(100_000, 100_000), _jpeg_claiming(65_535, 65_535)],
    ids=["png_100000x100000", "jpeg_65535x65535"],
)
def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    assert len(data) < 2000
    with pytest.raises(DataError, match="max_pixels") as err:
        read_gray(path)
    assert str(path) in str(err.value)
    with pytest.raises(DataError, match="max_pixels"):
        load_prepared(path, 32)


def test_bomb_above_opencvs_own_limit_with_max_pixels_raised(tmp_path: Path) -> None:
    """A user who raises data.max_pixels past OpenCV's CV_IO_MAX_IMAGE_PIXELS (2**30) must still
    get a DataError, not a cv2.error from inside imdecode."""
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_claiming(100_000, 100_000))
    with pytest.raises(DataError) as err:
        read_gray(path, max_pixels=10**12)
    assert str(path) in str(err.value)


@fuzz(150)
@given(
    width=st.integers(min_value=0, max_value=2**32 - 1),
    height=st.integers(min_value=0, max_value=2**32 - 1),
    depth_color=st.sampled_from([(8, 0), (16, 0), (8, 2), (16, 6), (1, 0), (8, 3), (7, 9)]),
    max_pixels=st.integers(min_value=1, max_value=2_000_000),
)
def test_any_claimed_png_size_is_refused_cleanly(
    workdir: Path, width: int, height: int, depth_color: tuple[int, int], max_pixels: int
) -> None:
    path = workdir / "claim.png"
    path.write_bytes(_png_claiming(width, height, *depth_color))
    try:
        img = read_gray(path, max_pixels=max_pixels)
    except DataError as err:
        if width * height > max_pixels:
            assert "max_pixels" in str(err)
        return
    # 64 zero bytes can only fill a tiny image; whatever decodes must have the claimed size.
    assert img.shape == (height, width) and width * height <= max_pixels


# --------------------------------------------------------------------------- names and file kinds


@pytest.mark.parametrize(
    "name, real_ext, fake_name",
    [
        ("png_gray8", ".png", "scan.jpg"),
        ("png_rgba16", ".png", "scan.jpeg"),
        ("jpg_rgb", ".jpg", "scan.png"),
        ("jpg_gray", ".jpg", "SCAN.PNG"),
    ],
)
def test_wrong_extension_is_read_by_content(
    tmp_path: Path, name: str, real_ext: str, fake_name: str
) -> None:
    """The decoder sniffs the signature, so a mislabelled file reads exactly like a right one."""
    _, data = SAMPLES[name]
    path = tmp_path / fake_name
    path.write_bytes(data)
    np.testing.assert_array_equal(read_gray(path), REFERENCE[name])
    prepared = load_prepared(path, 16, crop_border=False)
    right = tmp_path / f"right{real_ext}"
    right.write_bytes(data)
    np.testing.assert_array_equal(prepared, load_prepared(right, 16, crop_border=False))


@pytest.mark.timeout(30)
def test_fifo_named_like_an_image_does_not_hang(tmp_path: Path) -> None:
    """A named pipe would block read() forever; it must be refused as not a regular file."""
    fifo = tmp_path / "scan.png"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="scan.png"):
        read_gray(fifo)


def test_directory_named_like_an_image(tmp_path: Path) -> None:
    folder = tmp_path / "scan.png"
    folder.mkdir()
    with pytest.raises(DataError, match="scan.png"):
        read_gray(folder)


def test_dangling_symlink(tmp_path: Path) -> None:
    link = tmp_path / "scan.png"
    link.symlink_to(tmp_path / "gone.png")
    with pytest.raises(DataError, match="scan.png"):
        read_gray(link)


# --------------------------------------------------------------------------- valid odd images


@fuzz(120)
@given(
    height=st.integers(min_value=1, max_value=160),
    width=st.integers(min_value=1, max_value=160),
    kind=st.sampled_from(["u8", "u16", "u8_rgb", "u8_rgba", "jpg"]),
    value=st.one_of(st.none(), st.integers(min_value=0, max_value=255)),
    size=st.integers(min_value=1, max_value=48),
    resize=st.sampled_from(["pad", "squash"]),
    crop=st.booleans(),
)
def test_any_valid_image_prepares_to_the_requested_square(
    workdir: Path, height, width, kind, value, size, resize, crop
) -> None:
    dtype = np.uint16 if kind == "u16" else np.uint8
    channels = {"u8_rgb": 3, "u8_rgba": 4}.get(kind, 1)
    img = make_array((height, width), dtype, channels, value=value, equal_channels=False)
    ext = ".jpg" if kind == "jpg" else ".png"
    path = workdir / f"valid{ext}"
    path.write_bytes(_encode(ext, img))
    gray = read_gray(path)
    assert gray.shape == (height, width) and gray.dtype == np.uint8
    out = load_prepared(path, size, resize=resize, crop_border=crop)
    assert out.shape == (size, size) and out.dtype == np.uint8
    if height == width == size and not crop:
        np.testing.assert_array_equal(out, gray)


# --------------------------------------------------------------------------- other formats


def _dicom_bytes(**kwargs) -> bytes:
    import io

    from dicoms import make_dicom_dataset

    buf = io.BytesIO()
    make_dicom_dataset(**kwargs).save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _other_samples() -> dict[str, tuple[str, bytes]]:
    from pydicom.uid import RLELossless

    gray = make_array((24, 20), seed=3)
    return {
        "dcm_8": (".dcm", _dicom_bytes(pixels=gray)),
        "dcm_12": ("", _dicom_bytes(pixels=make_array((20, 24), np.uint16, bit_depth=12),
                                    bits_stored=12, WindowCenter=2000, WindowWidth=1000)),
        "dcm_rle": (".dcm", _dicom_bytes(pixels=gray, syntax=RLELossless)),
        "tiff_16": (".tif", _encode(".tiff", make_array((20, 24), np.uint16, bit_depth=12))),
        "bmp": (".bmp", _encode(".bmp", gray)),
        "webp": (".webp", _encode(".webp", make_array((24, 24), channels=3))),
    }  # fmt: skip


OTHERS = _other_samples()


@fuzz(200)
@given(name=st.sampled_from(sorted(OTHERS)), flips=flip_lists)
def test_other_formats_with_flipped_bytes_never_crash(workdir: Path, name: str, flips) -> None:
    ext, data = OTHERS[name]
    img = _read_or_error(workdir / f"flip_{name}{ext}", _flip(data, flips))
    if img is not None:
        assert min(img.shape) >= 1


@fuzz(150)
@given(name=st.sampled_from(sorted(OTHERS)), cut=st.floats(min_value=0.0, max_value=0.9999))
def test_other_formats_truncated_never_crash(workdir: Path, name: str, cut: float) -> None:
    ext, data = OTHERS[name]
    _read_or_error(workdir / f"cut_{name}{ext}", data[: int(len(data) * cut)])


@fuzz(100)
@given(tail=st.binary(max_size=600))
def test_random_bytes_behind_the_dicom_magic(workdir: Path, tail: bytes) -> None:
    _read_or_error(workdir / "random_dicom", b"\x00" * 128 + b"DICM" + tail)
