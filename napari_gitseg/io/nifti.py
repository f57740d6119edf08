"""NIfTI volumes via nibabel, turned into axial (z, y, x) stacks.

Orientation: the voxel axes are reoriented to LPS (array x towards the patient's left,
y towards posterior, z towards superior) and transposed to (z, y, x). Shown as an image
(row 0 at the top), each slice is then in the radiological convention of the UW-Madison
PNGs and of DICOM: anterior at the top, the patient's right on the left of the screen;
z runs from inferior to superior. Spacing is the voxel size in the same order.
``meta["affine"]`` keeps the file's own affine and ``meta["ornt"]`` the reorientation, so
:func:`write_nifti` writes masks back on the source's voxel grid (they overlay the original
file in any viewer). Stacks from other readers get an affine built from their spacing.

Label volumes: :func:`read_nifti_labels` maps label values to classes. TotalSegmentator's
maps are given as constants; its duodenum is counted as small bowel (the challenge's
small-bowel masks include the duodenum).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from napari_gitseg.classes import LABEL_VALUES
from napari_gitseg.io._util import (
    atomic_output,
    check_pixels,
    check_size,
    generic_slice_ids,
    input_errors,
    stem_of,
)
from napari_gitseg.io.errors import GitsegInputError
from napari_gitseg.io.stack import Stack

# TotalSegmentator label values (MR task "total_mr" and CT task "total")
TOTALSEG_MR_LABELS: dict[int, str] = {6: "stomach", 13: "small_bowel", 14: "small_bowel", 15: "large_bowel"}
TOTALSEG_CT_LABELS: dict[int, str] = {6: "stomach", 18: "small_bowel", 19: "small_bowel", 20: "large_bowel"}
# label volumes written by write_nifti
GITSEG_LABELS: dict[int, str] = {value: name for name, value in LABEL_VALUES.items()}
AXCODES = ("L", "P", "S")
MASKS_DESCRIP = "gitseg masks: "
LABELS_DESCRIP = "gitseg labels"


def _gzip_size(path: Path) -> int | None:
    """Uncompressed size modulo 2**32 from the gzip trailer (None when not a gzip file)."""
    try:
        with open(path, "rb") as handle:
            if handle.read(2) != b"\x1f\x8b":
                return None
            handle.seek(-4, 2)
            return int.from_bytes(handle.read(4), "little")
    except OSError:
        return None


def _load(path: Path):
    """Load a NIfTI image and check its header and that its data is all there before reading it."""
    import nibabel as nib
    from nibabel.orientations import io_orientation

    if not path.is_file():
        raise GitsegInputError(path, "does not exist or is not a file")
    with input_errors(path, "is not a readable NIfTI file"):
        img = nib.load(str(path), mmap=False)
        if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
            raise GitsegInputError(path, f"is a {type(img).__name__}, not a NIfTI-1/2 image")
        shape = tuple(int(s) for s in img.shape)
        itemsize = img.get_data_dtype().itemsize
        check_size(path, shape, itemsize)
        needed = int(img.header.get_data_offset()) + int(np.prod(shape)) * itemsize
        stored = _gzip_size(path)
        if stored is None and not path.name.lower().endswith(".gz"):
            stored = path.stat().st_size
        if stored is not None and needed < 2**32 and stored < needed:
            raise GitsegInputError(
                path, f"is truncated: its header needs {needed} bytes of data, the file holds {stored}"
            )
        affine = np.asarray(img.affine, dtype=float)
        if (
            not np.isfinite(affine).all()
            or abs(np.linalg.det(affine[:3, :3])) < 1e-12
            or np.isnan(io_orientation(affine)).any()
        ):
            raise GitsegInputError(path, "has a degenerate orientation (affine or voxel sizes are zero or invalid)")
    return img


def _data(path: Path, img) -> np.ndarray:
    with input_errors(path, "image data cannot be read"):
        return np.asarray(np.asanyarray(img.dataobj))


def _to_zyx(path: Path, img, data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reorient (x, y, z[, c]) data to LPS and move to (z, y, x[, c]) -> (data, ornt, LPS affine)."""
    from nibabel.orientations import (
        apply_orientation,
        axcodes2ornt,
        inv_ornt_aff,
        io_orientation,
        ornt_transform,
    )

    with input_errors(path, "cannot be reoriented"):
        ornt = ornt_transform(io_orientation(img.affine), axcodes2ornt(AXCODES))
        shape3 = data.shape[:3]
        lps = apply_orientation(data, ornt)
        affine = img.affine @ inv_ornt_aff(ornt, shape3)
        axes = (2, 1, 0, *range(3, lps.ndim))
        return np.ascontiguousarray(lps.transpose(axes)), ornt, affine


