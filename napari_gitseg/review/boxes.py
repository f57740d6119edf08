"""Box prompts on a slice: boxes from a drag or from the pieces of a mask, and how a box's mask is applied.

A ``Box`` is a half-open pixel rectangle ``[y0, y1) x [x0, x1)`` of one slice. The rule of the box
tool (``apply_box``), the same for a box drawn by the clinician, Refine by boxes and Propagate:

- inside the box, the selected organ becomes the foundation model's mask: its pixels become the
  organ, the organ's pixels the model leaves out become background; a pixel of another organ that
  the model claims becomes the selected organ (the box says what is there);
- outside the box nothing changes;
- pixels the clinician painted or erased by brush on this slice keep their value (``keep``), as
  Refine keeps them; a box dragged with Shift held is drawn over them on purpose and replaces them
  too (``keep=None``).

No Qt and no model here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["Box", "BoxError", "apply_box", "box_from_corners", "mask_box", "piece_boxes"]

_EIGHT = np.ones((3, 3), dtype=bool)


class BoxError(ValueError):
    """A box that cannot be used (no area, outside the image); the message says why."""


@dataclass(frozen=True)
class Box:
    """A half-open pixel rectangle of one slice: rows ``y0 .. y1 - 1``, columns ``x0 .. x1 - 1``."""

    y0: int
    x0: int
    y1: int
    x1: int

    @property
    def area(self) -> int:
        """Pixels inside the box."""
        return max(0, self.y1 - self.y0) * max(0, self.x1 - self.x0)

    @property
    def slices(self) -> tuple[slice, slice]:
        """The box as an index of a (Y, X) array."""
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def grown(self, margin: int, shape: tuple[int, int]) -> Box:
        """The box grown by ``margin`` pixels on every side, clipped to an image of ``shape``."""
        return Box(
            max(0, self.y0 - margin),
            max(0, self.x0 - margin),
            min(shape[0], self.y1 + margin),
            min(shape[1], self.x1 + margin),
        )

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """(Y, X) bool, True inside the box."""
        out = np.zeros(shape, dtype=bool)
        out[self.slices] = True
        return out


def box_from_corners(first, second, shape: tuple[int, int]) -> Box:
    """The box between two corners of a drag, ``(y, x)`` in pixel coordinates (any order, floats allowed).

    The box covers every pixel the rectangle touches; a part outside the image is cut off. Raises
    ``BoxError`` for a box of no area (a click, a line) or one wholly outside the image.
    """
    (ya, xa), (yb, xb) = (float(first[0]), float(first[1])), (float(second[0]), float(second[1]))
    if not all(math.isfinite(v) for v in (ya, xa, yb, xb)):
        raise BoxError(f"box corners {first} and {second} are not finite numbers")
    y0, y1 = sorted((ya, yb))
    x0, x1 = sorted((xa, xb))
    iy0, ix0, iy1, ix1 = math.floor(y0 + 0.5), math.floor(x0 + 0.5), math.floor(y1 + 0.5) + 1, math.floor(x1 + 0.5) + 1
    if iy1 - iy0 < 2 or ix1 - ix0 < 2:
        raise BoxError(
            f"the box from ({ya:.0f}, {xa:.0f}) to ({yb:.0f}, {xb:.0f}) has no area: drag a rectangle around the organ"
        )
    h, w = shape
    box = Box(max(0, iy0), max(0, ix0), min(h, iy1), min(w, ix1))
    if box.y1 - box.y0 < 2 or box.x1 - box.x0 < 2:
        raise BoxError(f"the box from ({ya:.0f}, {xa:.0f}) to ({yb:.0f}, {xb:.0f}) lies outside the {h} x {w} slice")
    return box


def mask_box(mask: np.ndarray) -> Box | None:
    """The bounding box of a (Y, X) mask, or None when it is empty."""
    rows, cols = np.nonzero(np.any(mask, axis=1))[0], np.nonzero(np.any(mask, axis=0))[0]
    if rows.size == 0:
        return None
    return Box(int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


def piece_boxes(mask: np.ndarray, margin: int = 0, min_area: int = 1) -> list[Box]:
    """One box per connected piece (8-connected) of ``mask`` of at least ``min_area`` pixels, grown by
    ``margin``, largest piece first."""
    mask = np.asarray(mask, dtype=bool)
    lab, n = ndimage.label(mask, structure=_EIGHT)
    if n == 0:
        return []
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    out = []
    for k, found in enumerate(ndimage.find_objects(lab), start=1):
        if found is not None and sizes[k] >= min_area:
            box = Box(found[0].start, found[1].start, found[0].stop, found[1].stop)
            out.append((sizes[k], box.grown(margin, mask.shape)))
    return [b for _s, b in sorted(out, key=lambda t: -t[0])]


def apply_box(
    labels: np.ndarray, value: int, box: Box, organ: np.ndarray, keep: np.ndarray | None = None
) -> np.ndarray:
    """``labels`` (Y, X) with organ ``value`` inside ``box`` set to the model's mask ``organ`` (Y, X); see the
    module docstring. ``keep``: pixels that keep their value (the clinician's brush strokes), or None."""
    labels = np.asarray(labels)
    out = labels.copy()
    inside = box.mask(labels.shape)
    organ = np.asarray(organ, dtype=bool) & inside
    out[organ] = value
    out[inside & ~organ & (labels == value)] = 0
    if keep is not None:
        keep = np.asarray(keep, dtype=bool)
        out[keep] = labels[keep]
    return out
