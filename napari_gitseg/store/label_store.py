"""LabelStore: every saved mask is a new version, in one SQLite file per project folder.

Layout (``<project>/gitseg_labels.sqlite``, WAL journal, ``synchronous=FULL``):

- ``meta``: schema version and the software that wrote it.
- ``stacks``: name, slice ids, shape, spacing, source, classes (one row per image stack).
- ``versions``: one row per saved version of one slice: the per-class masks (bit-packed,
  zlib-compressed, with a CRC-32), their provenance (``clinician`` / ``model`` / ``pseudo``,
  user, model version), the reviewed flag, the model's confidence, a note and a timestamp.
  Nothing is ever updated or deleted; marking a slice reviewed or reverting it writes a new
  version, so the full history stays readable.
- ``state``: small JSON session values (active model, last slice viewed).

Every write is one transaction (``BEGIN IMMEDIATE``), so a crash at any instant leaves the
last committed version of every slice intact; SQLite's WAL recovery runs on the next open.
Predictions (``model``/``pseudo``) never replace a slice whose latest version is by a
clinician or reviewed: such saves are skipped (``save`` returns None).
"""

from __future__ import annotations

import getpass
import json
import os
import sqlite3
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_gitseg.classes import CLASSES

SCHEMA_VERSION = 1
DB_NAME = "gitseg_labels.sqlite"
SOURCES = ("clinician", "model", "pseudo")


