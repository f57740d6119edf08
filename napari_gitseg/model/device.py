"""Choose the torch device: CUDA, then Apple MPS, then CPU, unless the user says otherwise."""

from __future__ import annotations

import contextlib
import os

import torch

__all__ = ["ENV_VAR", "pick_device", "torch_threads"]

ENV_VAR = "GITSEG_DEVICE"


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(preferred: str | torch.device | None = None) -> torch.device:
    """The best device, or ``preferred`` / ``$GITSEG_DEVICE`` ("cpu", "cuda", "cuda:1", "mps", "auto").

    Raises ValueError when the asked device is unknown or not available on this machine.
    """
    source = "argument"
    if preferred is None or (isinstance(preferred, str) and not preferred.strip()):
        preferred = os.environ.get(ENV_VAR) or None
        source = f"${ENV_VAR}"
    if preferred is None or (isinstance(preferred, str) and preferred.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(preferred.strip().lower() if isinstance(preferred, str) else preferred)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"unknown device {preferred!r} (from {source}); use cpu, cuda, cuda:N, mps or auto") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {preferred!r} (from {source}) was asked for, but CUDA is not available "
                f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); use cpu or auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {preferred!r} (from {source}): only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not _mps_available():
            raise ValueError(f"device {preferred!r} (from {source}) was asked for, but Apple MPS is not available")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {preferred!r} (from {source}); use cpu, cuda, cuda:N, mps or auto")
    return device


@contextlib.contextmanager
def torch_threads(n: int | None):
    """While active, torch uses ``n`` CPU threads (None or 0: leave the setting alone)."""
    previous = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if n:
            torch.set_num_threads(previous)
