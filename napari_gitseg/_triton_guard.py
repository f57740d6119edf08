"""Keep ``import torch`` safe inside a running napari.

torchvision (needed by smp and timm) imports ``torch._dynamo``, which probes for the
``triton`` package. ``triton/_C/libtriton.so`` carries its own statically linked LLVM.
When napari's canvas is already drawing through Mesa's software OpenGL (llvmpipe: Xvfb,
remote desktops, VMs), Mesa's ``libLLVM`` is already in the process, the dynamic linker
binds libtriton's LLVM static initialisers to Mesa's LLVM symbols, and the process dies
with SIGSEGV inside ``llvm::DebugCounter`` during ``dlopen`` (seen with torch 2.14.1+cu130).

Importing triton *before* OpenGL is up is harmless, and triton is only needed for
``torch.compile`` on a GPU, never for eager inference. So, before the plugin first imports
torch: if triton is not loaded yet and an LLVM library is already mapped into the process,
we mark ``triton`` as unavailable (``sys.modules["triton"] = None``, the documented way to
make an import fail with ImportError); torch then treats triton as not installed. The
background trainer runs in its own process without OpenGL and keeps triton.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

_MAPS = "/proc/self/maps"


def llvm_already_loaded(maps_path: str = _MAPS) -> bool:
    """True when a shared LLVM library (e.g. Mesa's llvmpipe) is mapped into this process."""
    try:
        with open(maps_path, encoding="utf-8", errors="replace") as fh:
            return any("libLLVM" in line for line in fh)
    except OSError:  # not Linux: no /proc, and no triton wheels either
        return False


def guard_triton_import() -> bool:
    """Make ``import triton`` fail cleanly if loading it now would crash; True if it did so."""
    if "triton" in sys.modules or os.environ.get("GITSEG_ALLOW_TRITON") == "1":
        return False
    if not llvm_already_loaded():
        return False
    sys.modules["triton"] = None  # type: ignore[assignment]
    log.info("OpenGL's LLVM is loaded: triton disabled in this process (eager torch only)")
    return True
