"""What a prediction gives back: the ``Prediction`` of a stack, the ``PredictionUpdate`` after each batch,
and ``PredictionCancelled``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from napari_gitseg.predict.postprocess import binary_entropy


class PredictionCancelled(Exception):
    """The prediction was cancelled (raised between batches)."""


class PredictionUpdate(NamedTuple):
    """One finished batch: ``done`` of ``total`` slices, which ``slices``, their probs and masks (C, n, Y, X)."""

    done: int
    total: int
    slices: np.ndarray
    probs: np.ndarray
    masks: np.ndarray


@dataclass
class Prediction:
    """The result for one stack; arrays are aligned with the stack (Z, Y, X)."""

    probs: np.ndarray  # (C, Z, Y, X) float16 (or float32), per-class sigmoid probabilities
    masks: np.ndarray  # (C, Z, Y, X) bool
    confidence: np.ndarray  # (Z,) float32 in [0, 1], higher = more confident (see module docstring)
    gate: np.ndarray | None  # (Z,) max-over-classes "slice holds an organ" probability, None without a cls head
    gate_per_class: np.ndarray | None  # (C, Z)
    classes: tuple[str, ...]
    model_versions: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    crop_box: tuple[int, int, int, int] | None = None  # (y0, y1, x0, x1) the network saw, None = full frame
    device: str = "cpu"
    empty_input: bool = False  # True for a constant image: nothing was segmented

    @property
    def model_version(self) -> str:
        """The model version label (``+``-joined for an ensemble)."""
        return "+".join(self.model_versions)

    @property
    def seconds(self) -> float:
        """Wall time of the whole prediction."""
        return float(self.timings.get("total", 0.0))

    def uncertainty(self) -> np.ndarray:
        """Per-pixel uncertainty (Z, Y, X) float32 in [0, 1]: max over classes of the normalised entropy."""
        out = np.zeros(self.probs.shape[1:], dtype=np.float32)
        for z in range(self.probs.shape[1]):
            out[z] = binary_entropy(self.probs[:, z]).max(axis=0)
        return out
