"""LabelStore: every saved mask is a new version, in one SQLite file per project folder.

The store (``<project>/gitseg_labels.sqlite``, tables in ``schema.py``) holds the image stacks a
project registered, every saved version of every slice's masks with its provenance (``clinician``,
``model``, ``pseudo``, ``imported``, ``interpolated``, ``propagated``), user, model version, review
flag, confidence and note, small session values (``state``) and the clinician's effort per review
session (``effort``). Rows are never updated or deleted, so the whole history stays readable.

It is built so that a clinician's work is never lost or silently overwritten:

- every write is one fsynced transaction: a crash or power loss leaves every committed version
  intact, a full disk fails with ``StoreError`` and changes nothing; two napari windows may write;
- clinician work is protected in ONE place, the write transaction (``provenance.refuses``): a prediction never
  replaces a clinician label, nor a slice interpolated or propagated from clinician slices
  (``ASSISTED``); ``save`` then returns None;
- ``accept`` stores exactly the masks the clinician saw (as a new version if another window or the
  trainer saved something meanwhile);
- a newer schema is refused, an older one migrated; a read-only store opens with ``readonly=True``.

Writing (``writes``), reading (``queries``) and the session records (``session``) are mixins of
``LabelStore``; SQLite plumbing in ``sqlite``, the stored rows in ``rows``. The full layout and
rules: ``docs/store-notes.md``.
"""

from __future__ import annotations

import getpass
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from napari_gitseg.classes import CLASSES
from napari_gitseg.store import schema
from napari_gitseg.store.provenance import SOURCES
from napari_gitseg.store.queries import VersionQueries
from napari_gitseg.store.rows import SliceRecord, VersionInfo
from napari_gitseg.store.schema import DB_NAME, SCHEMA_VERSION
from napari_gitseg.store.session import SessionRecords
from napari_gitseg.store.sqlite import (
    BUSY,
    BUSY_TIMEOUT_S,
    CHUNK,
    LOCKED,
    StoreError,
    check_version,
    connect,
    connect_readonly,
    error_code,
    store_error,
)
from napari_gitseg.store.writes import VersionWrites

_RETRIES = 3  # attempts of one write transaction when a version number collides

T = TypeVar("T")

__all__ = [
    "BUSY_TIMEOUT_S",
    "DB_NAME",
    "SCHEMA_VERSION",
    "SOURCES",
    "LabelStore",
    "SliceRecord",
    "StoreError",
    "VersionInfo",
]


def _default_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001  (no user database, e.g. in some containers)
        return os.environ.get("USER") or os.environ.get("USERNAME") or "unknown"


