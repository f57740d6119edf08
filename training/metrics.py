"""Segmentation metrics: one implementation for the trainer and ``gitseg eval`` (numpy/scipy only).

Everything here follows the UW-Madison GI Tract Image Segmentation challenge (Kaggle, 2022), so a
figure from ``gitseg eval`` or a training run compares with the challenge's scores:

* **score** = ``0.4 * Dice + 0.6 * (1 - HD)``;
* **Dice** per 2-D image, i.e. per (slice, class) row, averaged over the rows; prediction and truth
  both empty score ``empty_dice`` (default 1: a correct "no organ here" is a perfect answer);
* **Hausdorff** per case and class on the 3-D stack of slices (slice depth 1), over every mask voxel,
  symmetric, divided by the volume's diagonal (``hd_normalization="diagonal"``); both empty: 0, one
  empty: 1 (the worst);
* ``labelled`` (Z,) limits the slices that count; ``spacing`` gives a physical distance instead (not
  the challenge's rule).

Also, not part of the score: IoU per slice, and precision, recall and mean pixel accuracy from the
confusion counts pooled over the counted slices. ``dice_per_slice`` itself lives in
``napari_gitseg.overlap``. Where the rule was read, the readings we did not take (``empty_dice=0`` or
NaN, ``hd_normalization="unit_cube"``) and the exact definitions: ``docs/training-notes.md``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

from napari_gitseg.classes import CLASSES
from napari_gitseg.overlap import as_bool_masks, dice_per_slice

DICE_WEIGHT = 0.4
HAUSDORFF_WEIGHT = 0.6
HD_NORMALIZATIONS = ("diagonal", "unit_cube")


def challenge_score(dice: float, hausdorff: float) -> float:
    """The challenge's score ``0.4 * dice + 0.6 * (1 - hausdorff)``."""
    return float(DICE_WEIGHT * dice + HAUSDORFF_WEIGHT * (1.0 - hausdorff))


def iou_per_slice(pred: np.ndarray, true: np.ndarray, empty_iou: float = 1.0) -> np.ndarray:
    """Intersection over union of each 2-D image over the last two axes."""
    p, t = as_bool_masks(pred), as_bool_masks(true)
    if p.shape != t.shape or p.ndim < 2:
        raise ValueError(f"pred {p.shape} and true {t.shape} must have the same shape (..., Y, X)")
    inter = np.count_nonzero(p & t, axis=(-2, -1))
    union = np.count_nonzero(p | t, axis=(-2, -1))
    return np.where(union > 0, inter / np.maximum(union, 1), empty_iou).astype(np.float64)


def _bbox(mask: np.ndarray) -> tuple[slice, ...]:
    """Tight bounding box of the True voxels of a non-empty mask."""
    out = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        out.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(out)


def hausdorff_distance(a: np.ndarray, b: np.ndarray, sampling: Sequence[float] | None = None) -> float:
    """Symmetric Hausdorff distance between the True voxels of ``a`` and ``b`` (nan if either is empty).

    Distances are in voxel-index units, or scaled per axis by ``sampling``.
    """
    a, b = as_bool_masks(a), as_bool_masks(b)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    if not a.any() or not b.any():
        return math.nan
    # the nearest voxel of b to any voxel of a lies inside the bounding box of a | b: crop (exact)
    box = _bbox(a | b)
    a, b = a[box], b[box]
    if sampling is not None:
        sampling = tuple(float(s) for s in sampling)
    d_ab = ndimage.distance_transform_edt(~b, sampling=sampling)[a].max()
    d_ba = ndimage.distance_transform_edt(~a, sampling=sampling)[b].max()
    return float(max(d_ab, d_ba))


