"""Write per-organ masks as a DICOM RT Structure Set (RT-STRUCT) on the series they were drawn on.

Built with pydicom (highdicom has no RT-STRUCT; rt-utils needs OpenCV, whose bundled Qt clashes
with napari's, and joins holes with a "pin hole" cut instead of inner contours). One ROI per
organ (TG-263 name, fixed colour, interpreted type ORGAN); each slice's outline is written as
CLOSED_PLANAR contours in patient coordinates (LPS, mm), holes as inner contours (even-odd rule;
see ``contours``), each citing its image's SOP Instance UID. The structure set cites the
Frame of Reference, study, series and every image of the series.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_gitseg.io.dicom.common import (
    MANUFACTURER,
    copy_patient_study,
    save_atomic,
    software_version,
    stamp_now,
)
from napari_gitseg.io.dicom.contours import MIN_COMPONENT_PIXELS, mask_to_polygons
from napari_gitseg.io.dicom.geometry import SeriesGeometry
from napari_gitseg.io.dicom.names import TG263_NAMES, display_rgb

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
STUDY_COMPONENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management, cited for the study


def _image_ref(geometry: SeriesGeometry, z: int):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID = geometry.sop_class_uid
    item.ReferencedSOPInstanceUID = geometry.sop_instance_uids[z]
    return item


def _references(geometry: SeriesGeometry):
    from pydicom.dataset import Dataset

    series = Dataset()
    series.SeriesInstanceUID = geometry.series_instance_uid
    series.ContourImageSequence = [_image_ref(geometry, z) for z in range(geometry.shape[0])]
    study = Dataset()
    study.ReferencedSOPClassUID = STUDY_COMPONENT_SOP_CLASS
    study.ReferencedSOPInstanceUID = geometry.study_instance_uid
    study.RTReferencedSeriesSequence = [series]
    frame = Dataset()
    frame.FrameOfReferenceUID = geometry.frame_of_reference_uid
    frame.RTReferencedStudySequence = [study]
    return frame


def _contours(geometry: SeriesGeometry, mask: np.ndarray, min_pixels: int, smooth_sigma: float) -> list:
    from pydicom.dataset import Dataset

    items = []
    for z in np.flatnonzero(mask.any(axis=(1, 2))):
        for points in mask_to_polygons(mask[z], min_pixels, smooth_sigma):
            xyz = geometry.to_patient(int(z), points[:, 0], points[:, 1])
            item = Dataset()
            item.ContourImageSequence = [_image_ref(geometry, int(z))]
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(xyz)
            item.ContourNumber = len(items) + 1
            item.ContourData = [f"{v:.4f}".rstrip("0").rstrip(".") for v in xyz.ravel()]
            items.append(item)
    return items


def _roi_items(
    geometry: SeriesGeometry,
    masks: np.ndarray,
    classes: tuple[str, ...],
    algorithm: str,
    min_pixels: int,
    smooth_sigma: float,
) -> tuple[list, list, list]:
    from pydicom.dataset import Dataset

    rois, contours, observations = [], [], []
    for number, cls in enumerate(classes, start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = geometry.frame_of_reference_uid
        roi.ROIName = TG263_NAMES.get(cls, cls)
        roi.ROIGenerationAlgorithm = algorithm
        rois.append(roi)
        contour = Dataset()
        contour.ReferencedROINumber = number
        contour.ROIDisplayColor = list(display_rgb(cls))
        items = _contours(geometry, masks[number - 1], min_pixels, smooth_sigma)
        if items:
            contour.ContourSequence = items
        contours.append(contour)
        obs = Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.RTROIInterpretedType = "ORGAN"
        obs.ROIInterpreter = ""
        observations.append(obs)
    return rois, contours, observations


def build_rtstruct(
    geometry: SeriesGeometry,
    masks: np.ndarray,
    classes: tuple[str, ...],
    *,
    label: str = "gitseg organs",
    algorithm: str = "SEMIAUTOMATIC",
    min_pixels: int = MIN_COMPONENT_PIXELS,
    smooth_sigma: float = 0.0,
):
    """The RT-STRUCT dataset for per-class masks ``(C, Z, Y, X)`` on ``geometry``'s series."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    masks = np.asarray(masks, bool)
    if masks.shape != (len(classes), *geometry.shape):
        raise ValueError(f"masks shape {masks.shape} != {(len(classes), *geometry.shape)}")
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = RTSTRUCT_SOP_CLASS
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    stamp_now(ds, "InstanceCreation", "StructureSet", "Series")
    copy_patient_study(geometry.headers[0], ds)
    ds.StudyInstanceUID = geometry.study_instance_uid
    ds.FrameOfReferenceUID = geometry.frame_of_reference_uid
    ds.PositionReferenceIndicator = str(geometry.headers[0].get("PositionReferenceIndicator", "") or "")
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 901
    ds.SeriesDescription = label
    ds.OperatorsName = ""
    ds.InstanceNumber = 1
    ds.Manufacturer = MANUFACTURER
    ds.SoftwareVersions = software_version()
    ds.StructureSetLabel = label[:16]
    ds.ReferencedFrameOfReferenceSequence = [_references(geometry)]
    rois, contours, observations = _roi_items(geometry, masks, tuple(classes), algorithm, min_pixels, smooth_sigma)
    ds.StructureSetROISequence = rois
    ds.ROIContourSequence = contours
    ds.RTROIObservationsSequence = observations
    return ds


def write_rtstruct(
    path: str | Path, geometry: SeriesGeometry, masks: np.ndarray, classes: tuple[str, ...], **options
) -> Path:
    """Write the RT-STRUCT of ``masks`` on ``geometry``'s series to ``path`` (atomically)."""
    return save_atomic(build_rtstruct(geometry, masks, classes, **options), path)
