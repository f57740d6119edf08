"""One-click retraining without Qt: check the project, build the job, run the worker, stream events.

The napari Train dock wraps ``iter_round_events`` in a ``thread_worker``; the heavy work runs in
``python -m training.worker`` (its own process), so the GUI never blocks and a crash of the
trainer never takes napari down.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from napari_gitseg import events as ev
from napari_gitseg.project import Project, round_refusal


class RetrainError(Exception):  # not RuntimeError: superqt's thread workers swallow those silently
    """The project is not ready for a round (the message says what to do)."""


def check_ready(project: str | Path) -> int:
    """The number of clinician labels in the project; ``RetrainError`` when a round cannot run on them.

    The same rule and message as the worker's (``napari_gitseg.project.round_refusal``), so the
    GUI never starts a round the worker would refuse.
    """
    from napari_gitseg.store import StoreError

    try:
        n = Project(project).clinician_label_count()
    except StoreError as err:
        raise RetrainError(f"no label store in {project}: start a review and label some slices first") from err
    refusal = round_refusal(n)
    if refusal is not None:
        raise RetrainError(refusal)
    return n


def trainer_threads_beside_gui(cpu_count: int | None = None) -> int:
    """CPU threads for a round started from napari: every core but one, which stays with the GUI.

    On 2 cores a trainer on both starved napari's event loop (130 ms stalls); on one it stalled
    54 ms at most and the round even finished sooner (13.3 s vs 16.7 s, bench_gui_latency).
    """
    n = cpu_count if cpu_count is not None else (os.cpu_count() or 2)
    return max(1, int(n) - 1)


def round_job(project: str | Path, preset: str = "cpu", keep: int = 50, overrides: dict | None = None) -> dict:
    """The worker job for one bootstrap round on the project's labels."""
    job = {"kind": "round", "project": str(Path(project).resolve()), "preset": preset, "keep": int(keep)}
    if overrides:
        job["config"] = dict(overrides)
    return job


def iter_round_events(job: dict, cancel: threading.Event | None = None) -> Iterator:
    """Start the worker for ``job`` and yield its typed events until it exits.

    Setting ``cancel`` asks the worker to stop at its next step (SIGTERM); the stream then
    ends with a ``Cancelled`` event.
    """
    from napari_gitseg.jobs import WorkerProcess

    project = Project(job["project"])
    check_ready(project.folder)
    proc = WorkerProcess(job, project.jobs_folder)
    proc.start()
    stop = threading.Event()

    def _watch_cancel():
        while not stop.is_set():
            if cancel is not None and cancel.wait(0.2):
                proc.cancel()
                return

    watcher = threading.Thread(target=_watch_cancel, daemon=True)
    watcher.start()
    try:
        yield from proc.events()
    finally:
        stop.set()
        if proc.returncode is None:
            proc.kill()


def registry_versions(project: str | Path) -> tuple[list[dict], str | None]:
    """(versions with metrics, active version) of the project's model registry."""
    return Project(project).model_versions()


def activate_version(project: str | Path, version: str | None) -> Path:
    """Activate ``version`` (None = roll back to the previous one); returns its bundle JSON."""
    registry = Project(project).registry(create=False)
    name = registry.rollback() if version is None else (registry.activate(version) or version)
    return registry.path_of(name)


# ---- what the Train dock shows for each trainer event ------------------------------------------------
_PHASES = {
    "validate": "Comparing the new model with the active one",
    "pseudo-labels": "Predicting pseudo-labels",
    "load": "Loading the labelled slices",
}


def _fmt(value) -> str:
    """A metric for the status line ('–' when unknown)."""
    return "–" if value is None else f"{float(value):.3f}"


@dataclass(frozen=True)
class EventView:
    """What to show for one trainer event; a field left None leaves that part of the dock unchanged."""

    status: str | None = None  # the status line
    percent: int | None = None  # the progress bar, 0..100
    loss_point: tuple[float, float] | None = None  # (epochs done, training loss) for the live plot
    dice_point: tuple[float, float] | None = None  # (epoch, validation Dice)
    outcome: str | None = None  # the promotion verdict, kept on the status line when the round ends
    error: str | None = None  # also shown as an error notification
    done: bool = False  # the round finished


def describe(event, outcome: str = "") -> EventView:
    """The dock's view of ``event`` (a ``napari_gitseg.events`` event); ``outcome``: the verdict so far."""
    match event:
        case ev.Started():
            return EventView(status="Training…")
        case ev.Progress():
            percent = int(round(100 * max(0.0, min(1.0, event.fraction))))
            x = max(event.epoch - 1, 0) + event.step / max(event.steps, 1)
            if event.epochs and event.phase == "train":
                status = f"Training: epoch {event.epoch}/{event.epochs}, loss {_fmt(event.loss)}"
            else:
                status = _PHASES.get(event.phase, event.phase.capitalize()) + "…"
            loss = None if event.loss is None else (x, float(event.loss))
            return EventView(status=status, percent=percent, loss_point=loss)
        case ev.Metrics(val_dice=dice) if dice is not None:
            return EventView(dice_point=(float(event.epoch), float(dice)))
        case ev.Promoted():
            verdict = f"New model {event.version} promoted: validation Dice {_fmt(event.val_dice)}" + (
                f" (was {_fmt(event.previous_dice)})" if event.previous_dice is not None else ""
            )
            return EventView(status=verdict, outcome=verdict)
        case ev.Rejected():
            verdict = (
                f"New model not better ({_fmt(event.candidate_dice)} vs {_fmt(event.active_dice)}); "
                "the active model stays."
            )
            return EventView(status=verdict, outcome=verdict)
        case ev.Error():
            return EventView(status=f"Error: {event.message}", error=event.message)
        case ev.Cancelled():
            return EventView(status="Cancelled; the active model is unchanged.")
        case ev.Done():
            written = (event.result or {}).get("pseudo_written")
            status = outcome + (f" {written} new pseudo-label(s) wait for review." if written else "")
            return EventView(status=status, percent=100, done=True)
    return EventView()