def normalized_hausdorff(
    pred: np.ndarray,
    true: np.ndarray,
    spacing: Sequence[float] | None = None,
    hd_normalization: str = "diagonal",
    empty_hausdorff: float = 0.0,
) -> float:
    """The challenge's 3-D Hausdorff of one class volume, in [0, 1] (0 = identical).

    Both empty: ``empty_hausdorff``; one empty: 1; otherwise the distance over the volume's diagonal.
    """
    p, t = as_bool_masks(pred), as_bool_masks(true)
    if p.shape != t.shape:
        raise ValueError(f"pred {p.shape} and true {t.shape} differ in shape")
    has_p, has_t = bool(p.any()), bool(t.any())
    if not has_p and not has_t:
        return float(empty_hausdorff)
    if has_p != has_t:
        return 1.0
    shape = np.asarray(p.shape, dtype=np.float64)
    if hd_normalization == "diagonal":
        sampling = None if spacing is None else np.asarray(spacing, dtype=np.float64)
        if sampling is not None and (sampling.shape != shape.shape or (sampling <= 0).any()):
            raise ValueError(f"spacing must be {p.ndim} positive numbers, got {spacing}")
        extent = shape if sampling is None else shape * sampling
        max_dist = float(np.sqrt(np.sum(extent**2)))
    elif hd_normalization == "unit_cube":
        sampling = 1.0 / shape  # each axis scaled to [0, 1) as in MLE-bench
        max_dist = math.sqrt(p.ndim)
    else:
        raise ValueError(f"unknown hd_normalization {hd_normalization!r}; expected one of {HD_NORMALIZATIONS}")
    dist = hausdorff_distance(p, t, sampling=None if sampling is None else tuple(sampling))
    return float(min(dist / max_dist, 1.0))


def _case_stats(
    pred: np.ndarray,
    true: np.ndarray,
    labelled: np.ndarray | None,
    classes: Sequence[str],
    spacing: Sequence[float] | None,
    empty_dice: float,
    empty_hausdorff: float,
    hd_normalization: str,
) -> dict:
    """Per-slice Dice/IoU rows, confusion counts and per-class Hausdorff of one case."""
    p, t = as_bool_masks(pred), as_bool_masks(true)
    if p.ndim != 4 or p.shape != t.shape:
        raise ValueError(f"pred {p.shape} and true {t.shape} must both be (C, Z, Y, X) with the same shape")
    if p.shape[0] != len(classes):
        raise ValueError(f"masks have {p.shape[0]} classes, expected {len(classes)} ({tuple(classes)})")
    z = p.shape[1]
    if labelled is None:
        lab = np.ones(z, dtype=bool)
    else:
        lab = np.asarray(labelled, dtype=bool).reshape(-1)
        if lab.shape != (z,):
            raise ValueError(f"labelled has {lab.size} entries for {z} slices")
    if not lab.any():
        raise ValueError("no labelled slice to evaluate")
    pl, tl = p[:, lab], t[:, lab]
    tp = np.count_nonzero(pl & tl, axis=(1, 2, 3)).astype(np.int64)
    npred = np.count_nonzero(pl, axis=(1, 2, 3)).astype(np.int64)
    ntrue = np.count_nonzero(tl, axis=(1, 2, 3)).astype(np.int64)
    total = int(lab.sum()) * p.shape[2] * p.shape[3]
    counts = np.stack([tp, npred - tp, ntrue - tp, total - npred - ntrue + tp], axis=1)  # TP FP FN TN
    # slices without ground truth count as empty in both volumes: the geometry of z is kept
    hd = np.empty(len(classes))
    for c in range(len(classes)):
        pv = p[c] & lab[:, None, None]
        tv = t[c] & lab[:, None, None]
        hd[c] = normalized_hausdorff(pv, tv, spacing, hd_normalization, empty_hausdorff)
    return {
        "dice": dice_per_slice(pl, tl, empty_dice),  # (C, n_labelled)
        "iou": iou_per_slice(pl, tl, empty_dice),
        "counts": counts,  # (C, 4)
        "hausdorff": hd,  # (C,)
    }


