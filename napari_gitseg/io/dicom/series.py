"""DICOM series via pydicom: a folder of files (any extension) or one file.

Slices are sorted by ``ImagePositionPatient`` projected on the slice normal (the cross
product of the two ``ImageOrientationPatient`` direction cosines), so z runs along the
normal (inferior to superior for an axial scan). Spacing: ``PixelSpacing`` gives y and x;
z is the median gap between slice positions, else ``SpacingBetweenSlices`` or
``SliceThickness``. ``RescaleSlope``/``RescaleIntercept`` are applied per slice (the image
stays integer when both are whole numbers). The acquisition plane is kept as it is (no
reslicing). Files that are not DICOM, and DICOM files without pixels (DICOMDIR, reports),
are skipped; several series, mixed orientations or mixed sizes in one folder are refused
with the files named. A single multi-frame file is read frame by frame.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from napari_gitseg.io._util import (
    FORMAT_SUFFIXES,
    check_pixels,
    check_size,
    generic_slice_ids,
    input_errors,
    stem_of,
)
from napari_gitseg.io.errors import GitsegInputError
from napari_gitseg.io.stack import Stack

DICOM_SUFFIXES = FORMAT_SUFFIXES["dicom"]
_ORIENTATION_TOL = 1e-3
_POSITION_TOL = 1e-3  # mm
LABEL_MODALITIES = ("RTSTRUCT", "SEG")  # label objects that lie beside a series (read by io.dicom.labels)


def has_dicom_magic(path: str | Path) -> bool:
    """True when the file has the DICOM preamble marker ``DICM`` at byte 128."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def looks_like_dicom(path: str | Path) -> bool:
    """Cheap check used to detect DICOM files: the ``DICM`` marker or a DICOM extension."""
    path = Path(path)
    return path.suffix.lower() in DICOM_SUFFIXES or has_dicom_magic(path)


def _dcmread(path: Path):
    """Read one file; None when it is not DICOM at all, GitsegInputError when it is damaged."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    magic = has_dicom_magic(path)
    if not magic and path.suffix.lower() not in DICOM_SUFFIXES:
        return None
    try:
        return pydicom.dcmread(path, force=not magic)
    except InvalidDicomError:
        return None
    except Exception as err:
        raise GitsegInputError(path, f"is not a readable DICOM file ({type(err).__name__}: {err})") from err


def _floats(value, count: int) -> list[float] | None:
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    return out if len(out) == count and all(np.isfinite(out)) else None


def _float(value) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def _pixels(path: Path, ds) -> np.ndarray:
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1:
        raise GitsegInputError(path, f"is a colour image ({samples} samples per pixel); expected greyscale")
    bits = int(ds.get("BitsAllocated", 16) or 16)
    check_size(path, (frames, rows, cols), max(1, bits // 8))
    try:
        pixels = np.asarray(ds.pixel_array)
    except Exception as err:
        raise GitsegInputError(path, f"pixel data cannot be decoded ({type(err).__name__}: {err})") from err
    expected = (frames, rows, cols) if frames > 1 else (rows, cols)
    if pixels.shape != expected:
        raise GitsegInputError(path, f"pixel data has shape {pixels.shape}, expected {expected}")
    return pixels


def _rescale(ds) -> tuple[float, float]:
    slope = _float(ds.get("RescaleSlope", 1))
    intercept = _float(ds.get("RescaleIntercept", 0))
    return (1.0 if slope is None else slope), (0.0 if intercept is None else intercept)


def _apply_rescale(slices: list[np.ndarray], rescales: list[tuple[float, float]]) -> np.ndarray:
    stacked = np.stack(slices)
    if all(r == (1.0, 0.0) for r in rescales):
        return stacked
    whole = all(float(s).is_integer() and float(i).is_integer() for s, i in rescales)
    out = stacked.astype(np.int64 if whole else np.float64)
    for z, (slope, intercept) in enumerate(rescales):
        out[z] = out[z] * slope + intercept
    if whole:
        lo, hi = int(out.min()), int(out.max())
        for dtype in (np.int16, np.int32):
            if np.iinfo(dtype).min <= lo and hi <= np.iinfo(dtype).max:
                return out.astype(dtype)
        return out
    return out.astype(np.float32)


def _files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _describe(files: Iterable[Path], limit: int = 3) -> str:
    files = list(files)
    names = ", ".join(f.name for f in files[:limit])
    return names + (f" and {len(files) - limit} more" if len(files) > limit else "")


def _multiframe(path: Path, ds, pixels: np.ndarray) -> Stack:
    """A single multi-frame file (enhanced MR/CT): frames in stored order, spacing from its groups."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    group = shared[0] if shared else ds
    spacing_yx = None
    thickness = _float(ds.get("SpacingBetweenSlices")) or _float(ds.get("SliceThickness"))
    try:
        measures = group.PixelMeasuresSequence[0]
        spacing_yx = _floats(measures.PixelSpacing, 2)
        thickness = _float(measures.get("SpacingBetweenSlices")) or _float(measures.get("SliceThickness")) or thickness
    except (AttributeError, IndexError, KeyError):
        spacing_yx = _floats(ds.get("PixelSpacing"), 2)
    positions = []
    for frame in ds.get("PerFrameFunctionalGroupsSequence", []) or []:
        try:
            positions.append(_floats(frame.PlanePositionSequence[0].ImagePositionPatient, 3))
        except (AttributeError, IndexError, KeyError):
            positions.append(None)
    notes = []
    order = np.arange(pixels.shape[0])
    z_mm = thickness
    if len(positions) == pixels.shape[0] and all(p is not None for p in positions):
        try:
            cosines = _floats(group.PlaneOrientationSequence[0].ImageOrientationPatient, 6)
        except (AttributeError, IndexError, KeyError):
            cosines = None
        if cosines is not None:
            normal = np.cross(cosines[:3], cosines[3:])
            proj = np.asarray(positions, dtype=float) @ normal
            order = np.argsort(proj, kind="stable")
            gaps = np.diff(proj[order])
            if len(gaps) and (gaps > _POSITION_TOL).all():
                z_mm = float(np.median(gaps))
    if spacing_yx is None:
        spacing_yx = [1.0, 1.0]
        notes.append("no PixelSpacing; using 1 mm")
    if not z_mm or z_mm <= 0:
        z_mm = 1.0
        notes.append("no slice spacing; using 1 mm")
    image = _apply_rescale([pixels[i] for i in order], [_rescale(ds)] * len(order))
    image = check_pixels(path, image)
    meta = {
        "modality": str(ds.get("Modality", "")),
        "series_uid": str(ds.get("SeriesInstanceUID", "")),
        "files": [path.name],
        "paths": [str(path)],
    }
    if notes:
        meta["note"] = "; ".join(notes)
    return Stack(
        image=image,
        spacing=(z_mm, spacing_yx[0], spacing_yx[1]),
        slice_ids=generic_slice_ids(stem_of(path), image.shape[0]),
        source=str(path),
        kind="dicom",
        meta=meta,
    )


