"""A loaded Predictor kept between runs, and a warm-up that loads it before the first Run.

The first prediction in a fresh process pays for loading the bundle (building the network,
reading and checking the weights) and for the first forward pass (oneDNN/cuDNN set-up). The
Segment dock calls ``warm_up`` on a background thread when it opens, so that by the time the
user presses Run, ``cached_predictor`` returns the loaded model at once. No Qt here.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

__all__ = ["cached_predictor", "clear_cache", "is_loaded", "warm_up"]

_lock = threading.RLock()
_cache: dict[tuple, object] = {}  # one entry: the last model used (a model holds ~100 MB)


def _key(model_path: str | os.PathLike, device: str | None, tta: bool | str) -> tuple:
    path = Path(model_path).resolve()
    stat = path.stat()  # a bundle rewritten in place (same name) is a new model
    return (str(path), stat.st_mtime_ns, stat.st_size, device or "auto", tta)


def cached_predictor(model_path: str | os.PathLike, device: str | None = None, tta: bool | str = False):
    """The ``Predictor`` for this bundle, device and TTA setting: loaded once, then reused.

    Thread-safe: a call while another thread loads the same model waits for it instead of
    loading it twice. ``device`` None or "auto" picks the best device.
    """
    from napari_gitseg.predict.predictor import Predictor

    device = None if device in (None, "auto") else device
    key = _key(model_path, device, tta)
    with _lock:
        predictor = _cache.get(key)
        if predictor is None:
            predictor = Predictor([model_path], device=device, tta_flips=tta)
            _cache.clear()
            _cache[key] = predictor
        return predictor


def warm_up(model_path: str | os.PathLike, device: str | None = None, size: int = 64) -> None:
    """Load the bundle into the cache and run it once on a noise stack of 9 slices of ``size``².

    The run has the batch sizes of a real one (the visible slice alone, then full batches); a
    Run that starts meanwhile waits in ``cached_predictor`` and then finds the model warm.
    """
    image = np.random.default_rng(0).integers(0, 1000, (9, size, size)).astype(np.uint16)
    with _lock:
        cached_predictor(model_path, device).predict(image, first_slice=0)


def is_loaded(model_path: str | os.PathLike, device: str | None = None, tta: bool | str = False) -> bool:
    """True when ``cached_predictor`` would return a loaded model at once (no lock taken)."""
    device = None if device in (None, "auto") else device
    return _key(model_path, device, tta) in _cache


def clear_cache() -> None:
    """Forget the loaded model (tests; freeing memory)."""
    with _lock:
        _cache.clear()
