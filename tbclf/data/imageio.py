"""Decode chest X-rays of any common encoding into one uint8 grayscale channel.

Sources differ (8-bit RGB JPEGs, 12-bit values stored in 16-bit PNGs, RGBA exports, scanned
films as TIFF, PACS exports as DICOM), so every image is brought to the same representation
here, once, before caching and augmentation. Formats are told apart by content, never by the
file name: PNG, JPEG (EXIF orientation applied), TIFF (8/16 bit), BMP, WebP and DICOM.
"""

from __future__ import annotations

import stat
import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from tbclf.data import dicom
from tbclf.errors import ConfigError, DataError, TooManyPixels

DEFAULT_MAX_PIXELS = 200_000_000
RESIZE_MODES = ("pad", "squash")
FORMATS = ("png", "jpeg", "dicom", "tiff", "bmp", "webp")
# Bytes that sniff_format needs (the DICOM magic sits at bytes 128-131).
SNIFF_BYTES = 132
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8"
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_COLOR_TYPES = {0: "gray", 2: "RGB", 3: "palette", 4: "gray+alpha", 6: "RGBA"}
_EXIF_ORIENTATION = 0x0112
# JPEG start-of-frame markers carry the image size; C4/C8/CC are other segment types.
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_BIT_DEPTHS = (8, 10, 12, 14, 16)


def _unreadable(path: Path, why: str) -> DataError:
    return DataError(
        f"Image {path} is unreadable ({why}). Remove or replace the file, or pass "
        "--data.skip_bad_images true to skip unreadable images."
    )


def _jpeg_layout(data: bytes) -> tuple[int, int, int]:
    """(height, width, offset of the start-of-scan marker) from JPEG markers; -1 when unknown."""
    height = width = -1
    i = 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:  # stray bytes between segments: skip to the next marker, as libjpeg
            nxt = data.find(b"\xff", i)
            if nxt < 0:
                break
            i = nxt
            continue
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _SOF_MARKERS and i + 9 <= n:
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            return height, width, i
        i += 2 + length
    return height, width, -1


def sniff_format(head: bytes) -> str | None:
    """The format from the first SNIFF_BYTES bytes, or None when it is none tbclf reads."""
    if head.startswith(_PNG_SIGNATURE):
        return "png"
    if head.startswith(_JPEG_SIGNATURE):
        return "jpeg"
    # Before TIFF: a DICOM preamble may itself be a TIFF header (dual-personality files).
    if dicom.is_dicom(head):
        return "dicom"
    if head[:4] in _TIFF_SIGNATURES:
        return "tiff"
    if head.startswith(b"BM") and len(head) >= 26:
        return "bmp"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    return None


def _tiff_tags(data: bytes, wanted: set[int]) -> dict[int, int]:
    """First value of the wanted tags of a TIFF stream's first IFD (also EXIF's IFD0)."""
    if len(data) < 8 or data[:2] not in (b"II", b"MM"):
        return {}
    bo = "<" if data[:2] == b"II" else ">"
    big = struct.unpack(bo + "H", data[2:4])[0] == 43
    try:
        if big:
            (offset,) = struct.unpack(bo + "Q", data[8:16])
            (count,) = struct.unpack(bo + "Q", data[offset : offset + 8])
            start, size, head = offset + 8, 20, bo + "HHQ"
        else:
            (offset,) = struct.unpack(bo + "I", data[4:8])
            (count,) = struct.unpack(bo + "H", data[offset : offset + 2])
            start, size, head = offset + 2, 12, bo + "HHI"
        out: dict[int, int] = {}
        for i in range(min(count, 4096)):
            entry = data[start + i * size : start + (i + 1) * size]
            if len(entry) < size:
                break
            tag, kind, _ = struct.unpack(head, entry[: struct.calcsize(head)])
            if tag not in wanted:
                continue
            value = entry[size - (8 if big else 4) :]
            if kind == 3:  # SHORT
                out[tag] = struct.unpack(bo + "H", value[:2])[0]
            elif kind == 4:  # LONG
                out[tag] = struct.unpack(bo + "I", value[:4])[0]
            elif kind == 16 and big:  # LONG8
                out[tag] = struct.unpack(bo + "Q", value[:8])[0]
        return out
    except struct.error:
        return {}


