"""Small helpers shared by the docks: layer look-up, notifications, organ visibility."""

from __future__ import annotations

import functools
import threading

import numpy as np
from magicgui.widgets import Container
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning

from napari_gitseg.classes import CLASSES, label_color_dict
from napari_gitseg.layers import gitseg_metadata

from ._hub import hub_for

__all__ = [
    "status_label",
    "set_progress",
    "is_alive",
    "when_alive",
    "cancel_on_destroy",
    "preload_compute_modules",
    "image_layer_names",
    "find_layer",
    "show_error",
    "show_info",
    "show_warning",
    "set_class_visibility",
    "ensure_labels_layer",
]


def status_label(value: str = "", label: str = "", lines: int = 1):
    """A read-only text line that wraps instead of widening the dock (long messages stay readable).

    ``lines``: height kept for that many lines even when the text is shorter, so a status that changes
    often (a round's progress, then its verdict) does not move the widgets below it: each move re-lays
    out the dock (the Train dock's plot resized) on top of the repaint.
    """
    from magicgui.widgets import Label
    from qtpy.QtWidgets import QSizePolicy

    widget = Label(label=label, value=value)
    widget.native.setWordWrap(True)
    # a wrapped label's height follows its width; with the default (Preferred) policy the dock could
    # squeeze it below that and cut off its last line; Minimum never goes below all of its lines
    policy = QSizePolicy(QSizePolicy.Preferred, QSizePolicy.Minimum)
    policy.setHeightForWidth(True)
    widget.native.setSizePolicy(policy)
    if lines > 1:
        metrics = widget.native.fontMetrics()
        widget.native.setMinimumHeight(lines * metrics.lineSpacing() + 2 * widget.native.margin())
    return widget


def set_progress(bar, value: int) -> None:
    """Set a magicgui ``ProgressBar`` without Qt's synchronous repaint.

    ``QProgressBar.setValue`` repaints at once (``repaint()``, not ``update()``); in napari's window,
    which holds an OpenGL canvas, each immediate repaint recomposes the whole window (about 30 ms
    with software OpenGL, measured), before and apart from the status line and plot that change with
    it. With updates off while the value is set, the bar is painted in the next ordinary update, one
    composition with everything else that changed.
    """
    value = int(value)
    native = bar.native
    if value == bar.value:
        return
    native.setUpdatesEnabled(False)
    try:
        bar.value = value
    finally:
        native.setUpdatesEnabled(True)
        native.update()


def is_alive(widget) -> bool:
    """False once the Qt widget behind a magicgui ``widget`` was deleted (e.g. the viewer closed)."""
    try:
        widget.native.objectName()
    except RuntimeError:
        return False
    return True


def when_alive(method):
    """Decorate a dock's GUI callback so a result arriving after the dock was closed is dropped.

    Background work (a prediction, a registry read, a save) may finish after napari closed
    the dock; touching its deleted Qt widgets then raised and aborted napari.
    """

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if not is_alive(self):
            return None
        return method(self, *args, **kwargs)

    return wrapper


def cancel_on_destroy(widget, cancel: threading.Event) -> None:
    """Set ``cancel`` when the dock's Qt widget is destroyed, so its background job stops."""
    widget.native.destroyed.connect(lambda *_args: cancel.set())


class JobDock(Container):
    """A dock that runs background jobs: its viewer, the viewer's hub (docks talk through it), the
    running worker, and a cancel event set when the dock's Qt widget is destroyed. The compute stack
    is imported here, on the GUI thread, before any worker starts."""

    def __init__(self, viewer):
        super().__init__(labels=True)
        preload_compute_modules()
        self._viewer = viewer
        self._hub = hub_for(viewer)
        self._worker = None
        self._cancel = threading.Event()
        cancel_on_destroy(self, self._cancel)


def preload_compute_modules() -> None:
    """Import torch, smp and the model code now, on the GUI thread (once; later calls are free).

    A first ``import torch`` inside a thread worker loads CUDA/LLVM shared libraries while Qt
    may be loading its own plugins on the GUI thread (e.g. the activity dialog's GIF); the two
    dynamic-loader calls deadlocked here, freezing napari. Docks that start thread workers
    which need torch call this from ``__init__`` so the libraries are mapped before any worker.
    """
    # smp too: the factory imports it lazily, and its first import in a thread held the GIL for
    # seconds (0.4-0.8 s stalls of napari during the model warm-up)
    import segmentation_models_pytorch  # noqa: F401

    import napari_gitseg.model.factory  # noqa: F401  (torch, torchvision)
    import napari_gitseg.model.registry  # noqa: F401
    import napari_gitseg.predict  # noqa: F401


def image_layer_names(viewer) -> list[str]:
    """Names of the 3-D (or 2-D) image layers in the viewer, newest first."""
    return [
        layer.name
        for layer in reversed(viewer.layers)
        if isinstance(layer, Image) and layer.ndim in (2, 3) and not layer.rgb
    ]


def find_layer(viewer, name: str | None):
    """The layer called ``name`` or None."""
    if not name:
        return None
    try:
        return viewer.layers[name]
    except KeyError:
        return None


def show_only_stack(viewer, image_layer, own: str) -> None:
    """Show ``image_layer`` (the stack named ``own``) and hide the layers of every other scan, so that
    the organ layers on screen are the ones of the image under them (several case-days open at once).
    The stack's own layers (metadata ``gitseg`` name, or a name starting with the stack's) keep their
    visibility; layers that are neither images nor the plugin's (points, shapes) are left alone."""
    image_layer.visible = True
    for layer in viewer.layers:
        meta = gitseg_metadata(layer)
        if layer is image_layer or (meta or {}).get("name") == own or layer.name.startswith(f"{own} "):
            continue
        if meta is not None or isinstance(layer, Image):
            layer.visible = False


def set_class_visibility(layer: Labels, visible: dict[str, bool]) -> None:
    """Hide organs by making their label colour transparent (the data is untouched)."""
    colours = label_color_dict()
    for i, name in enumerate(CLASSES):
        if not visible.get(name, True):
            colours[i + 1] = (0.0, 0.0, 0.0, 0.0)
    layer.colormap = colours


def ensure_labels_layer(viewer, name: str, data: np.ndarray, kwargs: dict) -> Labels:
    """Replace the data of layer ``name`` if it exists (keeping the user's settings), else add it."""
    layer = find_layer(viewer, name)
    if isinstance(layer, Labels) and layer.data.shape == data.shape:
        layer.data = data
        layer.metadata.update(kwargs.get("metadata", {}))
        return layer
    if layer is not None:
        viewer.layers.remove(layer)
    return viewer.add_labels(data, **kwargs)
