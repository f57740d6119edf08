"""LabelStore: every saved mask is a new version, in one SQLite file per project folder.

The store (``<project>/gitseg_labels.sqlite``, tables in ``schema.py``) holds the image stacks a
project registered, every saved version of every slice's masks with its provenance (``clinician``,
``model``, ``pseudo``, ``imported``, ``interpolated``, ``propagated``), user, model version, review
flag, confidence and note, small session values (``state``) and the clinician's effort per review
session (``effort``). Rows are never updated or deleted, so the whole history stays readable.

It is built so that a clinician's work is never lost or silently overwritten:

- every write is one fsynced transaction: a crash or power loss leaves every committed version
  intact, a full disk fails with ``StoreError`` and changes nothing; two napari windows may write;
- clinician work is protected in ONE place, the write transaction (``_refuses``): a prediction never
  replaces a clinician label, nor a slice interpolated or propagated from clinician slices
  (``ASSISTED``); ``save`` then returns None;
- ``accept`` stores exactly the masks the clinician saw (as a new version if another window or the
  trainer saved something meanwhile);
- a newer schema is refused, an older one migrated; a read-only store opens with ``readonly=True``.

The full layout and rules: ``docs/store-notes.md``.
"""

from __future__ import annotations

import errno
import getpass
import json
import math
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from napari_gitseg.classes import CLASSES
from napari_gitseg.store import schema
from napari_gitseg.store.review_order import review_order
from napari_gitseg.store.schema import DB_NAME, SCHEMA_VERSION

SOURCES = ("clinician", "model", "pseudo", "imported", "interpolated", "propagated")
PREDICTED = ("model", "pseudo")  # never replace a protected slice
ASSISTED = ("interpolated", "propagated")  # drawn by a correction tool from clinician slices: kept from predictions
CLINICIAN_SOURCES = ("clinician", "imported")  # count as clinician labels (imported: a department's RT-STRUCT/SEG)
BUSY_TIMEOUT_S = 30.0
_RETRIES = 3  # attempts of one write transaction when a version number collides
_CHUNK = 500  # slice ids per query (SQLite's host-parameter limit is far above)

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


class StoreError(Exception):  # not RuntimeError: superqt's thread workers swallow those silently
    """A label store that cannot be opened, read or written; the message names the file and why."""


@dataclass(frozen=True)
class VersionInfo:
    """Metadata of one saved version of one slice (``created``: seconds since the epoch)."""

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


# ---- helpers ------------------------------------------------------------------------------------
def _default_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001  (no user database, e.g. in some containers)
        return os.environ.get("USER") or os.environ.get("USERNAME") or "unknown"


def _checksum(blob: bytes, shape_text: str) -> int:
    return zlib.crc32(shape_text.encode(), zlib.crc32(blob))


def _pack(masks: np.ndarray) -> tuple[bytes, str, int]:
    """Bit-pack and compress masks; returns (blob, shape as JSON, checksum)."""
    bits = np.packbits(np.ascontiguousarray(masks, dtype=bool).ravel())
    blob = zlib.compress(bits.tobytes(), 6)
    shape_text = json.dumps([int(s) for s in masks.shape])
    return blob, shape_text, _checksum(blob, shape_text)


def _any_pixel(blob: bytes) -> bool:
    """Whether packed masks hold any set pixel (the padding bits are 0); a damaged blob counts as holding one
    (reading the slice reports the damage)."""
    try:
        return bool(np.frombuffer(zlib.decompress(blob), dtype=np.uint8).any())
    except zlib.error:
        return True


def _unpack(blob: bytes, shape_text: str, crc: int, where: str) -> np.ndarray:
    """Masks back from a stored blob, after verifying its checksum and size."""
    if _checksum(blob, shape_text) != crc:
        raise StoreError(f"{where}: stored mask data fails its checksum (the file is damaged)")
    try:
        shape = tuple(int(s) for s in json.loads(shape_text))
        bits = np.frombuffer(zlib.decompress(blob), dtype=np.uint8)
    except (ValueError, TypeError, zlib.error) as err:
        raise StoreError(f"{where}: stored mask data cannot be decoded ({err})") from err
    n = math.prod(shape)
    if bits.size != (n + 7) // 8:
        raise StoreError(f"{where}: stored mask data has {bits.size} bytes, expected {(n + 7) // 8} for {shape}")
    return np.unpackbits(bits, count=n).astype(bool).reshape(shape)


