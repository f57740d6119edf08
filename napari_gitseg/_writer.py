"""napari writer: an organ labels layer to the challenge RLE CSV, TIFF or NIfTI."""

from __future__ import annotations

import numpy as np

from napari_gitseg.classes import labels_to_masks
from napari_gitseg.io import write_masks
from napari_gitseg.io.stack import Stack


def write_labels(path: str, data: np.ndarray, meta: dict) -> list[str]:
    """Write one labels layer; the per-class masks in its metadata win over the flat labels."""
    info = (meta.get("metadata") or {}).get("gitseg") or {}
    labels = np.asarray(data)
    if labels.ndim == 2:
        labels = labels[None]
    masks = info.get("masks")
    if masks is None or np.asarray(masks).shape[1:] != labels.shape:
        masks = labels_to_masks(labels)
    scale = meta.get("scale")
    scale = (1.0, 1.0, 1.0) if scale is None else tuple(float(v) for v in scale)[-3:]
    stack = Stack(
        image=np.zeros(labels.shape, dtype=np.uint8),
        spacing=info.get("spacing", scale),
        slice_ids=list(
            info.get("slice_ids") or [f"{meta.get('name', 'labels')}_slice_{i + 1:04d}" for i in range(labels.shape[0])]
        ),
        source=str(info.get("source", meta.get("name", "labels"))),
        kind=info.get("kind", "layer"),
    )
    write_masks(path, np.asarray(masks, dtype=bool), stack)
    return [path]
