"""What every DICOM object gitseg writes shares: patient/study copied from the source, UIDs, saving."""

from __future__ import annotations

import datetime
from pathlib import Path

from napari_gitseg.io._util import atomic_output

MANUFACTURER = "napari-gitseg"
PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
)
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def software_version() -> str:
    """The installed napari-gitseg version (for SoftwareVersions)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("napari-gitseg")
    except PackageNotFoundError:
        return "0"


def copy_patient_study(source, target) -> None:
    """Copy the Patient and General Study attributes of ``source`` (type-2 ones empty when absent)."""
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in source:
            setattr(target, keyword, source.get(keyword))
        elif keyword in _TYPE2:
            setattr(target, keyword, "")


def stamp_now(ds, *prefixes: str) -> None:
    """Set ``<prefix>Date`` and ``<prefix>Time`` to now for each prefix (e.g. InstanceCreation)."""
    now = datetime.datetime.now()
    for prefix in prefixes:
        setattr(ds, f"{prefix}Date", now.strftime("%Y%m%d"))
        setattr(ds, f"{prefix}Time", now.strftime("%H%M%S"))


def save_atomic(ds, path: str | Path) -> Path:
    """Write ``ds`` as a DICOM Part-10 file at ``path`` via a temporary file and a rename."""
    path = Path(path)
    with atomic_output(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path
