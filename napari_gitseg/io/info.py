"""A JSON-ready summary of what a path holds (printed by ``gitseg info``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_gitseg.io.read import detect_kind, iter_stacks
from napari_gitseg.io.stack import Stack


def summarize_stack(stack: Stack) -> dict:
    """Name, shape, spacing, dtype, value range and ground-truth counts of one stack."""
    image = stack.image
    info: dict = {
        "name": stack.name,
        "source": stack.source,
        "shape": [int(s) for s in stack.shape],
        "spacing_mm": [float(s) for s in stack.spacing],
        "n_slices": int(stack.shape[0]),
        "dtype": str(image.dtype),
        "min": image.min().item() if image.size else None,
        "max": image.max().item() if image.size else None,
        "first_slice_id": stack.slice_ids[0] if stack.slice_ids else None,
    }
    if stack.masks is not None:
        labelled = np.ones(stack.shape[0], bool) if stack.labelled is None else np.asarray(stack.labelled, bool)
        info["n_labelled_slices"] = int(labelled.sum())
        info["class_slices"] = {
            cls: int((stack.masks[c].any(axis=(1, 2)) & labelled).sum()) for c, cls in enumerate(stack.classes)
        }
    if stack.meta.get("masks_source"):
        info["masks_source"] = str(stack.meta["masks_source"])
    if stack.meta.get("note"):
        info["note"] = str(stack.meta["note"])
    return info


def stack_info(path: str | Path) -> dict:
    """Summarise ``path``: its kind, number of stacks and per-stack details (reads one stack at a time)."""
    path = Path(path)
    kind = detect_kind(path)
    stacks = [summarize_stack(stack) for stack in iter_stacks(path)]
    return {"path": str(path), "kind": kind, "n_stacks": len(stacks), "stacks": stacks}
