"""DICOM chest X-rays as a radiologist's viewer shows them, reduced to uint8 gray.

A PACS export is a folder of DICOM files, often without an extension. They are recognised by
the ``DICM`` magic at byte 128, parsed with pydicom (headers first, so refusals and the pixel
guard cost no decoding) and decoded through pydicom's pixel decoders (RLE natively, JPEG and
JPEG 2000 through the pylibjpeg plugins).

Privacy: nothing here returns a patient's name, birth date or other identifying tag. The
patient ID is only ever handed out as a salted hash (for grouping), never in clear.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tbclf.errors import DataError, TooManyPixels

DICOM_MAGIC = b"DICM"
_MAGIC_OFFSET = 128
LATERAL_VIEWS = ("LL", "RL", "LATERAL", "LLD", "RLD")
_SUPPORTED_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2")
# pydicom decodes YBR to RGB itself; palette colour goes through its colour LUT.
_COLOR_PHOTOMETRIC = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")
_DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"  # DICOMDIR: an index, not an image
_PATIENT_SALT = b"tbclf-patient-v1:"
# Projection radiography (CR, DX, RG; "DR" from some vendors); "OT" (other) and a missing tag
# say nothing, so those images are kept. Every other modality (CT, MR, US, NM, PT, MG, ...)
# is not what a chest X-ray model reads.
RADIOGRAPH_MODALITIES = ("CR", "DX", "RG", "DR", "OT", "")
# BodyPartExamined values (free text in practice) that name the chest, in a few languages.
_CHEST_WORDS = ("CHEST", "THORAX", "TORAX", "THORAC", "LUNG", "POITRINE", "BRUST", "PECHO")
# Which pip packages add a decoder, by transfer syntax family (pydicom's plugin names).
_LIBJPEG = "pip install pylibjpeg pylibjpeg-libjpeg"
_OPENJPEG = "pip install pylibjpeg pylibjpeg-openjpeg"
_GDCM = "pip install python-gdcm"


def is_dicom(head: bytes) -> bool:
    """True when the bytes carry the DICOM Part 10 magic (whatever the file is called)."""
    return len(head) >= _MAGIC_OFFSET + 4 and head[_MAGIC_OFFSET : _MAGIC_OFFSET + 4] == DICOM_MAGIC


@dataclass(frozen=True)
class DicomInfo:
    """What tbclf keeps from a DICOM header: no identifying tag, the patient only hashed."""

    rows: int
    columns: int
    frames: int
    photometric: str
    bits_stored: int
    view: str
    patient_hash: str
    sop_class: str
    sop_class_name: str
    transfer_syntax: str
    has_pixels: bool
    modality: str = ""
    body_part: str = ""

    @property
    def is_directory(self) -> bool:
        return self.sop_class == _DIRECTORY_SOP_CLASS

    @property
    def is_lateral(self) -> bool:
        return self.view in LATERAL_VIEWS


def not_a_chest_radiograph(info: DicomInfo) -> str | None:
    """Why a DICOM is not a chest radiograph by its own header (Modality, BodyPartExamined
    when present), or None."""
    if info.modality not in RADIOGRAPH_MODALITIES:
        return f"Modality {info.modality} is not a radiograph"
    if info.body_part and not any(word in info.body_part for word in _CHEST_WORDS):
        return f"BodyPartExamined {info.body_part} is not the chest"
    return None


def left_out_reason(
    info: DicomInfo, keep_lateral: bool = False, keep_non_chest: bool = False
) -> str | None:
    """Why a chest model should not score this DICOM (data.keep_lateral / data.keep_non_chest
    opt in), or None."""
    if info.is_directory:
        return "a DICOMDIR index, not an image"
    if not keep_non_chest:
        reason = not_a_chest_radiograph(info)
        if reason:
            return f"{reason} (data.keep_non_chest=true keeps it)"
    if not keep_lateral and info.is_lateral:
        return f"lateral view (ViewPosition {info.view}; data.keep_lateral=true keeps it)"
    return None


def _bad(path: Path, why: str) -> DataError:
    return DataError(
        f"DICOM file {path} cannot be used ({why}). Remove it from the data folder, or pass "
        "--data.skip_bad_images true to skip unreadable images."
    )


def _parse(data: bytes, path: Path, stop_before_pixels: bool):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=stop_before_pixels)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OverflowError) as exc:
        raise _bad(path, f"the DICOM header is corrupt or truncated: {exc}") from None
    except Exception as exc:  # pydicom raises many types on hostile input; never crash on one
        raise _bad(path, f"pydicom could not parse it: {type(exc).__name__}: {exc}") from None


def hash_patient_id(patient_id: str) -> str:
    """A salted hash of the patient ID: enough to group images, never the ID itself."""
    text = patient_id.strip()
    if not text:
        return ""
    return hashlib.sha256(_PATIENT_SALT + text.encode("utf-8", "replace")).hexdigest()[:20]


def _int(ds, keyword: str, default: int) -> int:
    value = ds.get(keyword, None)
    try:
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _info(ds) -> DicomInfo:
    meta = getattr(ds, "file_meta", None)
    syntax = str(getattr(meta, "TransferSyntaxUID", "") or "") if meta is not None else ""
    sop = str(ds.get("SOPClassUID", "") or getattr(meta, "MediaStorageSOPClassUID", "") or "")
    try:
        from pydicom.uid import UID

        sop_name = UID(sop).name if sop else ""
    except Exception:
        sop_name = sop
    has_pixels = any(
        tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
    )  # fmt: skip
    return DicomInfo(
        rows=_int(ds, "Rows", 0),
        columns=_int(ds, "Columns", 0),
        frames=_int(ds, "NumberOfFrames", 1),
        photometric=str(ds.get("PhotometricInterpretation", "") or "").strip().upper(),
        bits_stored=_int(ds, "BitsStored", 0),
        view=str(ds.get("ViewPosition", "") or "").strip().upper(),
        patient_hash=hash_patient_id(str(ds.get("PatientID", "") or "")),
        sop_class=sop,
        sop_class_name=sop_name,
        transfer_syntax=syntax,
        has_pixels=has_pixels,
        modality=str(ds.get("Modality", "") or "").strip().upper(),
        body_part=str(ds.get("BodyPartExamined", "") or "").strip().upper(),
    )


def read_info(path: Path, data: bytes | None = None) -> DicomInfo:
    """The header facts of one DICOM file, read without its pixel data."""
    path = Path(path)
    if data is None:
        try:
            with open(path, "rb") as f:
                ds = _parse_file(f, path)
        except OSError as exc:
            raise _bad(path, f"cannot read the file: {exc.strerror or exc}") from None
    else:
        ds = _parse(data, path, stop_before_pixels=True)
    try:
        return _info(ds)
    except Exception as exc:  # values are converted lazily, on first access
        raise _bad(path, f"an invalid header value: {type(exc).__name__}: {exc}") from None


def _parse_file(f, path: Path):
    import pydicom

    try:
        return pydicom.dcmread(f, stop_before_pixels=True)
    except Exception as exc:
        raise _bad(path, f"the DICOM header is corrupt or truncated: {exc}") from None


def _pip_hint(syntax: str) -> str:
    from pydicom import uid

    if syntax in (uid.JPEG2000Lossless, uid.JPEG2000, uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL,
                  uid.HTJ2K):  # fmt: skip
        return _OPENJPEG
    if syntax in uid.JPEGTransferSyntaxes or syntax in uid.JPEGLSTransferSyntaxes:
        return _LIBJPEG
    return _GDCM


def _other_decoder(syntax: str) -> str:
    """Advice when pylibjpeg fails on a JPEG: GDCM reads variants it does not (12-bit
    extended, some lossless and old encoder streams)."""
    from pydicom import uid

    if syntax in uid.JPEGTransferSyntaxes:
        return (
            f"; if the file is intact, `{_GDCM}` adds a decoder for the JPEG variants "
            "pylibjpeg cannot read (12-bit extended, some lossless streams)"
        )
    return ""


def _syntax_name(syntax: str) -> str:
    from pydicom.uid import UID

    name = UID(syntax).name if syntax else "missing"
    return name if name == syntax else f"{name} ({syntax})"


def check_decodable(info: DicomInfo, path: Path, max_pixels: int) -> None:
    """Refuse, from the header alone, what tbclf does not train on or cannot decode."""
    if info.is_directory:
        raise _bad(path, "it is a DICOMDIR index, not an image")
    if not info.has_pixels:
        kind = info.sop_class_name or "unknown SOP class"
        raise _bad(path, f"it holds no pixel data: {kind} (a report or document, not an X-ray)")
    if info.frames > 1:
        raise _bad(path, f"it is a multi-frame image ({info.frames} frames); export single frames")
    if info.photometric not in _SUPPORTED_PHOTOMETRIC + _COLOR_PHOTOMETRIC:
        raise _bad(
            path,
            f"photometric interpretation {info.photometric or 'missing'!r} cannot be converted "
            "to grayscale (MONOCHROME1/2, RGB, YBR and PALETTE COLOR can)",
        )
    if info.rows <= 0 or info.columns <= 0:
        raise _bad(path, "the header gives no Rows/Columns")
    TooManyPixels.check(path, info.rows, info.columns, max_pixels)
    _check_decoder(info.transfer_syntax, path)


def _check_decoder(syntax: str, path: Path) -> None:
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(syntax)
    except (NotImplementedError, ValueError):
        decoder = None
    if decoder is not None and decoder.is_available:
        return
    raise DataError(
        f"DICOM file {path} uses transfer syntax {_syntax_name(syntax)}, which no installed "
        f"decoder reads. Add one with `{_pip_hint(syntax)}`, or convert the file to an "
        "uncompressed transfer syntax (e.g. `gdcmconv --raw`); --data.skip_bad_images true skips "
        "such files."
    )


def _stored_range(ds) -> tuple[float, float]:
    """The range the stored values can take, from BitsStored and PixelRepresentation."""
    bits = _int(ds, "BitsStored", _int(ds, "BitsAllocated", 16))
    if _int(ds, "PixelRepresentation", 0) == 1:
        return -float(1 << (bits - 1)), float((1 << (bits - 1)) - 1)
    return 0.0, float((1 << bits) - 1)


def _lut_range(item) -> tuple[float, float]:
    descriptor = item.get("LUTDescriptor", None)
    bits = int(descriptor[2]) if descriptor is not None and len(descriptor) >= 3 else 16
    return 0.0, float((1 << bits) - 1)


def _linear(lo: float, hi: float, ds) -> tuple[float, float]:
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    a, b = lo * slope + intercept, hi * slope + intercept
    return (a, b) if a <= b else (b, a)


def _display_values(arr: np.ndarray, ds) -> tuple[np.ndarray, float, float]:
    """Modality LUT, then VOI LUT or window: the values a viewer shows, and their full range."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    lo, hi = _stored_range(ds)
    if "ModalityLUTSequence" in ds:
        lo, hi = _lut_range(ds.ModalityLUTSequence[0])
    else:
        lo, hi = _linear(lo, hi, ds)
    values = apply_modality_lut(arr, ds)
    if "VOILUTSequence" in ds:
        lo, hi = _lut_range(ds.VOILUTSequence[0])
        values = apply_voi_lut(values, ds, prefer_lut=True)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        lo, hi = _window_range(ds)
        values = apply_voi_lut(values, ds, prefer_lut=False)
    return values, lo, hi