def _webp_size(data: bytes) -> tuple[int, int]:
    kind = data[12:16]
    if kind == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        (w,) = struct.unpack("<H", data[26:28])
        (h,) = struct.unpack("<H", data[28:30])
        return h & 0x3FFF, w & 0x3FFF
    if kind == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
    if kind == b"VP8X" and len(data) >= 30:
        return 1 + int.from_bytes(data[27:30], "little"), 1 + int.from_bytes(data[24:27], "little")
    return -1, -1


def _bmp_size(data: bytes) -> tuple[int, int]:
    (header,) = struct.unpack("<I", data[14:18])
    if header == 12:
        w, h = struct.unpack("<HH", data[18:22])
        return h, w
    w, h = struct.unpack("<ii", data[18:26])
    return abs(h), w


def image_header(data: bytes, path: Path) -> tuple[str, int, int]:
    """(format, height, width) from the file's own header, without decoding pixels."""
    if len(data) == 0:
        raise _unreadable(path, "the file is empty")
    fmt = sniff_format(data[:SNIFF_BYTES])
    if fmt == "png":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise _unreadable(path, "the PNG header is truncated or corrupt")
        width, height = struct.unpack(">II", data[16:24])
        return "png", height, width
    if fmt == "jpeg":
        height, width, sos = _jpeg_layout(data)
        if height <= 0 or width <= 0 or sos < 0:
            raise _unreadable(path, "the JPEG header is truncated or corrupt")
        # Entropy-coded data stuffs 0xFF bytes, so an end-of-image marker after the scan start
        # is the reliable sign that the file is complete (libjpeg silently fills gray otherwise).
        if data.find(b"\xff\xd9", sos) < 0:
            raise _unreadable(path, "the JPEG data is truncated")
        return "jpeg", height, width
    if fmt == "dicom":
        info = dicom.read_info(path, data)
        return "dicom", info.rows, info.columns
    if fmt == "tiff":
        tags = _tiff_tags(data, {256, 257})
        height, width = tags.get(257, -1), tags.get(256, -1)
    elif fmt == "bmp":
        height, width = _bmp_size(data)
    elif fmt == "webp":
        height, width = _webp_size(data)
    else:
        raise _unreadable(path, "not a PNG, JPEG, TIFF, BMP, WebP or DICOM file")
    if height <= 0 or width <= 0:
        raise _unreadable(path, f"the {fmt.upper()} header is truncated or corrupt")
    return fmt, height, width


def _png_chunks(data: bytes):
    """(type, body) of the PNG chunks before the pixel data."""
    i = len(_PNG_SIGNATURE)
    while i + 8 <= len(data):
        (length,) = struct.unpack(">I", data[i : i + 4])
        kind = data[i + 4 : i + 8]
        if kind in (b"IDAT", b"IEND"):
            return
        yield kind, data[i + 8 : i + 8 + length]
        i += 12 + length


def png_significant_bits(data: bytes) -> int | None:
    """The colour channels' significant bits from a PNG's sBIT chunk (alpha excluded)."""
    if len(data) < 26:
        return None
    color = data[25]
    for kind, body in _png_chunks(data):
        if kind == b"sBIT" and body:
            planes = {0: 1, 2: 3, 3: 3, 4: 1, 6: 3}.get(color, len(body))
            bits = max(body[:planes])
            return int(bits) if 1 <= bits <= 16 else None
    return None


def jpeg_orientation(data: bytes) -> int:
    """EXIF orientation (1-8) of a JPEG from its APP1 segment; 1 when absent."""
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xDA:
            break
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker == 0xE1 and data[i + 4 : i + 10] == b"Exif\x00\x00":
            tiff = data[i + 10 : i + 2 + length]
            value = _tiff_tags(tiff, {_EXIF_ORIENTATION}).get(_EXIF_ORIENTATION, 1)
            return value if 1 <= value <= 8 else 1
        i += 2 + length
    return 1


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels upright as EXIF says (same transforms as PIL's exif_transpose)."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
        8: lambda a: np.rot90(a, 1),
    }
    op = ops.get(orientation)
    return img if op is None else np.ascontiguousarray(op(img))


