"""Cooperative cancellation shared by the Predictor and the trainer: an Event or a callable."""

from __future__ import annotations

import threading
from collections.abc import Callable

Cancel = threading.Event | Callable[[], bool] | None


def is_cancelled(cancel: Cancel) -> bool:
    """True when ``cancel`` (a ``threading.Event``, a callable returning bool, or None) asks to stop."""
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())