def _spacing(affine: np.ndarray) -> tuple[float, float, float]:
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    return float(zooms[2]), float(zooms[1]), float(zooms[0])


def _descrip(img) -> str:
    try:
        return bytes(img.header["descrip"]).split(b"\x00")[0].decode("ascii", "replace")
    except Exception:
        return ""


def read_nifti(path: str | Path) -> Stack:
    """Read a 3-D NIfTI (or 4-D with one volume) as an axial (z, y, x) Stack."""
    path = Path(path)
    img = _load(path)
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) < 3:
        raise GitsegInputError(path, f"is {len(shape)}-D (shape {img.shape}); expected a 3-D volume")
    if len(shape) == 4:
        hint = "; it is a gitseg mask file: open it as masks" if _descrip(img).startswith(MASKS_DESCRIP) else ""
        raise GitsegInputError(path, f"holds {shape[3]} volumes (shape {img.shape}); expected one 3-D volume{hint}")
    if len(shape) > 4:
        raise GitsegInputError(path, f"is {len(shape)}-D (shape {img.shape}); expected a 3-D volume")
    data = _data(path, img).reshape(shape)
    data = check_pixels(path, data)
    image, ornt, affine = _to_zyx(path, img, data)
    spacing = _spacing(affine)
    return Stack(
        image=image,
        spacing=spacing,
        slice_ids=generic_slice_ids(stem_of(path), image.shape[0]),
        source=str(path),
        kind="nifti",
        meta={
            "affine": np.asarray(img.affine, dtype=float),
            "ornt": ornt,
            "source_shape": tuple(int(s) for s in shape),
            "lps_affine": affine,
            "orientation": "".join(AXCODES),
        },
    )


def _check_grid(path: Path, affine: np.ndarray, shape: tuple[int, ...], like: Stack) -> None:
    if tuple(shape) != like.shape:
        raise GitsegInputError(path, f"has shape {tuple(shape)} (z, y, x) but the image {like.source} has {like.shape}")
    like_affine = like.meta.get("lps_affine")
    if like_affine is not None and not np.allclose(affine, like_affine, atol=1e-3):
        raise GitsegInputError(path, f"is not on the same voxel grid (affine) as the image {like.source}")


def _grid_affine(stack: Stack) -> np.ndarray:
    """The LPS-array affine of a stack: its own when read from NIfTI, else built from spacing."""
    if stack.meta.get("lps_affine") is not None:
        return np.asarray(stack.meta["lps_affine"], dtype=float)
    dz, dy, dx = stack.spacing
    return np.diag([-dx, -dy, dz, 1.0])  # NIfTI world is RAS: +x array -> left, +y array -> posterior


def read_nifti_labels(path: str | Path, mapping: dict[int, str], like: Stack) -> Stack:
    """Read a label volume on ``like``'s grid, mapping label values to classes; returns ``like`` with masks."""
    path = Path(path)
    unknown = {name for name in mapping.values() if name not in like.classes}
    if unknown:
        raise ValueError(f"mapping names unknown classes {sorted(unknown)}; classes are {like.classes}")
    img = _load(path)
    if len(img.shape) != 3 and not (len(img.shape) == 4 and img.shape[3] == 1):
        raise GitsegInputError(path, f"is not a 3-D label volume (shape {img.shape})")
    data = _data(path, img).reshape(img.shape[:3])
    if data.dtype.kind == "f":
        if not np.isfinite(data).all() or not np.array_equal(data, np.round(data)):
            raise GitsegInputError(path, "label volume holds non-integer values")
    elif data.dtype.kind not in "uib":
        raise GitsegInputError(path, f"label volume has pixel type {data.dtype}")
    labels, _, affine = _to_zyx(path, img, data)
    _check_grid(path, affine, labels.shape, like)
    masks = np.stack([np.isin(labels, [v for v, name in mapping.items() if name == cls]) for cls in like.classes])
    return replace(
        like,
        masks=masks,
        labelled=np.ones(like.shape[0], dtype=bool),
        meta={**like.meta, "masks_source": str(path)},
    )


