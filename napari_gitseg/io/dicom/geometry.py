"""Where the slices of a DICOM series lie in patient coordinates (LPS, mm), and the ids to cite them.

``load_series`` reads the headers of a series in the z order of its ``Stack`` (``read_dicom``
sorts slices along the slice normal) and checks what RT-STRUCT and SEG need: one Frame of
Reference, one orientation, ``ImagePositionPatient`` on every slice and ``PixelSpacing``.
Conventions (DICOM PS3.3 C.7.6.2): the first ``ImageOrientationPatient`` triplet is the
direction of increasing column index, the second of increasing row index; ``PixelSpacing`` is
(row spacing, column spacing) = (y, x); a pixel's centre is at
``IPP + col * dx * row_dir + row * dy * col_dir``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_gitseg.io.errors import GitsegInputError


@dataclass(frozen=True)
class SeriesGeometry:
    """Patient-space geometry and identifiers of a single-frame DICOM series, in Stack z order."""

    source: str
    shape: tuple[int, int, int]  # (Z, rows, columns)
    positions: np.ndarray  # (Z, 3) ImagePositionPatient per slice
    orientation: np.ndarray  # (6,) ImageOrientationPatient
    pixel_spacing: tuple[float, float]  # (row spacing = y, column spacing = x) in mm
    frame_of_reference_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uids: tuple[str, ...]
    headers: list = field(default_factory=list, repr=False)  # pydicom datasets without pixels

    @property
    def row_dir(self) -> np.ndarray:
        """Unit vector of increasing column index (along a row)."""
        return np.asarray(self.orientation[:3], float)

    @property
    def col_dir(self) -> np.ndarray:
        """Unit vector of increasing row index (down a column)."""
        return np.asarray(self.orientation[3:], float)

    @property
    def normal(self) -> np.ndarray:
        """Slice normal (row_dir x col_dir); z index grows along it."""
        return np.cross(self.row_dir, self.col_dir)

    def to_patient(self, z: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """(N, 3) patient coordinates of (row, column) pixel positions on slice ``z``."""
        dy, dx = self.pixel_spacing
        rows, cols = np.asarray(rows, float)[:, None], np.asarray(cols, float)[:, None]
        return self.positions[z] + cols * dx * self.row_dir + rows * dy * self.col_dir

    def slice_of(self, points: np.ndarray, tol_mm: float | None = None) -> int | None:
        """The slice whose plane holds every point of ``points`` (N, 3), or None."""
        along = np.asarray(points, float) @ self.normal
        planes = self.positions @ self.normal
        gap = float(np.min(np.abs(np.diff(planes)))) if len(planes) > 1 else 1.0
        tol = tol_mm if tol_mm is not None else max(0.01, 0.1 * gap)
        z = int(np.argmin(np.abs(planes - along.mean())))
        return z if np.all(np.abs(along - planes[z]) <= tol) else None

    def check_cited(self, path: str | Path, series: set[str], frames: set[str]) -> None:
        """Refuse labels file ``path`` when the series or Frames of Reference it cites are not this series'."""
        series, frames = set(series) - {""}, set(frames) - {""}
        if series and self.series_instance_uid not in series:
            raise GitsegInputError(
                path,
                f"references series {', '.join(sorted(series))}, which is not open "
                f"(open: {self.source}, series {self.series_instance_uid})",
            )
        if frames and self.frame_of_reference_uid not in frames:
            raise GitsegInputError(
                path,
                f"is in Frame of Reference {', '.join(sorted(frames))}, not that of the "
                f"open series {self.source} ({self.frame_of_reference_uid})",
            )

    def to_pixels(self, z: int, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, columns) as floats of patient points (N, 3) lying on slice ``z``."""
        d = np.asarray(points, float) - self.positions[z]
        dy, dx = self.pixel_spacing
        return d @ self.col_dir / dy, d @ self.row_dir / dx


def _floats(ds, keyword: str, count: int) -> list[float] | None:
    try:
        values = [float(v) for v in ds.get(keyword)]
    except (TypeError, ValueError):
        return None
    return values if len(values) == count and np.all(np.isfinite(values)) else None


def _uid(path: Path, ds, keyword: str) -> str:
    value = str(ds.get(keyword, "") or "")
    if not value:
        raise GitsegInputError(path, f"has no {keyword}; DICOM RT-STRUCT and SEG objects must cite it")
    return value


def _check_same(paths: list[Path], headers: list, keyword: str, what: str) -> None:
    first = str(headers[0].get(keyword, ""))
    for path, ds in zip(paths[1:], headers[1:]):
        if str(ds.get(keyword, "")) != first:
            raise GitsegInputError(
                path.parent,
                f"mixes {what}: {paths[0].name} has {first or '(none)'}, "
                f"{path.name} has {ds.get(keyword, '') or '(none)'}",
            )


def geometry_from_headers(source: str | Path, paths: list[Path], headers: list) -> SeriesGeometry:
    """Check and collect the geometry of ``headers`` (one per slice, already in z order)."""
    if not headers:
        raise GitsegInputError(source, "holds no DICOM slices")
    _check_same(paths, headers, "FrameOfReferenceUID", "frames of reference")
    _check_same(paths, headers, "SeriesInstanceUID", "series")
    first_path, first = paths[0], headers[0]
    orientation = _floats(first, "ImageOrientationPatient", 6)
    if orientation is None:
        raise GitsegInputError(first_path, "has no valid ImageOrientationPatient; contours cannot be placed")
    spacing = _floats(first, "PixelSpacing", 2)
    if spacing is None or min(spacing) <= 0:
        raise GitsegInputError(first_path, "has no valid PixelSpacing; contours cannot be placed in mm")
    positions = []
    for path, ds in zip(paths, headers):
        pos = _floats(ds, "ImagePositionPatient", 3)
        if pos is None:
            raise GitsegInputError(path, "has no valid ImagePositionPatient; contours cannot be placed")
        other = _floats(ds, "ImageOrientationPatient", 6)
        if other is None or not np.allclose(other, orientation, atol=1e-3):
            raise GitsegInputError(path, f"mixes slice orientations: {other} vs {orientation} in {first_path.name}")
        positions.append(pos)
    rows, cols = int(first.get("Rows", 0) or 0), int(first.get("Columns", 0) or 0)
    return SeriesGeometry(
        source=str(source),
        shape=(len(headers), rows, cols),
        positions=np.asarray(positions, float),
        orientation=np.asarray(orientation, float),
        pixel_spacing=(spacing[0], spacing[1]),
        frame_of_reference_uid=_uid(first_path, first, "FrameOfReferenceUID"),
        study_instance_uid=_uid(first_path, first, "StudyInstanceUID"),
        series_instance_uid=_uid(first_path, first, "SeriesInstanceUID"),
        sop_class_uid=_uid(first_path, first, "SOPClassUID"),
        sop_instance_uids=tuple(_uid(p, ds, "SOPInstanceUID") for p, ds in zip(paths, headers)),
        headers=list(headers),
    )


def load_series(stack) -> SeriesGeometry:
    """Geometry of the DICOM series a ``Stack`` from ``read_dicom`` was read from (headers re-read)."""
    import pydicom

    paths = [Path(p) for p in stack.meta.get("paths", ())]
    if stack.kind != "dicom" or not paths:
        raise GitsegInputError(
            stack.source,
            "is not a DICOM series; RT-STRUCT and SEG need one "
            "(export with --with-images to write the images as DICOM too)",
        )
    if len(paths) != stack.shape[0]:
        raise GitsegInputError(
            stack.source, "is a multi-frame DICOM file; RT-STRUCT and SEG export need a series of single-frame images"
        )
    headers = []
    for path in paths:
        try:
            headers.append(pydicom.dcmread(path, stop_before_pixels=True, force=True))
        except Exception as err:  # noqa: BLE001  (a damaged file may raise anything)
            raise GitsegInputError(path, f"is not a readable DICOM file ({type(err).__name__}: {err})") from err
    return geometry_from_headers(stack.source, paths, headers)
