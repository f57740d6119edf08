"""Fill between slices: interpolate one organ between two slices a clinician corrected.

The method is morphological contour interpolation (Albu, Beugeling and Laurendeau 2008; the
interpolation of ITK-SNAP and 3D Slicer), from the maintained ITK module
``itk-morphologicalcontourinterpolation`` (``itk.MorphologicalContourInterpolator``). It follows
the contour's shape and position from one slice to the other, also when the two outlines do
not overlap.

Where ITK cannot interpolate, shape-based interpolation of signed distance maps is used
(Raya and Udupa 1990; ``method="distance"``): when the organ is missing on one of the two
slices (the organ ends between them: MCI only interpolates between slices that both hold the
organ, the distance maps let it shrink away), or when the ITK module is not installed. The
same fallback can be chosen on purpose (it needs no ITK, whose first use loads its wrappers
for tens of seconds).

No Qt and no store here: ``fill_between`` takes and returns plain boolean arrays.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

__all__ = ["METHODS", "fill_between", "itk_available"]

METHODS = ("auto", "itk", "distance")
_MARGIN = 4  # pixels around the two outlines that the interpolation may use


@functools.cache
def itk_available() -> bool:
    """True when ITK's morphological contour interpolation can be imported."""
    try:
        import itk  # noqa: F401

        return hasattr(itk, "MorphologicalContourInterpolator")
    except ImportError:
        return False


def fill_between(first: np.ndarray, last: np.ndarray, n_between: int, method: str = "auto") -> np.ndarray:
    """The organ on the ``n_between`` slices between two corrected slices: (n_between, Y, X) bool.

    ``first`` and ``last`` are the organ's masks (Y, X) on the two corrected slices, in z order.
    ``method``: ``"itk"`` (morphological contour interpolation), ``"distance"`` (signed distance
    maps) or ``"auto"`` (ITK where it applies, see the module docstring).
    """
    if method not in METHODS:
        raise ValueError(f"unknown interpolation method {method!r}; expected one of {METHODS}")
    first, last = np.asarray(first, dtype=bool), np.asarray(last, dtype=bool)
    if first.shape != last.shape or first.ndim != 2:
        raise ValueError(f"the two slices must be 2-D masks of one shape, got {first.shape} and {last.shape}")
    out = np.zeros((max(0, int(n_between)), *first.shape), dtype=bool)
    if out.shape[0] == 0 or not (first.any() or last.any()):
        return out
    box = _box(first | last, _MARGIN)
    a, b = first[box], last[box]
    use_itk = method == "itk" or (method == "auto" and a.any() and b.any() and itk_available())
    if method == "itk" and not (a.any() and b.any()):
        raise ValueError("ITK's contour interpolation needs the organ on both slices")
    out[(slice(None), *box)] = _itk_between(a, b, out.shape[0]) if use_itk else _distance_between(a, b, out.shape[0])
    return out


def _box(mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    """Bounding box of ``mask`` grown by ``margin`` (clipped to the image)."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return (
        slice(max(0, ys.min() - margin), min(h, ys.max() + margin + 1)),
        slice(max(0, xs.min() - margin), min(w, xs.max() + margin + 1)),
    )


def _itk_between(first: np.ndarray, last: np.ndarray, n: int) -> np.ndarray:
    """Morphological contour interpolation along z of a (n + 2)-slice volume with its two ends set."""
    import itk

    volume = np.zeros((n + 2, *first.shape), dtype=np.uint8)
    volume[0], volume[-1] = first, last
    image = itk.image_from_array(volume)
    interpolator = itk.MorphologicalContourInterpolator[type(image)].New(image)
    interpolator.SetAxis(2)  # numpy's first axis (z) is ITK's third
    interpolator.SetLabel(1)
    interpolator.Update()
    return itk.array_from_image(interpolator.GetOutput())[1:-1] > 0


def _signed_distance(mask: np.ndarray) -> np.ndarray:
    """Signed distance to the outline (negative inside)."""
    return ndimage.distance_transform_edt(~mask) - ndimage.distance_transform_edt(mask)


def _distance_between(first: np.ndarray, last: np.ndarray, n: int) -> np.ndarray:
    """Shape-based interpolation: the zero level of blended signed distance maps, centroids aligned.

    Each end's distance map is moved to the interpolated centroid before blending (so a shape
    that moves does not split in two). An empty end stands for an organ ending: a constant map
    at half the other shape's depth, so the organ shrinks away towards it.
    """
    out = np.zeros((n, *first.shape), dtype=bool)
    if not (first.any() or last.any()):
        return out
    ends = [m if m.any() else None for m in (first, last)]
    maps = [None if m is None else _signed_distance(m) for m in ends]
    centres = [None if m is None else np.array(ndimage.center_of_mass(m)) for m in ends]
    for i in (0, 1):
        if maps[i] is None:
            other = maps[1 - i]
            maps[i], centres[i] = np.full(first.shape, 0.5 * -other.min()), centres[1 - i]
    for k in range(n):
        t = (k + 1) / (n + 1)
        centre = (1 - t) * centres[0] + t * centres[1]
        d0 = ndimage.shift(maps[0], centre - centres[0], order=1, mode="nearest")
        d1 = ndimage.shift(maps[1], centre - centres[1], order=1, mode="nearest")
        out[k] = (1 - t) * d0 + t * d1 < 0
    return out
