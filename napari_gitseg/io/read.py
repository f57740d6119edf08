"""One entry point for every format: detect what a path holds and read it as stacks or masks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from napari_gitseg.io._util import format_of, full_suffix
from napari_gitseg.io.dicom.labels import read_dicom_with_labels
from napari_gitseg.io.dicom.series import looks_like_dicom
from napari_gitseg.io.errors import GitsegInputError
from napari_gitseg.io.nifti import read_nifti, read_nifti_masks
from napari_gitseg.io.stack import Stack
from napari_gitseg.io.tiff import read_tiff, read_tiff_masks
from napari_gitseg.io.train_csv import masks_for_stack, read_train_csv
from napari_gitseg.io.uwmgi import iter_uwmgi, layout_of

KINDS = ("uwmgi", "tiff", "nifti", "dicom")
_DICOM_PROBE = 20  # files looked at when deciding whether a folder is a DICOM series


def detect_kind(path: str | Path) -> str | None:
    """The reader for ``path`` (``uwmgi``, ``tiff``, ``nifti``, ``dicom``) or None; never raises."""
    try:
        path = Path(path)
        if path.is_file():
            fmt = format_of(path)
            if fmt in ("nifti", "tiff"):
                return fmt
            if fmt == "png":
                return "uwmgi" if layout_of(path) == "slice" else None
            if fmt == "csv" or full_suffix(path) in (".txt", ".json", ".md"):
                return None
            return "dicom" if looks_like_dicom(path) else None
        if path.is_dir():
            if layout_of(path) is not None:
                return "uwmgi"
            probed = 0
            for entry in sorted(path.iterdir()):
                if entry.name.startswith(".") or not entry.is_file():
                    continue
                if looks_like_dicom(entry):
                    return "dicom"
                probed += 1
                if probed >= _DICOM_PROBE:
                    break
    except OSError:
        return None
    return None


def _unreadable(path: Path) -> GitsegInputError:
    if not path.exists():
        return GitsegInputError(path, "does not exist")
    if path.is_dir():
        return GitsegInputError(
            path,
            "holds nothing gitseg can read (a UW-Madison case folder caseN/caseN_dayM/scans/*.png, "
            "or a folder of DICOM files)",
        )
    if format_of(path) == "png":
        return GitsegInputError(
            path,
            "is not a UW-Madison slice: PNG slices must be named slice_NNNN_W_H_SX_SY.png (slice number, "
            "width, height, pixel spacing in mm), which is where their spacing comes from; a PNG named "
            "otherwise has none: rename it so, or save the scan as TIFF, NIfTI or DICOM with its spacing",
        )
    return GitsegInputError(path, "is not a supported format (.png slices, .tif/.tiff, .nii/.nii.gz, DICOM)")


def iter_stacks(path: str | Path) -> Iterator[Stack]:
    """Yield the stacks in ``path`` one at a time (a dataset root holds many)."""
    path = Path(path)
    kind = detect_kind(path)
    if kind is None:
        raise _unreadable(path)
    if kind == "uwmgi":
        yield from iter_uwmgi(path)
    elif kind == "tiff":
        yield read_tiff(path)
    elif kind == "nifti":
        yield read_nifti(path)
    else:
        yield read_dicom_with_labels(path)


def read_stacks(path: str | Path) -> list[Stack]:
    """Read every stack in ``path`` (a file, a case-day, a case folder or a dataset root)."""
    return list(iter_stacks(path))


def read_stack(path: str | Path) -> Stack:
    """Read exactly one stack from ``path``; a path holding several is refused with their names."""
    stacks = read_stacks(path)
    if len(stacks) != 1:
        names = ", ".join(s.name for s in stacks[:5]) + (" ..." if len(stacks) > 5 else "")
        raise GitsegInputError(path, f"holds {len(stacks)} stacks ({names}); open one case-day folder or file")
    return stacks[0]


def read_masks(path: str | Path, like: Stack) -> Stack:
    """Read masks for ``like`` from a ``.csv`` (RLE), ``.tif``/``.tiff`` or ``.nii[.gz]`` file; ``like`` with masks."""
    from dataclasses import replace

    path = Path(path)
    fmt = format_of(path)
    if fmt == "csv":
        masks, labelled = masks_for_stack(read_train_csv(path), like)
        return replace(like, masks=masks, labelled=labelled, meta={**like.meta, "masks_source": str(path)})
    if fmt == "tiff":
        return read_tiff_masks(path, like)
    if fmt == "nifti":
        return read_nifti_masks(path, like)
    raise GitsegInputError(path, "masks are read from .csv, .tif/.tiff or .nii/.nii.gz files")