_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE stacks (name TEXT PRIMARY KEY, slice_ids TEXT NOT NULL, shape TEXT NOT NULL,"
    " spacing TEXT NOT NULL, source TEXT, classes TEXT NOT NULL, created REAL NOT NULL)",
    "CREATE TABLE slices (slice_id TEXT PRIMARY KEY, stack TEXT NOT NULL REFERENCES stacks(name),"
    " z INTEGER NOT NULL)",
    "CREATE TABLE versions (id INTEGER PRIMARY KEY AUTOINCREMENT, slice_id TEXT NOT NULL,"
    " version INTEGER NOT NULL, source TEXT NOT NULL CHECK (source IN ('clinician', 'model', 'pseudo')),"
    " user TEXT, model_version TEXT, reviewed INTEGER NOT NULL, confidence REAL, note TEXT,"
    " created REAL NOT NULL, shape TEXT NOT NULL, masks BLOB NOT NULL, crc INTEGER NOT NULL,"
    " UNIQUE (slice_id, version))",
    "CREATE INDEX versions_latest ON versions (slice_id, version DESC)",
    "CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)


class StoreError(RuntimeError):
    """A label store that cannot be opened or written; the message says which file and why."""


@dataclass(frozen=True)
class VersionInfo:
    """Metadata of one saved version of one slice."""

    slice_id: str
    version: int
    source: str
    user: str | None
    model_version: str | None
    reviewed: bool
    confidence: float | None
    note: str | None
    created: float


@dataclass(frozen=True)
class SliceRecord(VersionInfo):
    """One saved version of one slice, with its per-class masks (C, Y, X) bool."""

    masks: np.ndarray | None = None


def _default_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001  (no user database, e.g. in some containers)
        return os.environ.get("USER", "unknown")


def _pack(masks: np.ndarray) -> tuple[bytes, int]:
    bits = np.packbits(np.ascontiguousarray(masks, dtype=bool).ravel())
    blob = zlib.compress(bits.tobytes(), 6)
    return blob, zlib.crc32(blob)


def _unpack(blob: bytes, crc: int, shape: tuple[int, ...], where: str) -> np.ndarray:
    if zlib.crc32(blob) != crc:
        raise StoreError(f"{where}: mask data fails its checksum (file damaged)")
    n = int(np.prod(shape))
    bits = np.frombuffer(zlib.decompress(blob), dtype=np.uint8)
    return np.unpackbits(bits, count=n).astype(bool).reshape(shape)


class LabelStore:
    """Versioned per-slice, per-class organ masks with provenance (see module docstring)."""

    def __init__(self, conn: sqlite3.Connection, path: Path, user: str, readonly: bool):
        self._conn = conn
        self.path = path
        self.user = user
        self.readonly = readonly
        self._shapes: dict[str, tuple[int, int, int]] = {}  # slice id -> (C, Y, X)

    # ---- opening -----------------------------------------------------------------------------
    @classmethod
    def open(cls, folder: str | os.PathLike, user: str | None = None, create: bool = True,
             readonly: bool = False) -> LabelStore:
        """Open (or create) the store in ``folder``; ``readonly`` for viewing and export."""
        folder = Path(folder)
        path = folder / DB_NAME
        user = user or _default_user()
        if readonly:
            if not path.is_file():
                raise StoreError(f"{path}: no label store here")
            try:
                conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, check_same_thread=False)
                store = cls(conn, path, user, True)
                store._check_schema(migrate=False)
            except sqlite3.Error as err:
                raise StoreError(f"{path}: cannot open the label store read-only ({err})") from err
            return store
        if not path.exists():
            if not create:
                raise StoreError(f"{path}: no label store here")
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise StoreError(f"{folder}: cannot create the project folder ({err.strerror})") from err
        if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise StoreError(f"{path}: the label store is read-only; open it with readonly=True to view or "
                             "export, or choose a writable project folder")
        try:
            conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 30000")
            store = cls(conn, path, user, False)
            store._check_schema(migrate=True)  # before touching journal mode: never modify a newer store
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.OperationalError as err:
            raise StoreError(f"{path}: cannot open the label store ({err})") from err
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{path}: not a gitseg label store or damaged ({err})") from err
        return store

    def _check_schema(self, migrate: bool) -> None:
        tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "meta" not in tables:
            if tables:
                raise StoreError(f"{self.path}: an SQLite file that is not a gitseg label store")
            if not migrate:
                raise StoreError(f"{self.path}: empty label store")
            self._create_schema()
            return
        row = self._conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: written by a newer napari-gitseg (schema {version} > {SCHEMA_VERSION}); "
                "upgrade napari-gitseg to open it (the store was not changed)"
            )
        # (older schemas would be migrated here, inside one transaction; version 1 is the first)

    def _create_schema(self) -> None:
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name='meta'").fetchone():
                return  # another process created it while we waited for the write lock
            for statement in _SCHEMA:
                self._conn.execute(statement)
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('created_by', 'napari-gitseg')")

    # ---- transactions ------------------------------------------------------------------------
    class _Tx:
        def __init__(self, store: LabelStore):
            self.store = store

        def __enter__(self):
            if self.store.readonly:
                raise StoreError(f"{self.store.path}: opened read-only")
            self.store._conn.execute("BEGIN IMMEDIATE")
            return self.store._conn

        def __exit__(self, exc_type, exc, tb):
            conn = self.store._conn
            if exc_type is None:
                try:
                    conn.execute("COMMIT")
                    return False
                except sqlite3.Error as err:
                    conn.execute("ROLLBACK")
                    raise self.store._as_store_error(err) from err
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if isinstance(exc, sqlite3.Error):
                raise self.store._as_store_error(exc) from exc
            return False

    def _write(self) -> LabelStore._Tx:
        return LabelStore._Tx(self)

    def _as_store_error(self, err: Exception) -> StoreError:
        text = str(err)
        if "full" in text or "disk I/O" in text:
            return StoreError(f"{self.path}: the disk is full — nothing was saved; the last saved versions are "
                              f"intact. Free some space and save again ({text})")
        if "readonly" in text or "read-only" in text:
            return StoreError(f"{self.path}: the label store is read-only ({text})")
        return StoreError(f"{self.path}: {text}")

    def close(self) -> None:
        """Close the connection (pending work is already committed)."""
        self._conn.close()

    # ---- stacks ------------------------------------------------------------------------------
    def register_stack(self, name: str, slice_ids: Sequence[str], shape: Sequence[int],
                       spacing: Sequence[float], source: str, classes: Sequence[str] = CLASSES) -> None:
        """Record a stack (idempotent); refuses the same name with a different shape or slice ids."""
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or len(slice_ids) != shape[0]:
            raise StoreError(f"{self.path}: stack {name!r}: {len(slice_ids)} slice ids for shape {shape}")
        row = self._conn.execute("SELECT slice_ids, shape, classes FROM stacks WHERE name=?", (name,)).fetchone()
        if row is not None:
            if tuple(json.loads(row[1])) != shape or json.loads(row[0]) != list(slice_ids) or \
                    tuple(json.loads(row[2])) != tuple(classes):
                raise StoreError(
                    f"{self.path}: a different stack named {name!r} is already in this store "
                    f"(shape {tuple(json.loads(row[1]))} vs {shape}); refusing to mix up labels"
                )
            self._remember_shapes(name)
            return
        if self.readonly:
            raise StoreError(f"{self.path}: opened read-only; cannot add stack {name!r}")
        with self._write() as conn:
            conn.execute(
                "INSERT INTO stacks VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, json.dumps(list(slice_ids)), json.dumps(shape), json.dumps([float(s) for s in spacing]),
                 str(source), json.dumps(list(classes)), time.time()),
            )
            conn.executemany("INSERT OR REPLACE INTO slices VALUES (?, ?, ?)",
                             [(sid, name, z) for z, sid in enumerate(slice_ids)])
        self._remember_shapes(name)

    def _remember_shapes(self, name: str) -> None:
        info = self.stack_info(name)
        shape = (len(info["classes"]), info["shape"][1], info["shape"][2])
        for sid in info["slice_ids"]:
            self._shapes[sid] = shape

    def stacks(self) -> list[str]:
        """Names of the registered stacks."""
        return [r[0] for r in self._conn.execute("SELECT name FROM stacks ORDER BY created, name")]

    def stack_info(self, name: str) -> dict:
        """Slice ids, shape, spacing, source and classes of a registered stack."""
        row = self._conn.execute(
            "SELECT slice_ids, shape, spacing, source, classes FROM stacks WHERE name=?", (name,)).fetchone()
        if row is None:
            raise StoreError(f"{self.path}: no stack named {name!r} in this store")
        return {"name": name, "slice_ids": json.loads(row[0]), "shape": tuple(json.loads(row[1])),
                "spacing": tuple(json.loads(row[2])), "source": row[3], "classes": tuple(json.loads(row[4]))}

    def _shape_of(self, slice_id: str) -> tuple[int, int, int]:
        if slice_id not in self._shapes:
            row = self._conn.execute("SELECT stack FROM slices WHERE slice_id=?", (slice_id,)).fetchone()
            if row is None:
                raise StoreError(f"{self.path}: slice {slice_id!r} belongs to no registered stack")
            self._remember_shapes(row[0])
        return self._shapes[slice_id]

    # ---- writing -----------------------------------------------------------------------------
    def save(self, slice_id: str, masks: np.ndarray, *, source: str, model_version: str | None = None,
             confidence: float | None = None, reviewed: bool = False, user: str | None = None,
             note: str | None = None) -> int | None:
        """Save a new version of one slice; None when a prediction would replace a clinician's work."""
        return self.save_many([dict(slice_id=slice_id, masks=masks, source=source, model_version=model_version,
                                    confidence=confidence, reviewed=reviewed, user=user, note=note)])[0]

    def save_many(self, items: Iterable[dict]) -> list[int | None]:
        """Save many slices in ONE transaction; per item the new version, or None if skipped (protected)."""
        prepared = []
        for item in items:
            sid, source = item["slice_id"], item.get("source", "clinician")
            if source not in SOURCES:
                raise StoreError(f"{self.path}: unknown provenance {source!r} (expected one of {SOURCES})")
            masks = np.asarray(item["masks"], dtype=bool)
            shape = self._shape_of(sid)
            if masks.shape != shape:
                raise StoreError(f"{self.path}: masks for {sid} have shape {masks.shape}, expected {shape}")
            conf = item.get("confidence")
            blob, crc = _pack(masks)
            user = item.get("user") or (self.user if source == "clinician" else None)
            prepared.append((sid, source, user, item.get("model_version"), bool(item.get("reviewed", False)),
                             None if conf is None else float(conf), item.get("note"), json.dumps(masks.shape),
                             blob, crc))
        results: list[int | None] = []
        with self._write() as conn:
            for sid, source, user, model_version, reviewed, conf, note, shape, blob, crc in prepared:
                last = conn.execute(
                    "SELECT version, source, reviewed FROM versions WHERE slice_id=? ORDER BY version DESC LIMIT 1",
                    (sid,)).fetchone()
                if source != "clinician" and last is not None and (last[1] == "clinician" or last[2]):
                    results.append(None)  # a prediction never overwrites a clinician's correction
                    continue
                version = 1 if last is None else last[0] + 1
                conn.execute(
                    "INSERT INTO versions (slice_id, version, source, user, model_version, reviewed, confidence,"
                    " note, created, shape, masks, crc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (sid, version, source, user, model_version, int(reviewed), conf, note, time.time(), shape,
                     blob, crc),
                )
                results.append(version)
        return results

    def set_reviewed(self, slice_id: str, reviewed: bool = True, user: str | None = None) -> int:
        """Mark the latest version reviewed (or not) by writing a new version with the same masks."""
        with self._write() as conn:
            last = self._latest_row(conn, slice_id)
            if last is None:
                raise StoreError(f"{self.path}: slice {slice_id!r} has no saved version to review")
            version = last["version"] + 1
            source = "clinician" if reviewed else last["source"]
            conn.execute(
                "INSERT INTO versions (slice_id, version, source, user, model_version, reviewed, confidence, note,"
                " created, shape, masks, crc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (slice_id, version, source, user or self.user, last["model_version"], int(reviewed),
                 last["confidence"], "reviewed" if reviewed else "review withdrawn", time.time(), last["shape"],
                 last["masks"], last["crc"]),
            )
        return version

    def revert(self, slice_id: str, version: int, user: str | None = None) -> int:
        """Write a new version with the masks of ``version`` (by the clinician, so predictions keep off it).

        The slice keeps its current review state: reverting is an edit, not a withdrawal of review.
        """
        with self._write() as conn:
            old = conn.execute("SELECT shape, masks, crc, reviewed FROM versions WHERE slice_id=? AND version=?",
                               (slice_id, int(version))).fetchone()
            if old is None:
                raise StoreError(f"{self.path}: slice {slice_id!r} has no version {version}")
            last = self._latest_row(conn, slice_id)
            new = last["version"] + 1
            conn.execute(
                "INSERT INTO versions (slice_id, version, source, user, model_version, reviewed, confidence, note,"
                " created, shape, masks, crc) VALUES (?, ?, 'clinician', ?, NULL, ?, NULL, ?, ?, ?, ?, ?)",
                (slice_id, new, user or self.user, int(last["reviewed"]), f"revert to v{version}", time.time(), old[0],
                 old[1], old[2]),
            )
        return new

    # ---- reading -----------------------------------------------------------------------------
    _COLS = "slice_id, version, source, user, model_version, reviewed, confidence, note, created, shape, masks, crc"

    def _latest_row(self, conn, slice_id: str) -> dict | None:
        row = conn.execute(f"SELECT {self._COLS} FROM versions WHERE slice_id=? ORDER BY version DESC LIMIT 1",
                           (slice_id,)).fetchone()
        return None if row is None else dict(zip(self._COLS.split(", "), row))

    def _record(self, row: Sequence, with_masks: bool = True):
        sid, version, source, user, model_version, reviewed, conf, note, created, shape, blob, crc = row
        info = dict(slice_id=sid, version=int(version), source=source, user=user, model_version=model_version,
                    reviewed=bool(reviewed), confidence=conf, note=note, created=float(created))
        if not with_masks:
            return VersionInfo(**info)
        masks = _unpack(blob, crc, tuple(json.loads(shape)), f"{self.path} [{sid} v{version}]")
        return SliceRecord(**info, masks=masks)

    def latest(self, slice_id: str) -> SliceRecord | None:
        """The latest version of a slice with its masks, or None if never saved."""
        row = self._conn.execute(
            f"SELECT {self._COLS} FROM versions WHERE slice_id=? ORDER BY version DESC LIMIT 1",
            (slice_id,)).fetchone()
        return None if row is None else self._record(row)

    def latest_many(self, slice_ids: Sequence[str]) -> dict[str, SliceRecord | None]:
        """Latest version of each slice (None where never saved), in one query."""
        out: dict[str, SliceRecord | None] = {sid: None for sid in slice_ids}
        wanted = set(slice_ids)
        rows = self._conn.execute(
            f"SELECT {self._COLS} FROM versions v WHERE version = "
            "(SELECT MAX(version) FROM versions w WHERE w.slice_id = v.slice_id)")
        for row in rows:
            if row[0] in wanted:
                out[row[0]] = self._record(row)
        return out

    def get(self, slice_id: str, version: int) -> SliceRecord:
        """One specific version of a slice."""
        row = self._conn.execute(f"SELECT {self._COLS} FROM versions WHERE slice_id=? AND version=?",
                                 (slice_id, int(version))).fetchone()
        if row is None:
            raise StoreError(f"{self.path}: slice {slice_id!r} has no version {version}")
        return self._record(row)

    def history(self, slice_id: str) -> list[VersionInfo]:
        """Metadata of every version of a slice, oldest first."""
        rows = self._conn.execute(f"SELECT {self._COLS} FROM versions WHERE slice_id=? ORDER BY version",
                                  (slice_id,))
        return [self._record(r, with_masks=False) for r in rows]

    def _latest_meta(self, stack: str | None = None) -> list[tuple[str, str, bool, float | None, int]]:
        """(slice_id, source, reviewed, confidence, z) of the latest version of each saved slice."""
        query = ("SELECT v.slice_id, v.source, v.reviewed, v.confidence, s.z, s.stack FROM versions v "
                 "JOIN slices s ON s.slice_id = v.slice_id WHERE v.version = "
                 "(SELECT MAX(version) FROM versions w WHERE w.slice_id = v.slice_id)")
        rows = self._conn.execute(query).fetchall()
        return [(r[0], r[1], bool(r[2]), r[3], r[4]) for r in rows if stack is None or r[5] == stack]

    def clinician_slices(self, stack: str | None = None) -> list[str]:
        """Slices whose latest version is by a clinician or reviewed (the training labels)."""
        return [r[0] for r in sorted(self._latest_meta(stack), key=lambda r: (r[0]))
                if r[1] == "clinician" or r[2]]

    def pseudo_slices(self, stack: str | None = None) -> list[str]:
        """Slices whose latest version is a kept pseudo-label."""
        return [r[0] for r in sorted(self._latest_meta(stack)) if r[1] == "pseudo" and not r[2]]

    def unreviewed_slices(self, stack: str) -> list[str]:
        """Slices of ``stack`` that no clinician has edited or reviewed."""
        protected = set(self.clinician_slices(stack))
        return [sid for sid in self.stack_info(stack)["slice_ids"] if sid not in protected]

    def review_queue(self, stack: str) -> list[str]:
        """Unreviewed slices of ``stack``, least confident first; never-predicted slices last (in z order)."""
        info = self.stack_info(stack)
        meta = {r[0]: r for r in self._latest_meta(stack)}
        scored, unscored = [], []
        for z, sid in enumerate(info["slice_ids"]):
            r = meta.get(sid)
            if r is not None and (r[1] == "clinician" or r[2]):
                continue
            if r is None or r[3] is None:
                unscored.append(sid)
            else:
                scored.append((r[3], z, sid))
        return [sid for _c, _z, sid in sorted(scored)] + unscored

    def counts(self, stack: str) -> dict:
        """Counts for the status line: reviewed, total, clinician-labelled, pseudo, predicted."""
        info = self.stack_info(stack)
        meta = self._latest_meta(stack)
        return {
            "total": len(info["slice_ids"]),
            "reviewed": sum(1 for r in meta if r[2]),
            "clinician": sum(1 for r in meta if r[1] == "clinician" or r[2]),
            "pseudo": sum(1 for r in meta if r[1] == "pseudo" and not r[2]),
            "predicted": sum(1 for r in meta if r[1] == "model" and not r[2]),
        }

    # ---- session state -----------------------------------------------------------------------
    def set_state(self, key: str, value) -> None:
        """Store a small JSON-serialisable session value."""
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (key, json.dumps(value)))

    def get_state(self, key: str, default=None):
        """Read a session value (``default`` if unset)."""
        row = self._conn.execute("SELECT value FROM state WHERE key=?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    # ---- export ------------------------------------------------------------------------------
    def export_masks(self, stack: str, reviewed_only: bool = True) -> tuple[list[str], np.ndarray, list[dict]]:
        """(slice ids, masks (C, Z, Y, X), provenance per slice) of ``stack``.

        With ``reviewed_only`` only clinician-edited or reviewed slices carry masks; the others
        are empty and their provenance says ``"not reviewed"`` or ``"no label"``.
        """
        info = self.stack_info(stack)
        z_n, h, w = info["shape"]
        masks = np.zeros((len(info["classes"]), z_n, h, w), dtype=bool)
        records = self.latest_many(info["slice_ids"])
        provenance = []
        for z, sid in enumerate(info["slice_ids"]):
            rec = records[sid]
            if rec is None:
                provenance.append({"id": sid, "status": "no label"})
                continue
            protected = rec.source == "clinician" or rec.reviewed
            entry = {"id": sid, "version": rec.version, "source": rec.source, "user": rec.user,
                     "model_version": rec.model_version, "reviewed": rec.reviewed,
                     "confidence": rec.confidence, "saved": rec.created}
            if reviewed_only and not protected:
                entry["status"] = "not reviewed"
            else:
                masks[:, z] = rec.masks
                entry["status"] = "exported"
            provenance.append(entry)
        return list(info["slice_ids"]), masks, provenance

    def integrity_check(self) -> bool:
        """SQLite's integrity check plus every stored mask's checksum."""
        ok = self._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        for blob, crc in self._conn.execute("SELECT masks, crc FROM versions"):
            ok = ok and zlib.crc32(blob) == crc
        return ok
