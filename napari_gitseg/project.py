"""Where a stack's label store and model registry live (one project folder per data folder)."""

from __future__ import annotations

import os
import re
from pathlib import Path

PROJECT_DIRNAME = "gitseg_project"


def _user_projects_root() -> Path:
    from platformdirs import user_data_dir

    return Path(os.environ.get("GITSEG_HOME") or user_data_dir("napari-gitseg")) / "projects"


def default_project_folder(source: str, name: str) -> Path:
    """Project folder for a stack: beside the data when that folder is writable, else in the user's data dir.

    A case folder ``.../case123`` gets ``.../case123/gitseg_project``; a file gets a folder
    beside it; data without a path (the phantom sample) goes to
    ``<user data>/napari-gitseg/projects/<name>``.
    """
    path = Path(source)
    if path.exists():
        base = path if path.is_dir() else path.parent
        if os.access(base, os.W_OK):
            return base / PROJECT_DIRNAME
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "stack"
    return _user_projects_root() / safe


def registry_folder(project: Path) -> Path:
    """The model registry inside a project folder."""
    return Path(project) / "models"