def _check_pixels(path: Path, height: int, width: int, max_pixels: int) -> None:
    TooManyPixels.check(path, height, width, max_pixels)


def effective_bit_depth(max_value: int) -> int:
    """Smallest of 8/10/12/14/16 bits that holds max_value (12-bit data lives in 16-bit PNGs)."""
    for bits in _BIT_DEPTHS:
        if max_value < (1 << bits):
            return bits
    return 16


# The brightest pixels that may lie above the bit depth an image is scaled by: a hot pixel,
# burned-in text or a marker must not darken the whole image (one pixel at 4096 in a 12-bit
# image would otherwise be scaled as 14-bit: a quarter of its brightness).
OUTLIER_SHARE = 0.001


def robust_bit_depth(img: np.ndarray) -> int:
    """Smallest of 8/10/12/14/16 bits that holds all but the brightest OUTLIER_SHARE of the
    pixels (those few are clipped to white), so a handful of outliers cannot change the
    scale of the rest, as a viewer's window would not."""
    allowed = int(img.size * OUTLIER_SHARE)
    for bits in _BIT_DEPTHS[:-1]:
        if np.count_nonzero(img >= (1 << bits)) <= allowed:
            return bits
    return 16


def _to_uint8(img: np.ndarray, path: Path, significant_bits: int | None = None) -> np.ndarray:
    """Scale by the file's declared bit depth (PNG sBIT) when its values fit it, else by the
    depth nearly all pixels need (:func:`robust_bit_depth`), so 12-bit images keep their
    contrast and a few outlier pixels do not change it."""
    if img.dtype == np.uint8:
        return img
    if img.dtype != np.uint16:
        raise _unreadable(path, f"unsupported pixel type {img.dtype}")
    peak = int(img.max()) if img.size else 0
    sbit = significant_bits
    if sbit is not None and 8 <= sbit <= 16 and peak < (1 << sbit):
        bits = sbit
    else:  # no sBIT, or values scaled to the full range as the PNG spec asks
        bits = robust_bit_depth(img)
    top = (1 << bits) - 1
    lut = np.round(np.arange(top + 1, dtype=np.float64) * (255.0 / top)).astype(np.uint8)
    return lut[np.minimum(img, top) if peak > top else img]


def _to_gray(img: np.ndarray) -> np.ndarray:
    """One channel: drop alpha; keep one plane when channels are equal (exact), else luminance."""
    if img.ndim == 2:
        return img
    channels = img.shape[2]
    if channels == 1:
        return img[:, :, 0]
    if channels == 2:  # gray + alpha
        return np.ascontiguousarray(img[:, :, 0])
    bgr = img[:, :, :3]
    b, g, r = bgr[:, :, 0], bgr[:, :, 1], bgr[:, :, 2]
    if np.array_equal(b, g) and np.array_equal(b, r):
        return np.ascontiguousarray(b)
    return cv2.cvtColor(np.ascontiguousarray(bgr), cv2.COLOR_BGR2GRAY)


def _reduced_flag(height: int, width: int, min_side: int | None) -> int | None:
    """The largest IMREAD_REDUCED_GRAYSCALE factor that still leaves 2x the needed resolution."""
    if not min_side:
        return None
    for factor, flag in (
        (8, cv2.IMREAD_REDUCED_GRAYSCALE_8),
        (4, cv2.IMREAD_REDUCED_GRAYSCALE_4),
        (2, cv2.IMREAD_REDUCED_GRAYSCALE_2),
    ):
        if min(height, width) // factor >= 2 * min_side:
            return flag
    return None


def _imdecode(buf: np.ndarray, flags: int, path: Path, fmt: str) -> np.ndarray | None:
    try:
        return cv2.imdecode(buf, flags)
    except cv2.error as exc:  # OpenCV's own limits (CV_IO_MAX_IMAGE_PIXELS) raise, not return None
        raise _unreadable(path, f"OpenCV refused the {fmt.upper()} data: {exc.err}") from None


def _read_file(path: Path) -> bytes:
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO or device would block read() forever
            raise _unreadable(path, "not a regular file")
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"Image {path} does not exist. Check data.root or the CSV.") from None
    except OSError as exc:
        raise _unreadable(path, f"cannot read the file: {exc.strerror or exc}") from None


