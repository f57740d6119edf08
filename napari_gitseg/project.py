"""A project folder: one stack's (or several stacks') label store, image snapshots, model registry and jobs.

Layout of ``Project(folder)``::

    folder/gitseg_labels.sqlite   the LabelStore (clinician, model and pseudo versions of every slice)
    folder/images/NAME.npz        a snapshot of each stack's image, for the background trainer
    folder/models/                the ModelRegistry (v0001.json + .safetensors ..., registry.json)
    folder/jobs/                  the trainer's job files and logs, and a round's scratch folder

``Project`` is the only place that knows this layout; the docks, ``retrain``, the trainer and the
command line ask it for paths. It also holds the one rule on how many clinician labels a
retraining round needs (``MIN_CLINICIAN_LABELS``), checked alike by the GUI and the worker.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

PROJECT_DIRNAME = "gitseg_project"
#: a round holds at least one clinician label out as its frozen validation set and trains on the rest
MIN_CLINICIAN_LABELS = 2


def _safe_name(name: str) -> str:
    """``name`` as a file name that stays inside its folder."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "stack"


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
    return _user_projects_root() / _safe_name(name)


def round_refusal(n_clinician: int) -> str | None:
    """Why a round cannot run on ``n_clinician`` clinician-labelled slices (None: it can)."""
    if n_clinician >= MIN_CLINICIAN_LABELS:
        return None
    return (
        f"{n_clinician} clinician-labelled slice(s) in the label store: label at least "
        f"{MIN_CLINICIAN_LABELS} slices first (correct them and press Accept in the Review dock)"
    )


@dataclass(frozen=True)
class Project:
    """One project folder and the paths inside it (nothing is created until something is written)."""

    folder: Path

    def __post_init__(self):
        object.__setattr__(self, "folder", Path(self.folder))

    @classmethod
    def for_stack(cls, source: str, name: str) -> Project:
        """The default project of a stack (``default_project_folder``)."""
        return cls(default_project_folder(source, name))

    # ---- label store ------------------------------------------------------------------------------
    def open_store(self, user: str | None = None, create: bool = True, readonly: bool = False):
        """The project's ``LabelStore`` (see ``LabelStore.open`` for the options)."""
        from napari_gitseg.store import LabelStore

        return LabelStore.open(self.folder, user=user, create=create, readonly=readonly)

    def clinician_label_count(self) -> int:
        """How many slices a clinician has labelled or reviewed (``StoreError`` when there is no store)."""
        with self.open_store(readonly=True) as store:
            return len(store.clinician_slices())

    # ---- image snapshots --------------------------------------------------------------------------
    def snapshot_path(self, name: str) -> Path:
        """Where the image snapshot of stack ``name`` lives."""
        return self.folder / "images" / f"{_safe_name(name)}.npz"

    def save_snapshot(self, stack) -> Path:
        """Keep a copy of the stack's image so the background trainer can read it.

        Written once per stack (atomic: temp file + rename); the label store holds only masks.
        """
        import numpy as np

        path = self.snapshot_path(stack.name)
        if path.exists():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(
            tmp,
            image=stack.image,
            spacing=np.asarray(stack.spacing, dtype=np.float64),
            slice_ids=np.asarray(stack.slice_ids, dtype=str),
            source=np.asarray(str(stack.source)),
            classes=np.asarray(stack.classes, dtype=str),
        )
        os.replace(tmp, path)
        return path

    def load_snapshot(self, name: str):
        """The snapshot of stack ``name`` as a Stack (``GitsegInputError`` when it is missing)."""
        from napari_gitseg.io.errors import GitsegInputError

        path = self.snapshot_path(name)
        if not path.is_file():
            raise GitsegInputError(
                path,
                f"the image of stack {name} is missing from the project (open the "
                "stack in the Review dock once to save it)",
            )
        return load_stack_snapshot(path)

    # ---- model registry ---------------------------------------------------------------------------
    @property
    def registry_folder(self) -> Path:
        """The model registry's folder."""
        return self.folder / "models"

    def registry(self, create: bool = True):
        """The project's ``ModelRegistry`` (``create=False``: ``RegistryError`` when there is none)."""
        from napari_gitseg.model.registry import ModelRegistry

        return ModelRegistry(self.registry_folder, create=create)

    def model_versions(self) -> tuple[list[dict], str | None]:
        """(versions with metrics, active version) of the registry; none yet: ([], None)."""
        if not self.registry_folder.is_dir():
            return [], None
        registry = self.registry(create=False)
        return registry.versions(), registry.active()

    def model_path(self, version: str) -> Path:
        """The bundle JSON of a registered model version (the registry says where)."""
        return self.registry(create=False).path_of(version)

    def active_model_path(self) -> Path | None:
        """The bundle JSON of the project's active model version; None while the project has none."""
        _versions, active = self.model_versions()
        return None if active is None else self.model_path(active)

    # ---- the trainer's jobs -----------------------------------------------------------------------
    @property
    def jobs_folder(self) -> Path:
        """Where the trainer's job files and logs go."""
        return self.folder / "jobs"

    def round_workdir(self) -> Path:
        """A fresh scratch folder for one round's candidate model (the caller removes it)."""
        stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{int(time.time() * 1e6) % 1000000:06d}"
        path = self.jobs_folder / f"round-{stamp}"
        path.mkdir(parents=True, exist_ok=True)
        return path


def registry_folder(project: str | os.PathLike) -> Path:
    """The model registry inside a project folder (``Project(project).registry_folder``)."""
    return Project(project).registry_folder


def save_stack_snapshot(project: str | os.PathLike, stack) -> Path:
    """Keep a copy of the stack's image in the project (``Project(project).save_snapshot``)."""
    return Project(project).save_snapshot(stack)


def load_stack_snapshot(path: Path):
    """Read a snapshot written by ``Project.save_snapshot`` back into a Stack (no pickles)."""
    import numpy as np

    from napari_gitseg.io.errors import GitsegInputError
    from napari_gitseg.io.stack import Stack

    try:
        with np.load(path, allow_pickle=False) as data:
            return Stack(
                image=data["image"],
                spacing=tuple(data["spacing"].tolist()),
                slice_ids=[str(s) for s in data["slice_ids"]],
                source=str(data["source"]),
                kind="snapshot",
                classes=tuple(str(c) for c in data["classes"]),
            )
    except (OSError, KeyError, ValueError) as err:
        raise GitsegInputError(path, f"not a readable gitseg image snapshot ({err})") from err
