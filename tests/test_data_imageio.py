"""Decoding of PNG/JPEG chest X-rays of every bit depth and channel layout to uint8 gray."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from imaging import make_array, make_png, write_image

from tbclf.data.imageio import (
    crop_black_border,
    effective_bit_depth,
    fit_to_square,
    load_prepared,
    read_gray,
)
from tbclf.errors import ConfigError, DataError

BIG_SHAPE = (4020, 4892)  # H x W of a Montgomery original


def scaled(a: np.ndarray, bits: int) -> np.ndarray:
    return np.round(a.astype(np.float64) * 255.0 / ((1 << bits) - 1)).astype(np.uint8)


# ------------------------------------------------------------------ bit depths and channels


def test_8bit_gray_png_is_read_exactly(tmp_path: Path) -> None:
    a = make_png(tmp_path / "a.png", (40, 56))
    g = read_gray(tmp_path / "a.png")
    assert g.dtype == np.uint8 and g.shape == (40, 56)
    np.testing.assert_array_equal(g, a)


@pytest.mark.parametrize("bits", [16, 14, 12, 10])
def test_16bit_png_is_scaled_by_effective_bit_depth(tmp_path: Path, bits: int) -> None:
    a = make_png(tmp_path / "a.png", (32, 48), np.uint16, bit_depth=bits)
    assert a.max() == (1 << bits) - 1
    g = read_gray(tmp_path / "a.png")
    assert g.dtype == np.uint8 and g.shape == (32, 48)
    assert g.max() == 255 and g.min() == 0
    np.testing.assert_array_equal(g, scaled(a, bits))


def test_12bit_in_16bit_is_not_dark_and_16bit_full_range_too(tmp_path: Path) -> None:
    make_png(tmp_path / "a12.png", (32, 32), np.uint16, bit_depth=12)
    make_png(tmp_path / "a16.png", (32, 32), np.uint16, bit_depth=16)
    g12, g16 = read_gray(tmp_path / "a12.png"), read_gray(tmp_path / "a16.png")
    # The same pattern at two bit depths reads as (almost) the same 8-bit image.
    assert abs(int(g12.max()) - 255) <= 1 and abs(int(g16.max()) - 255) <= 1
    assert np.abs(g12.astype(int) - g16.astype(int)).max() <= 1
    # Not a per-image min-max: a 12-bit image with max 2000 keeps its darker level.
    a = make_array((16, 16), np.uint16, bit_depth=11)  # max 2047 -> effective 12 bits
    write_image(tmp_path / "dim.png", a)
    g = read_gray(tmp_path / "dim.png")
    assert abs(int(g.max()) - round(2047 * 255 / 4095)) <= 1


@pytest.mark.parametrize("outliers", [1, 5, 40])
def test_a_few_outlier_pixels_do_not_change_a_16bit_image(tmp_path: Path, outliers: int) -> None:
    """One pixel raised from 4095 to 4096 in a 12-bit image used to make it 14-bit: 4x
    darker. Now a handful of outliers (up to 0.1% of the pixels) moves the mean < 1%."""
    base = make_array((256, 256), np.uint16, bit_depth=12, seed=3)
    assert base.max() == 4095
    clean = read_gray(_encode(tmp_path / "clean.png", base))
    rng = np.random.default_rng(outliers)
    for value in (4096, 65535):
        img = base.copy()
        rows, cols = rng.integers(0, 256, outliers), rng.integers(0, 256, outliers)
        img[rows, cols] = value
        gray = read_gray(_encode(tmp_path / f"o{value}.png", img))
        assert abs(gray.mean() - clean.mean()) < 0.01 * clean.mean(), (value, gray.mean())
        keep = np.ones(base.shape, bool)
        keep[rows, cols] = False
        np.testing.assert_array_equal(gray[keep], clean[keep])
        assert (gray[~keep] == 255).all()  # the outliers clip to white
    # Past the allowance it is the image's real depth: a 14-bit image stays 14-bit.
    wide = make_array((64, 64), np.uint16, bit_depth=14, seed=4)
    np.testing.assert_array_equal(read_gray(_encode(tmp_path / "w.png", wide)), scaled(wide, 14))


def test_16bit_png_with_8bit_values_is_unchanged(tmp_path: Path) -> None:
    a = make_array((20, 20), np.uint8).astype(np.uint16)
    write_image(tmp_path / "a.png", a)
    np.testing.assert_array_equal(read_gray(tmp_path / "a.png"), a.astype(np.uint8))


@pytest.mark.parametrize(
    ("max_value", "bits"),
    [(0, 8), (255, 8), (256, 10), (1023, 10), (1024, 12), (4095, 12), (4096, 14), (65535, 16)],
)
def test_effective_bit_depth(max_value: int, bits: int) -> None:
    assert effective_bit_depth(max_value) == bits


def test_rgb_with_equal_channels_reads_as_that_channel(tmp_path: Path) -> None:
    a = make_png(tmp_path / "a.png", (30, 40), channels=3)
    np.testing.assert_array_equal(read_gray(tmp_path / "a.png"), a[:, :, 0])


def test_rgb_with_unequal_channels_reads_as_luminance(tmp_path: Path) -> None:
    a = make_png(tmp_path / "a.png", (30, 40), channels=3, equal_channels=False)
    g = read_gray(tmp_path / "a.png")
    assert g.shape == (30, 40)
    np.testing.assert_array_equal(g, cv2.cvtColor(a, cv2.COLOR_BGR2GRAY))
    assert not np.array_equal(g, a[:, :, 0])


def test_rgba_alpha_is_dropped(tmp_path: Path) -> None:
    a = make_array((30, 40), channels=4)
    a[:, :, 3] = np.arange(40, dtype=np.uint8)[None, :] * 6  # varying alpha must not matter
    write_image(tmp_path / "a.png", a)
    np.testing.assert_array_equal(read_gray(tmp_path / "a.png"), a[:, :, 0])


def test_16bit_rgb_and_rgba(tmp_path: Path) -> None:
    for channels in (3, 4):
        a = make_png(tmp_path / f"a{channels}.png", (24, 24), np.uint16, channels, bit_depth=12)
        np.testing.assert_array_equal(
            read_gray(tmp_path / f"a{channels}.png"), scaled(a[..., 0], 12)
        )


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("ext", [".jpg", ".jpeg", ".JPG"])
def test_jpeg_gray_and_rgb(tmp_path: Path, channels: int, ext: str) -> None:
    a = make_png(tmp_path / f"a{ext}", (64, 48), channels=channels, value=None)
    g = read_gray(tmp_path / f"a{ext}")
    assert g.dtype == np.uint8 and g.shape == (64, 48)
    ref = a if channels == 1 else a[:, :, 0]
    assert np.abs(g.astype(int) - ref.astype(int)).mean() < 6  # lossy, but the same image


def test_jpeg_with_stray_bytes_between_segments(tmp_path: Path) -> None:
    """libjpeg tolerates junk before a marker; the header parser must not call it unreadable."""
    a = make_png(tmp_path / "a.jpg", (40, 40))
    data = (tmp_path / "a.jpg").read_bytes()
    assert data[2:4] == b"\xff\xe0"  # JFIF APP0 first
    end_app0 = 4 + struct.unpack(">H", data[4:6])[0]
    (tmp_path / "b.jpg").write_bytes(data[:end_app0] + b"\x00\x00" + data[end_app0:])
    g = read_gray(tmp_path / "b.jpg")
    assert np.abs(g.astype(int) - a.astype(int)).mean() < 6


def test_non_ascii_path(tmp_path: Path) -> None:
    path = tmp_path / "röntgen_结核" / "bild_ä.png"
    a = make_png(path, (16, 16))
    np.testing.assert_array_equal(read_gray(path), a)


def test_512_square_rgb_png_like_the_dev_set(tmp_path: Path) -> None:
    a = make_png(tmp_path / "a.png", (512, 512), channels=3)
    g = read_gray(tmp_path / "a.png")
    assert g.shape == (512, 512)
    np.testing.assert_array_equal(g, a[:, :, 0])


# ------------------------------------------------------------------ a full-size 16-bit scan


@pytest.fixture(scope="module")
def big_png(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """One Montgomery-sized 12-bit-in-16-bit PNG with a black band at the bottom (made once)."""
    h, w = BIG_SHAPE
    rows = np.linspace(200, 4095, h, dtype=np.float64)
    cols = np.linspace(0, 1, w, dtype=np.float64)
    a = (rows[:, None] * (0.5 + 0.5 * cols[None, :])).astype(np.uint16)
    a[h // 2, w // 2] = 4095
    a[-100:, :] = 0
    path = tmp_path_factory.mktemp("big") / "MCUCXR_0001_1.png"
    write_image(path, a)
    return path, a


def test_big_16bit_png_reads_correctly(big_png: tuple[Path, np.ndarray]) -> None:
    path, a = big_png
    g = read_gray(path)
    assert g.shape == BIG_SHAPE and g.dtype == np.uint8
    for y, x in [(0, 0), (0, BIG_SHAPE[1] - 1), (1234, 3456), (BIG_SHAPE[0] // 2, 17)]:
        assert g[y, x] == round(int(a[y, x]) * 255 / 4095)
    assert g.max() == 255


def test_big_image_is_refused_over_max_pixels(big_png: tuple[Path, np.ndarray]) -> None:
    path, _ = big_png
    with pytest.raises(DataError) as err:
        read_gray(path, max_pixels=1_000_000)
    msg = str(err.value)
    assert str(path) in msg and "4892x4020" in msg and "data.max_pixels" in msg
    with pytest.raises(DataError, match="data.max_pixels"):
        load_prepared(path, 64, max_pixels=1_000_000)


def test_big_image_prepared_crops_band_and_pads(big_png: tuple[Path, np.ndarray]) -> None:
    path, _ = big_png
    out = load_prepared(path, 128, resize="pad", crop_border=True)
    assert out.shape == (128, 128) and out.dtype == np.uint8
    # After cropping the 100-row band the content is 3920 x 4892: wide, so bars top and bottom.
    content_rows = round(3920 * 128 / 4892)
    top = (128 - content_rows) // 2
    assert not out[:top].any() and not out[top + content_rows :].any()
    assert out[top + 1 : top + content_rows - 1, 64].min() > 0  # no black band left inside


def test_pixel_limit_is_checked_from_the_header_before_decoding(tmp_path: Path) -> None:
    """A tiny PNG whose IHDR claims 100000 x 100000 pixels is refused as a bomb, not decoded."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )
    (tmp_path / "bomb.png").write_bytes(data)
    with pytest.raises(DataError, match=r"100000x100000.*data\.max_pixels"):
        read_gray(tmp_path / "bomb.png")


