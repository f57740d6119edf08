"""The label store: versioned per-slice organ masks with provenance, in one SQLite file per project."""

from napari_gitseg.store.label_store import (
    BUSY_TIMEOUT_S,
    DB_NAME,
    SCHEMA_VERSION,
    SOURCES,
    LabelStore,
    SliceRecord,
    StoreError,
    VersionInfo,
)

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
