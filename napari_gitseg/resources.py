"""Where the project's own resources live: the default model bundle.

An installed wheel carries the bundle as package data (``napari_gitseg/default_model/``, copied
from the repository's ``resources/models`` by the build, see setup.py); a source checkout or an
editable install reads ``resources/models`` in place.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_MODELS = Path(__file__).resolve().parent / "default_model"
REPO_RESOURCES = Path(__file__).resolve().parents[1] / "resources"


def default_model_path() -> Path | None:
    """The default model bundle's JSON (``GITSEG_DEFAULT_MODEL`` overrides), or None if absent."""
    env = os.environ.get("GITSEG_DEFAULT_MODEL")
    candidates = [Path(env)] if env else []
    candidates += [PACKAGE_MODELS / "default.json", REPO_RESOURCES / "models" / "default.json"]
    for path in candidates:
        if path.is_file():
            return path
    return None
