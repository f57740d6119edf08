"""Intensity normalisation shared by training and inference (one definition, no drift).

MRI intensities have no absolute scale, so each stack is scaled by its own robust range:
``(x - p_low) / (p_high - p_low)`` clipped to [0, 1], with the percentiles taken over the
whole stack (the 3-D volume), as most challenge pipelines did per image. The method and
its parameters are recorded in every model bundle.
"""

from __future__ import annotations

import numpy as np

DEFAULT_NORMALIZATION: dict = {"method": "percentile", "low": 0.5, "high": 99.5}


def normalize_stack(image: np.ndarray, spec: dict | None = None) -> np.ndarray:
    """Scale a (Z, Y, X) stack to float32 in [0, 1] as described by ``spec``.

    Raises ValueError for NaN/inf values. A constant stack maps to all zeros.
    """
    spec = dict(DEFAULT_NORMALIZATION if spec is None else spec)
    image = np.asarray(image)
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise ValueError("image contains NaN or infinite values")
    data = image.astype(np.float32, copy=False)
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
