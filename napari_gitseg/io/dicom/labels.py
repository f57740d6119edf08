"""Open DICOM RT-STRUCT and SEG files as organ masks on the DICOM series they reference.

Dropping an RT-STRUCT/SEG file opens the series it references with its organs as labels; the
series is looked for in the file's folder, its sub-folders and the folders beside it (where
PACS exports and ``gitseg export --with-images`` put it). A series folder that also holds an
RT-STRUCT/SEG opens with those labels (when they cannot be placed on it, the images open with a
note saying why; a dropped RT-STRUCT/SEG file itself is refused with the reason). The imported
slices (``labelled``) run from the first to the last slice with any organ contour: a structure set says
nothing about slices it does not
reach. ``meta["masks_source"]`` names the file the labels came from.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from napari_gitseg.io.dicom.geometry import load_series
from napari_gitseg.io.dicom.series import LABEL_MODALITIES, read_dicom
from napari_gitseg.io.errors import GitsegInputError

_PROBE = 5  # files looked at per candidate folder


def _header(path: Path):
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception as err:  # noqa: BLE001  (a damaged file may raise anything)
        raise GitsegInputError(path, f"is not a readable DICOM file ({type(err).__name__}: {err})") from err


def label_modality(path: str | Path) -> str | None:
    """``RTSTRUCT`` or ``SEG`` when ``path`` is such a DICOM file, else None (never raises)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
    except Exception:  # noqa: BLE001
        return None
    modality = str(ds.get("Modality", "")).upper()
    return modality if modality in LABEL_MODALITIES else None


def referenced_series(ds) -> set[str]:
    """Series Instance UIDs an RT-STRUCT or SEG dataset cites."""
    uids = {str(s.get("SeriesInstanceUID", "")) for s in ds.get("ReferencedSeriesSequence", []) or []}
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []) or []:
        for study in frame.get("RTReferencedStudySequence", []) or []:
            uids |= {str(s.get("SeriesInstanceUID", "")) for s in study.get("RTReferencedSeriesSequence", [])}
    return uids - {""}


def _series_uid_of(folder: Path) -> str | None:
    import pydicom

    probed = 0
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and not entry.name.startswith(".") and probed < _PROBE:
            probed += 1
            try:
                ds = pydicom.dcmread(entry, stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "Modality"])
            except Exception:  # noqa: BLE001
                continue
            if str(ds.get("Modality", "")).upper() not in LABEL_MODALITIES:
                return str(ds.get("SeriesInstanceUID", "")) or None
    return None


def find_series_folder(path: Path, uids: set[str]) -> Path:
    """The folder near ``path`` holding the series ``uids`` names; GitsegInputError when none does."""
    base = path.parent
    candidates = [base, *sorted(p for p in base.iterdir() if p.is_dir())]
    if base.parent != base:
        candidates += sorted(p for p in base.parent.iterdir() if p.is_dir() and p != base)
    for folder in candidates:
        if not folder.name.startswith(".") and _series_uid_of(folder) in uids:
            return folder
    raise GitsegInputError(
        path,
        f"references series {', '.join(sorted(uids)) or '(none named)'}, which is not "
        f"open and not found in {base} or the folders in and beside it; open the series "
        "folder together with this file",
    )


def masks_from_file(path: str | Path, stack, classes: tuple[str, ...] | None = None):
    """Return ``stack`` with the organ masks of RT-STRUCT/SEG ``path`` (which must reference it)."""
    from napari_gitseg.io.dicom.rt_read import read_rtstruct_masks
    from napari_gitseg.io.dicom.seg import read_seg_masks

    path = Path(path)
    classes = tuple(classes or stack.classes)
    ds = _header(path) if label_modality(path) == "RTSTRUCT" else None
    geometry = load_series(stack)
    if ds is not None:
        masks, notes = read_rtstruct_masks(path, ds, geometry, classes)
    else:
        import pydicom

        masks, notes = read_seg_masks(path, pydicom.dcmread(path), geometry, classes)
    labelled = np.zeros(stack.shape[0], bool)
    hit = np.flatnonzero(masks.any(axis=(0, 2, 3)))
    if hit.size:
        labelled[hit[0] : hit[-1] + 1] = True
    note = "; ".join([n for n in (stack.meta.get("note"), *notes) if n])
    meta = {**stack.meta, "masks_source": str(path), **({"note": note} if note else {})}
    return replace(stack, masks=masks, labelled=labelled, classes=classes, meta=meta)


def read_dicom_with_labels(path: str | Path):
    """Read a DICOM series, or the series an RT-STRUCT/SEG file references, with its labels attached."""
    path = Path(path)
    if path.is_file() and label_modality(path) is not None:
        series = find_series_folder(path, referenced_series(_header(path)))
        return masks_from_file(path, read_dicom(series))
    stack = read_dicom(path)
    labels = stack.meta.get("label_files") or []
    if not labels:
        return stack
    try:
        labelled = masks_from_file(labels[0], stack)
    except GitsegInputError as err:  # the images still open; the note says why their labels did not
        return _noted(stack, f"labels not read: {err}")
    if len(labels) > 1:
        others = ", ".join(Path(p).name for p in labels[1:])
        return _noted(labelled, f"labels read from {Path(labels[0]).name}; not read: {others}")
    return labelled


def _noted(stack, note: str):
    return replace(stack, meta={**stack.meta, "note": "; ".join(n for n in (stack.meta.get("note"), note) if n)})
