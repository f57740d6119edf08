"""Run-length encoding in the exact format of the UW-Madison challenge's ``train.csv``.

A mask is flattened in row-major (C) order; the RLE string is ``"start length start length ..."``
with 1-based starts. An empty mask is the empty string.
"""

from __future__ import annotations

import re

import numpy as np

_ASCII_DIGITS = re.compile(r"[0-9]+")


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


def parse_rle(rle: str | float | None) -> tuple[np.ndarray, np.ndarray]:
    """Check an RLE string without knowing the image size; return 0-based (starts, lengths).

    Raises ``RLEError`` for an odd number of tokens, anything but plain ASCII integers,
    non-positive starts or lengths, and runs that overlap or go backwards.
    """
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    if rle is None or (isinstance(rle, float) and np.isnan(rle)):
        return empty
    tokens = str(rle).split()
    if not tokens:
        return empty
    if len(tokens) % 2:
        raise RLEError(f"RLE has an odd number of tokens ({len(tokens)}); expected start/length pairs")
    bad = next((t for t in tokens if not _ASCII_DIGITS.fullmatch(t)), None)
    if bad is not None:  # int() would also take '+5', '5_0' or non-ASCII digits: the format has none
        raise RLEError(f"RLE token {bad!r} is not a non-negative integer")
    if any(len(t) > 18 for t in tokens):
        raise RLEError("RLE token too large for any image")
    values = np.array([int(t) for t in tokens], dtype=np.int64)
    starts, lengths = values[0::2] - 1, values[1::2]
    if (starts < 0).any():
        raise RLEError("RLE start below 1 (starts are 1-based)")
    if (lengths <= 0).any():
        raise RLEError("RLE run length must be positive")
    if (starts[1:] < (starts + lengths)[:-1]).any():
        raise RLEError("RLE runs overlap or are not in increasing order")
    return starts, lengths


def rle_decode(rle: str | float | None, shape: tuple[int, int]) -> np.ndarray:
    """Decode an RLE string to a boolean mask of ``shape`` (height, width).

    Empty, None or NaN (pandas' reading of an empty cell) decode to an empty mask. Raises
    ``RLEError`` for malformed strings (see ``parse_rle``) and runs past the end of the image.
    """
    height, width = int(shape[0]), int(shape[1])
    mask = np.zeros(height * width, dtype=bool)
    starts, lengths = parse_rle(rle)
    if len(starts) == 0:
        return mask.reshape(height, width)
    ends = starts + lengths
    if ends.max() > height * width:
        raise RLEError(f"RLE run ends at pixel {int(ends.max())}, past the {height}x{width} image")
    for s, e in zip(starts.tolist(), ends.tolist()):
        mask[s:e] = True
    return mask.reshape(height, width)
