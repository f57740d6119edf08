"""2.5D input: each slice is seen with its neighbours as channels.

For ``k`` channels and ``stride`` s the window of slice z is
``z + s * (i - k // 2)`` for ``i in range(k)``, clamped to the stack (edge slices are
padded by replication). k=3, s=2 is the challenge winners' setting; k=1 is plain 2-D.
"""

from __future__ import annotations

import numpy as np


def window_indices(n_slices: int, k: int, stride: int) -> np.ndarray:
    """Slice indices (n_slices, k) of each slice's 2.5D window, clamped at the edges."""
    if k < 1 or k % 2 == 0:
        raise ValueError(f"2.5D channels k must be odd and >= 1, got {k}")
    if stride < 1:
        raise ValueError(f"2.5D stride must be >= 1, got {stride}")
    if n_slices < 1:
        raise ValueError("the stack has no slices")
    offsets = stride * (np.arange(k) - k // 2)
    return np.clip(np.arange(n_slices)[:, None] + offsets[None, :], 0, n_slices - 1)


def make_windows(volume: np.ndarray, slices: np.ndarray | list[int], k: int, stride: int) -> np.ndarray:
    """Stack the 2.5D windows of ``slices`` from ``volume`` (Z, Y, X) into (N, k, Y, X)."""
    volume = np.asarray(volume)
    idx = window_indices(volume.shape[0], k, stride)[np.asarray(slices, dtype=np.int64)]
    return volume[idx]
