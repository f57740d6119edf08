"""Model versions in one folder, with one active model.

Layout::

    FOLDER/registry.json        the list of versions, the active one and the activation history
    FOLDER/v0001.safetensors    one bundle per version (see bundle.py)
    FOLDER/v0001.json
    FOLDER/.registry.lock       process lock (fcntl) held around every read-modify-write

Crash safety: a version's bundle is written completely (atomically) before ``registry.json``
is rewritten (atomically) to mention it, so ``registry.json`` only ever names complete
bundles. Temporary files and stray bundles that ``registry.json`` does not list (left by a
crash between the two steps) are ignored, and their numbers are never reused. The GUI and
the background trainer can both use the same folder: writers take an exclusive lock.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import torch

from napari_gitseg.model.bundle import (
    BundleError,
    ModelBundle,
    atomic_write_bytes,
    load_bundle,
    read_bundle_info,
    save_bundle,
)
from napari_gitseg.model.factory import ModelConfig

__all__ = ["REGISTRY_FORMAT_VERSION", "ModelRegistry", "RegistryError"]

REGISTRY_FORMAT = "napari-gitseg-registry"
REGISTRY_FORMAT_VERSION = 1
REGISTRY_FILE = "registry.json"
LOCK_FILE = ".registry.lock"
_VERSION_RE = re.compile(r"^v(\d{4,})$")


class RegistryError(ValueError):
    """A registry folder that cannot be read or changed as asked; the message names the folder or file."""


def _version_name(version: str | int) -> str:
    if isinstance(version, int) and not isinstance(version, bool):
        if version < 1:
            raise RegistryError(f"version numbers start at 1, got {version}")
        return f"v{version:04d}"
    if isinstance(version, str) and _VERSION_RE.match(version):
        return version
    raise RegistryError(f"not a version name: {version!r} (expected e.g. 'v0003' or 3)")


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock on ``path`` (fcntl on POSIX, msvcrt on Windows)."""
    fh = open(path, "a+b")
    try:
        try:
            import fcntl

            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        except ImportError:  # Windows
            import msvcrt

            fh.seek(0)
            msvcrt.locking(fh.fileno(), msvcrt.LK_LOCK, 1)
            try:
                yield
            finally:
                fh.seek(0)
                msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
    finally:
        fh.close()


