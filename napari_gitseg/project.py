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
    path = Path(source) if source else None  # Path("") would be the current directory
    if path is not None and path.exists():
        base = path if path.is_dir() else path.parent
        if os.access(base, os.W_OK):
            return base / PROJECT_DIRNAME
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "stack"
    return _user_projects_root() / safe


def registry_folder(project: Path) -> Path:
    """The model registry inside a project folder."""
    return Path(project) / "models"


def snapshot_path(project: Path, name: str) -> Path:
    """Where the image snapshot of stack ``name`` lives inside a project folder."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "stack"
    return Path(project) / "images" / f"{safe}.npz"


def save_stack_snapshot(project: Path, stack) -> Path:
    """Keep a copy of the stack's image in the project so the background trainer can read it.

    Written once per stack (atomic: temp file + rename); the label store holds only masks.
    """
    import numpy as np

    path = snapshot_path(project, stack.name)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(
        tmp, image=stack.image, spacing=np.asarray(stack.spacing, dtype=np.float64),
        slice_ids=np.asarray(stack.slice_ids, dtype=str), source=np.asarray(str(stack.source)),
        classes=np.asarray(stack.classes, dtype=str),
    )
    os.replace(tmp, path)
    return path


def load_stack_snapshot(path: Path):
    """Read a snapshot written by ``save_stack_snapshot`` back into a Stack (no pickles)."""
    import numpy as np

    from napari_gitseg.io.errors import GitsegInputError
    from napari_gitseg.io.stack import Stack

    try:
        with np.load(path, allow_pickle=False) as data:
            return Stack(
                image=data["image"], spacing=tuple(data["spacing"].tolist()),
                slice_ids=[str(s) for s in data["slice_ids"]], source=str(data["source"]), kind="snapshot",
                classes=tuple(str(c) for c in data["classes"]),
            )
    except (OSError, KeyError, ValueError) as err:
        raise GitsegInputError(path, f"not a readable gitseg image snapshot ({err})") from err
