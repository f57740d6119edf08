"""Organ masks out as DICOM RT-STRUCT or SEG on the DICOM series of their stack.

A stack read from a DICOM series is cited as it is. Any other stack (UW-Madison PNGs, NIfTI,
TIFF, the phantom) has no series to cite: with ``with_images`` its images are first written as
a derived DICOM MR series in ``<out stem>_images/`` beside the output; without, a clear error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_gitseg.io.errors import GitsegInputError

DICOM_FORMATS = ("rtstruct", "seg")


def images_folder(out: str | Path) -> Path:
    """Where ``--with-images`` writes the DICOM series for the labels file ``out``."""
    out = Path(out)
    return out.with_name(f"{out.name.split('.')[0]}_images")


def series_geometry_for(stack, out: str | Path, fmt: str, with_images: bool):
    """The DICOM series the labels will cite: the stack's own, or one written beside ``out``."""
    from napari_gitseg.io.dicom.geometry import load_series
    from napari_gitseg.io.dicom.series import read_dicom
    from napari_gitseg.io.dicom.write import write_dicom_series

    if stack.kind == "dicom":
        return load_series(stack), []
    if not with_images:
        raise GitsegInputError(
            stack.source,
            f"is not a DICOM series ({stack.kind}); {fmt.upper()} must cite a "
            "DICOM series: export with --with-images to write the images as a "
            "DICOM MR series too",
        )
    folder = images_folder(out)
    files = write_dicom_series(folder, stack)
    return load_series(read_dicom(folder)), files


def write_dicom_labels(
    out: str | Path,
    stack,
    masks: np.ndarray,
    fmt: str,
    *,
    with_images: bool = False,
    algorithm: str = "SEMIAUTOMATIC",
    smooth_sigma: float = 0.0,
) -> list[Path]:
    """Write ``masks`` (C, Z, Y, X) of ``stack`` as ``fmt`` (rtstruct|seg) at ``out``; returns the paths written."""
    from napari_gitseg.io.dicom.rt import write_rtstruct
    from napari_gitseg.io.dicom.seg import write_seg

    if fmt not in DICOM_FORMATS:
        raise GitsegInputError(out, f"unknown DICOM format {fmt!r} (choose from {', '.join(DICOM_FORMATS)})")
    geometry, images = series_geometry_for(stack, out, fmt, with_images)
    if geometry.shape != tuple(stack.shape):
        raise GitsegInputError(stack.source, f"DICOM series has shape {geometry.shape}, the masks {stack.shape}")
    label = f"gitseg {stack.name}"[:64]
    if fmt == "rtstruct":
        path = write_rtstruct(
            out, geometry, masks, tuple(stack.classes), algorithm=algorithm, label=label, smooth_sigma=smooth_sigma
        )
    elif smooth_sigma:
        raise GitsegInputError(out, "smoothing applies to RT-STRUCT contours only; a SEG holds the masks as they are")
    else:
        path = write_seg(out, geometry, masks, tuple(stack.classes), algorithm=algorithm, label=label)
    return [*images, Path(path)]
