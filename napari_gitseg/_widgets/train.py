"""Train dock: one click runs a bootstrap round in the background worker process.

Shows a progress bar, a live loss / validation-Dice plot, the promotion result and the
model versions with Activate / Roll back. When a new model is promoted, the Segment dock
re-predicts the stack under review; the Review dock keeps every corrected or accepted slice.
The logic is ``napari_gitseg.retrain`` (no Qt).
"""

from __future__ import annotations

import napari
from magicgui.widgets import ComboBox, Container, FileEdit, ProgressBar, PushButton, SpinBox
from napari.qt.threading import thread_worker
from superqt.utils import ensure_main_thread

from napari_gitseg import events as ev
from napari_gitseg.project import Project
from napari_gitseg.retrain import (
    activate_version,
    describe,
    iter_round_events,
    registry_versions,
    round_job,
    trainer_threads_beside_gui,
)

from ._common import (
    JobDock,
    set_progress,
    show_error,
    show_info,
    status_label,
    when_alive,
)
from ._plot import LossDicePlot

PRESETS = ("quick", "cpu", "gpu")
TOOLTIPS = {
    "preset": (
        "How long a round trains.\n"
        "quick: 40 steps (about half a minute); from a model, the few-label recipe cut short.\n"
        "cpu: the full few-label recipe (a dozen slices: 2-6 minutes on 2 cores, by processor).\n"
        "gpu: as cpu, in larger batches with mixed precision (needs a CUDA GPU)."
    ),
    "keep": "How many of the new model's most confident predictions of unreviewed slices are saved as\n"
    "pseudo-labels for the next round (never over a clinician's slice).",
    "retrain": "Train a candidate on the accepted slices in the background; it replaces the active model\n"
    "only if it scores higher on the clinician's held-out slices.",
    "cancel_btn": "Stop the round at its next step; the active model and the labels stay as they were.",
    "versions": "The project's model versions (validation Dice); the active one predicts.",
    "activate": "Make the chosen version the active model (re-predicts the unreviewed slices).",
    "rollback": "Re-activate the version that was active before this one.",
}


