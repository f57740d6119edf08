"""The background trainer seen from the GUI: start ``python -m training.worker JOB.json``, read its events.

``napari_gitseg`` never imports ``training``: it starts the trainer as a separate process (a crash,
a full disk or a kill there cannot take napari down) and parses the JSON lines the process prints
with the shared definitions of ``napari_gitseg.events``. The job formats and the process side are
in ``training.worker``.

``WorkerProcess`` is the Qt-free client: ``start()``, ``events()`` (parsed events until the process
exits; a non-zero exit without an ``Error`` event yields ``Error("worker exited with code N")``),
``cancel()``, ``kill()``, ``returncode``. The GUI runs ``events()`` in a napari ``thread_worker``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

from napari_gitseg import events as ev

__all__ = ["WORKER_NICE", "WORKER_NICE_ENV", "WorkerProcess"]

WORKER_NICE_ENV = "GITSEG_WORKER_NICE"  #: the variable the worker reads (``training.worker``)
WORKER_NICE = 10  #: how much lower the trainer runs than napari (Unix nice levels)


def _package_root() -> str:
    """The folder holding ``napari_gitseg`` and ``training`` (a checkout or site-packages)."""
    return str(Path(__file__).resolve().parents[1])


class WorkerProcess:
    """Runs one job in ``python -m training.worker`` and streams its events (no Qt)."""

    def __init__(self, job: dict, workdir: str | os.PathLike, python: str | None = None, env: dict | None = None):
        self.job = dict(job)
        self.job.setdefault("job_id", uuid.uuid4().hex[:12])
        self.workdir = Path(workdir)
        self.python = python or sys.executable
        self.extra_env = dict(env or {})
        self.job_path = self.workdir / f"job-{self.job['job_id']}.json"
        self.log_path = self.workdir / f"job-{self.job['job_id']}.log"
        self._proc: subprocess.Popen | None = None
        self._log = None

    @property
    def pid(self) -> int | None:
        """The worker's process id (None before ``start``)."""
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit status (None while running or before ``start``)."""
        return None if self._proc is None else self._proc.poll()

    def start(self) -> WorkerProcess:
        """Write the job file and start the worker process."""
        if self._proc is not None:
            raise RuntimeError("this worker was already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.job_path.write_text(json.dumps(self.job, indent=2) + "\n", encoding="utf-8")
        self._log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(
            [self.python, "-m", "training.worker", str(self.job_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=self.environment(),
            cwd=str(self.workdir),
        )
        return self

    def environment(self) -> dict[str, str]:
        """The worker's environment: this one, the package on its path, unbuffered output, and a lower CPU
        priority (``GITSEG_WORKER_NICE``, default 10: on a 2-core machine a round must not starve the GUI)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault(WORKER_NICE_ENV, str(WORKER_NICE))
        env.update(self.extra_env)
        return env

    def events(self) -> Iterator[ev.Event]:
        """Parsed events until the worker exits (then an ``Error`` if it failed without reporting one)."""
        if self._proc is None:
            raise RuntimeError("start() the worker first")
        saw_error = False
        assert self._proc.stdout is not None
        for raw in self._proc.stdout:
            event = ev.parse_line(raw)
            saw_error = saw_error or isinstance(event, ev.Error)
            yield event
        self._proc.stdout.close()
        code = self._proc.wait()
        if self._log is not None:
            self._log.close()
        if code != 0 and not saw_error:
            yield ev.Error(message=f"worker exited with code {code}", kind="exit", traceback_tail=self.log_tail())

    def log_tail(self, n_chars: int = 4000) -> str:
        """The end of the worker's stderr log."""
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-n_chars:].decode("utf-8", errors="replace")

    def cancel(self) -> None:
        """Ask the worker to stop at its next step (SIGTERM); it then emits ``Cancelled`` and exits 0."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Kill the worker at once (SIGKILL); bundles and the registry stay consistent."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the worker to exit; its exit status."""
        if self._proc is None:
            raise RuntimeError("start() the worker first")
        return self._proc.wait(timeout)
