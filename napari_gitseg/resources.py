"""Where the project's own resources live: the default model bundle."""

from __future__ import annotations

import os
from pathlib import Path

REPO_RESOURCES = Path(__file__).resolve().parents[1] / "resources"


def default_model_path() -> Path | None:
    """The default model bundle's JSON (``GITSEG_DEFAULT_MODEL`` overrides), or None if absent."""
    env = os.environ.get("GITSEG_DEFAULT_MODEL")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_RESOURCES / "models" / "default.json")
    for path in candidates:
        if path.is_file():
            return path
    return None