class TrainWidget(JobDock):
    """Retrain the model on the project's clinician labels + kept pseudo-labels."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer)
        self._stack_names: list[str] = []

        self._project = FileEdit(label="Project folder", mode="d", value="")
        self._preset = ComboBox(label="Preset", choices=PRESETS, value="cpu")
        self._keep = SpinBox(label="Keep pseudo-labels", value=50, min=0, max=100000)
        self._retrain = PushButton(text="Retrain (one round)")
        self._cancel_btn = PushButton(text="Cancel", enabled=False)
        self._progress = ProgressBar(label="Progress", min=0, max=100, value=0)
        self._status = status_label(label="", value="", lines=3)  # the verdict + pseudo-labels: up to 3 lines
        self._versions = ComboBox(label="Model versions", choices=[])
        self._activate = PushButton(text="Activate")
        self._rollback = PushButton(text="Roll back")
        self._version_info = status_label(label="", value="")
        for name in TOOLTIPS:
            getattr(self, f"_{name}").tooltip = TOOLTIPS[name]
        buttons = Container(widgets=[self._retrain, self._cancel_btn], layout="horizontal", labels=False)
        vbuttons = Container(widgets=[self._activate, self._rollback], layout="horizontal", labels=False)
        self.extend([self._project, self._preset, self._keep, buttons, self._progress, self._status])
        self.plot = LossDicePlot()
        self.native.layout().addWidget(self.plot)
        self.extend([self._versions, vbuttons, self._version_info])

        self._retrain.changed.connect(self.retrain)
        self._cancel_btn.changed.connect(self.cancel)
        self._activate.changed.connect(lambda: self._switch(self._versions.value))
        self._rollback.changed.connect(lambda: self._switch(None))
        self._hub.project_opened.connect(self._on_project_opened)
        self.events_seen: list = []
        self._outcome = ""  # the promotion verdict, kept on the status line when the round ends

    # ---- public ---------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True while a round is in progress."""
        return self._worker is not None

    def set_project(self, folder: str) -> None:
        """Use ``folder`` (label store + model registry) and list its model versions."""
        self._project.value = folder
        self.refresh_versions()

    def retrain(self) -> None:
        """Start one bootstrap round in the background worker."""
        if self.running:
            show_info("Retrain: a round is already running.")
            return
        project = str(self._project.value or "")
        if project in ("", "."):
            show_error("Retrain: open a review first (or choose the project folder).")
            return
        self._cancel.clear()
        self.plot.clear()
        self.events_seen = []
        self._outcome = ""
        job = round_job(
            project,
            preset=self._preset.value,
            keep=self._keep.value,
            overrides={"num_threads": trainer_threads_beside_gui()},
        )
        worker = thread_worker(
            iter_round_events,
            start_thread=False,  # progress in the dock (see segment.py: no activity GIF)
            connect={"yielded": self.show_event, "errored": self._on_error, "finished": self._on_finished},
        )(job, self._cancel)
        self._worker = worker
        self._set_running(True)
        self._status.value = "Starting the trainer…"
        worker.start()

    def cancel(self) -> None:
        """Ask the trainer to stop at its next step (the registry stays consistent)."""
        if self.running:
            self._cancel.set()
            self._status.value = "Cancelling…"

    # ---- events from the worker (GUI thread) --------------------------------------------------------
    @when_alive
    def show_event(self, event) -> None:
        """Show one trainer event (``napari_gitseg.retrain.describe`` says what) on the GUI thread."""
        self.events_seen.append(event)
        view = describe(event, self._outcome)
        if view.outcome is not None:
            self._outcome = view.outcome
        if view.percent is not None:
            set_progress(self._progress, view.percent)
        if view.loss_point is not None:
            self.plot.add_loss(*view.loss_point)
        if view.dice_point is not None:
            self.plot.add_dice(*view.dice_point)
        if view.error is not None:
            show_error(f"Retrain failed: {view.error}")
        if view.status is not None:
            self._status.value = view.status
        if view.done:
            self._after_round(next((e.version for e in self.events_seen if isinstance(e, ev.Promoted)), None))

    @when_alive
    def _on_error(self, err: Exception) -> None:
        show_error(f"Retrain: {err}")
        self._status.value = f"Error: {err}"

    @when_alive
    def _on_finished(self) -> None:
        self._worker = None
        self._set_running(False)
        self.refresh_versions()

    def _after_round(self, promoted_version: str | None) -> None:
        if promoted_version is None:
            return
        self.refresh_versions()
        self._announce_version(promoted_version)

    # ---- versions -------------------------------------------------------------------------------------
    def refresh_versions(self) -> None:
        """Reload the model version list (off the GUI thread)."""
        project = str(self._project.value or "")
        if project in ("", "."):
            return
        worker = thread_worker(
            registry_versions,
            start_thread=False,
            connect={"returned": self._show_versions, "errored": lambda e: show_error(f"Model registry: {e}")},
        )(project)
        worker.start()

    @when_alive
    def _show_versions(self, result) -> None:
        versions, active = result
        choices = []
        for v in reversed(versions):
            dice = (v.get("metrics") or {}).get("val_dice")
            tag = " (active)" if v["version"] == active else ""
            label = f"{v['version']}{tag}" + (f" · Dice {dice:.3f}" if isinstance(dice, int | float) else "")
            choices.append((label, v["version"]))
        self._versions.choices = choices
        if active:
            self._versions.value = active
        self._version_info.value = f"{len(versions)} version(s); active: {active or 'bundled default'}"

    def _announce_version(self, version: str) -> None:
        """Look up the bundle of ``version`` in the registry (off the GUI thread), then announce it."""
        worker = thread_worker(
            Project(self._project.value).model_path,
            start_thread=False,
            connect={"returned": self._announce, "errored": lambda e: show_error(f"Model registry: {e}")},
        )(version)
        worker.start()

    @ensure_main_thread
    @when_alive
    def _announce(self, path) -> None:
        """Tell the other docks: ``path`` is the active model now; re-predict the stacks under review."""
        self._hub.model_changed.emit(str(path))
        for name in self._stack_names:
            self._hub.repredict_requested.emit(name)

    def _switch(self, version: str | None) -> None:
        project = str(self._project.value or "")
        if project in ("", "."):
            return
        worker = thread_worker(
            activate_version,
            start_thread=False,
            connect={"returned": self._switched, "errored": lambda e: show_error(f"Model registry: {e}")},
        )(project, version)
        worker.start()

    @ensure_main_thread
    @when_alive
    def _switched(self, path) -> None:
        show_info(f"Active model: {path.stem}")
        self.refresh_versions()
        self._announce(path)

    def _on_project_opened(self, folder: str, stack_name: str) -> None:
        if stack_name not in self._stack_names:
            self._stack_names.append(stack_name)
        if str(self._project.value) in ("", ".") or str(self._project.value) != folder:
            self.set_project(folder)
            self._find_project_model(folder)

    def _find_project_model(self, folder: str) -> None:
        """Look up the project's active model (off the GUI thread) and tell the other docks: a scan is
        segmented by its own project's model, never by one another patient's labels adapted."""
        worker = thread_worker(
            Project(folder).active_model_path,
            start_thread=False,
            connect={
                "returned": self._hub.project_model_found.emit,
                "errored": lambda e: show_error(f"Model registry of {folder}: {e}"),
            },
        )()
        worker.start()

    def _set_running(self, running: bool) -> None:
        self._retrain.enabled = not running
        self._cancel_btn.enabled = running