class LabelStore(VersionWrites, VersionQueries, SessionRecords):
    """Versioned per-slice, per-class organ masks with provenance (see the module docstring).

    One connection per store object; safe to share between threads (calls are serialised).
    """

    def __init__(self, conn: sqlite3.Connection, path: Path, user: str, readonly: bool):
        self._conn = conn
        self.path = path
        self.user = user
        self.readonly = readonly
        self._lock = threading.RLock()
        self._shapes: dict[str, tuple[int, int, int]] = {}  # slice id -> (C, Y, X)
        self._closed = False

    # ---- opening -------------------------------------------------------------------------------
    @classmethod
    def open(
        cls, folder: str | os.PathLike, user: str | None = None, create: bool = True, readonly: bool = False
    ) -> LabelStore:
        """Open (or create) the store in ``folder``; ``readonly=True`` to view or export only."""
        folder = Path(folder)
        path = folder / DB_NAME
        user = user or _default_user()
        if readonly or path.exists():
            if not path.is_file():
                raise StoreError(f"{path}: no label store here" if not path.exists() else f"{path}: not a file")
            # look before writing anything: a newer or foreign store must stay untouched
            try:
                conn = connect_readonly(path)
            except sqlite3.Error as err:
                raise store_error(path, err, "opening the label store") from err
            try:
                version = schema.read_version(conn)
                check_version(path, version, migrate=not readonly)
                if readonly and version is None:
                    raise StoreError(f"{path}: an empty file, not a label store yet")
            except sqlite3.Error as err:
                conn.close()
                raise store_error(path, err, "opening the label store") from err
            except BaseException:
                conn.close()
                raise
            if readonly:
                return cls(conn, path, user, True)
            conn.close()
        elif not create:
            raise StoreError(f"{path}: no label store here")
        else:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise store_error(folder, err, "creating the project folder") from err
        if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise StoreError(
                f"{path}: the label store is read-only here; open it with readonly=True to view or "
                "export, or choose a writable project folder"
            )
        try:
            conn = connect(str(path))
        except sqlite3.Error as err:
            raise store_error(path, err, "opening the label store") from err
        store = cls(conn, path, user, False)
        try:
            store._prepare()
        except BaseException:
            conn.close()
            raise
        return store

    def _prepare(self) -> None:
        """Journal settings, then create or migrate the schema in one transaction."""
        try:
            deadline = time.monotonic() + BUSY_TIMEOUT_S
            while True:  # switching to WAL needs a moment alone with the file
                try:
                    self._conn.execute("PRAGMA journal_mode = WAL").fetchone()
                    break
                except sqlite3.OperationalError as err:
                    if error_code(err) not in (BUSY, LOCKED) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as err:
            raise store_error(self.path, err, "opening the label store") from err

        def setup(conn: sqlite3.Connection) -> None:
            version = schema.read_version(conn)  # again, under the write lock: another window may be here too
            check_version(self.path, version, migrate=True)
            if version is None:
                schema.create(conn)
            elif version < SCHEMA_VERSION:
                try:
                    schema.migrate(conn, version)
                except LookupError as err:
                    raise StoreError(f"{self.path}: cannot upgrade schema {version}: {err}") from err

        if schema.read_version(self._conn) != SCHEMA_VERSION:
            self._write(setup, "preparing the label store")

    def close(self) -> None:
        """Close the connection (every save is already committed)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LabelStore({str(self.path)!r}, user={self.user!r}{', readonly' if self.readonly else ''})"

    # ---- transactions --------------------------------------------------------------------------
    def _rollback(self) -> None:
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _write(self, work: Callable[[sqlite3.Connection], T], action: str) -> T:
        """Run ``work`` in one write transaction; retried when a version number collides."""
        if self.readonly:
            raise StoreError(f"{self.path}: opened read-only; {action} is not possible")
        with self._lock:
            for attempt in range(_RETRIES):
                try:
                    self._conn.execute("BEGIN IMMEDIATE")
                except sqlite3.Error as err:
                    raise store_error(self.path, err, action) from err
                try:
                    result = work(self._conn)
                    self._conn.execute("COMMIT")
                    return result
                except sqlite3.IntegrityError as err:
                    self._rollback()
                    if "UNIQUE" in str(err) and attempt + 1 < _RETRIES:
                        continue  # someone took this version number: count again
                    raise store_error(self.path, err, action) from err
                except sqlite3.Error as err:
                    self._rollback()
                    raise store_error(self.path, err, action) from err
                except BaseException:
                    self._rollback()
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _read(self, query: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._conn.execute(query, params).fetchall()
            except sqlite3.Error as err:
                raise store_error(self.path, err, "reading the label store") from err

    # ---- stacks --------------------------------------------------------------------------------
    def register_stack(
        self,
        name: str,
        slice_ids: Sequence[str],
        shape: Sequence[int],
        spacing: Sequence[float],
        source: str | os.PathLike | None = None,
        classes: Sequence[str] = CLASSES,
    ) -> None:
        """Record a stack (idempotent); refuses the same name with another shape, slice ids or classes."""
        shape = tuple(int(s) for s in shape)
        slice_ids, classes = [str(s) for s in slice_ids], tuple(str(c) for c in classes)
        if len(shape) != 3 or min(shape) < 1 or len(slice_ids) != shape[0]:
            raise StoreError(
                f"{self.path}: stack {name!r}: {len(slice_ids)} slice ids for shape {shape} "
                "(expected (Z, Y, X) with one id per slice)"
            )
        if len(set(slice_ids)) != len(slice_ids):
            raise StoreError(f"{self.path}: stack {name!r}: slice ids are not unique")
        spacing = [float(s) for s in spacing]
        if len(spacing) != 3:
            raise StoreError(f"{self.path}: stack {name!r}: spacing {spacing} is not (z, y, x)")

        def same_as_stored(row: tuple) -> bool:
            stored_ids, stored_shape, stored_classes = (
                json.loads(row[0]),
                tuple(json.loads(row[1])),
                tuple(json.loads(row[2])),
            )
            if stored_shape != shape or stored_ids != slice_ids or stored_classes != classes:
                raise StoreError(
                    f"{self.path}: a different stack named {name!r} is already in this store (shape "
                    f"{stored_shape} vs {shape}, {len(stored_ids)} vs {len(slice_ids)} slices, classes "
                    f"{stored_classes} vs {classes}); refusing to mix up labels"
                )
            return True

        rows = self._read("SELECT slice_ids, shape, classes FROM stacks WHERE name = ?", (name,))
        if not (rows and same_as_stored(rows[0])):

            def insert(conn: sqlite3.Connection) -> None:
                row = conn.execute("SELECT slice_ids, shape, classes FROM stacks WHERE name = ?", (name,)).fetchone()
                if row is not None and same_as_stored(row):
                    return  # another window registered it meanwhile
                taken = []
                for i in range(0, len(slice_ids), CHUNK):
                    part = slice_ids[i : i + CHUNK]
                    taken += conn.execute(
                        f"SELECT slice_id, stack FROM slices WHERE slice_id IN ({','.join('?' * len(part))})", part
                    ).fetchall()
                if taken:
                    raise StoreError(
                        f"{self.path}: slice {taken[0][0]!r} already belongs to stack {taken[0][1]!r}; "
                        f"refusing to register it again under {name!r}"
                    )
                conn.execute(
                    "INSERT INTO stacks VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        name,
                        json.dumps(slice_ids),
                        json.dumps(shape),
                        json.dumps(spacing),
                        None if source is None else str(source),
                        json.dumps(list(classes)),
                        time.time(),
                    ),
                )
                conn.executemany(
                    "INSERT INTO slices VALUES (?, ?, ?)", [(sid, name, z) for z, sid in enumerate(slice_ids)]
                )

            self._write(insert, f"registering stack {name!r}")
        for sid in slice_ids:
            self._shapes[sid] = (len(classes), shape[1], shape[2])

    def stacks(self) -> list[str]:
        """Names of the registered stacks, in the order they were registered."""
        return [r[0] for r in self._read("SELECT name FROM stacks ORDER BY created, name")]

    def stack_info(self, name: str) -> dict:
        """Slice ids, shape, spacing, source and classes of a registered stack."""
        rows = self._read("SELECT slice_ids, shape, spacing, source, classes FROM stacks WHERE name = ?", (name,))
        if not rows:
            raise StoreError(f"{self.path}: no stack named {name!r} in this store")
        ids, shape, spacing, source, classes = rows[0]
        return {
            "name": name,
            "slice_ids": json.loads(ids),
            "shape": tuple(json.loads(shape)),
            "spacing": tuple(json.loads(spacing)),
            "source": source,
            "classes": tuple(json.loads(classes)),
        }

    def _shape_of(self, slice_id: str) -> tuple[int, int, int]:
        if slice_id not in self._shapes:
            rows = self._read(
                "SELECT s.shape, s.classes FROM slices l JOIN stacks s ON s.name = l.stack WHERE l.slice_id = ?",
                (slice_id,),
            )
            if not rows:
                raise StoreError(
                    f"{self.path}: slice {slice_id!r} belongs to no registered stack (register_stack first)"
                )
            shape, classes = json.loads(rows[0][0]), json.loads(rows[0][1])
            self._shapes[slice_id] = (len(classes), int(shape[1]), int(shape[2]))
        return self._shapes[slice_id]
