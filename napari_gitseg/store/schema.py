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

SCHEMA_VERSION = 2
DB_NAME = "gitseg_labels.sqlite"
APP_NAME = "napari-gitseg"

# provenance of a saved version; "interpolated" = filled between two corrected slices (schema 2 on)
_VERSIONS = (
    "CREATE TABLE {name} (id INTEGER PRIMARY KEY AUTOINCREMENT, slice_id TEXT NOT NULL"
    " REFERENCES slices(slice_id), version INTEGER NOT NULL CHECK (version >= 1),"
    " source TEXT NOT NULL CHECK (source IN ('clinician', 'model', 'pseudo', 'interpolated')),"
    " user TEXT, model_version TEXT, reviewed INTEGER NOT NULL CHECK (reviewed IN (0, 1)), confidence REAL,"
    " note TEXT, created REAL NOT NULL, shape TEXT NOT NULL, masks BLOB NOT NULL, crc INTEGER NOT NULL,"
    " UNIQUE (slice_id, version))"
)
# the clinician's effort per review session and slice (schema 2 on; see napari_gitseg.effort)
_EFFORT = (
    "CREATE TABLE effort (session TEXT NOT NULL, slice_id TEXT NOT NULL REFERENCES slices(slice_id),"
    " user TEXT, seconds REAL NOT NULL, strokes INTEGER NOT NULL, painted_px INTEGER NOT NULL,"
    " accepted_unedited INTEGER NOT NULL CHECK (accepted_unedited IN (0, 1)), updated REAL NOT NULL,"
    " PRIMARY KEY (session, slice_id))"
)

TABLES = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE stacks (name TEXT PRIMARY KEY, slice_ids TEXT NOT NULL, shape TEXT NOT NULL,"
    " spacing TEXT NOT NULL, source TEXT, classes TEXT NOT NULL, created REAL NOT NULL)",
    "CREATE TABLE slices (slice_id TEXT PRIMARY KEY, stack TEXT NOT NULL REFERENCES stacks(name),"
    " z INTEGER NOT NULL)",
    _VERSIONS.format(name="versions"),
    "CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    _EFFORT,
)



def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    """Allow provenance "interpolated" (SQLite cannot alter a CHECK: copy the table) and add ``effort``."""
    conn.execute(_VERSIONS.format(name="versions_v2"))
    conn.execute("INSERT INTO versions_v2 SELECT * FROM versions")
    conn.execute("DROP TABLE versions")
    conn.execute("ALTER TABLE versions_v2 RENAME TO versions")
    conn.execute(_EFFORT)


# from version N to N + 1; each runs inside the open transaction of the caller
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _migrate_1_to_2}

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
    conn.executemany("INSERT INTO meta VALUES (?, ?)",
                     [("schema_version", str(SCHEMA_VERSION)), ("created_by", APP_NAME)])


def migrate(conn: sqlite3.Connection, from_version: int) -> None:
    """Bring a store from ``from_version`` to ``SCHEMA_VERSION`` (inside the caller's transaction)."""
    for version in range(from_version, SCHEMA_VERSION):
        if version not in MIGRATIONS:
            raise LookupError(f"no migration from schema {version} to {version + 1}")
        MIGRATIONS[version](conn)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('migrated_from', ?)", (str(from_version),))
