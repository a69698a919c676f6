"""Synthetic DICOM instances with fake patient data, for samples, tests and benchmarks.

Every UID is under the 2.25 root (PS3.5 B.2), derived from a seed text, so
the same call produces the same UIDs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
IMPLEMENTATION_UID = "2.25.305828488182831875890203105390285383139"


def uid_for(seed: str) -> UID:
    """Return a stable 2.25 UID derived from `seed`."""
    number = int.from_bytes(hashlib.sha256(seed.encode("utf-8")).digest()[:16], "big")
    return UID(f"2.25.{number}")


def make_image(
    *,
    study: str = "study-1",
    series: str = "series-1",
    number: int = 1,
    modality: str = "CT",
    sop_class: str | None = None,
    patient_name: str = "DOE^JANE",
    patient_id: str = "FAKE0001",
    rows: int = 64,
    columns: int = 64,
    transfer_syntax: str = str(ExplicitVRLittleEndian),
    extra: dict[str, Any] | None = None,
) -> Dataset:
    """Return a small image instance with 16-bit pixel data and fake patient data.

    `study` and `series` are seed texts for the UIDs; `extra` sets more
    attributes by keyword after the defaults.
    """
    if sop_class is None:
        sop_class = MR_IMAGE_STORAGE if modality == "MR" else CT_IMAGE_STORAGE
    instance_uid = uid_for(f"{study}/{series}/{number}")
    dataset = Dataset()
    dataset.SpecificCharacterSet = "ISO_IR 100"
    dataset.SOPClassUID = sop_class
    dataset.SOPInstanceUID = instance_uid
    dataset.StudyDate = "20260101"
    dataset.StudyTime = "120000"
    dataset.AccessionNumber = "ACC" + str(uid_for(study))[-6:]
    dataset.Modality = modality
    dataset.Manufacturer = "CAPACITOR SYNTHETIC"
    dataset.InstitutionName = "Example Hospital"
    dataset.ReferringPhysicianName = "SMITH^JOHN"
    dataset.StudyDescription = f"Synthetic {modality} study"
    dataset.SeriesDescription = f"Synthetic {modality} series"
    dataset.PatientName = patient_name
    dataset.PatientID = patient_id
    dataset.PatientBirthDate = "19700101"
    dataset.PatientSex = "O"
    dataset.StudyInstanceUID = uid_for(study)
    dataset.SeriesInstanceUID = uid_for(f"{study}/{series}")
    dataset.StudyID = "1"
    dataset.SeriesNumber = 1
    dataset.InstanceNumber = number
    dataset.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.Rows = rows
    dataset.Columns = columns
    dataset.BitsAllocated = 16
    dataset.BitsStored = 12
    dataset.HighBit = 11
    dataset.PixelRepresentation = 0
    gradient = (np.arange(rows * columns, dtype=np.uint32) * 7 + number * 13) % 4096
    dataset.PixelData = gradient.astype("<u2").tobytes()
    for keyword, value in (extra or {}).items():
        setattr(dataset, keyword, value)
    dataset.file_meta = file_meta(dataset, transfer_syntax)
    return dataset


def file_meta(dataset: Dataset, transfer_syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_UID)
    return meta


def write(dataset: Dataset, path: Path) -> Path:
    """Write `dataset` as a DICOM file in the transfer syntax of its file meta."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    return path


def series(count: int, **kwargs: Any) -> Iterator[Dataset]:
    """Yield `count` instances of one series, numbered from 1."""
    for number in range(1, count + 1):
        yield make_image(number=number, **kwargs)
