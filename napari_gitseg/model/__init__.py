"""Networks, model bundles on disk and the registry of model versions.

The names below are imported lazily (PEP 562), so ``napari_gitseg.model.normalize`` and
``napari_gitseg.model.windows`` stay importable without pulling in torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ModelConfig": "factory",
    "available_architectures": "factory",
    "build_model": "factory",
    "forward_logits": "factory",
    "BundleError": "bundle",
    "ModelBundle": "bundle",
    "load_bundle": "bundle",
    "read_bundle_info": "bundle",
    "save_bundle": "bundle",
    "ModelRegistry": "registry",
    "RegistryError": "registry",
    "pick_device": "device",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import the submodule that defines ``name`` on first use."""
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