def _window_range(ds) -> tuple[float, float]:
    """The output range pydicom's apply_windowing maps a window onto (PS3.3 C.11.2.1.2)."""
    if "ModalityLUTSequence" in ds:
        lo, hi = _lut_range(ds.ModalityLUTSequence[0])
    else:
        lo, hi = _stored_range(ds)
    if ds.get("RescaleSlope", None) is not None and ds.get("RescaleIntercept", None) is not None:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        lo, hi = lo * slope + intercept, hi * slope + intercept
    return (lo, hi) if lo <= hi else (hi, lo)


def _to_uint8(values: np.ndarray, lo: float, hi: float, invert: bool) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if hi <= lo:
        out = np.zeros(values.shape, dtype=np.float64)
    elif lo == 0.0:  # same arithmetic as the PNG path, so equal values give equal pixels
        out = np.clip(values, 0.0, hi) * (255.0 / hi)
    else:
        out = (np.clip(values, lo, hi) - lo) * (255.0 / (hi - lo))
    if invert:
        out = 255.0 - out
    return np.round(out).astype(np.uint8)


def _color_to_gray(rgb: np.ndarray, bits: int) -> np.ndarray:
    import cv2

    if rgb.dtype != np.uint8:
        top = float((1 << bits) - 1)
        rgb = np.round(np.clip(rgb.astype(np.float64), 0, top) * (255.0 / top)).astype(np.uint8)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if np.array_equal(r, g) and np.array_equal(r, b):
        return np.ascontiguousarray(r)
    return cv2.cvtColor(np.ascontiguousarray(rgb[..., :3]), cv2.COLOR_RGB2GRAY)


