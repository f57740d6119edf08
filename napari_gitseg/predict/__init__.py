"""Inference: a stack in, per-class probabilities and masks out (no Qt here).

``Predictor`` and friends are imported lazily (PEP 562) so that importing this package
does not pull in torch until a prediction is actually made.
"""

from __future__ import annotations

from napari_gitseg._lazy import lazy_getattr

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


__getattr__ = lazy_getattr(__name__, _EXPORTS)
