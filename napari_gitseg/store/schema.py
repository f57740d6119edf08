"""The label store's SQLite schema: tables, schema version, and migrations from older versions.

A store records the schema version that wrote it in ``meta.schema_version``. Opening a store:

- with no tables: ``create`` makes the current schema;
- with an older version N: ``migrate`` runs ``MIGRATIONS[N]``, ``MIGRATIONS[N + 1]``, ... and
  stamps the new version, all inside the caller's one transaction (so a failed or interrupted
  migration leaves the store exactly as it was);
- with a newer version: the caller refuses it and changes nothing.

To change the schema: bump ``SCHEMA_VERSION``, change ``TABLES`` (what a new store gets) and
add ``MIGRATIONS[old] = function(conn)`` that brings an ``old`` store to ``old + 1``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

SCHEMA_VERSION = 4  # 2: provenance "imported" (a department's RT-STRUCT/SEG); 3: "interpolated", effort;
# 4: "propagated" (box propagation)
DB_NAME = "gitseg_labels.sqlite"
APP_NAME = "napari-gitseg"

VERSIONS_TABLE = (
    "CREATE TABLE {name} (id INTEGER PRIMARY KEY AUTOINCREMENT, slice_id TEXT NOT NULL"
    " REFERENCES slices(slice_id), version INTEGER NOT NULL CHECK (version >= 1),"
    " source TEXT NOT NULL CHECK (source IN ('clinician', 'model', 'pseudo', 'imported', 'interpolated',"
    " 'propagated')),"
    " user TEXT, model_version TEXT, reviewed INTEGER NOT NULL CHECK (reviewed IN (0, 1)), confidence REAL,"
    " note TEXT, created REAL NOT NULL, shape TEXT NOT NULL, masks BLOB NOT NULL, crc INTEGER NOT NULL,"
    " UNIQUE (slice_id, version))"
)
# the clinician's effort per review session and slice (schema 3 on; see napari_gitseg.review.effort)
EFFORT_TABLE = (
    "CREATE TABLE effort (session TEXT NOT NULL, slice_id TEXT NOT NULL REFERENCES slices(slice_id),"
    " user TEXT, seconds REAL NOT NULL, strokes INTEGER NOT NULL, painted_px INTEGER NOT NULL,"
    " accepted_unedited INTEGER NOT NULL CHECK (accepted_unedited IN (0, 1)), updated REAL NOT NULL,"
    " PRIMARY KEY (session, slice_id))"
)

TABLES = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE stacks (name TEXT PRIMARY KEY, slice_ids TEXT NOT NULL, shape TEXT NOT NULL,"
    " spacing TEXT NOT NULL, source TEXT, classes TEXT NOT NULL, created REAL NOT NULL)",
    "CREATE TABLE slices (slice_id TEXT PRIMARY KEY, stack TEXT NOT NULL REFERENCES stacks(name), z INTEGER NOT NULL)",
    VERSIONS_TABLE.format(name="versions"),
    "CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    EFFORT_TABLE,
)


def _rebuild_versions(conn: sqlite3.Connection) -> None:
    """Rebuild ``versions`` with the current source CHECK (SQLite cannot alter one; rows kept as they are)."""
    conn.execute(VERSIONS_TABLE.format(name="versions_new"))
    conn.execute("INSERT INTO versions_new SELECT * FROM versions")
    conn.execute("DROP TABLE versions")
    conn.execute("ALTER TABLE versions_new RENAME TO versions")


def _allow_imported(conn: sqlite3.Connection) -> None:
    """1 -> 2: the source CHECK also allows ``imported``."""
    _rebuild_versions(conn)


def _allow_interpolated_add_effort(conn: sqlite3.Connection) -> None:
    """2 -> 3: the source CHECK also allows ``interpolated`` (fill between); the ``effort`` table."""
    _rebuild_versions(conn)
    conn.execute(EFFORT_TABLE.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1))


def _allow_propagated(conn: sqlite3.Connection) -> None:
    """3 -> 4: the source CHECK also allows ``propagated`` (an organ carried from slice to slice with boxes)."""
    _rebuild_versions(conn)


# from version N to N + 1; each runs inside the open transaction of the caller
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _allow_imported,
    2: _allow_interpolated_add_effort,
    3: _allow_propagated,
}

NOT_A_STORE = 0  # read_version: tables that are not ours


def read_version(conn: sqlite3.Connection) -> int | None:
    """Schema version of the open database: None if it has no tables, ``NOT_A_STORE`` if not ours."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return None
    if "meta" not in tables:
        return NOT_A_STORE
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    try:
        return int(row[0]) if row is not None else NOT_A_STORE
    except ValueError:
        return NOT_A_STORE


def create(conn: sqlite3.Connection) -> None:
    """Create the current schema in an empty database (inside the caller's transaction)."""
    for statement in TABLES:
        conn.execute(statement)
    conn.executemany(
        "INSERT INTO meta VALUES (?, ?)", [("schema_version", str(SCHEMA_VERSION)), ("created_by", APP_NAME)]
    )


def migrate(conn: sqlite3.Connection, from_version: int) -> None:
    """Bring a store from ``from_version`` to ``SCHEMA_VERSION`` (inside the caller's transaction)."""
    for version in range(from_version, SCHEMA_VERSION):
        if version not in MIGRATIONS:
            raise LookupError(f"no migration from schema {version} to {version + 1}")
        MIGRATIONS[version](conn)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('migrated_from', ?)", (str(from_version),))