# SQLite's primary result codes (``sqlite3.SQLITE_*`` exist only from Python 3.11 on)
_BUSY, _LOCKED, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 5, 6, 8, 10, 11, 13, 14, 26
_MESSAGES = {
    "database is locked": _BUSY,
    "database table is locked": _LOCKED,
    "readonly database": _READONLY,
    "disk I/O error": _IOERR,
    "malformed": _CORRUPT,
    "database or disk is full": _FULL,
    "unable to open database file": _CANTOPEN,
    "file is not a database": _NOTADB,
}


def _error_code(err: BaseException) -> int | None:
    """SQLite's primary result code of an error (from its message where Python does not give it)."""
    code = getattr(err, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF
    text = str(err)
    return next((c for message, c in _MESSAGES.items() if message in text), None)


def _store_error(path: Path, err: BaseException, action: str) -> StoreError:
    """A StoreError that says what went wrong with ``path`` while doing ``action``, in plain words."""
    code, text = _error_code(err), str(err)
    if code == _FULL or getattr(err, "errno", None) == errno.ENOSPC:
        return StoreError(
            f"{path}: the disk is full; {action} failed and nothing was saved (the versions saved "
            f"before are intact). Free some space and save again. ({text})"
        )
    if code == _READONLY or getattr(err, "errno", None) == errno.EROFS:
        return StoreError(
            f"{path}: the label store is read-only; {action} failed. Open it with readonly=True "
            f"to view or export, or use a writable project folder. ({text})"
        )
    if code in (_BUSY, _LOCKED):
        return StoreError(
            f"{path}: another napari-gitseg window or process kept the label store busy for more "
            f"than {BUSY_TIMEOUT_S:.0f} s; {action} failed and nothing was saved. Try again. ({text})"
        )
    if code in (_CORRUPT, _NOTADB):
        return StoreError(f"{path}: not a napari-gitseg label store, or the file is damaged; {action} failed. ({text})")
    if code == _IOERR:
        return StoreError(f"{path}: the disk reported an I/O error; {action} failed and nothing was saved. ({text})")
    if code == _CANTOPEN:
        return StoreError(f"{path}: cannot open the label store file; {action} failed. ({text})")
    return StoreError(f"{path}: {action} failed ({text})")


def _connect(target: str, uri: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(target, uri=uri, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    return conn


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection; falls back to ``immutable`` in a read-only folder with no WAL index."""
    base = path.resolve().as_uri()
    conn = _connect(base + "?mode=ro", uri=True)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError as err:
        conn.close()
        if _error_code(err) != _CANTOPEN:
            raise
    # WAL databases need a writable -shm file; in a read-only folder without one, the file can
    # only be read as immutable, which would silently ignore committed changes still in the WAL.
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise StoreError(
            f"{path}: the folder is read-only and the store has saved changes still in {wal.name} "
            "that cannot be read without write access; copy the project folder somewhere "
            "writable and open it there"
        )
    conn = _connect(base + "?immutable=1", uri=True)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except BaseException:
        conn.close()
        raise
    return conn


def _check_version(path: Path, version: int | None, migrate: bool) -> None:
    """Refuse foreign, newer, or (read-only) older stores with a clear message."""
    if version == schema.NOT_A_STORE:
        raise StoreError(f"{path}: an SQLite file that is not a napari-gitseg label store")
    if version is not None and version > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: written by a newer napari-gitseg (schema {version} > {SCHEMA_VERSION}); "
            "upgrade napari-gitseg to open it (the store was not changed)"
        )
    if not migrate and version is not None and version < SCHEMA_VERSION:
        raise StoreError(
            f"{path}: written by an older napari-gitseg (schema {version} < {SCHEMA_VERSION}); "
            "open it once with write access to upgrade it"
        )


# ---- the store ----------------------------------------------------------------------------------
class LabelStore:
    """Versioned per-slice, per-class organ masks with provenance (see the module docstring).

    One connection per store object; safe to share between threads (calls are serialised).
    """

    _COLS = "slice_id, version, source, user, model_version, reviewed, confidence, note, created, shape, masks, crc"

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
                conn = _connect_readonly(path)
            except sqlite3.Error as err:
                raise _store_error(path, err, "opening the label store") from err
            try:
                version = schema.read_version(conn)
                _check_version(path, version, migrate=not readonly)
                if readonly and version is None:
                    raise StoreError(f"{path}: an empty file, not a label store yet")
            except sqlite3.Error as err:
                conn.close()
                raise _store_error(path, err, "opening the label store") from err
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
                raise _store_error(folder, err, "creating the project folder") from err
        if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise StoreError(
                f"{path}: the label store is read-only here; open it with readonly=True to view or "
                "export, or choose a writable project folder"
            )
        try:
            conn = _connect(str(path))
        except sqlite3.Error as err:
            raise _store_error(path, err, "opening the label store") from err
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
                    if _error_code(err) not in (_BUSY, _LOCKED) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as err:
            raise _store_error(self.path, err, "opening the label store") from err

        def setup(conn: sqlite3.Connection) -> None:
            version = schema.read_version(conn)  # again, under the write lock: another window may be here too
            _check_version(self.path, version, migrate=True)
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
                    raise _store_error(self.path, err, action) from err
                try:
                    result = work(self._conn)
                    self._conn.execute("COMMIT")
                    return result
                except sqlite3.IntegrityError as err:
                    self._rollback()
                    if "UNIQUE" in str(err) and attempt + 1 < _RETRIES:
                        continue  # someone took this version number: count again
                    raise _store_error(self.path, err, action) from err
                except sqlite3.Error as err:
                    self._rollback()
                    raise _store_error(self.path, err, action) from err
                except BaseException:
                    self._rollback()
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _read(self, query: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._conn.execute(query, params).fetchall()
            except sqlite3.Error as err:
                raise _store_error(self.path, err, "reading the label store") from err

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
                for i in range(0, len(slice_ids), _CHUNK):
                    part = slice_ids[i : i + _CHUNK]
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

    # ---- writing -------------------------------------------------------------------------------
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
        blob, shape_text, crc = _pack(masks)
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

    @staticmethod
    def _refuses(new_source: str, last_source: str, last_reviewed: bool, keep: Sequence[str] = ()) -> bool:
        """True when a version by ``new_source`` may not replace the latest one (the one protection rule);
        ``keep``: sources the writer leaves in place as well."""
        if new_source in CLINICIAN_SOURCES:
            return False
        if LabelStore._protected(last_source, last_reviewed) or last_source in keep:
            return True
        return new_source in PREDICTED and last_source in ASSISTED

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
                if last is not None and self._refuses(source, last[1], bool(last[2]), keep):
                    results.append(None)  # a prediction never overwrites a clinician's correction
                    continue
                version = 1 if last is None else last[0] + 1
                if reviewed is None:
                    reviewed = int(bool(last is not None and last[2]))
                conn.execute(
                    f"INSERT INTO versions ({self._COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (sid, version, source, user, model_version, reviewed, conf, note, now, shape_text, blob, crc),
                )
                results.append(version)
            return results

        return self._write(work, f"saving {len(prepared)} slice(s)")

    def _latest_row(self, conn: sqlite3.Connection, slice_id: str) -> dict | None:
        row = conn.execute(
            f"SELECT {self._COLS} FROM versions WHERE slice_id = ? ORDER BY version DESC LIMIT 1", (slice_id,)
        ).fetchone()
        return None if row is None else dict(zip(self._COLS.split(", "), row))

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
                f"INSERT INTO versions ({self._COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", tuple(last.values())
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
            conn.execute(f"INSERT INTO versions ({self._COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
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
                    f"SELECT {self._COLS} FROM versions WHERE slice_id = ? AND version = ?", (sid, int(version))
                ).fetchone()
                if last is None or old is None or last["version"] != replaced:
                    out.append(None)
                    continue
                row = dict(zip(self._COLS.split(", "), old))
                row.update(version=last["version"] + 1, note=f"{note}: back to v{version}", created=time.time())
                conn.execute(
                    f"INSERT INTO versions ({self._COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                f"INSERT INTO versions ({self._COLS}) VALUES (?, ?, 'clinician', ?, NULL, ?, NULL, ?, ?, ?, ?, ?)",
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

    # ---- reading -------------------------------------------------------------------------------
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
        return SliceRecord(**info, masks=_unpack(blob, shape_text, crc, f"{self.path} [{sid} v{version}]"))

    def latest(self, slice_id: str) -> SliceRecord | None:
        """The latest version of a slice with its masks, or None if never saved."""
        rows = self._read(
            f"SELECT {self._COLS} FROM versions WHERE slice_id = ? ORDER BY version DESC LIMIT 1", (slice_id,)
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
                for i in range(0, len(ids), _CHUNK):
                    part = ids[i : i + _CHUNK]
                    rows += self._conn.execute(
                        f"SELECT {self._COLS} FROM versions v WHERE slice_id IN ({','.join('?' * len(part))}) "
                        "AND version = (SELECT MAX(version) FROM versions w WHERE w.slice_id = v.slice_id)",
                        part,
                    ).fetchall()
            except sqlite3.Error as err:
                raise _store_error(self.path, err, "reading the label store") from err
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
            f"SELECT {self._COLS} FROM versions WHERE slice_id = ? AND version = ?", (slice_id, int(version))
        )
        if not rows:
            raise StoreError(f"{self.path}: slice {slice_id!r} has no version {version}")
        return self._record(rows[0])

    def history(self, slice_id: str) -> list[VersionInfo]:
        """Metadata of every version of a slice, oldest first."""
        rows = self._read(f"SELECT {self._COLS} FROM versions WHERE slice_id = ? ORDER BY version", (slice_id,))
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

    @staticmethod
    def _protected(source: str, reviewed: bool) -> bool:
        return source in CLINICIAN_SOURCES or reviewed

    def clinician_slices(self, stack: str | None = None) -> list[str]:
        """Slices whose latest version is by a clinician or reviewed (the training labels)."""
        return [r[0] for r in self._latest_meta(stack) if self._protected(r[1], r[2])]

    def pseudo_slices(self, stack: str | None = None) -> list[str]:
        """Slices whose latest version is an unreviewed pseudo-label."""
        return [r[0] for r in self._latest_meta(stack) if r[1] == "pseudo" and not r[2]]

    def unreviewed_slices(self, stack: str) -> list[str]:
        """Slices of ``stack`` (z order) that no clinician has edited or reviewed, saved or not."""
        protected = set(self.clinician_slices(stack))
        return [sid for sid in self.stack_info(stack)["slice_ids"] if sid not in protected]

    def review_queue(self, stack: str) -> list[str]:
        """Unreviewed slices of ``stack`` in review order (``review_order``: least confident first, slices the
        model left empty later, spread over the scan); those without a confidence last (z order)."""
        ids = self.stack_info(stack)["slice_ids"]
        meta = {r[0]: r for r in self._latest_meta(stack)}
        scored, unscored, reviewed = [], [], []
        for z, sid in enumerate(ids):
            r = meta.get(sid)
            if r is not None and self._protected(r[1], r[2]):
                reviewed.append(z)
            elif r is None or r[3] is None:
                unscored.append(sid)
            else:
                scored.append((z, r[3]))
        organ = self._latest_has_organ(stack)
        zs = [z for z, _c in scored]
        order = review_order(zs, [c for _z, c in scored], [organ[ids[z]] for z in zs], reviewed, len(ids))
        return [ids[z] for z in order] + unscored

    def _latest_has_organ(self, stack: str) -> dict[str, bool]:
        """Whether the latest version of each saved slice of ``stack`` holds any organ pixel."""
        rows = self._read(
            "SELECT v.slice_id, v.masks FROM versions v JOIN slices s ON s.slice_id = v.slice_id "
            "WHERE s.stack = ? AND v.version = (SELECT MAX(version) FROM versions w WHERE w.slice_id = v.slice_id)",
            (stack,),
        )
        return {sid: _any_pixel(blob) for sid, blob in rows}

    def counts(self, stack: str) -> dict[str, int]:
        """Counts for the status line: total, reviewed, clinician (edited or reviewed), and the unreviewed
        pseudo, predicted, interpolated and propagated slices."""
        total = len(self.stack_info(stack)["slice_ids"])
        meta = self._latest_meta(stack)
        return {
            "total": total,
            "reviewed": sum(1 for r in meta if r[2]),
            "clinician": sum(1 for r in meta if self._protected(r[1], r[2])),
            "pseudo": sum(1 for r in meta if r[1] == "pseudo" and not r[2]),
            "predicted": sum(1 for r in meta if r[1] == "model" and not r[2]),
            "interpolated": sum(1 for r in meta if r[1] == "interpolated" and not r[2]),
            "propagated": sum(1 for r in meta if r[1] == "propagated" and not r[2]),
        }

    # ---- session state -------------------------------------------------------------------------
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

    # ---- clinician effort ----------------------------------------------------------------------
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

    # ---- export --------------------------------------------------------------------------------
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
            if reviewed_only and not self._protected(rec.source, rec.reviewed):
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
            _checksum(blob, shape_text) == crc
            for shape_text, blob, crc in self._read("SELECT shape, masks, crc FROM versions")
        )
