"""Write masks for a stack, choosing the format by extension: ``.csv``, ``.tif/.tiff``, ``.nii/.nii.gz``.

Every writer is atomic: the file is written under a hidden temporary name in the same
folder and moved onto ``path`` with ``os.replace``, so no half-written file ever exists there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_gitseg.classes import labels_to_masks, masks_to_labels
from napari_gitseg.io._util import FORMAT_SUFFIXES, format_of, full_suffix
from napari_gitseg.io.errors import GitsegInputError
from napari_gitseg.io.nifti import write_nifti
from napari_gitseg.io.stack import Stack
from napari_gitseg.io.tiff import write_tiff
from napari_gitseg.io.train_csv import write_rle_csv

MASK_FORMATS = ("csv", "tiff", "nifti")
MASK_SUFFIXES = tuple(s for fmt in MASK_FORMATS for s in FORMAT_SUFFIXES[fmt])


def write_masks(path: str | Path, masks: np.ndarray, stack: Stack, *, as_labels: bool = False) -> Path:
    """Write per-class masks ``(C, Z, Y, X)`` (or a label image ``(Z, Y, X)``) for ``stack``.

    ``.csv``: the challenge's RLE rows (only the stack's labelled slices when it has a
    ``labelled`` flag). ``.tif``/``.nii``: per-class masks so overlaps survive, or a
    one-label-per-pixel image when ``as_labels`` is True.
    """
    path = Path(path)
    fmt = format_of(path)
    if fmt not in MASK_FORMATS:
        suffix = full_suffix(path)
        raise GitsegInputError(
            path,
            f"cannot write masks as {suffix or 'a file without extension'}; use {', '.join(MASK_SUFFIXES)}",
        )
    masks = np.asarray(masks)
    if masks.ndim == 3:
        if masks.shape != stack.shape:
            raise ValueError(f"labels shape {masks.shape} != stack shape {stack.shape}")
        masks = labels_to_masks(masks, stack.classes)
    if masks.shape != (len(stack.classes), *stack.shape):
        raise ValueError(f"masks shape {masks.shape} != {(len(stack.classes), *stack.shape)}")
    masks = masks.astype(bool, copy=False)
    if fmt == "csv":
        return write_rle_csv(path, stack.slice_ids, masks, labelled=stack.labelled, classes=stack.classes)
    data = masks_to_labels(masks, stack.classes) if as_labels else masks
    if fmt == "tiff":
        return write_tiff(path, data, stack.spacing, classes=stack.classes)
    return write_nifti(path, data, stack)
