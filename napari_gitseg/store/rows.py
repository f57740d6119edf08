"""One saved version of one slice as the store keeps it: the row's columns, the records read back
(``VersionInfo``, ``SliceRecord``), and the masks bit-packed, compressed and checksummed."""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass

import numpy as np

from napari_gitseg.store.sqlite import StoreError

COLUMNS = "slice_id, version, source, user, model_version, reviewed, confidence, note, created, shape, masks, crc"


@dataclass(frozen=True)
class VersionInfo:
    """Metadata of one saved version of one slice (``created``: seconds since the epoch)."""

    slice_id: str
    version: int
    source: str
    user: str | None
    model_version: str | None
    reviewed: bool
    confidence: float | None
    note: str | None
    created: float


@dataclass(frozen=True)
class SliceRecord(VersionInfo):
    """One saved version of one slice, with its per-class masks (C, Y, X) bool."""

    masks: np.ndarray | None = None


def checksum(blob: bytes, shape_text: str) -> int:
    return zlib.crc32(shape_text.encode(), zlib.crc32(blob))


def pack(masks: np.ndarray) -> tuple[bytes, str, int]:
    """Bit-pack and compress masks; returns (blob, shape as JSON, checksum)."""
    bits = np.packbits(np.ascontiguousarray(masks, dtype=bool).ravel())
    blob = zlib.compress(bits.tobytes(), 6)
    shape_text = json.dumps([int(s) for s in masks.shape])
    return blob, shape_text, checksum(blob, shape_text)


def any_pixel(blob: bytes) -> bool:
    """Whether packed masks hold any set pixel (the padding bits are 0); a damaged blob counts as holding one
    (reading the slice reports the damage)."""
    try:
        return bool(np.frombuffer(zlib.decompress(blob), dtype=np.uint8).any())
    except zlib.error:
        return True


def unpack(blob: bytes, shape_text: str, crc: int, where: str) -> np.ndarray:
    """Masks back from a stored blob, after verifying its checksum and size."""
    if checksum(blob, shape_text) != crc:
        raise StoreError(f"{where}: stored mask data fails its checksum (the file is damaged)")
    try:
        shape = tuple(int(s) for s in json.loads(shape_text))
        bits = np.frombuffer(zlib.decompress(blob), dtype=np.uint8)
    except (ValueError, TypeError, zlib.error) as err:
        raise StoreError(f"{where}: stored mask data cannot be decoded ({err})") from err
    n = math.prod(shape)
    if bits.size != (n + 7) // 8:
        raise StoreError(f"{where}: stored mask data has {bits.size} bytes, expected {(n + 7) // 8} for {shape}")
    return np.unpackbits(bits, count=n).astype(bool).reshape(shape)