def read_dicom(path: str | Path) -> Stack:
    """Read a DICOM series (a folder, any file extensions) or a single DICOM file as a Stack."""
    path = Path(path)
    with input_errors(path, "is not a readable DICOM series"):
        return _read_dicom(path)


def _image_datasets(path: Path, candidates) -> tuple[list, int, list[str]]:
    """(file, dataset) of the image files among ``candidates``, how many files were skipped, and the
    DICOM label objects (RT-STRUCT/SEG) found beside them; GitsegInputError when there is no image."""
    datasets, skipped, label_files = [], 0, []
    for file in candidates:
        ds = _dcmread(file)
        if ds is not None and str(ds.get("Modality", "")).upper() in LABEL_MODALITIES:
            label_files.append(str(file))  # RT-STRUCT / SEG: labels on the series, not images
            continue
        if ds is None or "PixelData" not in ds:
            skipped += 1
            continue
        datasets.append((file, ds))
    if not datasets:
        what = "only DICOM label objects (RT-STRUCT/SEG) and no images" if label_files else "no DICOM images"
        raise GitsegInputError(path, f"holds {what}")
    return datasets, skipped, label_files


def _check_one_series(path: Path, datasets: list) -> None:
    """GitsegInputError naming the series when the files belong to more than one."""
    by_series: dict[str, list[Path]] = {}
    for file, ds in datasets:
        by_series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(file)
    if len(by_series) > 1:
        parts = "; ".join(f"series {uid or '(no uid)'}: {_describe(files)}" for uid, files in by_series.items())
        raise GitsegInputError(
            path, f"holds {len(by_series)} DICOM series ({parts}); put each series in its own folder"
        )


def _check_same_geometry(path: Path, datasets: list):
    """The first file's direction cosines, after checking that every file has its size, frame of
    reference and orientation (GitsegInputError naming the two files that differ)."""
    first_file, first = datasets[0]
    size = (int(first.get("Rows", 0) or 0), int(first.get("Columns", 0) or 0))
    cosines = _floats(first.get("ImageOrientationPatient"), 6)
    for file, ds in datasets[1:]:
        other = (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0))
        if other != size:
            raise GitsegInputError(
                path,
                f"mixes image sizes: {first_file.name} is {size[0]}x{size[1]}, {file.name} is {other[0]}x{other[1]}",
            )
        if str(ds.get("FrameOfReferenceUID", "")) != str(first.get("FrameOfReferenceUID", "")):
            raise GitsegInputError(
                path,
                f"mixes frames of reference: {first_file.name} has {first.get('FrameOfReferenceUID', '')}, "
                f"{file.name} has {ds.get('FrameOfReferenceUID', '')}",
            )
        its = _floats(ds.get("ImageOrientationPatient"), 6)
        if (cosines is None) != (its is None) or (
            cosines is not None and not np.allclose(cosines, its, atol=_ORIENTATION_TOL)
        ):
            raise GitsegInputError(
                path, f"mixes slice orientations: {first_file.name} has {cosines}, {file.name} has {its}"
            )
    return cosines


