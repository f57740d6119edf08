"""Keep ``import torch`` safe inside a running napari.

torchvision (needed by smp and timm) imports ``torch._dynamo``, which probes for the
``triton`` package. ``triton/_C/libtriton.so`` carries its own statically linked LLVM.
When napari's canvas is already drawing through Mesa's software OpenGL (llvmpipe: Xvfb,
remote desktops, VMs), Mesa's ``libLLVM`` is already in the process, the dynamic linker
binds libtriton's LLVM static initialisers to Mesa's LLVM symbols, and the process dies
with SIGSEGV inside ``llvm::DebugCounter`` during ``dlopen`` (seen with torch 2.14.1+cu130).

Importing triton *before* OpenGL is up is harmless, and triton is only needed for
``torch.compile`` on a GPU, never for eager inference. So the plugin installs a tiny import
hook (``install()``, run when ``napari_gitseg`` is imported, long before any torch import):
at the moment something imports ``triton``, if an LLVM library is already mapped into the
process, the import fails with ``ModuleNotFoundError``; torch then treats triton as not
installed. Where triton loaded first, or no OpenGL/LLVM is around (the background trainer's
own process, the CLI), nothing changes. ``GITSEG_ALLOW_TRITON=1`` switches the hook off.
"""

from __future__ import annotations

import importlib.abc
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


class TritonGuardFinder(importlib.abc.MetaPathFinder):
    """``sys.meta_path`` hook that refuses ``import triton`` while an LLVM library is loaded."""

    def find_spec(self, fullname, path=None, target=None):
        """Raise ModuleNotFoundError for ``triton`` when loading it now would crash; else defer."""
        if fullname != "triton" or os.environ.get("GITSEG_ALLOW_TRITON") == "1":
            return None
        if not llvm_already_loaded():
            return None
        log.info("OpenGL's LLVM is loaded: triton disabled in this process (eager torch only)")
        raise ModuleNotFoundError(
            "triton is disabled in this process: loading it after OpenGL's LLVM crashes "
            "(set GITSEG_ALLOW_TRITON=1 to override)",
            name="triton",
        )


def install() -> None:
    """Put the triton guard at the front of ``sys.meta_path`` (idempotent)."""
    if not any(isinstance(finder, TritonGuardFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, TritonGuardFinder())