def test_pixel_limit_for_jpeg(tmp_path: Path) -> None:
    make_png(tmp_path / "a.jpg", (300, 200))
    with pytest.raises(DataError, match=r"200x300 = 60000 pixels"):
        read_gray(tmp_path / "a.jpg", max_pixels=50_000)
    assert read_gray(tmp_path / "a.jpg", max_pixels=60_000).shape == (300, 200)


def test_big_jpeg_reduced_decode_matches_full_decode(tmp_path: Path) -> None:
    a = make_png(tmp_path / "a.jpg", (1600, 1200), channels=3)
    fast = load_prepared(tmp_path / "a.jpg", 64, crop_border=False)
    slow = fit_to_square(read_gray(tmp_path / "a.jpg"), 64, "pad")
    assert fast.shape == (64, 64)
    assert np.abs(fast.astype(int) - slow.astype(int)).mean() < 3
    assert a.shape[:2] == (1600, 1200)


# ------------------------------------------------------------------ unreadable files


def _assert_unreadable(path: Path) -> None:
    with pytest.raises(DataError) as err:
        read_gray(path)
    msg = str(err.value)
    assert str(path) in msg and "unreadable" in msg and "--data.skip_bad_images true" in msg


def test_zero_byte_file(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    _assert_unreadable(tmp_path / "empty.png")


def test_text_file_named_png(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("this is not an image\n")
    _assert_unreadable(tmp_path / "notes.png")


def test_random_bytes(tmp_path: Path) -> None:
    (tmp_path / "noise.jpg").write_bytes(np.random.default_rng(0).bytes(500))
    _assert_unreadable(tmp_path / "noise.jpg")


@pytest.mark.parametrize("name", ["a.png", "a.jpg"])
def test_truncated_files(tmp_path: Path, name: str) -> None:
    make_png(tmp_path / name, (64, 64), channels=3)
    data = (tmp_path / name).read_bytes()
    (tmp_path / ("cut_" + name)).write_bytes(data[: len(data) // 2])
    _assert_unreadable(tmp_path / ("cut_" + name))


def test_corrupt_png_data(tmp_path: Path) -> None:
    make_png(tmp_path / "a.png", (64, 64))
    data = bytearray((tmp_path / "a.png").read_bytes())
    data[60:120] = b"\x00" * 60  # inside IDAT: zlib stream and CRC broken
    (tmp_path / "bad.png").write_bytes(bytes(data))
    _assert_unreadable(tmp_path / "bad.png")


def test_truncated_header(tmp_path: Path) -> None:
    (tmp_path / "head.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    _assert_unreadable(tmp_path / "head.png")
    (tmp_path / "head.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF")
    _assert_unreadable(tmp_path / "head.jpg")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_gray(tmp_path / "nope.png")


# ------------------------------------------------------------------ border crop


def test_crop_removes_bottom_band() -> None:
    img = make_array((100, 80), value=150, border_bottom=12)
    out = crop_black_border(img)
    assert out.shape == (88, 80)
    assert (out == 150).all()


def test_crop_removes_bands_on_all_sides_despite_a_little_noise() -> None:
    img = np.zeros((100, 120), np.uint8)
    img[10:90, 5:110] = 180
    img[95, 3] = 255  # one noisy pixel in the bottom band (< 1% of the row)
    out = crop_black_border(img)
    assert out.shape == (80, 105)


def test_crop_leaves_images_without_border_untouched() -> None:
    img = make_array((64, 64), value=120)
    assert crop_black_border(img) is img
    img2 = make_array((64, 64))  # the pattern has one black pixel in a corner: not a band
    assert crop_black_border(img2) is img2


def test_crop_never_crops_to_nothing() -> None:
    black = np.zeros((50, 40), np.uint8)
    assert crop_black_border(black).shape == (50, 40)
    mostly_black = np.zeros((100, 100), np.uint8)
    mostly_black[:20] = 200  # 80% "band": more likely content than a border, kept
    assert crop_black_border(mostly_black).shape == (100, 100)
    one_pixel = np.full((1, 1), 3, np.uint8)
    assert crop_black_border(one_pixel).shape == (1, 1)


# ------------------------------------------------------------------ resize geometry


def test_pad_keeps_aspect_ratio_of_a_tall_image() -> None:
    img = np.full((100, 50), 200, np.uint8)
    out = fit_to_square(img, 64, "pad")
    assert out.shape == (64, 64) and out.dtype == np.uint8
    cols = np.flatnonzero(out.any(axis=0))
    assert (cols[0], cols[-1]) == (16, 47)  # 32 columns of content, centred
    assert out.all(axis=0)[16:48].all()


def test_pad_keeps_aspect_ratio_of_a_wide_image() -> None:
    img = np.full((30, 90), 100, np.uint8)
    out = fit_to_square(img, 60, "pad")
    rows = np.flatnonzero(out.any(axis=1))
    assert (rows[0], rows[-1]) == (20, 39)


def test_squash_fills_the_square() -> None:
    img = np.full((100, 50), 200, np.uint8)
    out = fit_to_square(img, 64, "squash")
    assert out.shape == (64, 64) and (out == 200).all()


def test_upscaling_small_images() -> None:
    img = make_array((10, 20))
    assert fit_to_square(img, 64, "pad").shape == (64, 64)
    assert fit_to_square(img, 64, "squash").shape == (64, 64)


def test_resize_of_a_square_image_to_its_own_size_is_identity() -> None:
    img = make_array((32, 32))
    np.testing.assert_array_equal(fit_to_square(img, 32, "pad"), img)


def test_bad_resize_mode() -> None:
    with pytest.raises(ConfigError, match="data.resize"):
        fit_to_square(np.zeros((4, 4), np.uint8), 4, "stretch")


def test_load_prepared_pipeline(tmp_path: Path) -> None:
    make_png(tmp_path / "a.png", (100, 100), value=200, border_bottom=20)
    cropped = load_prepared(tmp_path / "a.png", 50, resize="pad", crop_border=True)
    assert cropped.shape == (50, 50) and cropped.dtype == np.uint8
    rows = np.flatnonzero(cropped.any(axis=1))
    assert (rows[0], rows[-1]) == (5, 44)  # 80x100 content -> 40x50, centred
    kept = load_prepared(tmp_path / "a.png", 50, resize="pad", crop_border=False)
    assert kept[:40].all() and not kept[40:].any()
    squashed = load_prepared(tmp_path / "a.png", 50, resize="squash", crop_border=True)
    assert (squashed == 200).all()
    with pytest.raises(ConfigError, match="data.resize"):
        load_prepared(tmp_path / "a.png", 50, resize="bogus")


# ------------------------------------------------------------------ TIFF, BMP, WebP


def _encode(path: Path, img: np.ndarray, params: list[int] | None = None) -> Path:
    ok, buf = cv2.imencode(path.suffix, img, params or [])
    assert ok
    path.write_bytes(buf.tobytes())
    return path


@pytest.mark.parametrize("ext", [".tif", ".tiff"])
def test_tiff_8_and_16_bit(tmp_path: Path, ext: str) -> None:
    from tbclf.data.imageio import file_info

    img8 = make_array((30, 40), np.uint8, seed=1)
    img12 = make_array((30, 40), np.uint16, bit_depth=12, seed=2)
    assert np.array_equal(read_gray(_encode(tmp_path / f"a{ext}", img8)), img8)
    path16 = _encode(tmp_path / f"b{ext}", img12)
    assert np.array_equal(read_gray(path16), scaled(img12, 12))
    info = file_info(path16)
    assert (info["format"], info["height"], info["width"], info["bit_depth"]) == (
        "tiff",
        30,
        40,
        16,
    )
    with pytest.raises(DataError, match="40x30 = 1200 pixels"):
        read_gray(path16, max_pixels=1000)


def test_bmp_and_lossless_webp(tmp_path: Path) -> None:
    from tbclf.data.imageio import file_info, image_header

    img = make_array((30, 40), np.uint8, seed=3)
    bmp = _encode(tmp_path / "a.bmp", img)
    webp = _encode(tmp_path / "a.webp", img, [cv2.IMWRITE_WEBP_QUALITY, 101])
    rgb = _encode(tmp_path / "c.bmp", make_array((30, 40), np.uint8, channels=3, seed=3))
    for path in (bmp, webp, rgb):
        data = path.read_bytes()
        assert image_header(data, path)[1:] == (30, 40)
        assert np.array_equal(read_gray(path), img), path.name
        assert file_info(path)["format"] == path.suffix[1:]
    lossy = _encode(tmp_path / "b.webp", img, [cv2.IMWRITE_WEBP_QUALITY, 90])
    assert np.abs(read_gray(lossy).astype(int) - img).mean() < 8


def test_format_is_told_by_content_not_name(tmp_path: Path) -> None:
    img = make_array((20, 24), np.uint8, seed=4)
    misnamed = tmp_path / "scan.png"
    misnamed.write_bytes(_encode(tmp_path / "x.bmp", img).read_bytes())
    assert np.array_equal(read_gray(misnamed), img)


# ------------------------------------------------------------------ PNG sBIT


def _with_sbit(data: bytes, bits: int) -> bytes:
    """The PNG with an sBIT chunk inserted after IHDR (as scanner software writes it)."""
    body = bytes([bits])
    chunk = struct.pack(">I", 1) + b"sBIT" + body
    chunk += struct.pack(">I", zlib.crc32(b"sBIT" + body) & 0xFFFFFFFF)
    end_ihdr = 8 + 12 + 13
    return data[:end_ihdr] + chunk + data[end_ihdr:]


def test_png_sbit_gives_one_brightness_to_images_of_one_scanner(tmp_path: Path) -> None:
    """Peaks of 4095 and 4096 guess 12 and 13 bits; sBIT=14 scales both the same."""
    from tbclf.data.imageio import file_info, png_significant_bits

    base = make_array((32, 32), np.uint16, bit_depth=12, seed=5)
    a, b = base.copy(), base.copy()
    a[0, 1], b[0, 1] = 4095, 4096
    guessed = [read_gray(_encode(tmp_path / f"{n}.png", img)) for n, img in (("a", a), ("b", b))]
    assert guessed[0][5, 5] == guessed[1][5, 5]  # without sBIT, one outlier pixel is clipped
    reads = []
    for name, img in (("sa", a), ("sb", b)):
        path = tmp_path / f"{name}.png"
        path.write_bytes(_with_sbit(_encode(tmp_path / "t.png", img).read_bytes(), 14))
        assert png_significant_bits(path.read_bytes()) == 14
        assert file_info(path)["bit_depth"] == 14
        reads.append(read_gray(path))
    mask = np.ones_like(base, dtype=bool)
    mask[0, 1] = False
    assert np.array_equal(reads[0][mask], reads[1][mask])
    assert np.array_equal(reads[0], scaled(a, 14))


def test_png_sbit_with_values_scaled_to_full_range_is_not_clipped(tmp_path: Path) -> None:
    """PNG's spec scales values to 16 bits even with sBIT=12: then the values rule."""
    img = make_array((16, 16), np.uint16, bit_depth=16, seed=6)
    path = tmp_path / "full.png"
    path.write_bytes(_with_sbit(_encode(tmp_path / "t.png", img).read_bytes(), 12))
    assert np.array_equal(read_gray(path), scaled(img, 16))


# ------------------------------------------------------------------ JPEG EXIF orientation


def _with_orientation(jpeg: bytes, orientation: int) -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    payload = exif.tobytes()
    if not payload.startswith(b"Exif\x00\x00"):
        payload = b"Exif\x00\x00" + payload
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + segment + jpeg[2:]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_exif_orientation_is_honoured_like_pil(tmp_path: Path, orientation: int) -> None:
    from PIL import Image, ImageOps

    img = make_array((24, 40), np.uint8, seed=7)
    plain = _encode(tmp_path / "p.jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    stored = read_gray(plain)
    path = tmp_path / "o.jpg"
    path.write_bytes(_with_orientation(plain.read_bytes(), orientation))
    pil = Image.open(path)
    assert pil.getexif().get(0x0112) == orientation
    method = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}.get(orientation)  # fmt: skip
    upright = Image.fromarray(stored)
    expected = np.asarray(upright if method is None else upright.transpose(method))
    # PIL's own exif_transpose agrees on the geometry.
    assert np.asarray(ImageOps.exif_transpose(pil)).shape[:2] == expected.shape
    assert np.array_equal(read_gray(path), expected)
    big = load_prepared(path, 16, resize="squash", crop_border=False)
    assert big.shape == (16, 16)
