"""Readers and writers: every format comes in as a ``Stack`` and masks go out atomically.

Formats: UW-Madison PNG case folders with ``train.csv`` ground truth, multi-page TIFF,
NIfTI and DICOM series. Bad input raises ``GitsegInputError`` naming the file.
"""

from napari_gitseg.io._util import atomic_output, format_of, stem_of
from napari_gitseg.io.errors import GitsegInputError
from napari_gitseg.io.info import stack_info
from napari_gitseg.io.nifti import TOTALSEG_CT_LABELS, TOTALSEG_MR_LABELS, read_nifti_labels
from napari_gitseg.io.read import detect_kind, iter_stacks, read_masks, read_stack, read_stacks
from napari_gitseg.io.rle import RLEError, rle_decode, rle_encode
from napari_gitseg.io.stack import Stack
from napari_gitseg.io.train_csv import masks_for_stack, read_train_csv, write_rle_csv, write_scans_rle_csv
from napari_gitseg.io.uwmgi import write_uwmgi_dataset
from napari_gitseg.io.write import write_masks

__all__ = [
    "TOTALSEG_CT_LABELS",
    "TOTALSEG_MR_LABELS",
    "GitsegInputError",
    "RLEError",
    "Stack",
    "atomic_output",
    "detect_kind",
    "format_of",
    "iter_stacks",
    "masks_for_stack",
    "read_masks",
    "read_nifti_labels",
    "read_stack",
    "read_stacks",
    "read_train_csv",
    "rle_decode",
    "rle_encode",
    "stack_info",
    "stem_of",
    "write_masks",
    "write_rle_csv",
    "write_scans_rle_csv",
    "write_uwmgi_dataset",
]
