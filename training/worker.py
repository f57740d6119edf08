"""The background trainer: ``python -m training.worker JOB.json``, in its own process.

The GUI never trains in its own process: a crash, a full disk or a kill of the trainer cannot take
napari down. The worker reads one JSON job, runs it and reports typed events (``napari_gitseg.events``)
as JSON lines on stdout, one per line, flushed at once; everything else (logs, warnings, stray
prints of libraries) goes to stderr.

Jobs (unknown keys are rejected with an error naming the key and the file)::

    {"kind": "train", "data": PATH, "out": DIR, "name": "model", "val_data": PATH, "resume": false,
     "notes": "", "preset": "cpu", "config": {...overrides...}, "job_id": "..."}
    {"kind": "bootstrap", "data": PATH, "out": DIR, "labels": 100, "rounds": 3, "keep": 100, ...}
    {"kind": "round", "project": DIR, "keep": 50, "preset": "cpu", "config": {...}}

Exit status: 0 after ``Done`` or ``Cancelled``; 1 after ``Error`` (bad job, bad data, any exception).
Cancel with SIGTERM or SIGINT: the job stops at its next training step or prediction batch, emits
``Cancelled`` and exits 0; bundles and the model registry are only ever changed atomically, so a
cancel (or even ``kill -9``) leaves them consistent.

The client that starts this process and reads its events is ``napari_gitseg.jobs.WorkerProcess``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import traceback
import uuid
from pathlib import Path

from napari_gitseg import events as ev
from napari_gitseg.jobs import WORKER_NICE_ENV

__all__ = ["JOB_KINDS", "JobError", "execute", "load_job", "main", "run_job"]

log = logging.getLogger("gitseg.worker")

_COMMON = {"kind": None, "job_id": None, "preset": "cpu", "config": None}
JOB_KINDS: dict[str, dict] = {
    "train": {"data": None, "out": None, "name": "model", "val_data": None, "resume": False, "notes": ""},
    "bootstrap": {"data": None, "out": None, "labels": 100, "rounds": 3, "keep": 100},
    "round": {"project": None, "keep": 50},
}
_REQUIRED = {"train": ("data", "out"), "bootstrap": ("data", "out"), "round": ("project",)}


class JobError(ValueError):
    """A job file that cannot be run as written; the message names the file and the problem."""


def load_job(source: str | os.PathLike | dict) -> dict:
    """Read and check a job (a JSON file or a dict): known kind, known keys, required keys; defaults filled."""
    where = "job"
    if isinstance(source, dict):
        job = dict(source)
    else:
        where = str(source)
        try:
            job = json.loads(Path(source).read_text(encoding="utf-8"))
        except OSError as err:
            raise JobError(f"{where}: cannot read the job file ({err.strerror or err})") from err
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise JobError(f"{where}: the job file is not valid JSON ({err})") from err
    if not isinstance(job, dict):
        raise JobError(f"{where}: a job must be a JSON object")
    kind = job.get("kind")
    if kind not in JOB_KINDS:
        raise JobError(f"{where}: unknown job kind {kind!r}; expected one of {', '.join(JOB_KINDS)}")
    known = {**_COMMON, **JOB_KINDS[kind]}
    unknown = [key for key in job if key not in known]
    if unknown:
        raise JobError(
            f"{where}: unknown key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(k) for k in unknown)} for a {kind!r} job (known: {', '.join(known)})"
        )
    missing = [key for key in _REQUIRED[kind] if job.get(key) in (None, "")]
    if missing:
        raise JobError(f"{where}: a {kind!r} job needs {', '.join(repr(k) for k in missing)}")
    out = {key: job.get(key, default) for key, default in known.items()}
    out["job_id"] = str(out["job_id"] or uuid.uuid4().hex[:12])
    if out["config"] is not None and not isinstance(out["config"], dict):
        raise JobError(f"{where}: 'config' must be an object of training settings")
    for key in ("labels", "rounds", "keep"):
        if key in out and (isinstance(out[key], bool) or not isinstance(out[key], int) or out[key] < 0):
            raise JobError(f"{where}: {key!r} must be a non-negative integer, got {out[key]!r}")
    out["_source"] = where
    return out


def _config_of(job: dict):
    """The job's TrainConfig: its preset with its ``config`` overrides (unknown settings rejected)."""
    from training.config import preset

    try:
        return preset(job["preset"] or "cpu", **(job["config"] or {}))
    except ValueError as err:
        raise JobError(f"{job['_source']}: {err}") from err


