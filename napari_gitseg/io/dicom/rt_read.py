"""Read the organ ROIs of a DICOM RT-STRUCT as masks on the series it references.

Each ROI whose name is one of our organs (``names.organ_of``) becomes that organ's mask:
its CLOSED_PLANAR contours are placed on the slice whose plane holds them and filled with the
even-odd rule (inner contours are holes). Other ROIs (BODY, PTV, ...) are listed in the notes.
Refused with the file named: another Frame of Reference or series than the open one, a contour
off every slice plane or outside the image, no organ ROI at all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_gitseg.io.dicom.contours import polygons_to_mask
from napari_gitseg.io.dicom.geometry import SeriesGeometry
from napari_gitseg.io.dicom.names import organ_of
from napari_gitseg.io.errors import GitsegInputError

_EDGE_TOL = 0.05  # pixels beyond the outer pixel edges still counted as inside the image


def check_references(path: Path, ds, geometry: SeriesGeometry) -> None:
    """Refuse an RT-STRUCT whose Frame of Reference or series is not the open series'."""
    frames = list(ds.get("ReferencedFrameOfReferenceSequence", []) or [])
    series = {
        str(s.get("SeriesInstanceUID", ""))
        for f in frames
        for st in f.get("RTReferencedStudySequence", [])
        for s in st.get("RTReferencedSeriesSequence", [])
    }
    uids = {str(f.get("FrameOfReferenceUID", "")) for f in frames}
    uids |= {str(r.get("ReferencedFrameOfReferenceUID", "")) for r in ds.get("StructureSetROISequence", [])}
    geometry.check_cited(path, series, uids)


def _contour_polygon(path: Path, roi: str, n: int, item, geometry: SeriesGeometry) -> tuple[int, np.ndarray]:
    try:
        points = np.asarray([float(v) for v in item.ContourData], float).reshape(-1, 3)
    except (AttributeError, TypeError, ValueError) as err:
        raise GitsegInputError(path, f"ROI {roi!r} contour {n} has unreadable ContourData ({err})") from err
    z = geometry.slice_of(points)
    if z is None:
        raise GitsegInputError(
            path, f"ROI {roi!r} contour {n} lies outside the image: on no slice plane of {geometry.source}"
        )
    rows, cols = geometry.to_pixels(z, points)
    _zn, h, w = geometry.shape
    lo = -0.5 - _EDGE_TOL
    if rows.min() < lo or cols.min() < lo or rows.max() > h - 0.5 + _EDGE_TOL or cols.max() > w - 0.5 + _EDGE_TOL:
        raise GitsegInputError(
            path,
            f"ROI {roi!r} contour {n} on slice {z + 1} lies outside the image "
            f"(rows {rows.min():.1f}..{rows.max():.1f}, columns {cols.min():.1f}.."
            f"{cols.max():.1f} of {h}x{w})",
        )
    return z, np.stack([rows, cols], axis=1)


def _roi_mask(path: Path, roi: str, contour, geometry: SeriesGeometry) -> np.ndarray:
    per_slice: dict[int, list[np.ndarray]] = {}
    for n, item in enumerate(contour.get("ContourSequence", []) or [], start=1):
        kind = str(item.get("ContourGeometricType", "CLOSED_PLANAR")).upper()
        if kind not in ("CLOSED_PLANAR", "CLOSEDPLANAR_XOR"):
            continue  # points and open lines enclose nothing
        z, polygon = _contour_polygon(path, roi, n, item, geometry)
        per_slice.setdefault(z, []).append(polygon)
    mask = np.zeros(geometry.shape, bool)
    for z, polygons in per_slice.items():
        mask[z] = polygons_to_mask(polygons, geometry.shape[1:])
    return mask


def read_rtstruct_masks(
    path: str | Path, ds, geometry: SeriesGeometry, classes: tuple[str, ...]
) -> tuple[np.ndarray, list[str]]:
    """(masks (C, Z, Y, X) bool, notes) of the organ ROIs of RT-STRUCT ``ds`` on ``geometry``."""
    path = Path(path)
    check_references(path, ds, geometry)
    names = {int(r.ROINumber): str(r.get("ROIName", "")) for r in ds.get("StructureSetROISequence", [])}
    masks = np.zeros((len(classes), *geometry.shape), bool)
    found, others = [], []
    for contour in ds.get("ROIContourSequence", []) or []:
        number = int(contour.get("ReferencedROINumber", -1))
        name = names.get(number, f"ROI {number}")
        cls = organ_of(name)
        if cls is None or cls not in classes:
            others.append(name)
            continue
        masks[classes.index(cls)] |= _roi_mask(path, name, contour, geometry)
        found.append(name)
    if not found:
        raise GitsegInputError(
            path,
            f"holds no ROI named as one of the organs {', '.join(classes)} "
            f"(ROIs: {', '.join(names.values()) or 'none'})",
        )
    notes = [f"ignored ROIs that are not organs of ours: {', '.join(others)}"] if others else []
    return masks, notes
