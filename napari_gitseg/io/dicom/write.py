"""Write a Stack's images as a derived DICOM MR series, so labels from NIfTI/TIFF/PNG stacks can be
exported as RT-STRUCT or SEG and loaded together with their images (3D Slicer, planning systems).

Each slice is one MR Image Storage file marked ``DERIVED\\SECONDARY`` with a ``DerivationDescription``
naming the source. Geometry: ``affine`` maps (column, row, slice) indices to patient LPS mm; by
default it is the stack's own (a NIfTI's affine, converted from RAS) or an axial grid with the
stack's spacing. Integer images are written as they are (16 bit); other images are scaled to
0..65535 (the scale is in the DerivationDescription). The folder is written under a temporary
name and renamed into place, so no half-written series appears.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from napari_gitseg.io.dicom.common import MANUFACTURER, software_version, stamp_now
from napari_gitseg.io.errors import GitsegInputError

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def stack_affine(stack) -> np.ndarray:
    """4x4 map from (column, row, slice) index to patient LPS mm for ``stack``."""
    ras = stack.meta.get("lps_affine")  # NIfTI: world RAS of the LPS-reoriented (x, y, z) index
    if ras is not None:
        return _RAS_TO_LPS @ np.asarray(ras, float)
    dz, dy, dx = stack.spacing
    return np.diag([dx, dy, dz, 1.0])


def _pixels(image: np.ndarray) -> tuple[np.ndarray, str]:
    """16-bit pixel data and a note on any scaling applied."""
    lo, hi = (float(image.min()), float(image.max())) if image.size else (0.0, 0.0)
    if image.dtype.kind in "iub":
        if lo >= 0 and hi <= 65535:
            return image.astype(np.uint16), ""
        if lo >= -32768 and hi <= 32767:
            return image.astype(np.int16), ""
    scale = (hi - lo) / 65535 if hi > lo else 1.0
    return np.round((image - lo) / scale).astype(np.uint16), f"; values scaled: original = {scale:g} * stored + {lo:g}"


def _ds(values) -> list[str]:
    """Decimal strings of at most 16 characters (the DS limit) with 10 significant digits."""
    return [format(float(v), ".10g") for v in values]


def _base(stack, uids: dict, note: str):
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = f"{stack.name}^", stack.name, "", ""
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uids["series"]
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = uids["frame"], ""
    stamp_now(ds, "Study", "Series", "Content", "InstanceCreation")
    ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "1", ""
    ds.Modality, ds.SeriesNumber, ds.SeriesDescription = "MR", 900, f"{stack.name} (derived by napari-gitseg)"
    ds.Laterality, ds.PatientPosition = "", "HFS"
    ds.Manufacturer, ds.SoftwareVersions = MANUFACTURER, software_version()
    ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    ds.DerivationDescription = f"written by napari-gitseg from {stack.source}{note}"[:1024]
    ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "RM", "NONE", "", "2D"
    ds.EchoTime, ds.RepetitionTime, ds.EchoTrainLength = "", "", ""
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.BurnedInAnnotation = "NO"
    return ds


def _slices(stack, affine: np.ndarray, uids: dict):
    """Yield one pydicom dataset per slice, in z order."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels, note = _pixels(np.asarray(stack.image))
    dx, dy = float(np.linalg.norm(affine[:3, 0])), float(np.linalg.norm(affine[:3, 1]))
    row_dir, col_dir = affine[:3, 0] / dx, affine[:3, 1] / dy
    if float(np.cross(row_dir, col_dir) @ affine[:3, 2]) <= 0:
        raise GitsegInputError(
            stack.source,
            "slices run against the slice normal (left-handed grid); cannot write a DICOM series in this order",
        )
    thickness = float(abs(np.cross(row_dir, col_dir) @ affine[:3, 2]))
    for z in range(pixels.shape[0]):
        ds = _base(stack, uids, note)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = z + 1
        ds.ImagePositionPatient = _ds(affine[:3] @ [0.0, 0.0, z, 1.0])
        ds.ImageOrientationPatient = _ds((*row_dir, *col_dir))
        ds.PixelSpacing = _ds((dy, dx))
        ds.SliceThickness = _ds([thickness])[0]
        ds.Rows, ds.Columns = pixels.shape[1], pixels.shape[2]
        ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
        ds.PixelData = np.ascontiguousarray(pixels[z]).tobytes()
        yield ds


def write_dicom_series(
    folder: str | Path, stack, affine: np.ndarray | None = None, uids: dict | None = None
) -> list[Path]:
    """Write ``stack`` as a derived MR series into the new folder ``folder``; returns the files in z order.

    ``uids`` may fix ``study``, ``series`` and ``frame`` (Frame of Reference) UIDs.
    """
    from pydicom.uid import generate_uid

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise GitsegInputError(folder, "already exists and is not empty; choose a new folder for the DICOM images")
    uids = {"study": generate_uid(), "series": generate_uid(), "frame": generate_uid(), **(uids or {})}
    affine = stack_affine(stack) if affine is None else np.asarray(affine, float)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        names = []
        for z, ds in enumerate(_slices(stack, affine, uids)):
            names.append(f"IM{z + 1:05d}.dcm")
            ds.save_as(tmp / names[-1], enforce_file_format=True)
        if folder.exists():
            folder.rmdir()
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [folder / n for n in names]
