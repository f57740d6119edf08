"""Run-length encoding in the exact format of the UW-Madison challenge's ``train.csv``.

A mask is flattened in row-major (C) order; the RLE string is ``"start length start length ..."``
with 1-based starts. An empty mask is the empty string.
"""

from __future__ import annotations

import numpy as np


class RLEError(ValueError):
    """An RLE string that does not describe a valid mask of the given shape."""


def rle_encode(mask: np.ndarray) -> str:
    """Encode a 2-D boolean mask as the challenge's RLE string ('' when empty)."""
    flat = np.asarray(mask, dtype=bool).ravel(order="C")
    if not flat.any():
        return ""
    padded = np.concatenate([[False], flat, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = edges[0::2], edges[1::2]
    runs = np.empty(2 * len(starts), dtype=np.int64)
    runs[0::2] = starts + 1
    runs[1::2] = ends - starts
    return " ".join(map(str, runs.tolist()))


def rle_decode(rle: str | float | None, shape: tuple[int, int]) -> np.ndarray:
    """Decode an RLE string to a boolean mask of ``shape`` (height, width).

    Empty, None or NaN (pandas' reading of an empty cell) decode to an empty mask. Raises
    ``RLEError`` for an odd number of tokens, non-integers, non-positive starts or lengths,
    runs past the end of the image, or runs that overlap or go backwards.
    """
    height, width = int(shape[0]), int(shape[1])
    mask = np.zeros(height * width, dtype=bool)
    if rle is None or (isinstance(rle, float) and np.isnan(rle)):
        return mask.reshape(height, width)
    tokens = str(rle).split()
    if not tokens:
        return mask.reshape(height, width)
    if len(tokens) % 2:
        raise RLEError(f"RLE has an odd number of tokens ({len(tokens)}); expected start/length pairs")
    try:
        values = np.array([int(t) for t in tokens], dtype=np.int64)
    except ValueError as err:
        bad = next(t for t in tokens if not t.lstrip("+").isdigit())
        raise RLEError(f"RLE token {bad!r} is not an integer") from err
    starts, lengths = values[0::2] - 1, values[1::2]
    if (starts < 0).any():
        raise RLEError("RLE start below 1 (starts are 1-based)")
    if (lengths <= 0).any():
        raise RLEError("RLE run length must be positive")
    ends = starts + lengths
    if ends.max() > height * width:
        raise RLEError(f"RLE run ends at pixel {int(ends.max())}, past the {height}x{width} image")
    if (starts[1:] < ends[:-1]).any():
        raise RLEError("RLE runs overlap or are not in increasing order")
    for s, e in zip(starts.tolist(), ends.tolist()):
        mask[s:e] = True
    return mask.reshape(height, width)
