"""Stack and masks as napari layer-data tuples (pure data: no Qt, no viewer).

Every layer made by the plugin carries ``metadata["gitseg"]`` with the stack's name,
slice ids, source and spacing, so widgets can find the stack a layer belongs to. A
labels layer also carries the faithful per-class masks in ``metadata["gitseg"]["masks"]``
(the label image shows one organ per pixel; see ``napari_gitseg.classes``).
"""

from __future__ import annotations

import numpy as np

from napari_gitseg.classes import CLASSES, label_color_dict, masks_to_labels
from napari_gitseg.io.stack import Stack

LayerDataTuple = tuple  # (data, kwargs, layer_type)
# every stack is (slices, rows, columns) with its spacing in mm: napari labels the slider "z" and
# reports positions and the scale bar in mm (instead of the axis numbers -3, -2, -1)
AXES = {"axis_labels": ("z", "y", "x"), "units": ("mm", "mm", "mm")}


def stack_metadata(stack: Stack) -> dict:
    """The ``metadata["gitseg"]`` dict that ties a layer to its stack."""
    return {
        "name": stack.name,
        "slice_ids": list(stack.slice_ids),
        "source": stack.source,
        "kind": stack.kind,
        "spacing": tuple(stack.spacing),
        "classes": tuple(stack.classes),
    }


def image_layer_data(stack: Stack) -> LayerDataTuple:
    """The image layer of a stack, with physical scale in mm and a robust contrast range."""
    image = stack.image
    sample = image[:: max(1, image.shape[0] // 16)]
    lo, hi = np.percentile(sample, [0.5, 99.8]) if sample.size else (0, 1)
    if hi <= lo:
        hi = lo + 1
    kwargs = {
        "name": stack.name,
        "scale": stack.spacing,
        **AXES,
        "colormap": "gray",
        "contrast_limits": (float(lo), float(hi)),
        "metadata": {"gitseg": stack_metadata(stack)},
    }
    return (image, kwargs, "image")


def labels_layer_data(
    stack: Stack, masks: np.ndarray, *, name: str | None = None, role: str = "truth", extra: dict | None = None
) -> LayerDataTuple:
    """An organ labels layer for ``masks`` (C, Z, Y, X) on ``stack``'s grid, fixed organ colours."""
    masks = np.asarray(masks, dtype=bool)
    meta = stack_metadata(stack)
    meta.update({"masks": masks, "role": role, **(extra or {})})
    kwargs = {
        "name": name or f"{stack.name} organs",
        "scale": stack.spacing,
        **AXES,
        "colormap": label_color_dict(),
        "opacity": 0.5,
        "metadata": {"gitseg": meta},
    }
    return (masks_to_labels(masks, tuple(stack.classes)), kwargs, "labels")


def stack_layer_data(stack: Stack, visible: bool = True) -> list[LayerDataTuple]:
    """Image layer plus, when the stack has ground truth, its organ labels layer (hidden unless ``visible``)."""
    layers = [image_layer_data(stack)]
    if stack.masks is not None:
        layers.append(labels_layer_data(stack, stack.masks, role="truth"))
    for _, kwargs, _ in layers:
        kwargs["visible"] = bool(visible)
    return layers


def gitseg_metadata(layer) -> dict | None:
    """What this plugin wrote into a layer's metadata (``metadata["gitseg"]``); None for other layers."""
    return (getattr(layer, "metadata", None) or {}).get("gitseg")


def layer_role(layer) -> str | None:
    """The role of one of this plugin's layers (``truth``, ``prediction``, ``review``); None otherwise."""
    return (gitseg_metadata(layer) or {}).get("role")


def stack_from_layer(layer) -> Stack:
    """Rebuild a Stack from an image layer (made by this plugin or any other reader)."""
    data = np.asarray(layer.data)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise ValueError(f"layer {layer.name!r} has {data.ndim} dimensions; expected a (z, y, x) stack")
    meta = gitseg_metadata(layer)
    if meta and len(meta.get("slice_ids", ())) == data.shape[0]:
        return Stack(
            image=data,
            spacing=tuple(meta["spacing"]),
            slice_ids=list(meta["slice_ids"]),
            source=meta["source"],
            kind=meta.get("kind", "layer"),
            classes=tuple(meta.get("classes", CLASSES)),
        )
    scale = tuple(float(s) for s in np.asarray(layer.scale)[-3:])
    if len(scale) < 3:
        scale = (1.0,) * (3 - len(scale)) + scale
    return Stack(
        image=data,
        spacing=scale,
        slice_ids=[f"{layer.name}_slice_{i + 1:04d}" for i in range(data.shape[0])],
        source=str(getattr(layer, "source", None) and layer.source.path or layer.name),
        kind="layer",
    )
