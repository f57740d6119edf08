"""Segment dock: pick an image and a model, Run / Cancel, organ overlay with fixed colours.

Inference runs in a napari ``thread_worker``; each finished batch is yielded back to the GUI
thread and painted into the overlay, the slice on screen first. The logic is the
``Predictor`` (``napari_gitseg.predict``), tested without Qt. When the dock opens (and when
the model changes) a background thread loads the model and runs it once
(``napari_gitseg.predict.warm``), so the first Run neither waits for it nor stalls napari.

Progress shows in the dock only, not in napari's activity dock: the activity dock animates a
GIF while a worker runs, and every frame makes Qt recomposite the OpenGL window. With software
OpenGL (Xvfb, virtual machines, remote desktops) that took the CPU from the model: a 144-slice
prediction took 8.0 s with it and 3.5 s without (bench_gui_latency's set-up, 2 cores).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, ProgressBar, PushButton
from napari.qt.threading import thread_worker

from napari_gitseg.classes import CLASSES, masks_to_labels
from napari_gitseg.layers import AXES, labels_layer_data, stack_from_layer
from napari_gitseg.resources import default_model_path

from ._common import (
    JobDock,
    ensure_labels_layer,
    find_layer,
    image_layer_names,
    set_class_visibility,
    set_progress,
    show_error,
    show_info,
    show_only_stack,
    status_label,
    when_alive,
)

DEVICES = ("auto", "cpu", "cuda", "mps")
_log = logging.getLogger(__name__)

#: what each control does, as its tooltip (the Model field's is the chosen bundle's summary)
TOOLTIPS = {
    "image": "The image layer (scan) to segment; its organs open as a labels layer over it",
    "device": "auto: the GPU when PyTorch finds one (CUDA or Apple MPS), else the CPU; "
    "the masks are the same on every CPU",
    "tta": "Also run the model on the left-right mirrored scan and average the two: about twice the time",
    "uncertainty": "Add a layer showing where the model hesitates (entropy of its probabilities, 0-1): "
    "the places to check first",
    "run": "Segment the whole scan in the background: the slice on screen first, then outward; napari stays usable",
    "cancel": "Stop the run; its partial prediction layer is removed",
    "show": "Show or hide one organ in the prediction layer",
}


def describe_model(path: str) -> tuple[str, str | None]:
    """(the Model field's tooltip: the bundle's full path and summary, or why it cannot be read; why
    the flip test-time augmentation must stay off for this model, None where it may be used)."""
    if not path:
        return "No model chosen: Select file picks a model bundle (a .json beside its .safetensors)", None
    from napari_gitseg.model.bundle import BundleError, read_bundle_info  # torch: imported on the GUI thread

    try:
        info = read_bundle_info(path)
    except (BundleError, OSError, ValueError) as err:
        return f"{path}\ncannot be read as a model bundle: {err}", None
    return f"{path}\n\n{info.summary()}", info.flip_refusal("h")


def run_prediction(model_path: str, stack, first_slice: int, device: str, tta: bool, cancel: threading.Event):
    """Generator run off the GUI thread: yields progress updates, returns the Prediction."""
    from napari_gitseg.predict import cached_predictor

    predictor = cached_predictor(model_path, device, tta)  # loaded by the warm-up, or now
    result = yield from predictor.iter_predict(stack, first_slice=first_slice, cancel=cancel)
    return result


def warm_up_quietly(model_path: str, device: str) -> None:
    """Load and run the model once (background thread); a broken bundle is reported by Run instead."""
    from napari_gitseg.predict import warm_up

    try:
        warm_up(model_path, device)
    except Exception as err:  # noqa: BLE001 - Run shows the error to the user with its context
        _log.info("model warm-up of %s failed: %s", model_path, err)


def start_warm_up(model_path: str, device: str) -> threading.Thread:
    """``warm_up_quietly`` on a new thread, started. Not a daemon: Python waits for it at exit (a second
    or two) instead of killing it inside a torch call, which aborted the process ("terminate called
    without an active exception") when napari was closed while the model was still loading."""
    thread = threading.Thread(target=warm_up_quietly, args=(model_path, device), name="gitseg-model-warm-up")
    thread.start()
    return thread


class SegmentWidget(JobDock):
    """Run the segmentation model on an image layer and overlay the three organs."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer)
        default = default_model_path()

        self._image = ComboBox(label="Image", choices=lambda _w: image_layer_names(viewer))
        self._model = FileEdit(label="Model", filter="*.json", value=str(default) if default else "")
        self._device = ComboBox(label="Device", choices=DEVICES, value="auto")
        self._tta = CheckBox(text="Flip test-time augmentation (slower)", value=False)
        self._uncertainty = CheckBox(text="Add uncertainty layer", value=False)
        self._run = PushButton(text="Run")
        self._cancel_btn = PushButton(text="Cancel", enabled=False)
        self._progress = ProgressBar(label="Progress", min=0, max=100, value=0)
        self._status = status_label(label="", value="")
        self._visible = {c: CheckBox(text=c.replace("_", " "), value=True) for c in CLASSES}
        buttons = Container(widgets=[self._run, self._cancel_btn], layout="horizontal", labels=False)
        vis = Container(widgets=list(self._visible.values()), layout="horizontal", labels=False, label="Show")
        self.extend(
            [
                self._image,
                self._model,
                self._device,
                self._tta,
                self._uncertainty,
                buttons,
                self._progress,
                self._status,
                vis,
            ]
        )
        for key, widget in (
            ("image", self._image),
            ("device", self._device),
            ("tta", self._tta),
            ("uncertainty", self._uncertainty),
            ("run", self._run),
            ("cancel", self._cancel_btn),
        ):
            widget.tooltip = TOOLTIPS[key]
        for box in self._visible.values():
            box.tooltip = TOOLTIPS["show"]
        self._model.changed.connect(self._on_model_edited)
        self._show_model(self._model.value)
        # the model chosen outside any project (the bundled default, --model, the file box); the file box
        # holds a project's version instead while a project with a trained version is open
        self._chosen_model, self._on_project_model = str(self._model.value or ""), False
        self._setting_model = False

        self._run.changed.connect(self.run)
        self._cancel_btn.changed.connect(self.cancel)
        for box in self._visible.values():
            box.changed.connect(self._apply_visibility)
        viewer.layers.events.inserted.connect(lambda _e: self._image.reset_choices())
        viewer.layers.events.removed.connect(lambda _e: self._image.reset_choices())
        self._hub.model_changed.connect(lambda path: self.set_model_path(path, project=True) if path else None)
        self._hub.project_model_found.connect(self.follow_project_model)
        self._hub.repredict_requested.connect(self._on_repredict)
        self.result_layer = None
        self._visibility_state: tuple | None = None
        self.last_prediction = None
        self.warm_up_thread: threading.Thread | None = None
        self._warm_up()

    # ---- public ---------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True while a prediction is in progress."""
        return self._worker is not None

    def set_model_path(self, path: str | Path, project: bool = False) -> None:
        """Use the model bundle at ``path`` for the next run (loaded in the background now); ``project``:
        it is a version of the open project's registry, not a model chosen for every scan."""
        self._setting_model = True
        try:
            self._model.value = str(path)
        finally:
            self._setting_model = False
        self._on_project_model = project
        if not project:
            self._chosen_model = str(path)
        self._warm_up()

    @when_alive
    def follow_project_model(self, path: str | Path | None) -> None:
        """A project was opened: segment with its active model, or, while it has none, with the model
        chosen outside projects (never with another project's model, adapted to another patient)."""
        if path:
            self.set_model_path(path, project=True)
            self._status.value = f"Model: this project's active version {Path(path).stem}"
        elif self._on_project_model:
            self.set_model_path(self._chosen_model)
            self._status.value = f"Model: {Path(self._chosen_model).name} (no trained version in this project yet)"

    def _show_model(self, value) -> None:
        """The Model field's tooltip, and the flip option off (and greyed) for a model that learnt sides."""
        self._model.tooltip, refusal = describe_model(str(value or ""))
        if refusal:
            self._tta.value = False
        self._tta.enabled = refusal is None
        self._tta.tooltip = TOOLTIPS["tta"] if refusal is None else f"Off for this model: {refusal}."

    def _on_model_edited(self, value) -> None:
        self._show_model(value)
        if not self._setting_model:  # picked in the file box: the model for every scan from now on
            self._chosen_model, self._on_project_model = str(value or ""), False

    def run(self) -> None:
        """Start segmenting the chosen image layer in the background."""
        if self.running:
            show_info("Segment: a run is already in progress; cancel it first.")
            return
        layer = find_layer(self._viewer, self._image.value)
        if layer is None:
            show_error("Segment: choose an image layer first.")
            return
        model = str(self._model.value or "")
        if not model or not Path(model).is_file():
            show_error(f"Segment: model bundle not found: {model or '(none chosen)'}")
            return
        try:
            stack = stack_from_layer(layer)
        except ValueError as err:
            show_error(f"Segment: {err}")
            return
        show_only_stack(self._viewer, layer, stack.name)  # its prediction will lie over this image, not another scan
        z = int(self._viewer.dims.current_step[0]) if stack.shape[0] > 1 else 0
        z = min(max(z, 0), stack.shape[0] - 1)
        self._stack = stack
        data, kwargs, _ = labels_layer_data(
            stack, np.zeros((len(CLASSES), *stack.shape), bool), name=f"{stack.name} prediction", role="prediction"
        )
        kwargs["metadata"]["gitseg"]["model"] = model
        self.result_layer = ensure_labels_layer(self._viewer, kwargs["name"], data, kwargs)
        self._apply_visibility()
        self._viewer.layers.selection.active = layer

        self._cancel.clear()
        worker = thread_worker(
            run_prediction,
            start_thread=False,
            connect={
                "yielded": self._on_update,
                "returned": self._on_done,
                "errored": self._on_error,
                "finished": self._on_finished,
            },
        )(model, stack, z, self._device.value, self._tta.value, self._cancel)
        self._worker = worker
        self._set_running(True)
        self._status.value = f"Running on {stack.name} ({stack.shape[0]} slices)…"
        worker.start()

    def cancel(self) -> None:
        """Ask the running prediction to stop after the current batch."""
        if self.running:
            self._cancel.set()
            self._status.value = "Cancelling…"

    # ---- worker callbacks (GUI thread) ----------------------------------------------------------
    @when_alive
    def _on_update(self, update) -> None:
        if self.result_layer is None:
            return
        set_progress(self._progress, 100 * update.done // max(update.total, 1))
        slices = np.asarray(update.slices)
        self.result_layer.data[slices] = masks_to_labels(update.masks)
        # redraw only when the slice on screen changed: a full labels refresh per batch cost
        # ~60 ms of GUI time here (software OpenGL); other slices show when the user moves there
        z = int(self._viewer.dims.current_step[0]) if self.result_layer.ndim == 3 else 0
        if z in slices:
            self.result_layer.refresh()

    @when_alive
    def _on_done(self, prediction) -> None:
        stack = self._stack
        self.last_prediction = prediction
        extra = {"confidence": prediction.confidence, "model_version": getattr(prediction, "model_version", None)}
        layer = self.result_layer
        if layer is not None and layer in self._viewer.layers and layer.data.shape == prediction.masks.shape[1:]:
            # every slice was painted as its batch arrived: only the metadata is new
            layer.metadata.setdefault("gitseg", {}).update({"masks": prediction.masks, **extra})
        else:
            data, kwargs, _ = labels_layer_data(
                stack, prediction.masks, name=f"{stack.name} prediction", role="prediction", extra=extra
            )
            self.result_layer = ensure_labels_layer(self._viewer, kwargs["name"], data, kwargs)
        self._apply_visibility()
        if self._uncertainty.value:
            uncertainty = prediction.uncertainty() if hasattr(prediction, "uncertainty") else None
            if uncertainty is not None:
                name = f"{stack.name} uncertainty"
                old = find_layer(self._viewer, name)
                if old is not None:
                    self._viewer.layers.remove(old)
                self._viewer.add_image(
                    uncertainty,
                    name=name,
                    scale=stack.spacing,
                    **AXES,
                    colormap="magma",
                    blending="additive",
                    opacity=0.6,
                    contrast_limits=(0, 1),
                )
        set_progress(self._progress, 100)
        secs = getattr(prediction, "seconds", None)
        self._status.value = f"Done: {stack.shape[0]} slices" + (f" in {secs:.1f} s" if secs else "")
        self._hub.prediction_ready.emit(stack, prediction)

    @when_alive
    def _on_error(self, err: Exception) -> None:
        from napari_gitseg.predict import PredictionCancelled

        if isinstance(err, PredictionCancelled):
            self._status.value = "Cancelled; the partial result was removed."
            if self.result_layer is not None and self.result_layer in self._viewer.layers:
                self._viewer.layers.remove(self.result_layer)
            self.result_layer = None
            return
        self._status.value = f"Error: {err}"
        show_error(f"Segment: {err}")

    @when_alive
    def _on_finished(self) -> None:
        self._worker = None
        self._set_running(False)

    def _on_repredict(self, stack_name) -> None:
        for name in image_layer_names(self._viewer):
            if name == stack_name:
                self._image.value = name
                self.run()
                return

    def _warm_up(self) -> None:
        """Load the chosen model on a background thread, so the first Run finds it ready."""
        model = str(self._model.value or "")
        if not model or not Path(model).is_file():
            return
        self.warm_up_thread = start_warm_up(model, self._device.value)

    # ---- UI bits --------------------------------------------------------------------------------
    def _set_running(self, running: bool) -> None:
        self._run.enabled = not running
        self._cancel_btn.enabled = running

    def _apply_visibility(self, _v=None) -> None:
        if self.result_layer is None:
            return
        visible = {c: box.value for c, box in self._visible.items()}
        # a new colormap redraws the layer: only when the layer or the boxes changed (the layer
        # itself, not its id: a new layer may reuse a removed one's id)
        applied_to, applied = self._visibility_state or (None, None)
        if applied_to is not self.result_layer or applied != visible:
            set_class_visibility(self.result_layer, visible)
            self._visibility_state = (self.result_layer, visible)
