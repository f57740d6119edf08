"""Numpy-only helpers around inference: the body's bounding box, small-component removal, confidence.

No torch here. The body box lets the predictor run the network on the part of the frame
that holds the patient (MRI air is dark); organs are inside the body, so nothing is lost.
"""

from __future__ import annotations

import numpy as np

__all__ = ["binary_entropy", "body_box", "remove_small_components"]


def body_box(
    volume: np.ndarray, margin: int = 16, rel_threshold: float = 0.5, min_fraction: float = 0.05
) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) box around the body in a normalised (Z, Y, X) volume, or None if no body is found.

    The body is where the (lightly smoothed) maximum projection over z exceeds ``rel_threshold``
    times its Otsu threshold; connected parts smaller than ``min_fraction`` of the largest are
    speckle and ignored. The box is grown by ``margin`` pixels and clipped to the frame.
    """
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    volume = np.asarray(volume)
    if volume.ndim != 3 or volume.size == 0:
        raise ValueError(f"body_box needs a (Z, Y, X) volume, got shape {volume.shape}")
    proj = ndimage.gaussian_filter(volume.max(axis=0).astype(np.float32, copy=False), sigma=1.5)
    if float(proj.max()) <= float(proj.min()):
        return None
    mask = proj > rel_threshold * threshold_otsu(proj)
    labels, n = ndimage.label(mask)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(sizes >= min_fraction * sizes.max()) + 1
    ys, xs = np.nonzero(np.isin(labels, keep))
    h, w = proj.shape
    return (
        max(int(ys.min()) - margin, 0),
        min(int(ys.max()) + 1 + margin, h),
        max(int(xs.min()) - margin, 0),
        min(int(xs.max()) + 1 + margin, w),
    )


def remove_small_components(masks: np.ndarray, min_px: int, connectivity: int = 2) -> np.ndarray:
    """Drop connected components smaller than ``min_px`` pixels, per class and per slice.

    ``masks``: bool (C, Z, Y, X) or (C, Y, X); returns a new array of the same shape.
    ``connectivity``: 1 (4-neighbours) or 2 (8-neighbours) in the slice plane.
    """
    from scipy import ndimage

    masks = np.asarray(masks, dtype=bool)
    out = masks.copy()
    if min_px <= 1:
        return out
    structure = ndimage.generate_binary_structure(2, connectivity)
    for plane in out.reshape(-1, *out.shape[-2:]):
        if plane.any():
            labels, n = ndimage.label(plane, structure=structure)
            sizes = np.bincount(labels.ravel())
            small = sizes < int(min_px)
            small[0] = False
            if small.any():
                plane[small[labels]] = False
    return out


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Normalised binary entropy H(p)/ln 2 in [0, 1] (0 = certain, 1 = p of one half)."""
    p = np.clip(np.asarray(p, dtype=np.float32), 1e-6, 1 - 1e-6)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