class ModelRegistry:
    """Numbered model versions (bundles ``v0001``, ``v0002`` ...) in ``folder`` with one active version."""

    def __init__(self, folder: str | os.PathLike, create: bool = True):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            if not create:
                raise RegistryError(f"{self.folder}: model registry folder not found")
            self.folder.mkdir(parents=True, exist_ok=True)
        self._read()  # fail early on a corrupt or newer registry

    # ---- file level ---------------------------------------------------------------------------
    @property
    def registry_path(self) -> Path:
        """The ``registry.json`` file."""
        return self.folder / REGISTRY_FILE

    def _lock(self):
        return _file_lock(self.folder / LOCK_FILE)

    def _read(self) -> dict:
        path = self.registry_path
        if not path.is_file():
            return {
                "format": REGISTRY_FORMAT,
                "format_version": REGISTRY_FORMAT_VERSION,
                "active": None,
                "history": [],
                "versions": [],
            }
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RegistryError(f"{path}: unreadable model registry ({err})") from err
        if not isinstance(doc, dict) or doc.get("format") != REGISTRY_FORMAT:
            raise RegistryError(f"{path}: not a napari-gitseg model registry")
        version = doc.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise RegistryError(f"{path}: invalid format_version {version!r}")
        if version > REGISTRY_FORMAT_VERSION:
            raise RegistryError(
                f"{path}: written by a newer napari-gitseg (registry format {version}, this version reads up to "
                f"{REGISTRY_FORMAT_VERSION}); update napari-gitseg"
            )
        versions = doc.get("versions")
        if not isinstance(versions, list) or not all(isinstance(v, dict) and "version" in v for v in versions):
            raise RegistryError(f"{path}: 'versions' must be a list of objects with a 'version'")
        names = [v["version"] for v in versions]
        for name in names:
            if not isinstance(name, str) or not _VERSION_RE.match(name):
                raise RegistryError(f"{path}: bad version name {name!r}")
        active = doc.get("active")
        if active is not None and active not in names:
            raise RegistryError(f"{path}: active version {active!r} is not listed")
        history = doc.get("history", [])
        if not isinstance(history, list) or any(h not in names for h in history):
            raise RegistryError(f"{path}: 'history' must list known versions")
        doc["history"] = history
        return doc

    def _write(self, doc: dict) -> None:
        doc["format"] = REGISTRY_FORMAT
        doc["format_version"] = REGISTRY_FORMAT_VERSION
        atomic_write_bytes(self.registry_path, (json.dumps(doc, indent=2) + "\n").encode("utf-8"))

    def _next_number(self, doc: dict) -> int:
        used = [int(_VERSION_RE.match(v["version"]).group(1)) for v in doc["versions"]]
        for path in self.folder.iterdir():  # stray bundles from a crash: never reuse their number
            stem = path.name.split(".")[0]
            match = _VERSION_RE.match(stem)
            if match:
                used.append(int(match.group(1)))
        return max(used, default=0) + 1

    # ---- queries ------------------------------------------------------------------------------
    def versions(self) -> list[dict]:
        """Every registered version, oldest first: version, created, metrics, parent, notes, arch, encoder."""
        return [dict(v) for v in self._read()["versions"]]

    def active(self) -> str | None:
        """The active version's name, or None when none is active."""
        return self._read()["active"]

    def path_of(self, version: str | int) -> Path:
        """The JSON file of a registered version."""
        name = _version_name(version)
        if name not in [v["version"] for v in self._read()["versions"]]:
            raise RegistryError(f"{self.folder}: no version {name} in the registry")
        return self.folder / f"{name}.json"

    def info(self, version: str | int | None = None) -> ModelBundle:
        """The bundle metadata of ``version`` (the active one by default), without loading weights."""
        return read_bundle_info(self.path_of(self._resolve(version)))

    def load(
        self, version: str | int | None = None, device: str | torch.device = "cpu"
    ) -> tuple[torch.nn.Module, ModelBundle]:
        """Load ``version`` (the active one by default): (model, bundle)."""
        return load_bundle(self.path_of(self._resolve(version)), device=device)

    def _resolve(self, version: str | int | None) -> str:
        if version is not None:
            return _version_name(version)
        active = self.active()
        if active is None:
            raise RegistryError(f"{self.folder}: no active model version")
        return active

    # ---- changes ------------------------------------------------------------------------------
    def add(
        self,
        model: torch.nn.Module,
        config: ModelConfig,
        *,
        normalization: dict | None = None,
        training: dict | None = None,
        metrics: dict | None = None,
        notes: str = "",
        parent: str | int | None = None,
        activate: bool = False,
    ) -> str:
        """Save ``model`` as the next version (its parent defaults to the active one); returns its name."""
        with self._lock():
            doc = self._read()
            name = f"v{self._next_number(doc):04d}"
            parent_name = _version_name(parent) if parent is not None else doc["active"]
            if parent_name is not None and parent_name not in [v["version"] for v in doc["versions"]]:
                raise RegistryError(f"{self.folder}: parent version {parent_name} is not registered")
            bundle = save_bundle(
                model,
                config,
                self.folder / name,
                normalization=normalization,
                training=training,
                metrics=metrics,
                notes=notes,
            )
            doc["versions"].append(
                {
                    "version": name,
                    "created": bundle.created,
                    "metrics": bundle.metrics,
                    "parent": parent_name,
                    "notes": bundle.notes,
                    "arch": config.arch,
                    "encoder": config.encoder,
                    "k": config.k,
                    "stride": config.stride,
                    "sha256": bundle.sha256,
                }
            )
            if activate:
                self._set_active(doc, name)
            self._write(doc)
            return name

    def activate(self, version: str | int) -> None:
        """Make ``version`` the active model (its bundle must be complete and valid)."""
        name = _version_name(version)
        with self._lock():
            doc = self._read()
            if name not in [v["version"] for v in doc["versions"]]:
                raise RegistryError(f"{self.folder}: no version {name} in the registry")
            try:
                read_bundle_info(self.folder / f"{name}.json")
            except BundleError as err:
                raise RegistryError(f"{self.folder}: version {name} is not usable: {err}") from err
            self._set_active(doc, name)
            self._write(doc)

    def rollback(self) -> str:
        """Re-activate the previously active version; returns its name."""
        with self._lock():
            doc = self._read()
            history = doc["history"]
            if len(history) < 2:
                raise RegistryError(f"{self.folder}: no previously active version to roll back to")
            history.pop()
            doc["active"] = history[-1]
            self._write(doc)
            return doc["active"]

    @staticmethod
    def _set_active(doc: dict, name: str) -> None:
        if doc["active"] != name:
            doc["history"].append(name)
        doc["active"] = name
        doc["activated"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
