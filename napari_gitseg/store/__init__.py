"""The label store: versioned per-slice organ masks with provenance (SQLite)."""

from napari_gitseg.store.label_store import (
    DB_NAME,
    SCHEMA_VERSION,
    LabelStore,
    SliceRecord,
    StoreError,
    VersionInfo,
)

__all__ = ["DB_NAME", "SCHEMA_VERSION", "LabelStore", "SliceRecord", "StoreError", "VersionInfo"]
