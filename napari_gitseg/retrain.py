"""One-click retraining without Qt: check the project, build the job, run the worker, stream events.

The napari Train dock wraps ``iter_round_events`` in a ``thread_worker``; the heavy work runs in
``python -m training.worker`` (its own process), so the GUI never blocks and a crash of the
trainer never takes napari down.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

from napari_gitseg.project import registry_folder

MIN_CLINICIAN_SLICES = 1


class RetrainError(Exception):  # not RuntimeError: superqt's thread workers swallow those silently
    """The project is not ready for a round (the message says what to do)."""


def clinician_label_count(project: str | Path) -> int:
    """How many slices a clinician has labelled or reviewed in the project's store."""
    from napari_gitseg.store import LabelStore, StoreError

    try:
        store = LabelStore.open(project, readonly=True)
    except StoreError as err:
        raise RetrainError(f"no label store in {project}: start a review and label some slices first") from err
    try:
        return len(store.clinician_slices())
    finally:
        store.close()


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
    from training.worker import WorkerProcess

    project = Path(job["project"])
    n = clinician_label_count(project)
    if n < MIN_CLINICIAN_SLICES:
        raise RetrainError(f"no clinician-labelled slices in {project}: correct and Accept at least a few "
                           "slices in the Review dock, then retrain")
    workdir = project / "jobs"
    workdir.mkdir(parents=True, exist_ok=True)
    proc = WorkerProcess(job, workdir)
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
    from napari_gitseg.model.registry import ModelRegistry

    folder = registry_folder(Path(project))
    if not folder.is_dir():
        return [], None
    registry = ModelRegistry(folder, create=False)
    return registry.versions(), registry.active()


def activate_version(project: str | Path, version: str | None) -> Path:
    """Activate ``version`` (None = roll back to the previous one); returns its bundle JSON."""
    from napari_gitseg.model.registry import ModelRegistry

    registry = ModelRegistry(registry_folder(Path(project)), create=False)
    name = registry.rollback() if version is None else (registry.activate(version) or version)
    return registry.path_of(name)
