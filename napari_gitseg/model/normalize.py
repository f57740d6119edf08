"""Intensity normalisation shared by training and inference (one definition, no drift).

MRI intensities have no absolute scale, so each stack is scaled by its own robust range:
``(x - p_low) / (p_high - p_low)`` clipped to [0, 1], with the percentiles taken over the
whole stack (the 3-D volume); with ``per_slice`` each slice is scaled by its own range, as
many challenge pipelines did per image: robust to exports that scaled every slice on its own
(8-bit renderings, screenshots). The method and its parameters are recorded in every model bundle.
"""

from __future__ import annotations

import numpy as np

DEFAULT_NORMALIZATION: dict = {"method": "percentile", "low": 0.5, "high": 99.5}


def check_normalization(spec: dict) -> dict:
    """``spec`` if it names a known method with sensible settings; ValueError saying what is wrong."""
    if not isinstance(spec, dict):
        raise ValueError(f"normalization must be an object, got {spec!r}")
    method = spec.get("method", "percentile")
    if method not in ("percentile", "minmax"):
        raise ValueError(f"unknown normalisation method {method!r} (expected 'percentile' or 'minmax')")
    if method == "percentile" and not 0 <= float(spec.get("low", 0.5)) < float(spec.get("high", 99.5)) <= 100:
        raise ValueError(f"normalisation percentiles need 0 <= low < high <= 100, got {spec}")
    if not isinstance(spec.get("per_slice", False), bool):
        raise ValueError(f"normalization.per_slice must be true or false, got {spec.get('per_slice')!r}")
    return spec


def normalize_stack(image: np.ndarray, spec: dict | None = None) -> np.ndarray:
    """Scale a (Z, Y, X) stack to float32 in [0, 1] as described by ``spec``.

    Raises ValueError for NaN/inf values. A constant stack (or slice, with ``per_slice``) maps to zeros.
    """
    spec = dict(DEFAULT_NORMALIZATION if spec is None else spec)
    image = np.asarray(image)
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise ValueError("image contains NaN or infinite values")
    data = image.astype(np.float32, copy=False)
    if spec.get("per_slice") and data.ndim == 3 and data.shape[0] > 1:
        return _scale_slices(data, spec)
    return _scale(data, spec)


def _scale_slices(data: np.ndarray, spec: dict) -> np.ndarray:
    """Each slice of (Z, Y, X) ``data`` scaled by its own range (one vectorised percentile call)."""
    flat = data.reshape(data.shape[0], -1)
    if spec.get("method", "percentile") == "percentile":
        # every slice subsampled alike, at most ~2 M values in all (as for a whole stack)
        sample = flat[:, :: max(1, data.size // 2_000_000)]
        lo, hi = np.percentile(sample, [spec.get("low", 0.5), spec.get("high", 99.5)], axis=1)
    else:
        lo, hi = flat.min(axis=1), flat.max(axis=1)
    lo, hi = lo.astype(np.float32)[:, None, None], hi.astype(np.float32)[:, None, None]
    span = np.where(hi > lo, hi - lo, np.float32(1.0))
    out = np.where(hi > lo, (data - lo) / span, np.float32(0.0)).astype(np.float32, copy=False)
    return np.clip(out, 0.0, 1.0, out=out)


def _scale(data: np.ndarray, spec: dict) -> np.ndarray:
    """``data`` (float32) scaled by its own range as ``spec`` says, clipped to [0, 1]."""
    method = spec.get("method", "percentile")
    if method == "percentile":
        # subsample for speed on big stacks; percentiles of a strided subset are stable
        sample = data.ravel()[:: max(1, data.size // 2_000_000)]
        lo, hi = np.percentile(sample, [spec.get("low", 0.5), spec.get("high", 99.5)])
    elif method == "minmax":
        lo, hi = float(data.min()), float(data.max())
    else:
        raise ValueError(f"unknown normalisation method {method!r} (expected 'percentile' or 'minmax')")
    if hi <= lo:
        return np.zeros_like(data, dtype=np.float32)
    out = (data - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)
