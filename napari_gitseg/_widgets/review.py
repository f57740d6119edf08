"""Review dock: the uncertainty queue, Accept / Revert, autosave of every correction, Fill between,
Refine, the box tools (``_box_tools``), keyboard shortcuts and the effort log.

All store I/O runs on one background thread (``StoreThread``), in submission order, so the
GUI never waits on disk and a correction is saved before the next one is taken; the model for
Refine runs on a second one. The workflow itself is in ``napari_gitseg.review``: ``session.ReviewSession``,
``interpolate``, ``refine`` and ``effort`` (tested without Qt); versions saved by other windows
or the background trainer are polled (``ReviewSession.sync``) and shown on slices not being edited.
"""

from __future__ import annotations

from concurrent.futures import Future

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, PushButton
from napari.layers import Labels
from superqt.utils import ensure_main_thread

from napari_gitseg.classes import CLASSES
from napari_gitseg.layers import labels_layer_data, stack_from_layer
from napari_gitseg.project import Project
from napari_gitseg.review.effort import EffortLog
from napari_gitseg.review.session import LEARNED, REFINED

from ._box_tools import BoxTools
from ._common import (
    ensure_labels_layer,
    find_layer,
    image_layer_names,
    is_alive,
    set_class_visibility,
    show_error,
    show_info,
    show_only_stack,
    status_label,
    when_alive,
)
from ._hub import hub_for
from ._next_slice import NextSliceGuess
from ._review_keys import bind_review_keys, shortcut_text, tooltip
from ._review_tools import CorrectionTools
from ._store_thread import StoreThread, close_on_destroy

EXPORT_CHOICES = [("by file extension", None), ("DICOM RT-STRUCT (.dcm)", "rtstruct"), ("DICOM SEG (.dcm)", "seg")]


def version_label(record) -> str:
    """``v3 · model (learned) · reviewed``-style entry of the version list."""
    tool = f" ({record.model_version})" if record.model_version in (REFINED, LEARNED) else ""
    return f"v{record.version} · {record.source}{tool}{' · reviewed' if record.reviewed else ''}"


