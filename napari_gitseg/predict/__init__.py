"""Inference: a stack in, per-class probabilities and masks out (no Qt here).

``Predictor`` and friends are imported lazily (PEP 562) so that importing this package
does not pull in torch until a prediction is actually made.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Prediction": "predictor",
    "PredictionCancelled": "predictor",
    "PredictionUpdate": "predictor",
    "Predictor": "predictor",
    "remove_small_components": "postprocess",
    "body_box": "postprocess",
    "cached_predictor": "warm",
    "warm_up": "warm",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import the submodule that defines ``name`` on first use."""
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