def run_job(job: dict, emit, cancel: threading.Event | None = None, config=None) -> dict:
    """Run a checked job, reporting through ``emit(event)``; returns the JSON-ready result."""
    config = config if config is not None else _config_of(job)
    kind = job["kind"]
    if kind == "round":
        from training.bootstrap import run_round_from_store

        return run_round_from_store(job["project"], config, keep=job["keep"], on_event=emit, cancel=cancel)
    from napari_gitseg.io import read_stacks

    stacks = read_stacks(job["data"])
    if kind == "bootstrap":
        from training.bootstrap import run_bootstrap

        report = run_bootstrap(
            stacks,
            labels=job["labels"],
            rounds=job["rounds"],
            keep=job["keep"],
            out=job["out"],
            config=config,
            on_event=emit,
            cancel=cancel,
        )
        return {k: v for k, v in report.items() if k != "config"}
    from training.loop import train

    val = read_stacks(job["val_data"]) if job["val_data"] else None
    out = Path(job["out"]) / str(job["name"] or "model")
    result = train(
        config,
        stacks,
        val,
        out,
        on_event=emit,
        cancel=cancel,
        resume=bool(job["resume"]),
        data_description={"data": str(job["data"]), "val_data": job["val_data"]},
        notes=str(job["notes"] or ""),
    )
    return result.to_dict()


class _EventWriter:
    """Writes events as JSON lines to the real stdout (kept apart from stray prints)."""

    def __init__(self, stream):
        self.stream = stream
        self.lock = threading.Lock()

    def __call__(self, event) -> None:
        line = ev.to_json_line(event)
        with self.lock:
            self.stream.write(line + "\n")
            self.stream.flush()


def _error_event(err: BaseException, kind: str | None = None) -> ev.Error:
    tail = "".join(traceback.format_exception(type(err), err, err.__traceback__)[-6:])
    return ev.Error(
        message=str(err) or type(err).__name__, kind=kind or type(err).__name__, traceback_tail=tail[-4000:]
    )


def execute(job_source: str | os.PathLike | dict, emit, cancel: threading.Event | None = None) -> int:
    """Load and run one job, reporting every outcome as an event through ``emit``; the exit status.

    ``Started`` once the job is read, then the job's events, then exactly one of ``Done``,
    ``Cancelled`` (status 0) or ``Error`` (status 1: bad job, bad data, a full disk, any exception).
    """
    try:
        job = load_job(job_source)
    except JobError as err:
        emit(_error_event(err, "bad_job"))
        return 1
    try:
        config = _config_of(job)
    except JobError as err:
        emit(ev.Started(job_id=job["job_id"], pid=os.getpid(), kind=job["kind"]))
        emit(_error_event(err, "bad_job"))
        return 1
    emit(ev.Started(job_id=job["job_id"], pid=os.getpid(), kind=job["kind"], config=config.to_dict()))
    from training.loop import CheckpointWriteError, TrainingCancelled

    try:
        result = run_job(job, emit, cancel, config)
    except TrainingCancelled:
        emit(ev.Cancelled())
        return 0
    except JobError as err:
        emit(_error_event(err, "bad_job"))
        return 1
    except CheckpointWriteError as err:
        emit(_error_event(err, "disk"))
        return 1
    except Exception as err:  # noqa: BLE001 - every failure becomes an Error event
        from napari_gitseg.io.errors import GitsegInputError

        log.exception("job %s failed", job["job_id"])
        emit(_error_event(err, "input" if isinstance(err, GitsegInputError) else None))
        return 1
    if cancel is not None and cancel.is_set():  # the signal came after the last step: the work is done
        log.info("cancel requested after the job finished")
    peak = _peak_rss_mb()
    if peak is not None and isinstance(result, dict):
        result = {**result, "worker_peak_rss_mb": peak}
    emit(ev.Done(result=result))
    return 0


def _peak_rss_mb() -> float | None:
    """This process's peak resident memory since it started (VmHWM; Linux only, else None).

    Not ``getrusage``: for a process started by fork + exec it also counts the parent's
    memory copied at the fork (napari's, for a GUI round).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def run_behind_the_gui() -> int:
    """Lower this process's CPU priority by ``$GITSEG_WORKER_NICE`` (set by the GUI; before any thread starts,
    so torch's threads inherit it); returns the nice level now. Where it cannot (no ``os.nice``), nothing."""
    try:
        step = int(os.environ.get(WORKER_NICE_ENV, "0") or 0)
    except ValueError:
        step = 0
    if not hasattr(os, "nice"):
        return 0
    try:
        return os.nice(max(0, step))
    except OSError:
        return os.nice(0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m training.worker JOB.json``."""
    run_behind_the_gui()
    argv = list(sys.argv[1:] if argv is None else argv)
    # events go to the real stdout; anything else printed (by us or a library) lands on stderr
    events_out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    emit = _EventWriter(events_out)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    cancel = threading.Event()

    def on_signal(signum, _frame):
        log.info("signal %s: cancelling at the next step", signum)
        cancel.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if len(argv) != 1:
        emit(ev.Error(message="usage: python -m training.worker JOB.json", kind="usage"))
        return 1
    return execute(argv[0], emit, cancel)


if __name__ == "__main__":
    sys.exit(main())
