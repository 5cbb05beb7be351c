"""Make small DICOM files with pydicom for the tests (a plain module, like imaging.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
PATIENT_NAME = "DOE^JANE"
PATIENT_BIRTH = "19700101"


def _base(sop_class: str, patient_id: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName = PATIENT_NAME
    ds.PatientBirthDate = PATIENT_BIRTH
    ds.PatientID = patient_id
    ds.Modality = "DX"
    return ds


def make_dicom_dataset(
    pixels: np.ndarray,
    bits_stored: int | None = None,
    photometric: str = "MONOCHROME2",
    view: str | None = "PA",
    patient_id: str = "P0001",
    signed: bool = False,
    syntax: str | None = None,
    **tags: Any,
) -> Dataset:
    """A single-frame DX image holding exactly `pixels` (uint8 -> 8 bits allocated, else 16)."""
    pixels = np.asarray(pixels)
    ds = _base(DX_SOP_CLASS, patient_id)
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 1 if pixels.ndim == 2 else pixels.shape[2]
    ds.PhotometricInterpretation = photometric
    if ds.SamplesPerPixel > 1:
        ds.PlanarConfiguration = 0
    allocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated = allocated
    ds.BitsStored = bits_stored or allocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    dtype = {(8, False): "u1", (16, False): "<u2", (16, True): "<i2"}[(allocated, signed)]
    ds.PixelData = pixels.astype(dtype).tobytes()
    if view is not None:
        ds.ViewPosition = view
    for key, value in tags.items():
        setattr(ds, key, value)
    if syntax is not None and syntax != ExplicitVRLittleEndian:
        ds.compress(syntax)
    return ds


def save(ds: Dataset, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_dicom(path: Path, pixels: np.ndarray, **kwargs: Any) -> Path:
    return save(make_dicom_dataset(pixels, **kwargs), path)


def write_structured_report(path: Path) -> Path:
    ds = _base(BASIC_TEXT_SR, "P0001")
    ds.Modality = "SR"
    ds.ValueType = "CONTAINER"
    return save(ds, path)
