"""The clinician's effort, per slice and per review session: time, strokes, painted pixels, accepted unedited.

``EffortLog`` is fed by the Review dock (slice entered / left, each brush stroke, Accept) and
keeps, per slice, the labels as they were before the first stroke and the pixels painted since
(what ``napari_gitseg.review.refine`` needs). Its rows go to the label store's ``effort`` table
(``LabelStore.save_effort``), and from there to a CSV beside exported masks
(``write_effort_csv``) and to the bootstrap report (minutes of clinician effort). No Qt here.
"""

from __future__ import annotations

import csv
import statistics
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "CSV_COLUMNS",
    "EffortLog",
    "SliceEffort",
    "effort_csv_path",
    "export_effort",
    "summarize",
    "summary_text",
    "write_effort_csv",
]

CSV_COLUMNS = ("session", "user", "stack", "z", "slice_id", "seconds", "strokes", "painted_px", "accepted_unedited")


@dataclass
class SliceEffort:
    """Effort on one slice in one session."""

    seconds: float = 0.0
    strokes: int = 0
    assists: int = 0  # fill-between / refine actions that changed the slice
    painted: np.ndarray | None = None  # (Y, X) bool: every pixel a stroke changed
    origin: np.ndarray | None = None  # (Y, X) labels before the first stroke
    accepted: bool = False
    accepted_unedited: bool = False

    @property
    def painted_px(self) -> int:
        """Number of distinct pixels the strokes changed."""
        return 0 if self.painted is None else int(self.painted.sum())


class EffortLog:
    """Effort of one review session (``session_id``), per slice z; ``clock`` is injectable for tests."""

    def __init__(self, session_id: str | None = None, clock: Callable[[], float] = time.monotonic):
        self.session_id = session_id or time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        self.slices: dict[int, SliceEffort] = {}
        self._clock = clock
        self._current: int | None = None
        self._since = 0.0

    def slice(self, z: int) -> SliceEffort:
        """The effort record of slice ``z`` (created on first use)."""
        return self.slices.setdefault(int(z), SliceEffort())

    def enter(self, z: int | None) -> None:
        """The clinician now looks at slice ``z`` (None: at no slice); the time on the last one is booked."""
        now = self._clock()
        if self._current is not None:
            self.slice(self._current).seconds += now - self._since
        self._current, self._since = (None if z is None else int(z)), now

    def stroke(self, z: int, before: np.ndarray, after: np.ndarray, count: int = 1) -> int:
        """Book a brush stroke (``count`` of them) on slice ``z``: its labels before / after; returns the
        pixels changed. A stroke that changed nothing (painted over the same label, or undone before it
        was booked) is still effort: it counts, with no painted pixel."""
        changed = np.asarray(before) != np.asarray(after)
        n = int(changed.sum())
        rec = self.slice(z)
        if n == 0:
            rec.strokes += max(1, int(count))
            return 0
        if rec.painted is None:
            rec.painted = np.zeros(changed.shape, dtype=bool)
            rec.origin = np.array(before, copy=True)
        rec.painted |= changed
        rec.strokes += max(1, int(count))
        return n

    def box(self, z: int) -> None:
        """Book a box drawn on slice ``z`` (or Refine by boxes): one stroke of effort, no painted pixel (the
        mask is the model's, so a later Refine or box may change it)."""
        rec = self.slice(z)
        rec.strokes += 1
        rec.assists += 1

    def assisted(self, z: int) -> None:
        """Book a fill-between or refine action that changed slice ``z`` (it is then not unedited)."""
        self.slice(z).assists += 1

    def accept(self, z: int) -> bool:
        """Book an Accept of slice ``z``; returns True when it was accepted without any edit."""
        rec = self.slice(z)
        unedited = rec.strokes == 0 and rec.assists == 0
        rec.accepted, rec.accepted_unedited = True, unedited
        return unedited

    def rows(self, slice_ids: Sequence[str]) -> list[dict]:
        """One dict per slice with effort (the current slice's time so far included), for the store."""
        running = self._clock() - self._since if self._current is not None else 0.0
        return [
            {
                "slice_id": slice_ids[z],
                "z": z,
                "seconds": round(r.seconds + (running if z == self._current else 0), 3),
                "strokes": r.strokes,
                "painted_px": r.painted_px,
                "accepted_unedited": r.accepted_unedited,
            }
            for z, r in sorted(self.slices.items())
        ]

    def summary(self) -> dict:
        """Counts of this session: reviewed (accepted) slices, accepted unedited, strokes, median seconds."""
        return summarize(
            (r.seconds, r.strokes, r.painted_px, r.accepted, r.accepted_unedited) for r in self.slices.values()
        )


def summarize(rows: Iterable[tuple]) -> dict:
    """Summary of ``(seconds, strokes, painted_px, reviewed, accepted_unedited)`` rows, one per slice."""
    rows = list(rows)
    reviewed = [r for r in rows if r[3]]
    return {
        "reviewed": len(reviewed),
        "accepted_unedited": sum(1 for r in reviewed if r[4]),
        "strokes": sum(r[1] for r in rows),
        "painted_px": sum(r[2] for r in rows),
        "median_seconds": statistics.median(r[0] for r in reviewed) if reviewed else None,
        "minutes": sum(r[0] for r in rows) / 60.0,
    }


def summary_text(summary: dict) -> str:
    """ "12 slices reviewed, 7 accepted unedited, median 18 s per slice"."""
    text = f"{summary['reviewed']} slices reviewed, {summary['accepted_unedited']} accepted unedited"
    if summary.get("median_seconds") is not None:
        text += f", median {summary['median_seconds']:.0f} s per slice"
    return text


def effort_csv_path(masks_path: str | Path) -> Path:
    """Where the effort CSV goes beside exported masks: ``reviewed.nii.gz`` -> ``reviewed.effort.csv``."""
    path = Path(masks_path)
    stem = path.name[: -len(".nii.gz")] if path.name.endswith(".nii.gz") else path.stem
    return path.with_name(f"{stem}.effort.csv")


def write_effort_csv(rows: Iterable[dict], path: str | Path) -> Path:
    """Write effort rows (``LabelStore.effort``) as CSV with ``CSV_COLUMNS``; returns the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "accepted_unedited": int(bool(row.get("accepted_unedited")))})
    tmp.replace(path)
    return path


def export_effort(project: str | Path, masks_path: str | Path, stack: str | None = None) -> Path:
    """Write the store's effort rows (of ``stack``) as CSV beside exported masks; returns the CSV's path."""
    from napari_gitseg.store import LabelStore

    store = LabelStore.open(project, readonly=True)
    try:
        rows = store.effort(stack)
    finally:
        store.close()
    return write_effort_csv(rows, effort_csv_path(masks_path))