class ReviewWidget(BoxTools, CorrectionTools, Container):
    """Review and correct organ masks slice by slice; every change is a saved version."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=False)
        self._viewer = viewer
        self._hub = hub_for(viewer)
        self._session = None
        self._layer: Labels | None = None
        self._z: int | None = None
        self._snapshot: np.ndarray | None = None  # labels of the current slice as last saved
        self._io = StoreThread()
        self._project_override: str | None = None
        self.predictions_shown = 0  #: model predictions stored and drawn on the review layer so far
        self.syncs_shown = 0  #: versions saved by others (trainer, other windows) drawn so far
        self.effort = EffortLog()  #: this session's effort (time, strokes, painted pixels per slice)
        self.interpolation = "auto"  #: Fill between method (napari_gitseg.review.interpolate.METHODS)
        self._compute = StoreThread()  # the model for Refine runs here, never on the store thread
        self._predictor = None
        self._model_path: str | None = None
        self._fills: list = []  # FillResults and LearnResults, newest last (Undo fill)
        self._learning: Future | None = None  # the running Learn from corrections
        self._learn_cancel = None  # its threading.Event
        self._learn_prediction = None  # (session, model path, the model's Prediction of that scan) for Learn
        self._seen: np.ndarray | None = None  # current slice's labels after the last stroke we booked
        self._stale: set[int] = set()  # slices whose newer stored version waits until the clinician leaves them
        self._queue_next = NextSliceGuess()  # the review queue's next slice, asked ahead
        self._applying = False  # True while the dock itself writes into the layer (not a stroke)
        self._strokes_pending = 0  # paint events not yet booked in the effort log
        self._timer = None
        self._history: list[int] = []  # slices shown before each jump (Previous)
        self._build_controls(viewer)
        self._set_enabled(False)
        self._connect_signals(viewer)

    def _build_controls(self, viewer) -> None:
        """The dock's widgets, in the order a clinician uses them, with their tooltips."""
        self._image = ComboBox(label="Image", choices=lambda _w: image_layer_names(viewer))
        self._folder = FileEdit(label="Project folder", mode="d", value="")
        self._open = PushButton(text="Start review")
        self._status = status_label(value="No review open.")
        self._unsaved = status_label(value="")
        self._prev = PushButton(text="◀ Previous")
        self._next = PushButton(text=f"Next least confident ▶ ({shortcut_text('next')})")
        self._accept = PushButton(text=f"Accept slice ✓ ({shortcut_text('accept')})")
        self._versions = ComboBox(label="Version", choices=[])
        self._revert = PushButton(text=f"Revert to version ({shortcut_text('revert')})")
        self._organ = ComboBox(
            label="Organ",
            choices=[(f"{c.replace('_', ' ')} ({i + 1})", c) for i, c in enumerate(CLASSES)],
            value="stomach",
        )
        self._fill = PushButton(text=f"Fill between ({shortcut_text('fill')})")
        self._undo_fill = PushButton(text=f"Undo fill / learn / propagate ({shortcut_text('undo_fill')})")
        self._learn = PushButton(text=f"Learn from corrections ({shortcut_text('learn')})")
        self._refine = PushButton(text=f"Refine with model ({shortcut_text('refine')})")
        self._refine_neighbours = CheckBox(text="refine neighbours too", value=False)
        self._effort_status = status_label(value="")
        self._visible = {c: CheckBox(text=c.replace("_", " "), value=True) for c in CLASSES}
        vis = Container(widgets=list(self._visible.values()), layout="horizontal", labels=False)
        self._export_path = FileEdit(label="Export to", mode="w", filter="*.csv *.tif *.nii.gz *.dcm", value="")
        self._export_format = ComboBox(label="Format", value=None, choices=EXPORT_CHOICES)
        self._export = PushButton(text="Export reviewed masks")
        nav = Container(widgets=[self._prev, self._next], layout="horizontal", labels=False)
        fill = Container(widgets=[self._fill, self._undo_fill], layout="horizontal", labels=False)
        refine = Container(widgets=[self._refine, self._refine_neighbours], layout="horizontal", labels=False)
        boxes = self._init_box_tools()
        self.extend(
            [
                self._image,
                self._folder,
                self._open,
                self._status,
                self._unsaved,
                nav,
                self._accept,
                self._organ,
                fill,
                refine,
                boxes,
                self._learn,
                self._effort_status,
                self._versions,
                self._revert,
                vis,
                self._export_path,
                self._export_format,
                self._export,
            ]
        )
        for action, button in (
            ("previous", self._prev),
            ("next", self._next),
            ("accept", self._accept),
            ("revert", self._revert),
            ("fill", self._fill),
            ("undo_fill", self._undo_fill),
            ("refine", self._refine),
            ("learn", self._learn),
        ):
            button.tooltip = tooltip(action)
        self._organ.tooltip = "The organ you paint, fill, refine, box and propagate [1 / 2 / 3]"

    def _connect_signals(self, viewer) -> None:
        """The buttons' actions, and what the dock follows in the viewer and the hub."""
        self._open.changed.connect(self.start_review)
        self._next.changed.connect(self.next_slice)
        self._prev.changed.connect(self.previous_slice)
        self._accept.changed.connect(self.accept_slice)
        self._revert.changed.connect(self.revert_slice)
        self._fill.changed.connect(self.fill_between)
        self._undo_fill.changed.connect(self.undo_fill)
        self._refine.changed.connect(self.refine_slice)
        self._learn.changed.connect(self.learn_from_corrections)
        self._organ.changed.connect(self._organ_chosen)
        self._hub.model_changed.connect(self._on_model_changed)
        self._hub.project_model_found.connect(self._on_model_changed)  # Refine uses the project's model too
        close_on_destroy(self)  # Qt never calls a magicgui Container's closeEvent
        self._export.changed.connect(lambda: self.export_to(str(self._export_path.value)))
        for box in self._visible.values():
            box.changed.connect(self._apply_visibility)
        viewer.layers.events.inserted.connect(lambda _e: self._image.reset_choices())
        viewer.layers.events.removed.connect(self._on_layer_removed)
        viewer.dims.events.current_step.connect(self._on_step)
        self._hub.prediction_ready.connect(self._on_prediction)

    # ---- public API (also used by tests and the app) -------------------------------------------
    @property
    def session(self):
        """The open ReviewSession (None before Start review)."""
        return self._session

    @property
    def labels_layer(self) -> Labels | None:
        """The editable organ layer of the review."""
        return self._layer

    def set_store_folder(self, folder: str) -> None:
        """Use ``folder`` as the project folder (label store + model registry)."""
        self._folder.value = folder
        self._project_override = folder

    def flush(self) -> None:
        """Save a pending edit of the current slice and wait until the store has it (and all queued work)."""
        self._save_current(wait=True)
        if self._session is not None:
            self._io.submit(lambda: None).result()  # the store thread runs jobs in order

    # ---- opening ---------------------------------------------------------------------------------
    def start_review(self) -> None:
        """Open (or reopen) the label store of the selected image and show its saved masks."""
        layer = find_layer(self._viewer, self._image.value)
        if layer is None:
            show_error("Review: choose an image layer first.")
            return
        self.flush() if self._session else None
        stack = stack_from_layer(layer)
        show_only_stack(self._viewer, layer, stack.name)  # the review layer lies over this image, not another scan
        folder = (
            str(self._folder.value)
            if self._project_override or str(self._folder.value) not in ("", ".")
            else str(Project.for_stack(stack.source, stack.name).folder)
        )
        self._folder.value = folder
        self._status.value = "Opening the label store…"
        fut = self._io.submit(self._open_session, folder, stack)
        fut.add_done_callback(lambda f: self._opened(f, stack))

    @staticmethod
    def _open_session(folder: str, stack):
        from napari_gitseg.review.session import ReviewSession

        project = Project(folder)
        session = ReviewSession(project.open_store(), stack)
        project.save_snapshot(stack)  # the background trainer reads the image from here
        return session

    @ensure_main_thread
    @when_alive
    def _opened(self, fut: Future, stack) -> None:
        try:
            self._session = fut.result()
        except Exception as err:  # noqa: BLE001  (shown to the user, napari keeps running)
            show_error(f"Review: cannot open the label store: {err}")
            self._status.value = f"Error: {err}"
            return
        data, kwargs, _ = labels_layer_data(stack, self._session.masks, name=f"{stack.name} review", role="review")
        self._layer = ensure_labels_layer(self._viewer, kwargs["name"], data, kwargs)
        self._layer.events.paint.connect(self._on_paint)
        self._layer.events.selected_label.connect(self._on_selected_label)
        self._layer.mode = "paint"
        self._organ_chosen(self._organ.value)
        bind_review_keys(self._layer, self._key_actions())
        self._viewer.layers.selection.active = self._layer
        self._start_sync_timer()
        self._set_enabled(True)
        self._apply_visibility()
        self._z = None
        self._on_step()
        self._refresh_status()
        show_info(f"Review open: {stack.name} (store: {self._folder.value})")
        self._hub.project_opened.emit(str(self._folder.value), stack.name)

    # ---- editing and saving ------------------------------------------------------------------------
    def _current_z(self) -> int:
        return int(self._viewer.dims.current_step[0])

    def _on_step(self, _event=None) -> None:
        if self._session is None or self._layer is None:
            return
        z = self._current_z()
        if z == self._z:
            return
        self._after_stroke()  # strokes on the slice being left are booked to it
        self._save_current()
        self._z = z
        self.effort.enter(z)
        if z in self._stale:  # a version saved by others while the clinician was on this slice
            self._stale.discard(z)
            self._show_slice(z)
        self._snapshot = np.array(self._layer.data[z], copy=True)
        self._seen = self._snapshot.copy()
        self._unsaved.value = ""
        self._refresh_versions()
        self._queue_next.ask(self._io, self._session, z)  # Accept / Next then jump at once
        self._want_embeddings()  # once the box tools were used: this slice and its neighbours ahead

    def _on_paint(self, _event=None) -> None:
        # napari emits `paint` while it records the undo step, before the new values land
        from qtpy.QtCore import QTimer

        if self._applying:
            return
        self._strokes_pending += 1
        QTimer.singleShot(0, self._after_stroke)

    def _after_stroke(self) -> None:
        """Book the strokes painted since the last call in the effort log and show the unsaved state."""
        if self._layer is not None and self._z is not None and self._seen is not None and self._strokes_pending:
            now = np.array(self._layer.data[self._z], copy=True)
            self.effort.stroke(self._z, self._seen, now, count=self._strokes_pending)
            self._seen = now
        self._strokes_pending = 0
        self._update_unsaved()

    def _update_unsaved(self) -> None:
        if self._snapshot is not None and self._z is not None and self._layer is not None:
            dirty = not np.array_equal(self._layer.data[self._z], self._snapshot)
            self._unsaved.value = "● unsaved edits on this slice (saved on slice change / Accept)" if dirty else ""

    def _save_current(self, wait: bool = False, accept: bool = False) -> Future | None:
        """Queue the save of the current slice's edit (and acceptance); optionally wait for it."""
        if self._session is None or self._layer is None or self._z is None or self._snapshot is None:
            return None
        z = self._z
        before = self._snapshot
        after = np.array(self._layer.data[z], copy=True)
        if not accept and np.array_equal(before, after):
            return None
        self._snapshot = after
        session = self._session
        if accept:
            fut = self._io.submit(session.accept, z, before, after)
        else:
            fut = self._io.submit(session.save_edit, z, before, after)
        fut.add_done_callback(lambda f: self._saved(f, z, accept, before))
        if wait:
            fut.result()
        return fut

    @ensure_main_thread
    @when_alive
    def _saved(self, fut: Future, z: int, accepted: bool, before: np.ndarray) -> None:
        err = fut.exception()
        if err is not None:
            show_error(
                f"Review: slice {z} NOT saved: {err}. Your edit is still on screen; fix the problem and "
                "save again (Accept)."
            )
            self._unsaved.value = "● NOT SAVED — see the error message"
            if z == self._z:
                self._snapshot = before  # the edit still differs from what is stored: the next save retries
            return
        if z == self._z:
            self._unsaved.value = "✓ accepted" if accepted else "✓ saved"
            self._refresh_versions()
        self._refresh_status()

    def accept_slice(self) -> None:
        """Save the current slice as reviewed and jump to the next least-confident slice."""
        if self._session is None:
            return
        if self._z is not None:
            self._after_stroke()
            self.effort.accept(self._z)
        self._save_current(accept=True)
        self._save_effort()
        self._goto_next()

    def next_slice(self) -> None:
        """Go to the least-confident unreviewed slice."""
        if self._session is None:
            return
        self._save_current()
        self._goto_next()

    def _goto_next(self) -> None:
        """Jump to the next slice of the review queue: at once when the store thread answered ahead."""
        answer = self._queue_next.answer(self._z)
        if answer is not None and answer.done() and answer.exception() is None and answer.result() is not None:
            self._goto(answer.result())
            return
        if answer is None:
            answer = self._io.submit(self._session.next_in_queue, self._z)
        answer.add_done_callback(self._goto_future)

    def previous_slice(self) -> None:
        """Go back to the slice shown before the last jump."""
        if self._history:
            self._goto(self._history.pop(), remember=False)

    @ensure_main_thread
    @when_alive
    def _goto_future(self, fut: Future) -> None:
        z = fut.result() if fut.exception() is None else None
        if z is None:
            show_info("Review: no unreviewed slice left.")
            return
        self._goto(z)

    def _goto(self, z: int, remember: bool = True) -> None:
        if remember and self._z is not None:
            self._history.append(self._z)
        step = list(self._viewer.dims.current_step)
        step[0] = int(z)
        self._viewer.dims.current_step = tuple(step)

    def revert_slice(self) -> None:
        """Make the chosen older version of the current slice the latest again."""
        if self._session is None or self._z is None or self._versions.value is None:
            return
        z, version = self._z, int(self._versions.value)
        fut = self._io.submit(self._session.revert, z, version)
        fut.add_done_callback(lambda f: self._reverted(f, z))

    @ensure_main_thread
    @when_alive
    def _reverted(self, fut: Future, z: int) -> None:
        if fut.exception() is not None:
            show_error(f"Review: revert failed: {fut.exception()}")
            return
        self._show_slice(z)
        self._refresh_versions()
        self._refresh_status()

    def _show_slice(self, z: int, refresh: bool = True) -> None:
        from napari_gitseg.classes import masks_to_labels

        if self._session is None or self._layer is None:  # the review closed while a job ran
            return
        labels = masks_to_labels(self._session.masks[:, z])
        if z == self._z and self._snapshot is not None and not np.array_equal(self._layer.data[z], self._snapshot):
            # the clinician is editing this slice: never replace their unsaved edit; the next save
            # stores exactly what they see (ReviewSession.save_edit)
            return
        self._layer.data[z] = labels
        if refresh:
            self._layer.refresh()
        if z == self._z:
            self._snapshot = labels.copy()
            self._seen = labels.copy()

    def export_to(self, path: str, fmt: str | None = None) -> Future | None:
        """Export the reviewed masks with a provenance side file (format: ``fmt``, the Format box, or by extension).

        DICOM RT-STRUCT / SEG of a non-DICOM stack also write its images as a DICOM series.
        """
        if self._session is None:
            show_error("Review: start a review first.")
            return None
        if not path or path == ".":
            show_error("Review: choose a file to export to (.csv, .tif or .nii.gz).")
            return None
        from napari_gitseg.export import export_format_of  # one extension -> format table (io.format_of)

        fmt = fmt or self._export_format.value or export_format_of(path)
        if fmt is None:
            show_error(f"Review: cannot export to {path}: use .csv, .tif or .nii.gz, or choose a DICOM format")
            return None
        self._save_current()
        from napari_gitseg.export import export_store

        def export(folder: str, name: str) -> list:
            from napari_gitseg.review.effort import export_effort

            written = export_store(folder, path, fmt, name, with_images=True)
            return [*written, export_effort(folder, path, name)]  # the clinician's effort, beside the masks

        self._save_effort()
        fut = self._io.submit(export, str(self._folder.value), self._session.name)
        fut.add_done_callback(self._exported)
        return fut

    @ensure_main_thread
    @when_alive
    def _exported(self, fut: Future) -> None:
        if fut.exception() is not None:
            show_error(f"Review: export failed: {fut.exception()}")
        else:
            show_info("Exported: " + ", ".join(str(p) for p in fut.result()))

    # ---- predictions ---------------------------------------------------------------------------------
    def _on_prediction(self, stack, prediction) -> None:
        if self._session is None or stack.name != self._session.name:
            return
        self._save_current(wait=True)
        version = getattr(prediction, "model_version", None)
        fut = self._io.submit(
            self._session.apply_prediction,
            prediction.masks,
            prediction.confidence,
            None if version is None else str(version),
        )
        fut.add_done_callback(self._prediction_applied)

    @ensure_main_thread
    @when_alive
    def _prediction_applied(self, fut: Future) -> None:
        if fut.exception() is not None:
            show_error(f"Review: could not store the prediction: {fut.exception()}")
            return
        updated = fut.result()
        for z in updated:
            self._show_slice(z, refresh=False)
        if updated and self._layer is not None:
            self._layer.refresh()  # once: a refresh per slice cost ~0.5 s of GUI time for 144 slices
        self.predictions_shown += 1
        self._refresh_status()
        show_info(f"Review: {len(updated)} unreviewed slices updated; reviewed and corrected slices kept.")

    # ---- small UI bits ---------------------------------------------------------------------------------
    def _refresh_status(self) -> None:
        if self._session is None:
            return
        self._queue_next.ask(self._io, self._session, self._z)  # the store changed: the queue may have too
        fut = self._io.submit(self._session.counts)
        fut.add_done_callback(self._show_counts)

    @ensure_main_thread
    @when_alive
    def _show_counts(self, fut: Future) -> None:
        if fut.exception() is None:
            c = fut.result()
            self._status.value = (
                f"Reviewed {c.get('reviewed', 0)} of {c.get('total', 0)} · "
                f"labelled slices in training: {c.get('clinician', 0)}"
            )

    def _refresh_versions(self) -> None:
        if self._session is None or self._z is None:
            return
        fut = self._io.submit(self._session.history, self._z)
        fut.add_done_callback(self._show_versions)

    @ensure_main_thread
    @when_alive
    def _show_versions(self, fut: Future) -> None:
        if fut.exception() is not None:
            return
        versions = [(version_label(h), h.version) for h in reversed(fut.result())]
        self._versions.choices = versions
        if versions:
            self._versions.value = versions[0][1]  # the newest version is the one on screen

    def _apply_visibility(self, _v=None) -> None:
        if self._layer is not None:
            set_class_visibility(self._layer, {c: box.value for c, box in self._visible.items()})

    def _set_enabled(self, on: bool) -> None:
        for w in (
            self._prev,
            self._next,
            self._accept,
            self._revert,
            self._versions,
            self._export,
            self._fill,
            self._undo_fill,
            self._refine,
            self._learn,
            *self._box_widgets(),
        ):
            w.enabled = on

    def _on_layer_removed(self, event) -> None:
        self._image.reset_choices()
        if self._layer is not None and event.value is self._layer:
            # the edit is still in memory: save it before letting go
            try:
                self._save_current(wait=True)
            except Exception as err:  # noqa: BLE001
                show_error(f"Review: could not save the last edit: {err}")
            self._layer = None
            self._session = None
            self._set_enabled(False)
            self._status.value = "Review layer removed; saved work is in the store. Start review to reopen."

    def close_review(self) -> None:
        """Save pending work, close the store and detach from the layer.

        Runs when the dock's Qt widget is destroyed (dock closed, napari quit), before reopening,
        and from the app; a second call does nothing more.
        """
        session = self._session
        self._close_boxes()  # a running propagation stops and stores what it reached
        if self._learn_cancel is not None:
            self._learn_cancel.set()  # a running Learn from corrections stops at its next step
        if self._timer is not None and is_alive(self):
            self._timer.stop()
        try:
            self._save_current(wait=True)
        finally:
            # later viewer events (closing napari removes layers and changes dims) find no session
            self.effort.enter(None)
            if session is not None:
                rows = self.effort.rows(list(session.stack.slice_ids))
                self._io.submit(session.store.save_effort, self.effort.session_id, rows)
            self._session, self._layer, self._z, self._snapshot = None, None, None, None
            self._learn_prediction = None
            self._queue_next.forget()
            self._fills.clear()  # Undo fill / learn belongs to the review it was done in
            self._compute.close()  # a cancelled Learn from corrections ends before the store closes
            if session is not None:
                self._io.submit(session.store.close)
            self._io.close()
        if is_alive(self):
            self._set_enabled(False)
            self._status.value = "Review closed; saved work is in the store. Start review to reopen."
