"""Binary slice masks <-> closed planar polygons (pixel coordinates), the geometry of RT-STRUCT contours.

Mask -> polygons: the mask is upsampled 2x (each pixel a 2x2 block) and traced with marching
squares at level 0.5 (``skimage.measure.find_contours``, 8-connected foreground). The polygons
then run along pixel edges, cutting each corner by a quarter pixel, so every pixel centre is at
least a quarter pixel inside or outside: rasterising them again (pixel centre inside, even-odd
rule) gives back the mask exactly, a one-pixel-wide sliver (straight or diagonal) included, and
the enclosed area is the pixel area within 1/32 pixel per corner. Holes come out as inner
polygons; an island inside a hole as another outer one. Collinear points are dropped.

Components (8-connected) smaller than ``MIN_COMPONENT_PIXELS`` are dropped and holes (4-connected
background enclosed by the organ) smaller than it are filled, so no speck becomes a contour a
planning system would show as a dot. ``smooth_sigma`` (pixels, default 0 = off) blurs the
upsampled mask before tracing for rounder contours; the round trip is then no longer exact.

Polygons -> mask: every polygon of a slice is filled (pixel centres inside) and combined with
exclusive or, the rule planning systems and 3D Slicer use for inner contours.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

MIN_COMPONENT_PIXELS = 3


def clean_mask(mask: np.ndarray, min_pixels: int = MIN_COMPONENT_PIXELS) -> np.ndarray:
    """Drop components and fill holes smaller than ``min_pixels`` (8-connected organ, 4-connected holes)."""
    mask = np.asarray(mask, bool)
    if min_pixels <= 1 or not mask.any():
        return mask
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_pixels
    keep[0] = False
    out = keep[labels]
    holes, m = ndimage.label(~out)
    hole_sizes = np.bincount(holes.ravel(), minlength=m + 1)
    border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
    small = hole_sizes < min_pixels
    small[0] = False
    small[border] = False
    return out | small[holes]


def _simplify(points: np.ndarray) -> np.ndarray:
    """Drop the repeated closing point and points on a straight line between their neighbours."""
    if len(points) > 1 and np.allclose(points[0], points[-1]):
        points = points[:-1]
    prev, nxt = np.roll(points, 1, axis=0), np.roll(points, -1, axis=0)
    a, b = points - prev, nxt - points
    turn = np.abs(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]) > 1e-9
    return points[turn]


def mask_to_polygons(
    mask: np.ndarray, min_pixels: int = MIN_COMPONENT_PIXELS, smooth_sigma: float = 0.0
) -> list[np.ndarray]:
    """Closed polygons ``(N, 2)`` of (row, column) pixel coordinates outlining a 2-D mask, holes included."""
    from skimage.measure import find_contours

    mask = clean_mask(mask, min_pixels)
    if not mask.any():
        return []
    big = np.pad(np.repeat(np.repeat(mask, 2, axis=0), 2, axis=1), 1).astype(float)
    if smooth_sigma > 0:
        big = ndimage.gaussian_filter(big, 2 * smooth_sigma)
    polygons = []
    for contour in find_contours(big, 0.5, fully_connected="high"):
        points = _simplify((contour - 1.0 - 0.5) / 2.0)  # padded, upsampled index -> pixel coordinate
        if len(points) >= 3:
            polygons.append(points)
    return polygons


def polygons_to_mask(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Fill ``(N, 2)`` (row, column) polygons on a ``shape`` grid, combined by exclusive or."""
    from skimage.draw import polygon

    out = np.zeros(shape, bool)
    for points in polygons:
        rr, cc = polygon(points[:, 0], points[:, 1], shape)
        layer = np.zeros(shape, bool)
        layer[rr, cc] = True
        out ^= layer
    return out