def decode(data: bytes, path: Path, max_pixels: int) -> np.ndarray:
    """uint8 gray HxW as a viewer displays it: modality LUT, VOI LUT or window, scaled by
    BitsStored (or the LUT's output range), MONOCHROME1 inverted so bone is bright."""
    path = Path(path)
    ds = _parse(data, path, stop_before_pixels=False)  # parsing copies bytes, decodes nothing
    try:
        return _decode_dataset(ds, path, max_pixels)
    except DataError:
        raise
    except Exception as exc:  # pydicom converts values lazily: a bad tag surfaces here
        raise _bad(path, f"an invalid header value: {type(exc).__name__}: {exc}") from None


def _decode_dataset(ds, path: Path, max_pixels: int) -> np.ndarray:
    info = _info(ds)
    check_decodable(info, path, max_pixels)
    try:
        arr = ds.pixel_array
    except Exception as exc:  # corrupt or truncated compressed streams
        raise _bad(
            path,
            f"its {_syntax_name(info.transfer_syntax)} pixel data does not decode: {exc}"
            + _other_decoder(info.transfer_syntax),
        ) from None
    if arr.shape[:2] != (info.rows, info.columns):
        shape = f"{info.rows}x{info.columns}"
        raise _bad(path, f"decoded pixels are {arr.shape}, the header says {shape}")
    if info.photometric in _COLOR_PHOTOMETRIC:
        if info.photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            arr = apply_color_lut(arr, ds)
            return _color_to_gray(arr, 16 if arr.dtype != np.uint8 else 8)
        return _color_to_gray(arr, info.bits_stored or 8)
    if arr.ndim != 2:
        raise _bad(path, f"a grayscale image with pixel array shape {arr.shape}")
    values, lo, hi = _display_values(arr, ds)
    return _to_uint8(values, lo, hi, invert=info.photometric == "MONOCHROME1")
