"""Multi-page TIFF (ImageJ, OME or plain) via tifffile.

Images: a 2-D TIFF is one slice; a 3-D one (pages, or an ImageJ/OME Z stack) is a slice
stack (a 3-D ImageJ file whose pages are marked as channels, as tifffile writes by default,
too); multi-channel stacks, RGB and 4-D+ images are refused. Spacing comes from the ImageJ
metadata (``spacing`` for z, the resolution tags for y and x, ``unit``), else from OME
``PhysicalSize*``, else from resolution tags in centimetres; otherwise it is (1, 1, 1) and
``meta["note"]`` says so.

Masks written by :func:`write_tiff`:

- per-class masks ``(C, Z, Y, X)`` are an ImageJ hyperstack ``ZCYX`` of uint8 0/1, one
  channel per class in ``CLASSES`` order, so overlapping organs survive;
- a label image ``(Z, Y, X)`` is a uint8 stack with ``LABEL_VALUES`` (one label per pixel).

:func:`read_tiff_masks` picks by shape: a TIFF with ``len(CLASSES)`` channels reads back
as per-class masks (any non-zero value is inside); a single-channel TIFF is a label image.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import numpy as np

from napari_gitseg.classes import CLASSES, labels_to_masks
from napari_gitseg.io._util import atomic_output, check_pixels, check_size, generic_slice_ids, stem_of
from napari_gitseg.io.errors import GitsegInputError
from napari_gitseg.io.stack import Stack

# millimetres per unit, for ImageJ 'unit' and OME 'PhysicalSize*Unit'
_UNIT_MM = {
    "mm": 1.0,
    "millimeter": 1.0,
    "millimetre": 1.0,
    "cm": 10.0,
    "centimeter": 10.0,
    "m": 1000.0,
    "meter": 1000.0,
    "um": 1e-3,
    "µm": 1e-3,
    "\u03bcm": 1e-3,
    "micron": 1e-3,
    "microns": 1e-3,
    "micrometer": 1e-3,
    "nm": 1e-6,
    "nanometer": 1e-6,
    "inch": 25.4,
    "in": 25.4,
}
_SLICE_AXES = "ZIQTPRHEVLAM"  # tifffile axis letters that can hold a stack of slices
MASKS_INFO = "gitseg masks: "


def _unit_mm(unit: str | None) -> float | None:
    if unit is None:
        return None
    text = str(unit).strip().lower().replace("\\u00b5", "µ")
    return _UNIT_MM.get(text)


def _arrange(path: Path, axes: str, data: np.ndarray) -> np.ndarray:
    """Reorder a series to (Z, C, Y, X); refuse RGB and more than one slice axis."""
    if not axes.endswith("YX"):
        raise GitsegInputError(path, f"has axes {axes!r}; expected the last two to be Y and X")
    if "S" in axes and data.shape[axes.index("S")] > 1:
        hint = ""
        if axes == "SYX" and data.shape[0] in (3, 4):  # tifffile.imwrite's default for a (3|4, Y, X) array
            hint = (
                f"; if these are {data.shape[0]} slices, save them again with "
                "tifffile.imwrite(..., photometric='minisblack')"
            )
        raise GitsegInputError(
            path, f"is an RGB/multi-sample image (axes {axes}, shape {data.shape}); expected greyscale{hint}"
        )
    slice_axes = [i for i, a in enumerate(axes[:-2]) if a != "C" and data.shape[i] > 1]
    if len(slice_axes) > 1:
        raise GitsegInputError(
            path,
            f"is {len(slice_axes) + 2}-D (axes {axes}, shape {data.shape}); expected one stack of 2-D slices",
        )
    c_axis = axes.index("C") if "C" in axes else None
    order = [*slice_axes, *([c_axis] if c_axis is not None else [])]
    order += [i for i in range(len(axes) - 2) if i not in order]
    data = data.transpose(*order, len(axes) - 2, len(axes) - 1)
    n_z = data.shape[0] if slice_axes else 1
    n_c = data.shape[len(slice_axes)] if c_axis is not None else 1
    return data.reshape(n_z, n_c, data.shape[-2], data.shape[-1])


def _ome_spacing(tif) -> tuple[list[float | None], str | None]:
    try:
        root = ET.fromstring(tif.ome_metadata)
    except (ET.ParseError, TypeError, ValueError):
        return [None, None, None], None
    pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None)
    if pixels is None:
        return [None, None, None], None
    out: list[float | None] = []
    for axis in "ZYX":
        value = pixels.get(f"PhysicalSize{axis}")
        factor = _unit_mm(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        try:
            out.append(float(value) * factor if value is not None and factor else None)
        except ValueError:
            out.append(None)
    return out, "OME"


def _resolution_mm(page, unit_mm: float | None) -> list[float | None]:
    out: list[float | None] = []
    for tag in ("YResolution", "XResolution"):
        item = page.tags.get(tag)
        value = None
        if item is not None and unit_mm:
            try:
                num, den = item.value
                if num > 0 and den > 0:
                    value = unit_mm * den / num
            except (TypeError, ValueError, ZeroDivisionError):
                value = None
        out.append(value)
    return out


def _tiff_spacing(tif, page) -> tuple[tuple[float, float, float], str | None]:
    """(z, y, x) spacing in mm and the metadata it came from (None when unknown)."""
    if tif.is_imagej and tif.imagej_metadata:
        meta = tif.imagej_metadata
        unit_mm = _unit_mm(meta.get("unit")) if meta.get("unit") else 1.0
        y, x = _resolution_mm(page, unit_mm)
        z = None
        if meta.get("spacing") is not None and unit_mm:
            try:
                z = float(meta["spacing"]) * unit_mm
            except (TypeError, ValueError):
                z = None
        if any(v is not None for v in (z, y, x)):
            return tuple(v if v is not None and v > 0 else 1.0 for v in (z, y, x)), "ImageJ"  # type: ignore[return-value]
    if tif.is_ome:
        values, source = _ome_spacing(tif)
        if any(v is not None for v in values):
            return tuple(v if v is not None and v > 0 else 1.0 for v in values), source  # type: ignore[return-value]
    unit = page.tags.get("ResolutionUnit")
    if unit is not None and int(getattr(unit.value, "value", unit.value)) == 3:  # centimetre
        y, x = _resolution_mm(page, 10.0)
        if y is not None and x is not None:
            return (1.0, y, x), "resolution tags"
    return (1.0, 1.0, 1.0), None


def _read_series(path: Path) -> tuple[np.ndarray, tuple[float, float, float], str | None, dict]:
    """Read the first series as (Z, C, Y, X) with its spacing, spacing source and ImageJ metadata."""
    import tifffile

    if not path.is_file():
        raise GitsegInputError(path, "does not exist or is not a file")
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise GitsegInputError(path, "holds no image")
            series = tif.series[0]
            check_size(path, series.shape, series.dtype.itemsize)
            data = series.asarray()
            if data.shape != tuple(series.shape):
                raise GitsegInputError(path, f"decoded to shape {data.shape}, expected {series.shape}")
            arranged = _arrange(path, series.axes, data)
            spacing, spacing_source = _tiff_spacing(tif, series.pages[0] if series.pages else tif.pages[0])
            imagej = dict(tif.imagej_metadata or {})
    except GitsegInputError:
        raise
    except Exception as err:  # tifffile and its codecs raise many types for damaged files
        raise GitsegInputError(path, f"is not a readable TIFF file ({type(err).__name__}: {err})") from err
    return arranged, spacing, spacing_source, imagej


def read_tiff(path: str | Path) -> Stack:
    """Read a 2-D or 3-D greyscale TIFF as a Stack."""
    path = Path(path)
    data, spacing, spacing_source, imagej = _read_series(path)
    notes = []
    is_masks = str(imagej.get("Info", "")).startswith(MASKS_INFO)
    if data.shape[1] > 1 and data.shape[0] == 1 and not is_masks:
        # a plain 3-D stack saved with its pages marked as channels (tifffile's ImageJ default)
        data = data.transpose(1, 0, 2, 3)
        notes.append("channels read as slices")
    if data.shape[1] > 1:
        hint = "; it is a gitseg mask file: open it as masks" if is_masks else ""
        raise GitsegInputError(path, f"has {data.shape[1]} channels; expected one greyscale channel{hint}")
    image = check_pixels(path, np.ascontiguousarray(data[:, 0]))
    meta: dict = {"spacing_source": spacing_source}
    if spacing_source is None:
        notes.append("no spacing in the TIFF metadata; using 1 mm")
    if notes:
        meta["note"] = "; ".join(notes)
    return Stack(
        image=image,
        spacing=spacing,
        slice_ids=generic_slice_ids(stem_of(path), image.shape[0]),
        source=str(path),
        kind="tiff",
        meta=meta,
    )


def read_tiff_masks(path: str | Path, like: Stack) -> Stack:
    """Read a mask TIFF onto ``like``: C channels = per-class masks, one channel = label image."""
    path = Path(path)
    data, _, _, imagej = _read_series(path)
    n_z, n_c, height, width = data.shape
    if (n_z, height, width) != like.shape:
        raise GitsegInputError(path, f"masks are {(n_z, height, width)} but the image {like.source} is {like.shape}")
    if data.dtype.kind not in "uib":
        raise GitsegInputError(path, f"mask pixels are {data.dtype}; expected integers")
    classes = like.classes
    info = str(imagej.get("Info", ""))
    if info.startswith(MASKS_INFO):
        written = tuple(c.strip() for c in info[len(MASKS_INFO) :].splitlines()[0].split(","))
        if written != tuple(classes):
            raise GitsegInputError(path, f"holds classes {written}, expected {tuple(classes)}")
    if n_c == len(classes):
        masks = np.ascontiguousarray(data.transpose(1, 0, 2, 3)) != 0
    elif n_c == 1:
        labels = data[:, 0]
        top = int(labels.max()) if labels.size else 0
        if labels.min() < 0 or top > len(classes):
            raise GitsegInputError(path, f"label values {int(labels.min())}..{top} are not 0..{len(classes)}")
        masks = labels_to_masks(labels, classes)
    else:
        raise GitsegInputError(path, f"has {n_c} channels; expected {len(classes)} (one per class) or 1 (labels)")
    return replace(
        like,
        masks=masks,
        labelled=np.ones(like.shape[0], dtype=bool),
        meta={**like.meta, "masks_source": str(path)},
    )


def write_tiff(
    path: str | Path,
    masks_or_labels: np.ndarray,
    spacing: tuple[float, float, float],
    classes: tuple[str, ...] = CLASSES,
) -> Path:
    """Write per-class masks ``(C, Z, Y, X)`` (ZCYX hyperstack) or labels ``(Z, Y, X)`` as an ImageJ TIFF (atomic)."""
    import tifffile

    data = np.asarray(masks_or_labels)
    z_mm, y_mm, x_mm = (float(s) for s in spacing)
    metadata: dict = {"spacing": z_mm, "unit": "mm"}
    if data.ndim == 4:
        if data.shape[0] != len(classes):
            raise ValueError(f"masks have {data.shape[0]} classes, expected {len(classes)} ({classes})")
        out = np.ascontiguousarray(data.astype(bool).transpose(1, 0, 2, 3)).astype(np.uint8)
        metadata.update(axes="ZCYX", Info=MASKS_INFO + ",".join(classes))
    elif data.ndim == 3:
        if data.dtype.kind not in "uib" or (data.size and (data.min() < 0 or data.max() > 255)):
            raise ValueError(f"labels must be integers 0..255, got {data.dtype} {data.min()}..{data.max()}")
        out = data.astype(np.uint8)
        metadata.update(axes="ZYX")
    else:
        raise ValueError(f"expected masks (C, Z, Y, X) or labels (Z, Y, X), got shape {data.shape}")
    path = Path(path)
    with atomic_output(path) as tmp:
        tifffile.imwrite(
            tmp,
            out,
            imagej=True,
            resolution=(1.0 / x_mm, 1.0 / y_mm),
            metadata=metadata,
            compression="zlib",
        )
    return path