def decode_bytes(
    data: bytes, name: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None
) -> np.ndarray:
    """Decode an encoded image held in memory (an upload, a file's bytes) to uint8 gray HxW.

    `name` only labels errors. The header is checked against max_pixels before any pixel is
    decoded; `min_side` lets big JPEGs decode at a reduced scale that still leaves 2x it.
    """
    path = Path(name)
    if sniff_format(data[:SNIFF_BYTES]) == "dicom":
        return dicom.decode(data, path, max_pixels)
    fmt, height, width = image_header(data, path)
    _check_pixels(path, height, width, max_pixels)
    buf = np.frombuffer(data, dtype=np.uint8)
    img = None
    flag = _reduced_flag(height, width, min_side) if fmt == "jpeg" else None
    if flag is not None:
        img = _imdecode(buf, flag | cv2.IMREAD_IGNORE_ORIENTATION, path, fmt)
    if img is None:
        img = _imdecode(buf, cv2.IMREAD_UNCHANGED, path, fmt)
    if img is None or img.size == 0:
        raise _unreadable(path, f"OpenCV could not decode the {fmt.upper()} data")
    sbit = png_significant_bits(data) if fmt == "png" else None
    gray = _to_uint8(_to_gray(img), path, sbit)
    if fmt == "jpeg":
        gray = apply_orientation(gray, jpeg_orientation(data))
    return gray


def _decode(path: Path, max_pixels: int, min_side: int | None = None) -> np.ndarray:
    path = Path(path)
    return decode_bytes(_read_file(path), path, max_pixels, min_side)


