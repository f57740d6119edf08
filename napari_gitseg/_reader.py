"""napari reader: returns a reader for paths the plugin handles, None for the rest (npe2 rule)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from napari_gitseg.io import GitsegInputError, detect_kind, read_stacks
from napari_gitseg.layers import stack_layer_data


def get_reader(path: str | list[str]) -> Callable | None:
    """Return ``read_layers`` if ``path`` is something the plugin reads, else None."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    if not paths or any(detect_kind(p) is None for p in paths):
        return None
    return read_layers


def read_layers(path: str | list[str]) -> list[tuple]:
    """Read every stack at ``path``: an image layer each, plus organ labels when ground truth is found.

    Only the first stack's layers are visible: the case-days of a patient folder are different scans,
    and drawn together their organ layers would lie over another scan's image (the eye in the
    layer list, or Segment / Start review on a stack, shows another). Bad input raises
    ``GitsegInputError`` naming the file; napari shows the message and keeps running.
    """
    paths = [path] if isinstance(path, str | Path) else list(path)
    layers: list[tuple] = []
    for p in paths:
        stacks = read_stacks(p)
        if not stacks:
            raise GitsegInputError(p, "no image stack found")
        for stack in stacks:
            layers.extend(stack_layer_data(stack, visible=not layers))
    return layers
