"""Overlap of masks: the Dice of each 2-D image, one implementation for the plugin and the trainer.

``training.metrics`` (the challenge's score, ``gitseg eval``) and Learn from corrections
(``napari_gitseg.review.adapt``) both score with ``dice_per_slice``; it lives here because the plugin
never imports ``training``.
"""

from __future__ import annotations

import numpy as np


def as_bool_masks(masks: np.ndarray) -> np.ndarray:
    """Boolean masks: bool/int arrays by non-zero, float arrays (probabilities) by ``> 0.5``."""
    masks = np.asarray(masks)
    if masks.dtype == bool:
        return masks
    if masks.dtype.kind == "f":
        return masks > 0.5
    return masks != 0


def dice_per_slice(pred: np.ndarray, true: np.ndarray, empty_dice: float = 1.0) -> np.ndarray:
    """Dice of each 2-D image over the last two axes of ``pred``/``true`` (``(..., Y, X)``)."""
    p, t = as_bool_masks(pred), as_bool_masks(true)
    if p.shape != t.shape or p.ndim < 2:
        raise ValueError(f"pred {p.shape} and true {t.shape} must have the same shape (..., Y, X)")
    inter = np.count_nonzero(p & t, axis=(-2, -1))
    denom = np.count_nonzero(p, axis=(-2, -1)) + np.count_nonzero(t, axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(denom > 0, 2.0 * inter / np.maximum(denom, 1), empty_dice)
    return dice.astype(np.float64)
