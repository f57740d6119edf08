"""Saving versions: every write is a new version in one transaction, and predictions keep off
clinician work (``provenance.refuses``, applied inside the transaction)."""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Iterable, Sequence

import numpy as np

from napari_gitseg.store.provenance import SOURCES, refuses
from napari_gitseg.store.rows import COLUMNS, pack
from napari_gitseg.store.sqlite import StoreError


class VersionWrites:
    """``LabelStore``'s writing: save, review, accept, undo and revert, each a new version."""

    def save(
        self,
        slice_id: str,
        masks: np.ndarray,
        *,
        source: str,
        model_version: str | None = None,
        confidence: float | None = None,
        reviewed: bool | None = False,
        user: str | None = None,
        note: str | None = None,
    ) -> int | None:
        """Save a new version of one slice; returns it, or None when a prediction meets clinician work.

        ``reviewed=None`` keeps the review state of the latest version (an edit of an accepted
        slice stays accepted), read in the same transaction as the write.
        """
        return self.save_many(
            [
                dict(
                    slice_id=slice_id,
                    masks=masks,
                    source=source,
                    model_version=model_version,
                    confidence=confidence,
                    reviewed=reviewed,
                    user=user,
                    note=note,
                )
            ]
        )[0]

    def _prepare_item(self, item: dict) -> tuple:
        sid = item.get("slice_id")
        source = item.get("source", "clinician")
        if source not in SOURCES:
            raise StoreError(f"{self.path}: unknown provenance {source!r} for {sid} (expected one of {SOURCES})")
        masks = np.asarray(item["masks"])
        if masks.dtype != bool:
            if masks.dtype.kind not in "iu" or (masks.size and (masks.min() < 0 or masks.max() > 1)):
                raise StoreError(f"{self.path}: masks for {sid} must be boolean (or 0/1 integers), got {masks.dtype}")
            masks = masks.astype(bool)
        shape = self._shape_of(sid)
        if masks.shape != shape:
            raise StoreError(f"{self.path}: masks for {sid} have shape {masks.shape}, expected {shape} (C, Y, X)")
        conf = item.get("confidence")
        if conf is not None:
            conf = float(conf)
            if not math.isfinite(conf):
                raise StoreError(f"{self.path}: confidence for {sid} is {conf}; expected a finite number or None")
        blob, shape_text, crc = pack(masks)
        user = item.get("user") or (self.user if source == "clinician" else None)
        model_version = item.get("model_version")
        reviewed = item.get("reviewed", False)
        return (
            sid,
            source,
            user,
            None if model_version is None else str(model_version),
            None if reviewed is None else int(bool(reviewed)),
            conf,
            item.get("note"),
            shape_text,
            blob,
            crc,
        )

    def save_many(self, items: Iterable[dict], keep: Sequence[str] = ()) -> list[int | None]:
        """Save many slices in ONE transaction; per item its new version, or None if skipped (protected).

        Each item is a dict with the keyword arguments of ``save`` plus ``slice_id`` and ``masks``.
        ``keep``: sources whose latest versions stay as they are (only a clinician's own work replaces them).
        """
        prepared = [self._prepare_item(item) for item in items]
        if not prepared:
            return []

        def work(conn: sqlite3.Connection) -> list[int | None]:
            results: list[int | None] = []
            now = time.time()
            for sid, source, user, model_version, reviewed, conf, note, shape_text, blob, crc in prepared:
                last = conn.execute(
                    "SELECT version, source, reviewed FROM versions WHERE slice_id = ? ORDER BY version DESC LIMIT 1",
                    (sid,),
                ).fetchone()
                if last is not None and refuses(source, last[1], bool(last[2]), keep):
                    results.append(None)  # a prediction never overwrites a clinician's correction
                    continue
                version = 1 if last is None else last[0] + 1
                if reviewed is None:
                    reviewed = int(bool(last is not None and last[2]))
                conn.execute(
                    f"INSERT INTO versions ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (sid, version, source, user, model_version, reviewed, conf, note, now, shape_text, blob, crc),
                )
                results.append(version)
            return results

        return self._write(work, f"saving {len(prepared)} slice(s)")

    def _latest_row(self, conn: sqlite3.Connection, slice_id: str) -> dict | None:
        row = conn.execute(
            f"SELECT {COLUMNS} FROM versions WHERE slice_id = ? ORDER BY version DESC LIMIT 1", (slice_id,)
        ).fetchone()
        return None if row is None else dict(zip(COLUMNS.split(", "), row))

    def set_reviewed(self, slice_id: str, reviewed: bool = True, user: str | None = None) -> int:
        """Mark the latest version reviewed (or withdraw that) as a new version with the same masks.

        The new version keeps the masks' provenance (source, model version, confidence) and
        records the reviewer as its user. Nothing is written when the state is already as asked;
        the latest version number is returned either way. Withdrawing review of a slice that a
        clinician edited leaves it protected from predictions (the edit still stands).
        """

        def work(conn: sqlite3.Connection) -> int:
            last = self._latest_row(conn, slice_id)
            if last is None:
                raise StoreError(f"{self.path}: slice {slice_id!r} has no saved version to review")
            if bool(last["reviewed"]) == bool(reviewed):
                return int(last["version"])
            last.update(
                version=last["version"] + 1,
                reviewed=int(bool(reviewed)),
                user=user or self.user,
                note="reviewed" if reviewed else "review withdrawn",
                created=time.time(),
            )
            conn.execute(
                f"INSERT INTO versions ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", tuple(last.values())
            )
            return int(last["version"])

        return self._write(work, f"marking {slice_id} {'reviewed' if reviewed else 'unreviewed'}")

    def accept(self, slice_id: str, masks: np.ndarray, seen_version: int | None, user: str | None = None) -> int:
        """Store ``masks`` (what the clinician's screen showed) as the reviewed version; returns it.

        In one transaction: when the latest version is ``seen_version`` and holds exactly these
        masks, it is marked reviewed (a new version keeping its provenance; nothing is written when
        it is reviewed already). Otherwise (another window or the trainer saved a version the
        clinician never saw, or the screen differs) the masks are saved as a reviewed clinician
        version, so nothing unseen is ever flagged reviewed.
        """
        item = self._prepare_item(
            {
                "slice_id": slice_id,
                "masks": masks,
                "source": "clinician",
                "user": user,
                "reviewed": True,
                "note": "accepted as shown",
            }
        )
        blob, crc = item[-2], item[-1]

        def work(conn: sqlite3.Connection) -> int:
            last = self._latest_row(conn, slice_id)
            if (
                last is not None
                and last["version"] == seen_version
                and last["crc"] == crc
                and bytes(last["masks"]) == blob
            ):
                if last["reviewed"]:
                    return int(last["version"])
                last.update(
                    version=last["version"] + 1,
                    reviewed=1,
                    user=user or self.user,
                    note="reviewed",
                    created=time.time(),
                )
                row = tuple(last.values())
            else:
                row = (item[0], 1 if last is None else last["version"] + 1, *item[1:7], time.time(), *item[7:])
            conn.execute(f"INSERT INTO versions ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            return int(row[1])

        return self._write(work, f"accepting {slice_id}")

    def restore_many(self, items: Sequence[tuple[str, int, int]], note: str = "undo") -> list[int | None]:
        """Undo automatic saves: per ``(slice id, version to restore, version it replaced)`` a new version.

        The new version copies the restored one whole (masks, provenance, review state). A slice is
        skipped (None) when its latest version is no longer the one to undo (the clinician or
        another window changed it since). One transaction for all.
        """

        def work(conn: sqlite3.Connection) -> list[int | None]:
            out: list[int | None] = []
            for sid, version, replaced in items:
                last = self._latest_row(conn, sid)
                old = conn.execute(
                    f"SELECT {COLUMNS} FROM versions WHERE slice_id = ? AND version = ?", (sid, int(version))
                ).fetchone()
                if last is None or old is None or last["version"] != replaced:
                    out.append(None)
                    continue
                row = dict(zip(COLUMNS.split(", "), old))
                row.update(version=last["version"] + 1, note=f"{note}: back to v{version}", created=time.time())
                conn.execute(
                    f"INSERT INTO versions ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    tuple(row.values()),
                )
                out.append(int(row["version"]))
            return out

        return self._write(work, f"undoing {len(items)} slice(s)")

    def revert(self, slice_id: str, version: int, user: str | None = None) -> int:
        """Write a new version with the masks of ``version`` (noted "revert to vN"); history is kept.

        The new version is a clinician's (so predictions keep off it) and keeps the slice's current
        review state: reverting is an edit, not a withdrawal of review.
        """
        version = int(version)

        def work(conn: sqlite3.Connection) -> int:
            old = conn.execute(
                "SELECT shape, masks, crc FROM versions WHERE slice_id = ? AND version = ?", (slice_id, version)
            ).fetchone()
            if old is None:
                raise StoreError(f"{self.path}: slice {slice_id!r} has no version {version}")
            last = self._latest_row(conn, slice_id)
            new = last["version"] + 1
            conn.execute(
                f"INSERT INTO versions ({COLUMNS}) VALUES (?, ?, 'clinician', ?, NULL, ?, NULL, ?, ?, ?, ?, ?)",
                (
                    slice_id,
                    new,
                    user or self.user,
                    int(last["reviewed"]),
                    f"revert to v{version}",
                    time.time(),
                    old[0],
                    old[1],
                    old[2],
                ),
            )
            return new

        return self._write(work, f"reverting {slice_id} to v{version}")
