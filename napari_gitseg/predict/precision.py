"""Whether the predictor computes in bfloat16 on the CPU: only when asked (``$GITSEG_CPU_BF16``), so a
stack gets the same probabilities on any processor."""

from __future__ import annotations

import os

import torch

CPU_BF16_ENV = "GITSEG_CPU_BF16"


def cpu_bf16_enabled() -> bool:
    """True when ``$GITSEG_CPU_BF16`` asks for bf16 on the CPU (``1``/``true``/``yes``/``on``): frozen bf16
    graphs for bundles (``predict/frozen.py``), bf16 autocast for models handed over in memory.

    Off by default on every CPU, so a stack gets the same probabilities on any processor
    (fp32). bf16 was measured with ``benchmarks/bench_predict.py`` on the default model (see
    README.md, "CPU precision"); it is an opt-in, and slow where the CPU only emulates bf16
    (no AVX512-BF16 / AMX, see ``cpu_has_native_bf16``).
    """
    return os.environ.get(CPU_BF16_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is emulated."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # private helpers moved: report no hardware bf16
        return False
