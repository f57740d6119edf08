"""The trainer's typed events: written by the worker as JSON lines, read back by the GUI and the CLI.

One definition serves both sides (as CellSeg3D's ``TrainingReport``); it lives here because the GUI
reads the events without importing the trainer (``training`` imports ``napari_gitseg``, never the
other way round). The worker (``python -m training.worker``) calls
``to_json_line(event)`` and prints the line; the reader calls ``parse_line(line)`` and gets the
same dataclass back. Each line is a JSON object with a ``"type"`` field naming the event class.
A line that is not valid JSON, names an unknown type or carries fields of the wrong shape comes
back as ``Log(text)``: the reader never raises on what a process printed.

Events, in the order a job emits them: ``Started`` once; then per training step ``Progress``, per
epoch ``Metrics`` and (when the epoch is the best so far) ``Checkpoint``; per bootstrap round
``Promoted`` or ``Rejected`` and ``RoundDone``; finally exactly one of ``Done``, ``Error`` or
``Cancelled``. ``Log`` carries free text.

This module imports nothing heavy (no torch), so the GUI can import it at start-up.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "EVENT_TYPES",
    "Cancelled",
    "Checkpoint",
    "Done",
    "Error",
    "Event",
    "Log",
    "Metrics",
    "Progress",
    "Promoted",
    "Rejected",
    "RoundDone",
    "Started",
    "parse_line",
    "scaled_progress",
    "to_json_line",
]


@dataclass
class Started:
    """The worker process started job ``job_id`` (process ``pid``, ``kind`` train|bootstrap|round, its ``config``)."""

    job_id: str = ""
    pid: int = 0
    kind: str = ""
    config: dict = field(default_factory=dict)


@dataclass
class Progress:
    """One training step (or a phase of the job): ``fraction`` of the whole job done, in [0, 1]."""

    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps: int = 0
    loss: float | None = None
    fraction: float = 0.0
    phase: str = "train"


@dataclass
class Metrics:
    """End of an epoch: mean training loss and validation Dice / challenge score (per class too)."""

    epoch: int = 0
    train_loss: float | None = None
    val_dice: float | None = None
    val_score: float | None = None
    per_class: dict = field(default_factory=dict)


@dataclass
class Checkpoint:
    """A bundle was written at ``path`` after ``epoch``; ``best`` when it is the best by validation Dice."""

    path: str = ""
    epoch: int = 0
    val_dice: float | None = None
    best: bool = True


@dataclass
class Promoted:
    """The new model ``version`` beat the active one on the frozen validation set and is now active."""

    version: str = ""
    val_dice: float | None = None
    previous_version: str | None = None
    previous_dice: float | None = None


@dataclass
class Rejected:
    """The candidate did not beat the active model; the active model stays."""

    candidate_dice: float | None = None
    active_dice: float | None = None
    reason: str = ""


@dataclass
class RoundDone:
    """A bootstrap round finished: ``labels_spent`` clinician labels so far, frozen-set Dice of the active model."""

    round: int = 0
    labels_spent: int = 0
    val_dice: float | None = None


@dataclass
class Done:
    """The job finished; ``result`` is its JSON-ready summary."""

    result: dict = field(default_factory=dict)


@dataclass
class Error:
    """The job failed: a one-line ``message``, an error ``kind`` and the last lines of the traceback."""

    message: str = ""
    kind: str = "error"
    traceback_tail: str = ""


@dataclass
class Cancelled:
    """The job stopped on request (the last best bundle and the registry are intact)."""


@dataclass
class Log:
    """Free text (also what an unreadable line becomes)."""

    text: str = ""


Event = Started | Progress | Metrics | Checkpoint | Promoted | Rejected | RoundDone | Done | Error | Cancelled | Log
EVENT_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (Started, Progress, Metrics, Checkpoint, Promoted, Rejected, RoundDone, Done, Error, Cancelled, Log)
}


def _json_safe(value: Any) -> Any:
    """Plain JSON values: NaN/inf become None, numpy scalars and arrays become Python ones."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays, torch tensors
        return _json_safe(value.tolist())
    if hasattr(value, "__fspath__"):
        return str(value)
    return str(value)


def to_json_line(event: Event) -> str:
    """One JSON line (no newline) for ``event``: its fields plus ``"type"``."""
    if type(event).__name__ not in EVENT_TYPES or not dataclasses.is_dataclass(event):
        raise TypeError(f"not a trainer event: {event!r}")
    doc = {"type": type(event).__name__}
    doc.update({f.name: _json_safe(getattr(event, f.name)) for f in dataclasses.fields(event)})
    return json.dumps(doc, allow_nan=False, separators=(",", ":"))


_NUMBER = (int, float)
_FIELD_TYPES: dict[str, tuple] = {
    "int": (int,),
    "float": _NUMBER,
    "float | None": (*_NUMBER, type(None)),
    "str": (str,),
    "str | None": (str, type(None)),
    "bool": (bool,),
    "dict": (dict,),
}


def parse_line(line: str | bytes) -> Event:
    """The event a JSON line describes; anything unreadable comes back as ``Log(text)``, never an error."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    text = str(line).rstrip("\r\n")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        return Log(text)
    if not isinstance(doc, dict):
        return Log(text)
    cls = EVENT_TYPES.get(doc.get("type"))  # type: ignore[arg-type]
    if cls is None:
        return Log(text)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in doc:
            continue
        value = doc[f.name]
        allowed = _FIELD_TYPES.get(str(f.type))
        if allowed is not None:
            if isinstance(value, bool) and bool not in allowed:
                return Log(text)
            if not isinstance(value, allowed):
                return Log(text)
        kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except TypeError:
        return Log(text)


def scaled_progress(on_event: Callable[[Event], None] | None, start: float, end: float):
    """Wrap ``on_event`` so that ``Progress.fraction`` in [0, 1] maps to [start, end] of a longer job."""
    if on_event is None:
        return None

    def emit(event: Event) -> None:
        if isinstance(event, Progress):
            frac = min(1.0, max(0.0, float(event.fraction)))
            event = dataclasses.replace(event, fraction=start + (end - start) * frac)
        on_event(event)

    return emit