def read_nifti_masks(path: str | Path, like: Stack) -> Stack:
    """Read a file from :func:`write_nifti` on ``like``'s grid: 4-D per-class masks or 3-D gitseg labels."""
    path = Path(path)
    img = _load(path)
    if len(img.shape) == 3 or (len(img.shape) == 4 and img.shape[3] == 1):
        return read_nifti_labels(path, GITSEG_LABELS, like)
    if len(img.shape) != 4 or img.shape[3] != len(like.classes):
        raise GitsegInputError(
            path,
            f"has shape {img.shape}; expected (x, y, z, {len(like.classes)}) per-class masks or 3-D labels",
        )
    descrip = _descrip(img)
    if descrip.startswith(MASKS_DESCRIP):
        written = tuple(c.strip() for c in descrip[len(MASKS_DESCRIP) :].split(","))
        if written != tuple(like.classes):
            raise GitsegInputError(path, f"holds classes {written}, expected {tuple(like.classes)}")
    data = _data(path, img)
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise GitsegInputError(path, "mask volume holds NaN or infinite values")
    zyxc, _, affine = _to_zyx(path, img, data)
    _check_grid(path, affine, zyxc.shape[:3], like)
    masks = np.ascontiguousarray(zyxc.transpose(3, 0, 1, 2)) != 0
    return replace(
        like,
        masks=masks,
        labelled=np.ones(like.shape[0], dtype=bool),
        meta={**like.meta, "masks_source": str(path)},
    )


def write_nifti(path: str | Path, masks_or_labels: np.ndarray, stack: Stack) -> Path:
    """Write per-class masks ``(C, Z, Y, X)`` as 4-D (x, y, z, C) uint8 or labels ``(Z, Y, X)`` as 3-D, atomically.

    The voxel grid is the source file's own when ``stack`` came from NIfTI, so the output
    overlays the original; otherwise an LPS grid is built from ``stack.spacing``.
    """
    import nibabel as nib
    from nibabel.orientations import apply_orientation, io_orientation, ornt_transform

    data = np.asarray(masks_or_labels)
    classes = stack.classes
    if data.ndim == 4:
        if data.shape != (len(classes), *stack.shape):
            raise ValueError(f"masks shape {data.shape} != {(len(classes), *stack.shape)}")
        lps = data.astype(np.uint8).transpose(3, 2, 1, 0)  # (x, y, z, C)
        descrip = MASKS_DESCRIP + ",".join(classes)
    elif data.ndim == 3:
        if data.shape != stack.shape:
            raise ValueError(f"labels shape {data.shape} != {stack.shape}")
        if data.dtype.kind not in "uib" or (data.size and (data.min() < 0 or data.max() > 255)):
            raise ValueError(f"labels must be integers 0..255, got {data.dtype}")
        lps = data.astype(np.uint8).transpose(2, 1, 0)
        descrip = LABELS_DESCRIP + " " + ",".join(f"{v}={n}" for v, n in sorted(GITSEG_LABELS.items()))
    else:
        raise ValueError(f"expected masks (C, Z, Y, X) or labels (Z, Y, X), got shape {data.shape}")

    if stack.meta.get("affine") is not None and stack.meta.get("ornt") is not None:
        affine = np.asarray(stack.meta["affine"], dtype=float)
        back = ornt_transform(io_orientation(np.asarray(stack.meta["lps_affine"])), io_orientation(affine))
        out = apply_orientation(lps, back)
    else:
        affine = _grid_affine(stack)
        out = lps
    img = nib.Nifti1Image(np.ascontiguousarray(out), affine)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = descrip[:79].encode("ascii")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path = Path(path)
    with atomic_output(path) as tmp:
        nib.save(img, str(tmp))
    return path


__all__ = [
    "GITSEG_LABELS",
    "TOTALSEG_CT_LABELS",
    "TOTALSEG_MR_LABELS",
    "read_nifti",
    "read_nifti_labels",
    "read_nifti_masks",
    "write_nifti",
]
