"""Talking to SQLite: connections (read-only ones fall back to ``immutable``), the schema version
check, and SQLite's errors turned into ``StoreError``s that say in plain words what went wrong."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

from napari_gitseg.store import schema
from napari_gitseg.store.schema import SCHEMA_VERSION

BUSY_TIMEOUT_S = 30.0
CHUNK = 500  # slice ids per query (SQLite's host-parameter limit is far above)


class StoreError(Exception):  # not RuntimeError: superqt's thread workers swallow those silently
    """A label store that cannot be opened, read or written; the message names the file and why."""


# SQLite's primary result codes (``sqlite3.SQLITE_*`` exist only from Python 3.11 on)
BUSY, LOCKED, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, NOTADB = 5, 6, 8, 10, 11, 13, 14, 26


_MESSAGES = {
    "database is locked": BUSY,
    "database table is locked": LOCKED,
    "readonly database": READONLY,
    "disk I/O error": IOERR,
    "malformed": CORRUPT,
    "database or disk is full": FULL,
    "unable to open database file": CANTOPEN,
    "file is not a database": NOTADB,
}


def error_code(err: BaseException) -> int | None:
    """SQLite's primary result code of an error (from its message where Python does not give it)."""
    code = getattr(err, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF
    text = str(err)
    return next((c for message, c in _MESSAGES.items() if message in text), None)


def store_error(path: Path, err: BaseException, action: str) -> StoreError:
    """A StoreError that says what went wrong with ``path`` while doing ``action``, in plain words."""
    code, text = error_code(err), str(err)
    if code == FULL or getattr(err, "errno", None) == errno.ENOSPC:
        return StoreError(
            f"{path}: the disk is full; {action} failed and nothing was saved (the versions saved "
            f"before are intact). Free some space and save again. ({text})"
        )
    if code == READONLY or getattr(err, "errno", None) == errno.EROFS:
        return StoreError(
            f"{path}: the label store is read-only; {action} failed. Open it with readonly=True "
            f"to view or export, or use a writable project folder. ({text})"
        )
    if code in (BUSY, LOCKED):
        return StoreError(
            f"{path}: another napari-gitseg window or process kept the label store busy for more "
            f"than {BUSY_TIMEOUT_S:.0f} s; {action} failed and nothing was saved. Try again. ({text})"
        )
    if code in (CORRUPT, NOTADB):
        return StoreError(f"{path}: not a napari-gitseg label store, or the file is damaged; {action} failed. ({text})")
    if code == IOERR:
        return StoreError(f"{path}: the disk reported an I/O error; {action} failed and nothing was saved. ({text})")
    if code == CANTOPEN:
        return StoreError(f"{path}: cannot open the label store file; {action} failed. ({text})")
    return StoreError(f"{path}: {action} failed ({text})")


def connect(target: str, uri: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(target, uri=uri, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    return conn


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection; falls back to ``immutable`` in a read-only folder with no WAL index."""
    base = path.resolve().as_uri()
    conn = connect(base + "?mode=ro", uri=True)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError as err:
        conn.close()
        if error_code(err) != CANTOPEN:
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
    conn = connect(base + "?immutable=1", uri=True)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except BaseException:
        conn.close()
        raise
    return conn


def check_version(path: Path, version: int | None, migrate: bool) -> None:
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
