"""The Review dock's correction tools: Fill between, Refine, Learn from corrections, organ keys, versions
saved by others, effort.

A mixin of ``ReviewWidget`` (napari_gitseg/_widgets/review.py): it uses the dock's state (session,
layer, current slice, store thread) and stays thin; the work is in ``napari_gitseg.review``
(``session``, ``interpolate``, ``refine``, ``adapt`` and ``effort``).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

import numpy as np
from superqt.utils import ensure_main_thread

from napari_gitseg.classes import CLASSES, LABEL_VALUES
from napari_gitseg.review.effort import summary_text

from ._common import show_error, show_info, when_alive

SYNC_INTERVAL_MS = 2000  # how often the dock looks for versions saved by others (one cheap query)


class CorrectionTools:
    """Fill between, Refine, organ selection, sync with other writers and the effort line of the Review dock."""

    adapt_config = None  # Learn from corrections' AdaptConfig (None: its defaults; tests set a shorter one)

    # ---- faster correction: fill between, refine ------------------------------------------------------
    def _key_actions(self) -> dict:
        actions = {
            "accept": self.accept_slice,
            "next": self.next_slice,
            "previous": self.previous_slice,
            "revert": self.revert_slice,
            "fill": self.fill_between,
            "undo_fill": self.undo_fill,
            "refine": self.refine_slice,
            "learn": self.learn_from_corrections,
            "box": self.toggle_box_mode,
            "refine_boxes": self.refine_by_boxes,
            "propagate": self.propagate,
        }
        for i, organ in enumerate(CLASSES):
            actions[f"organ_{i + 1}"] = lambda organ=organ: self.select_organ(organ)
        return actions

    def select_organ(self, organ: str) -> None:
        """Paint, fill, refine and box ``organ`` from now on (keys 1 / 2 / 3; box mode stays on)."""
        self._organ.value = organ
        if self._layer is not None and not self._box_mode:
            self._layer.mode = "paint"

    def _organ_chosen(self, organ) -> None:
        if self._layer is not None and organ in LABEL_VALUES and self._layer.selected_label != LABEL_VALUES[organ]:
            self._layer.selected_label = LABEL_VALUES[organ]

    def _on_selected_label(self, _event=None) -> None:
        value = int(self._layer.selected_label) if self._layer is not None else 0
        if 1 <= value <= len(CLASSES) and self._organ.value != CLASSES[value - 1]:
            self._organ.value = CLASSES[value - 1]

    def fill_between(self) -> Future | None:
        """Interpolate the selected organ between this slice and the nearest other corrected slice."""
        if self._session is None or self._z is None:
            return None
        self._save_current(wait=True)  # this slice's correction is one of the two ends
        organ, z = self._organ.value, self._z
        self._unsaved.value = "Filling between slices…"
        fut = self._io.submit(self._session.fill_between, z, organ, self.interpolation)
        fut.add_done_callback(self._filled)
        return fut

    @ensure_main_thread
    @when_alive
    def _filled(self, fut: Future) -> None:
        if fut.exception() is not None:
            show_error(f"Review: fill between: {fut.exception()}")
            self._unsaved.value = ""
            return
        result = fut.result()
        if self._session is None:  # the review closed after the job ended: the filled slices wait in the store
            return
        self._fills.append(result)
        self._show_changed(result.filled)
        for z in result.filled:
            self.effort.assisted(z)
        name = result.organ.replace("_", " ")
        self._unsaved.value = (
            f"✓ {name} filled on {len(result.filled)} slice(s) between {result.z0} and "
            f"{result.z1}: review them (not training labels until accepted)"
        )
        self._refresh_status()

    def undo_fill(self) -> Future | None:
        """Put back what the last Fill between replaced (on slices not changed since)."""
        if self._session is None or not self._fills:
            show_info("Review: no fill to undo.")
            return None
        fut = self._io.submit(self._session.undo_fill, self._fills.pop())
        fut.add_done_callback(self._fill_undone)
        return fut

    @ensure_main_thread
    @when_alive
    def _fill_undone(self, fut: Future) -> None:
        if fut.exception() is not None:
            show_error(f"Review: undo failed: {fut.exception()}")
            return
        self._show_changed(fut.result())
        self._unsaved.value = f"✓ undone on {len(fut.result())} slice(s)"
        self._refresh_status()

    # ---- learn from corrections ------------------------------------------------------------------------
    def learn_from_corrections(self) -> Future | None:
        """Fit a corrector on this scan's corrected slices and relabel its other slices (a background job).

        Strokes on the slice on screen are saved first (they count as a correction). Slices a
        clinician labelled, reviewed or that wait as filled are never changed (the store refuses
        them). Undo fill / learn (Shift+I) takes it back; closing the review cancels it.
        """
        if self._session is None:
            return None
        if self._learning is not None and not self._learning.done():
            show_info("Review: already learning from corrections.")
            return None
        self._save_current(wait=True)  # this slice's correction counts
        from ._common import preload_compute_modules

        preload_compute_modules()  # torch on the GUI thread, before the worker uses it
        self._learn_cancel = threading.Event()
        self._unsaved.value = "Learning from your corrections…"
        self._learning = self._compute.submit(self._learn_job, self._session, self._learn_cancel)
        self._learning.add_done_callback(self._learned)
        return self._learning

    def _learn_job(self, session, cancel: threading.Event):
        from napari_gitseg.classes import masks_to_labels
        from napari_gitseg.review.adapt import MIN_CORRECTED, AdaptCancelled, AdaptConfig, learn_from_corrections

        corrected = self._io.submit(session.corrected_labels).result()
        if len(corrected) < MIN_CORRECTED:
            raise ValueError(
                f"correct or accept at least {MIN_CORRECTED} slices of this scan first "
                f"({len(corrected)} so far): learning starts from them, one is held out to check it"
            )
        prediction = self._model_prediction(session, cancel)
        model_labels = masks_to_labels(prediction.masks, tuple(session.stack.classes))
        targets = [z for z in range(len(session.stack.slice_ids)) if z not in corrected]
        new, check = learn_from_corrections(
            session.stack.image,
            prediction.probs,
            model_labels,
            corrected,
            targets,
            self.adapt_config or AdaptConfig(),
            progress=self._show_learn_progress,
            cancel=cancel,
        )
        if cancel.is_set():  # the review closed meanwhile: store nothing
            raise AdaptCancelled("learning from corrections was cancelled")
        return self._io.submit(session.store_learned, new, len(corrected), check, prediction.confidence).result()

    def _model_prediction(self, session, cancel: threading.Event):
        """The model's prediction of the review's whole scan: run once per scan and model, so a second
        Learn from corrections (more slices corrected) starts at once. Runs on the compute thread."""
        model = self._model_path
        cached = self._learn_prediction
        if cached is not None and cached[0] is session and cached[1] == model:
            return cached[2]
        self._show_learn_progress("predicting", 0, 1)
        prediction = self._load_predictor().predict(
            session.stack,
            cancel=cancel,
            progress=lambda done, total: self._show_learn_progress("predicting", done, total),
        )
        if self._session is session and self._model_path == model:  # still the scan and model it was run for
            self._learn_prediction = (session, model, prediction)
        return prediction

    @ensure_main_thread
    @when_alive
    def _show_learn_progress(self, stage: str, done: int, total: int) -> None:
        words = {
            "predicting": "running the model",
            "check": "checking on held-out corrected slices",
            "fit": "learning",
            "apply": "relabelling",
        }
        self._unsaved.value = f"Learning from your corrections: {words.get(stage, stage)} {done}/{total}…"

    @ensure_main_thread
    @when_alive
    def _learned(self, fut: Future) -> None:
        from napari_gitseg.predict import PredictionCancelled
        from napari_gitseg.review.adapt import AdaptCancelled, kept_note

        error = fut.exception()
        if error is not None:
            self._unsaved.value = ""
            if not isinstance(error, (AdaptCancelled, PredictionCancelled)):
                show_error(f"Review: learn from corrections: {error}")
            return
        result = fut.result()
        if self._session is None:  # the review closed after the job ended: its versions wait in the store
            return
        check = result.check
        scored = f" (held-out corrected slices: Dice {check.model_dice:.2f} model, {check.corrector_dice:.2f} learned)"
        scored += kept_note(check.kept, min_evidence=check.min_evidence)
        if not result.relabelled and not check.passed:
            self._unsaved.value = (
                f"Nothing changed: learning from your corrections did not beat the model "
                f"(by {check.min_gain:g} Dice at least){scored}"
            )
            return
        self._fills.append(result)
        self._show_changed(result.relabelled)
        for z in result.relabelled:
            self.effort.assisted(z)
        self._unsaved.value = (
            f"✓ {len(result.relabelled)} slice(s) relabelled from {result.corrected} corrected "
            f"slice(s){scored}: review them (Shift+I undoes it)"
        )
        self._refresh_status()

    def _show_changed(self, slices: list[int]) -> None:
        """Draw stored changes of ``slices``; the slice on screen waits while it has unsaved edits."""
        for z in slices:
            self._show_slice(z, refresh=False)
        if slices and self._layer is not None:
            self._layer.refresh()
        if self._z in slices:
            self._refresh_versions()  # the version list names the slice's new version

    def _on_model_changed(self, path) -> None:
        self._model_path = None if path is None else str(path)
        self._predictor = None
        self._learn_prediction = None

    def _load_predictor(self):
        """The model for Refine (the active model of the Segment / Train docks, else the bundled default)."""
        from napari_gitseg.predict import Predictor
        from napari_gitseg.resources import default_model_path

        if self._predictor is None:
            path = self._model_path or default_model_path()
            if path is None:
                raise FileNotFoundError("no model to refine with: choose one in the Segment dock")
            self._predictor = Predictor([path], first_batch_size=8)
        return self._predictor

    def refine_slice(self) -> Future | None:
        """Re-run the model on this slice (optionally its neighbours) with the clinician's strokes fixed."""
        if self._session is None or self._z is None:
            return None
        self._after_stroke()
        rec = self.effort.slices.get(self._z)
        if rec is None or rec.painted is None:
            show_info("Review: paint or erase a few strokes first; Refine grows them with the model.")
            return None
        from ._common import preload_compute_modules

        preload_compute_modules()  # torch is imported here, on the GUI thread, before the worker uses it
        z, neighbours = self._z, int(bool(self._refine_neighbours.value))
        current = np.array(self._layer.data[z], copy=True)
        self._unsaved.value = "Refining with the model…"
        fut = self._compute.submit(self._refine_job, z, neighbours, rec.origin.copy(), current, rec.painted.copy())
        fut.add_done_callback(lambda f: self._refined(f, z, current))
        return fut

    def _refine_job(self, z: int, neighbours: int, origin, current, painted):
        from napari_gitseg.review.refine import refine_labels, refine_neighbour, slice_probabilities

        probs, zs = slice_probabilities(self._load_predictor(), self._session.stack.image, z, neighbours)
        classes = tuple(self._session.stack.classes)
        centre = refine_labels(probs[:, zs.index(z)], origin, current, painted, classes)
        others = {
            zn: refine_neighbour(probs[:, i], self._session.labels_of(zn), origin, current, painted, classes)
            for i, zn in enumerate(zs)
            if zn != z
        }
        return centre, others

    @ensure_main_thread
    @when_alive
    def _refined(self, fut: Future, z: int, current: np.ndarray) -> None:
        if fut.exception() is not None:
            show_error(f"Review: refine failed: {fut.exception()}")
            self._unsaved.value = ""
            return
        centre, others = fut.result()
        if not self._apply_to_slice(z, current, centre, "refine again"):
            return
        self.effort.assisted(z)
        self._update_unsaved()
        if others:
            saved = self._io.submit(self._session.store_refined, others, z)
            saved.add_done_callback(self._show_changed_future)

    def _apply_to_slice(self, z: int, current: np.ndarray, new: np.ndarray, again: str) -> bool:
        """Put a tool's result ``new`` (Y, X) on slice ``z`` as ONE napari undo step (Ctrl+Z takes it back), if
        the slice still shows ``current`` (what the tool started from); else say so (``again``: what to do)."""
        if self._layer is None or z != self._z or not np.array_equal(self._layer.data[z], current):
            show_info(f"Review: the slice changed while the model ran; {again}.")
            return False
        idx = np.nonzero(new != current)
        self._applying = True
        try:
            self._layer.data_setitem((np.full(idx[0].shape, z), *idx), new[idx])
        finally:
            self._applying = False
        self._seen = np.array(self._layer.data[z], copy=True)
        return True

    @ensure_main_thread
    @when_alive
    def _show_changed_future(self, fut: Future) -> None:
        if fut.exception() is None:
            self._show_changed(fut.result())

    # ---- versions saved by others (the trainer's pseudo-labels, another window) -------------------------
    def _start_sync_timer(self) -> None:
        from qtpy.QtCore import QTimer

        if self._timer is None:
            self._timer = QTimer(self.native)
            self._timer.setInterval(SYNC_INTERVAL_MS)
            self._timer.timeout.connect(self.sync_now)
        self._timer.start()

    def sync_now(self) -> Future | None:
        """Look for versions saved by others and show them on slices not being edited."""
        if self._session is None:
            return None
        fut = self._io.submit(self._session.sync)
        fut.add_done_callback(self._synced)
        return fut

    @ensure_main_thread
    @when_alive
    def _synced(self, fut: Future) -> None:
        if fut.exception() is not None or not fut.result() or self._layer is None:
            return
        updated = fut.result()
        if self._z in updated:  # never under the clinician's eyes: shown when they come back to it
            self._stale.add(self._z)
        self._show_changed([z for z in updated if z != self._z])
        self.syncs_shown += 1
        self._refresh_status()

    # ---- effort --------------------------------------------------------------------------------------
    def _save_effort(self) -> None:
        """Store this session's effort rows and show the summary line."""
        self._effort_status.value = summary_text(self.effort.summary())
        if self._session is not None:
            rows = self.effort.rows(list(self._session.stack.slice_ids))
            self._io.submit(self._session.store.save_effort, self.effort.session_id, rows)
