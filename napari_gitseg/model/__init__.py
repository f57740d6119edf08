"""Networks, model bundles on disk and the registry of model versions.

The names below are imported lazily (PEP 562), so ``napari_gitseg.model.normalize`` and
``napari_gitseg.model.windows`` stay importable without pulling in torch.
"""

from __future__ import annotations

from napari_gitseg._lazy import lazy_getattr

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


__getattr__ = lazy_getattr(__name__, _EXPORTS)