def _pooled_dice(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """Dice from pooled pixel counts per class; NaN where the organ is in neither volume."""
    den = 2 * tp + fp + fn
    return np.where(den > 0, 2 * tp / np.maximum(den, 1), np.nan).astype(np.float64)


def volume_dice(pred: np.ndarray, true: np.ndarray, labelled: np.ndarray | None = None) -> np.ndarray:
    """3-D Dice per class of (C, Z, Y, X) masks: every (labelled) slice's pixels pooled; NaN where the
    class is in neither volume. The same figure as ``evaluate``'s ``dice_3d``, without the Hausdorff."""
    p, t = as_bool_masks(pred), as_bool_masks(true)
    if p.shape != t.shape or p.ndim != 4:
        raise ValueError(f"pred {p.shape} and true {t.shape} must both be (C, Z, Y, X) with the same shape")
    if labelled is not None:
        lab = np.asarray(labelled, bool).reshape(-1)
        p, t = p[:, lab], t[:, lab]
    tp = np.count_nonzero(p & t, axis=(1, 2, 3)).astype(np.float64)
    return _pooled_dice(tp, np.count_nonzero(p, axis=(1, 2, 3)) - tp, np.count_nonzero(t, axis=(1, 2, 3)) - tp)


def _ratio(num: np.ndarray, den: np.ndarray, other_err: np.ndarray) -> np.ndarray:
    """num/den; where den == 0: 1 if the other side made no error either, else 0."""
    safe = np.where(den > 0, num / np.maximum(den, 1), np.where(other_err == 0, 1.0, 0.0))
    return safe.astype(np.float64)


def _nanmean(values: np.ndarray) -> float:
    """Mean ignoring NaN; NaN when nothing is left."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def _summarise(stats: list[dict], classes: Sequence[str]) -> dict:
    """Pool case statistics the challenge way into the result dictionary."""
    dice = np.concatenate([s["dice"] for s in stats], axis=1)
    iou = np.concatenate([s["iou"] for s in stats], axis=1)
    counts = np.sum([s["counts"] for s in stats], axis=0)
    hd = np.stack([s["hausdorff"] for s in stats])  # (cases, C)
    tp, fp, fn, tn = (counts[:, i].astype(np.float64) for i in range(4))
    precision = _ratio(tp, tp + fp, fn)
    recall = _ratio(tp, tp + fn, fp)
    specificity = _ratio(tn, tn + fp, fn)
    mpa = (recall + specificity) / 2.0
    dice_3d = _pooled_dice(tp, fp, fn)
    per_class = {}
    for c, name in enumerate(classes):
        per_class[name] = {
            "dice": _nanmean(dice[c]),
            "dice_3d": float(dice_3d[c]),
            "iou": _nanmean(iou[c]),
            "precision": float(precision[c]),
            "recall": float(recall[c]),
            "hausdorff": _nanmean(hd[:, c]),
            "mpa": float(mpa[c]),
        }
    mean_dice = _nanmean(dice)
    mean_hd = _nanmean(hd)
    return {
        "per_class": per_class,
        "mean_dice": mean_dice,
        "mean_iou": _nanmean(iou),
        "mean_dice_3d": _nanmean(dice_3d),
        "mpa": float(mpa.mean()),
        "hausdorff": mean_hd,
        "score": challenge_score(mean_dice, mean_hd),
        "n_slices": int(dice.shape[1]),
        "n_cases": len(stats),
    }


def evaluate(
    pred_masks: np.ndarray,
    true_masks: np.ndarray,
    labelled: np.ndarray | None = None,
    classes: Sequence[str] = CLASSES,
    spacing: Sequence[float] | None = None,
    *,
    empty_dice: float = 1.0,
    empty_hausdorff: float = 0.0,
    hd_normalization: str = "diagonal",
) -> dict:
    """Metrics of one case: ``pred_masks``/``true_masks`` (C, Z, Y, X); ``labelled`` (Z,) picks slices.

    Returns ``per_class`` {name: {dice, dice_3d, iou, precision, recall, hausdorff, mpa}}, ``mean_dice``,
    ``mean_dice_3d`` (volume Dice: every slice's pixels pooled, mean over the organs present),
    ``mean_iou``, ``mpa``, ``hausdorff``, ``score`` (plus ``n_slices``, ``n_cases``).
    """
    stats = _case_stats(
        pred_masks, true_masks, labelled, classes, spacing, empty_dice, empty_hausdorff, hd_normalization
    )
    return _summarise([stats], classes)


def evaluate_cases(
    cases: Iterable[tuple],
    classes: Sequence[str] = CLASSES,
    *,
    empty_dice: float = 1.0,
    empty_hausdorff: float = 0.0,
    hd_normalization: str = "diagonal",
) -> dict:
    """Metrics over many cases, averaged the challenge's way.

    ``cases``: ``(pred, true, labelled)`` or ``(pred, true, labelled, spacing)`` tuples. Dice/IoU are
    the mean over all (slice, class) rows of all cases; Hausdorff the mean over (case, class) pairs.
    """
    stats = []
    for i, case in enumerate(cases):
        if len(case) not in (3, 4):
            raise ValueError(f"case {i}: expected (pred, true, labelled[, spacing]), got {len(case)} items")
        pred, true, labelled = case[:3]
        spacing = case[3] if len(case) == 4 else None
        if pred is None or true is None:
            raise ValueError(f"case {i}: prediction or ground truth masks are missing")
        stats.append(_case_stats(pred, true, labelled, classes, spacing, empty_dice, empty_hausdorff, hd_normalization))
    if not stats:
        raise ValueError("no case to evaluate")
    return _summarise(stats, classes)