def _slice_order(path: Path, datasets: list, cosines, notes: list[str]) -> tuple[np.ndarray, float | None]:
    """(file order along the slice normal, median slice gap in mm or None); InstanceNumber order when
    positions are missing. GitsegInputError when two files share a position (echoes, phases)."""
    positions = [_floats(ds.get("ImagePositionPatient"), 3) for _, ds in datasets]
    if cosines is None or any(p is None for p in positions):
        if len(datasets) > 1:
            notes.append("no slice positions; sorted by InstanceNumber")
        return np.argsort([int(ds.get("InstanceNumber", 0) or 0) for _, ds in datasets], kind="stable"), None
    normal = np.cross(cosines[:3], cosines[3:])
    proj = np.asarray(positions, dtype=float) @ normal
    order = np.argsort(proj, kind="stable")
    proj = proj[order]
    gaps = np.diff(proj)
    if not len(gaps):
        return order, None
    if (gaps < _POSITION_TOL).any():
        i = int(np.argmax(gaps < _POSITION_TOL))
        a, b = datasets[order[i]][0], datasets[order[i + 1]][0]
        raise GitsegInputError(
            path,
            f"{a.name} and {b.name} lie at the same slice position ({proj[i]:.3f} mm): "
            "several echoes, phases or time points in one series are not supported",
        )
    z_mm = float(np.median(gaps))
    if gaps.max() - gaps.min() > max(0.01, 0.01 * z_mm):
        notes.append(f"uneven slice gaps {gaps.min():.3f}..{gaps.max():.3f} mm; using the median")
    return order, z_mm


def _spacing(first, z_mm: float | None, notes: list[str]) -> tuple[float, float, float]:
    """(z, y, x) voxel size in mm: the measured slice gap, else the header's, else 1 mm (noted)."""
    if z_mm is None:
        z_mm = _float(first.get("SpacingBetweenSlices")) or _float(first.get("SliceThickness"))
    if not z_mm or z_mm <= 0:
        z_mm = 1.0
        notes.append("no slice spacing; using 1 mm")
    spacing_yx = _floats(first.get("PixelSpacing"), 2)
    if spacing_yx is None or min(spacing_yx) <= 0:
        spacing_yx = [1.0, 1.0]
        notes.append("no PixelSpacing; using 1 mm")
    return z_mm, spacing_yx[0], spacing_yx[1]


def _read_dicom(path: Path) -> Stack:
    if path.is_dir():
        candidates, name = _files_in(path), path.name
    elif path.is_file():
        candidates, name = [path], stem_of(path)
    else:
        raise GitsegInputError(path, "does not exist")
    datasets, skipped, label_files = _image_datasets(path, candidates)
    _check_one_series(path, datasets)
    if len(datasets) == 1:
        file, ds = datasets[0]
        pixels = _pixels(file, ds)
        if pixels.ndim == 3:
            return _multiframe(file, ds, pixels)
    cosines = _check_same_geometry(path, datasets)
    notes: list[str] = []
    order, z_mm = _slice_order(path, datasets, cosines, notes)
    first = datasets[0][1]
    spacing = _spacing(first, z_mm, notes)

    slices, rescales, files, paths = [], [], [], []
    for i in order:
        file, ds = datasets[int(i)]
        pixels = _pixels(file, ds)
        if pixels.ndim != 2:
            raise GitsegInputError(file, "is a multi-frame file inside a multi-file series")
        slices.append(pixels)
        rescales.append(_rescale(ds))
        files.append(file.name)
        paths.append(str(file))
    image = check_pixels(path, _apply_rescale(slices, rescales))
    meta: dict = {
        "modality": str(first.get("Modality", "")),
        "series_uid": str(first.get("SeriesInstanceUID", "")),
        "orientation": cosines,
        "files": files,
        "paths": paths,
        "label_files": label_files,
    }
    if skipped:
        notes.append(f"skipped {skipped} non-image or non-DICOM files")
    if notes:
        meta["note"] = "; ".join(notes)
    return Stack(
        image=np.ascontiguousarray(image),
        spacing=spacing,
        slice_ids=generic_slice_ids(name, image.shape[0]),
        source=str(path),
        kind="dicom",
        meta=meta,
    )