def read_gray(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read any supported image (PNG, JPEG, TIFF, BMP, WebP, DICOM) as uint8 HxW.

    Bytes are decoded from memory, so non-ASCII paths work; the header is checked against
    max_pixels before any pixel is decoded.
    """
    return _decode(Path(path), max_pixels)


def border_box(
    img: np.ndarray, threshold: int = 10, min_keep: float = 0.5
) -> tuple[int, int, int, int]:
    """(top, bottom, left, right): the part of `img` that :func:`crop_black_border` keeps.

    A row/column belongs to a band when at most 1% of its pixels exceed threshold. Bands are
    only removed when at least min_keep of each side remains, so a dark image is never
    cropped to nothing. Saliency maps use it to put the model's view back in the image frame.
    """
    h, w = img.shape[:2]
    if img.ndim != 2 or img.size == 0:
        return 0, h, 0, w
    bright = img > threshold
    rows_ok = np.count_nonzero(bright, axis=1) > 0.01 * w
    cols_ok = np.count_nonzero(bright, axis=0) > 0.01 * h
    if not rows_ok.any() or not cols_ok.any():
        return 0, h, 0, w
    top, bottom = int(np.argmax(rows_ok)), h - int(np.argmax(rows_ok[::-1]))
    left, right = int(np.argmax(cols_ok)), w - int(np.argmax(cols_ok[::-1]))
    if bottom - top < min_keep * h:
        top, bottom = 0, h
    if right - left < min_keep * w:
        left, right = 0, w
    return top, bottom, left, right


def crop_black_border(img: np.ndarray, threshold: int = 10, min_keep: float = 0.5) -> np.ndarray:
    """Remove near-black bands along the edges (Montgomery scans carry one at the bottom).

    See :func:`border_box` for the rule; images without bands come back unchanged (same object).
    """
    if img.ndim != 2 or img.size == 0:
        return img
    h, w = img.shape
    top, bottom, left, right = border_box(img, threshold, min_keep)
    if (top, bottom, left, right) == (0, h, 0, w):
        return img
    return img[top:bottom, left:right]


def _resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    if img.shape == (height, width):
        return img
    shrinking = height <= img.shape[0] and width <= img.shape[1]
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(img, (width, height), interpolation=interp)


def square_placement(
    height: int, width: int, size: int, mode: str = "pad"
) -> tuple[int, int, int, int]:
    """(top, left, rows, cols): where a height x width image lands in the size x size square.

    "pad" keeps the aspect ratio and centres the image between zero bars; "squash" fills it.
    """
    if mode not in RESIZE_MODES:
        raise ConfigError(f"data.resize={mode!r} is not one of {RESIZE_MODES}.")
    if size < 1:
        raise ConfigError(f"data.image_size={size} must be a positive integer.")
    if mode == "squash":
        return 0, 0, size, size
    scale = size / max(height, width)
    nh = min(size, max(1, round(height * scale)))
    nw = min(size, max(1, round(width * scale)))
    return (size - nh) // 2, (size - nw) // 2, nh, nw


def fit_to_square(img: np.ndarray, size: int, mode: str = "pad") -> np.ndarray:
    """Make a size x size image: "pad" keeps the aspect ratio (zero bars, centred), "squash"
    stretches. Padding avoids distorting anatomy; squashing uses every pixel for the image."""
    top, left, nh, nw = square_placement(img.shape[0], img.shape[1], size, mode)
    resized = _resize(img, nh, nw)
    if mode == "squash":
        return resized
    out = np.zeros((size, size), dtype=img.dtype)
    out[top : top + nh, left : left + nw] = resized
    return out


@dataclass(frozen=True)
class SquareGeometry:
    """Where the model's size x size square came from in the image as stored.

    ``height`` x ``width`` is the stored image (its header; a JPEG decoded at reduced scale is
    mapped back to full resolution). ``crop`` = (top, bottom, left, right) is the part kept by
    the black-border crop, in those pixels; ``placed`` = (top, left, rows, cols) is where that
    part lands in the square (the rest is padding). Pixel centres sit at integer + 0.5, as in
    OpenCV's resize, so :meth:`to_image` is the exact inverse of the resize.
    """

    height: int
    width: int
    crop: tuple[float, float, float, float]
    size: int
    placed: tuple[int, int, int, int]

    def image_to_square(self) -> np.ndarray:
        """2x3 affine: image pixel (x, y) -> square pixel coordinates."""
        top, bottom, left, right = self.crop
        ptop, pleft, nh, nw = self.placed
        sx, sy = nw / (right - left), nh / (bottom - top)
        return np.array(
            [[sx, 0.0, pleft + (0.5 - left) * sx - 0.5], [0.0, sy, ptop + (0.5 - top) * sy - 0.5]]
        )

    def to_image(self, square_map: np.ndarray) -> np.ndarray:
        """A (size, size) float map in the image frame (height, width): resize undone, padding
        dropped, and zero where the crop removed pixels (the model never saw them)."""
        src = np.asarray(square_map, dtype=np.float32)
        if src.shape != (self.size, self.size):
            raise ValueError(f"map is {src.shape}, expected ({self.size}, {self.size})")
        # Sample the image part only, edges replicated: the padding never bleeds back in.
        ptop, pleft, nh, nw = self.placed
        affine = self.image_to_square() - np.array([[0.0, 0.0, pleft], [0.0, 0.0, ptop]])
        out = cv2.warpAffine(
            np.ascontiguousarray(src[ptop : ptop + nh, pleft : pleft + nw]),
            affine,
            (self.width, self.height),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
        return out * self.visible()

    def visible(self) -> np.ndarray:
        """(height, width) float32 mask of the pixels the model saw (centre inside the crop)."""
        top, bottom, left, right = self.crop
        ys = np.arange(self.height) + 0.5
        xs = np.arange(self.width) + 0.5
        rows = (ys > top) & (ys < bottom)
        cols = (xs > left) & (xs < right)
        return (rows[:, None] & cols[None, :]).astype(np.float32)

    def content(self) -> np.ndarray:
        """(size, size) float32 mask of the square's image pixels (1) versus padding (0)."""
        ptop, pleft, nh, nw = self.placed
        out = np.zeros((self.size, self.size), np.float32)
        out[ptop : ptop + nh, pleft : pleft + nw] = 1.0
        return out


def load_prepared_geometry(
    path: Path,
    image_size: int,
    resize: str = "pad",
    crop_border: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[np.ndarray, SquareGeometry]:
    """:func:`load_prepared` and the :class:`SquareGeometry` that maps its square back."""
    if resize not in RESIZE_MODES:
        raise ConfigError(f"data.resize={resize!r} is not one of {RESIZE_MODES}.")
    if image_size < 1:
        raise ConfigError(f"data.image_size={image_size} must be a positive integer.")
    path = Path(path)
    data = _read_file(path)
    _, height, width = image_header(data, path)
    img = decode_bytes(data, path, max_pixels, min_side=image_size)
    rows, cols = img.shape
    top, bottom, left, right = border_box(img) if crop_border else (0, rows, 0, cols)
    kept = img[top:bottom, left:right]
    placed = square_placement(kept.shape[0], kept.shape[1], image_size, resize)
    square = np.ascontiguousarray(fit_to_square(kept, image_size, resize))
    # A JPEG decoded at 1/2..1/8 scale: crop edges back in the stored image's pixels.
    fy, fx = height / rows, width / cols
    crop = (top * fy, bottom * fy, left * fx, right * fx)
    return square, SquareGeometry(height, width, crop, image_size, placed)


def load_prepared(
    path: Path,
    image_size: int,
    resize: str = "pad",
    crop_border: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode, crop borders and fit to image_size: the uint8 square that the cache stores.

    Big JPEGs are decoded at 1/2, 1/4 or 1/8 scale by libjpeg when that still leaves twice the
    target resolution, which saves most of the decode time on multi-megapixel scans.
    """
    return load_prepared_geometry(path, image_size, resize, crop_border, max_pixels)[0]


def file_info(path: Path, head_bytes: int = 1 << 16) -> dict[str, object]:
    """Format, stored size, bit depth and colour layout from the header (no pixel decode).

    For eda's format table. bit_depth is the significant bits where the file says (PNG sBIT,
    DICOM BitsStored); unknown or unreadable headers give format "unknown".
    """
    path = Path(path)
    info: dict[str, object] = {
        "format": "unknown", "height": None, "width": None, "bit_depth": None, "color": None,
    }  # fmt: skip
    try:
        with open(path, "rb") as f:
            data = f.read(head_bytes)
    except OSError:
        return info
    fmt = sniff_format(data[:SNIFF_BYTES])
    if fmt is None:
        return info
    if fmt == "dicom":
        try:
            meta = dicom.read_info(path)
        except DataError:
            return {**info, "format": "dicom"}
        return {
            **info,
            "format": "dicom",
            "height": meta.rows or None,
            "width": meta.columns or None,
            "bit_depth": meta.bits_stored or None,
            "color": meta.photometric or None,
        }
    try:
        _, height, width = image_header(data, path)
    except DataError:
        if fmt != "jpeg":  # a JPEG header may continue past head_bytes
            return {**info, "format": fmt}
        height = width = None
    info.update(format=fmt, height=height, width=width)
    if fmt == "png" and len(data) >= 26:
        depth = int(data[24])
        info["bit_depth"] = png_significant_bits(data) if depth == 16 else depth
        info["bit_depth"] = info["bit_depth"] or depth
        info["color"] = _PNG_COLOR_TYPES.get(data[25], f"type{data[25]}")
    elif fmt == "jpeg":
        sof = _jpeg_sof(data)
        if sof is not None:
            precision, height, width, comps = sof
            info.update(height=height, width=width, bit_depth=precision)
            info["color"] = {1: "gray", 3: "RGB/YCbCr", 4: "CMYK"}.get(comps, f"{comps}ch")
    elif fmt == "tiff":
        tags = _tiff_tags(data, {258, 277})
        info["bit_depth"] = tags.get(258)
        samples = tags.get(277, 1)
        info["color"] = {1: "gray", 2: "gray+alpha", 3: "RGB", 4: "RGBA"}.get(samples)
    elif fmt == "bmp" and len(data) >= 30:
        (header,) = struct.unpack("<I", data[14:18])
        (bits,) = struct.unpack("<H", data[24:26] if header == 12 else data[28:30])
        info["bit_depth"] = 8
        info["color"] = {1: "palette", 4: "palette", 8: "palette/gray", 24: "RGB", 32: "RGBA"}.get(
            bits, f"{bits}bpp"
        )
    elif fmt == "webp":
        info.update(bit_depth=8, color="RGB")
    return info


def _jpeg_sof(data: bytes) -> tuple[int, int, int, int] | None:
    """(precision, height, width, components) from the JPEG start-of-frame marker."""
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _SOF_MARKERS and i + 10 <= len(data):
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return int(data[i + 4]), height, width, int(data[i + 9])
        if marker == 0xDA:
            return None
        i += 2 + length
    return None
