"""Reading versions: the latest per slice, a slice's history, the training labels, the review queue,
the status counts and the export of a stack's masks."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

import numpy as np

from napari_gitseg.store.provenance import protected
from napari_gitseg.store.review_order import review_order
from napari_gitseg.store.rows import COLUMNS, SliceRecord, VersionInfo, any_pixel, checksum, unpack
from napari_gitseg.store.sqlite import CHUNK, StoreError, store_error


class VersionQueries:
    """``LabelStore``'s reading: versions and their masks, and what they say about a stack."""

    def _record(self, row: Sequence, with_masks: bool = True) -> VersionInfo:
        sid, version, source, user, model_version, reviewed, conf, note, created, shape_text, blob, crc = row
        info = dict(
            slice_id=sid,
            version=int(version),
            source=source,
            user=user,
            model_version=model_version,
            reviewed=bool(reviewed),
            confidence=None if conf is None else float(conf),
            note=note,
            created=float(created),
        )
        if not with_masks:
            return VersionInfo(**info)
        return SliceRecord(**info, masks=unpack(blob, shape_text, crc, f"{self.path} [{sid} v{version}]"))

    def latest(self, slice_id: str) -> SliceRecord | None:
        """The latest version of a slice with its masks, or None if never saved."""
        rows = self._read(
            f"SELECT {COLUMNS} FROM versions WHERE slice_id = ? ORDER BY version DESC LIMIT 1", (slice_id,)
        )
        return self._record(rows[0]) if rows else None

    def latest_many(self, slice_ids: Sequence[str]) -> dict[str, SliceRecord | None]:
        """Latest version of each slice (None where never saved), keyed by slice id."""
        out: dict[str, SliceRecord | None] = {sid: None for sid in slice_ids}
        ids = list(out)
        with self._lock:  # one snapshot for all chunks
            try:
                self._conn.execute("BEGIN")
                rows = []
                for i in range(0, len(ids), CHUNK):
                    part = ids[i : i + CHUNK]
                    rows += self._conn.execute(
                        f"SELECT {COLUMNS} FROM versions v WHERE slice_id IN ({','.join('?' * len(part))}) "
                        "AND version = (SELECT MAX(version) FROM versions w WHERE w.slice_id = v.slice_id)",
                        part,
                    ).fetchall()
            except sqlite3.Error as err:
                raise store_error(self.path, err, "reading the label store") from err
            finally:
                self._rollback()
        for row in rows:
            out[row[0]] = self._record(row)
        return out

    def latest_versions(self, stack: str) -> dict[str, int]:
        """Latest version number of each saved slice of ``stack`` (no masks read: cheap to poll)."""
        rows = self._read(
            "SELECT v.slice_id, MAX(v.version) FROM versions v JOIN slices s ON s.slice_id = v.slice_id "
            "WHERE s.stack = ? GROUP BY v.slice_id",
            (stack,),
        )
        return {r[0]: int(r[1]) for r in rows}

    def get(self, slice_id: str, version: int) -> SliceRecord:
        """One specific version of a slice (StoreError if it does not exist)."""
        rows = self._read(
            f"SELECT {COLUMNS} FROM versions WHERE slice_id = ? AND version = ?", (slice_id, int(version))
        )
        if not rows:
            raise StoreError(f"{self.path}: slice {slice_id!r} has no version {version}")
        return self._record(rows[0])

    def history(self, slice_id: str) -> list[VersionInfo]:
        """Metadata of every version of a slice, oldest first."""
        rows = self._read(f"SELECT {COLUMNS} FROM versions WHERE slice_id = ? ORDER BY version", (slice_id,))
        return [self._record(r, with_masks=False) for r in rows]

    def _latest_meta(self, stack: str | None = None) -> list[tuple[str, str, bool, float | None]]:
        """(slice id, source, reviewed, confidence) of the latest version of each saved slice, in stack/z order."""
        query = (
            "SELECT v.slice_id, v.source, v.reviewed, v.confidence FROM versions v "
            "JOIN slices s ON s.slice_id = v.slice_id JOIN stacks k ON k.name = s.stack "
            "WHERE v.version = (SELECT MAX(version) FROM versions w WHERE w.slice_id = v.slice_id)"
        )
        params: tuple = ()
        if stack is not None:
            query, params = query + " AND s.stack = ?", (stack,)
        rows = self._read(query + " ORDER BY k.created, k.name, s.z", params)
        return [(r[0], r[1], bool(r[2]), r[3]) for r in rows]

    def clinician_slices(self, stack: str | None = None) -> list[str]:
        """Slices whose latest version is by a clinician or reviewed (the training labels)."""
        return [r[0] for r in self._latest_meta(stack) if protected(r[1], r[2])]

    def pseudo_slices(self, stack: str | None = None) -> list[str]:
        """Slices whose latest version is an unreviewed pseudo-label."""
        return [r[0] for r in self._latest_meta(stack) if r[1] == "pseudo" and not r[2]]

    def unreviewed_slices(self, stack: str) -> list[str]:
        """Slices of ``stack`` (z order) that no clinician has edited or reviewed, saved or not."""
        protected = set(self.clinician_slices(stack))
        return [sid for sid in self.stack_info(stack)["slice_ids"] if sid not in protected]

    def review_queue(self, stack: str, has_organ: Callable[[str], bool] | None = None) -> list[str]:
        """Unreviewed slices of ``stack`` in review order (``review_order``: least confident first, slices the
        model left empty later, spread over the scan); those without a confidence last (z order).
        ``has_organ(slice_id)``: whether its latest masks hold an organ, when the caller has them in memory
        (default: read and decompressed here)."""
        ids = self.stack_info(stack)["slice_ids"]
        meta = {r[0]: r for r in self._latest_meta(stack)}
        scored, unscored, reviewed = [], [], []
        for z, sid in enumerate(ids):
            r = meta.get(sid)
            if r is not None and protected(r[1], r[2]):
                reviewed.append(z)
            elif r is None or r[3] is None:
                unscored.append(sid)
            else:
                scored.append((z, r[3]))
        zs = [z for z, _c in scored]
        if has_organ is None:
            organ = self._latest_has_organ(stack, {ids[z] for z in zs})
        else:
            organ = {ids[z]: bool(has_organ(ids[z])) for z in zs}
        order = review_order(zs, [c for _z, c in scored], [organ[ids[z]] for z in zs], reviewed, len(ids))
        return [ids[z] for z in order] + unscored

    def _latest_has_organ(self, stack: str, wanted: set[str]) -> dict[str, bool]:
        """Whether the latest version of each ``wanted`` slice of ``stack`` holds any organ pixel (only those
        masks are decompressed: the queue's candidates, not the reviewed slices)."""
        rows = self._read(
            "SELECT v.slice_id, v.masks FROM versions v JOIN slices s ON s.slice_id = v.slice_id "
            "WHERE s.stack = ? AND v.version = (SELECT MAX(version) FROM versions w WHERE w.slice_id = v.slice_id)",
            (stack,),
        )
        return {sid: any_pixel(blob) for sid, blob in rows if sid in wanted}

    def counts(self, stack: str) -> dict[str, int]:
        """Counts for the status line: total, reviewed, clinician (edited or reviewed), and the unreviewed
        pseudo, predicted, interpolated and propagated slices."""
        total = len(self.stack_info(stack)["slice_ids"])
        meta = self._latest_meta(stack)
        return {
            "total": total,
            "reviewed": sum(1 for r in meta if r[2]),
            "clinician": sum(1 for r in meta if protected(r[1], r[2])),
            "pseudo": sum(1 for r in meta if r[1] == "pseudo" and not r[2]),
            "predicted": sum(1 for r in meta if r[1] == "model" and not r[2]),
            "interpolated": sum(1 for r in meta if r[1] == "interpolated" and not r[2]),
            "propagated": sum(1 for r in meta if r[1] == "propagated" and not r[2]),
        }

    def export_masks(self, stack: str, reviewed_only: bool = True) -> tuple[list[str], np.ndarray, list[dict]]:
        """(slice ids, masks (C, Z, Y, X) bool, provenance per slice) of ``stack``.

        With ``reviewed_only`` only clinician-edited or reviewed slices carry masks. Slices left
        empty say why in their provenance ``status``: ``"no label"`` (never saved) or
        ``"not reviewed"``; exported ones say ``"exported"``.
        """
        info = self.stack_info(stack)
        z_n, h, w = info["shape"]
        masks = np.zeros((len(info["classes"]), z_n, h, w), dtype=bool)
        records = self.latest_many(info["slice_ids"])
        provenance = []
        for z, sid in enumerate(info["slice_ids"]):
            rec = records[sid]
            if rec is None:
                provenance.append({"id": sid, "z": z, "status": "no label"})
                continue
            entry = {
                "id": sid,
                "z": z,
                "version": rec.version,
                "source": rec.source,
                "user": rec.user,
                "model_version": rec.model_version,
                "reviewed": rec.reviewed,
                "confidence": rec.confidence,
                "note": rec.note,
                "saved": rec.created,
            }
            if reviewed_only and not protected(rec.source, rec.reviewed):
                entry["status"] = "not reviewed"
            else:
                masks[:, z] = rec.masks
                entry["status"] = "exported"
            provenance.append(entry)
        return list(info["slice_ids"]), masks, provenance

    def integrity_check(self) -> bool:
        """SQLite's integrity check plus every stored mask's checksum; True when all is sound."""
        if self._read("PRAGMA integrity_check")[0][0] != "ok":
            return False
        return all(
            checksum(blob, shape_text) == crc
            for shape_text, blob, crc in self._read("SELECT shape, masks, crc FROM versions")
        )
