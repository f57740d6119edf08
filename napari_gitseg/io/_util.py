"""Small helpers shared by the readers and writers: atomic output, value checks, names.

Atomic output: write to a hidden temporary file in the same folder, then ``os.replace``.
No reader ever sees a half-written file at the final path: either the old file (or none)
is there, or the complete new one. The temporary name keeps the full extension
(``.nii.gz``, ``.tif``) because some writers choose the format from it, and starts with a
dot so folder readers skip it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from napari_gitseg.io.errors import GitsegInputError

# refuse to allocate more than this for one image (a corrupt header can claim any size)
MAX_IMAGE_BYTES = 4 * 1024**3


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# files made by mkstemp are private (0600); give written files the usual permissions instead
_FILE_MODE = 0o666 & ~_read_umask()


def full_suffix(path: str | Path) -> str:
    """The extension including ``.gz`` (``.nii.gz``), lower case."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


# the one file-extension -> format table of the readers, writers, export and CLI
FORMAT_SUFFIXES = {
    "csv": (".csv",),
    "tiff": (".tif", ".tiff"),
    "nifti": (".nii", ".nii.gz"),
    "png": (".png",),
    "dicom": (".dcm", ".dicom", ".ima"),  # DICOM files are also recognised by their content
}


def format_of(path: str | Path) -> str | None:
    """The format a file's extension names (``csv``, ``tiff``, ``nifti``, ``png``, ``dicom``), or None.

    Case-insensitive; only ``.nii.gz`` is NIfTI among gzipped files (``x.csv.gz`` is None).
    """
    suffix = full_suffix(path)
    return next((fmt for fmt, suffixes in FORMAT_SUFFIXES.items() if suffix in suffixes), None)


@contextlib.contextmanager
def atomic_output(path: str | Path, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success move it onto ``path`` atomically.

    ``fsync`` flushes the data to disk before the rename (durability across a power cut);
    the rename alone already guarantees that no half-written file appears at ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{full_suffix(path)}")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        with contextlib.suppress(OSError):
            os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def input_errors(path: str | Path, what: str) -> Iterator[None]:
    """Turn any unexpected exception from a third-party reader into ``GitsegInputError(path, what)``."""
    try:
        yield
    except GitsegInputError:
        raise
    except Exception as err:  # damaged files make the libraries raise almost any type
        raise GitsegInputError(path, f"{what} ({type(err).__name__}: {err})") from err


def stem_of(path: str | Path) -> str:
    """File name without its extension (``.nii.gz`` counts as one extension)."""
    name = Path(path).name
    suffix = full_suffix(name)
    return name[: len(name) - len(suffix)] if suffix else name


def generic_slice_ids(prefix: str, n: int) -> list[str]:
    """Slice ids ``{prefix}_slice_0001`` ... for stacks that carry no ids of their own."""
    return [f"{prefix}_slice_{i + 1:04d}" for i in range(n)]


def check_size(path: str | Path, shape: tuple[int, ...], itemsize: int) -> None:
    """Refuse an image whose declared size is empty or implausibly large."""
    count = 1
    for dim in shape:
        if int(dim) <= 0:
            raise GitsegInputError(path, f"image has an empty dimension (shape {tuple(shape)})")
        count *= int(dim)
    if count * int(itemsize) > MAX_IMAGE_BYTES:
        raise GitsegInputError(
            path, f"image shape {tuple(shape)} would need {count * itemsize / 1024**3:.1f} GiB; refusing"
        )


def check_pixels(path: str | Path, image: np.ndarray) -> np.ndarray:
    """Refuse complex, non-numeric or non-finite pixel data; booleans become uint8."""
    if image.dtype == bool:
        return image.astype(np.uint8)
    if image.dtype.kind not in "uif":
        raise GitsegInputError(path, f"pixel type {image.dtype} is not a greyscale number type")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        bad = int((~np.isfinite(image)).sum())
        raise GitsegInputError(path, f"image holds {bad} NaN or infinite values")
    return image
