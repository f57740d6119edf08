"""Small session values (active model, last slice viewed, ...) and the clinician's effort per review
session, kept in the label store next to the masks."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from napari_gitseg.store.sqlite import StoreError


class SessionRecords:
    """``LabelStore``'s session values and effort log."""

    def set_state(self, key: str, value: Any) -> None:
        """Store a small JSON-serialisable session value (active model, last slice viewed, ...)."""
        try:
            text = json.dumps(value)
        except (TypeError, ValueError) as err:
            raise StoreError(f"{self.path}: session value {key!r} is not JSON-serialisable ({err})") from err
        self._write(
            lambda conn: conn.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (key, text)),
            f"saving session value {key!r}",
        )

    def get_state(self, key: str, default: Any = None) -> Any:
        """Read a session value (``default`` if unset)."""
        rows = self._read("SELECT value FROM state WHERE key = ?", (key,))
        return default if not rows else json.loads(rows[0][0])

    _EFFORT_COLS = ("session", "slice_id", "user", "seconds", "strokes", "painted_px", "accepted_unedited", "updated")

    def save_effort(self, session: str, rows: Iterable[dict]) -> None:
        """Record (replace) the effort of review ``session`` on slices: dicts with ``slice_id``, ``seconds``,
        ``strokes``, ``painted_px`` and ``accepted_unedited``."""
        now = time.time()
        values = [
            (
                session,
                r["slice_id"],
                r.get("user") or self.user,
                float(r["seconds"]),
                int(r["strokes"]),
                int(r["painted_px"]),
                int(bool(r["accepted_unedited"])),
                now,
            )
            for r in rows
        ]
        if values:
            self._write(
                lambda conn: conn.executemany("INSERT OR REPLACE INTO effort VALUES (?, ?, ?, ?, ?, ?, ?, ?)", values),
                f"saving the effort of {len(values)} slice(s)",
            )

    def effort(self, stack: str | None = None) -> list[dict]:
        """Every effort row (of ``stack``), oldest session first, slices in z order."""
        query = (
            f"SELECT {', '.join('e.' + c for c in self._EFFORT_COLS)}, s.stack, s.z FROM effort e "
            "JOIN slices s ON s.slice_id = e.slice_id"
        )
        params: tuple = ()
        if stack is not None:
            query, params = query + " WHERE s.stack = ?", (stack,)
        rows = self._read(query + " ORDER BY e.updated, s.stack, s.z", params)
        out = []
        for r in rows:
            row = dict(zip((*self._EFFORT_COLS, "stack", "z"), r))
            row["accepted_unedited"] = bool(row["accepted_unedited"])
            out.append(row)
        return out
