"""Model-assisted refine: the model's output on a slice, conditioned on the clinician's strokes.

After a few brush strokes on a slice, ``refine_labels`` re-reads the model's probabilities for
that slice (``slice_probabilities`` re-runs ``napari_gitseg.predict.Predictor``) and, organ by
organ:

- **grows** every stroke to the model's region it lies in: connected components of
  ``probability > grow`` (a lower threshold than the model's 0.5, so a region the model was
  unsure about is taken in) that touch a stroke of that organ are added, into background only
  (refine never takes pixels from another organ);
- **drops** what the clinician erased: a connected component of the organ as it was before the
  strokes, of which erase strokes covered at least ``drop_fraction``, is removed whole (one
  stroke through a false positive clears it; trimming an organ's edge does not delete it);
- never changes a painted pixel: every pixel the clinician painted keeps the value painted.

``refine_neighbour`` carries the same strokes to a neighbouring slice (organ components of its
prediction that lie under the strokes are grown, those under erased strokes dropped). No Qt here.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from napari_gitseg.classes import CLASSES, LABEL_VALUES

__all__ = ["GROW_THRESHOLD", "DROP_FRACTION", "refine_labels", "refine_neighbour", "slice_probabilities"]

GROW_THRESHOLD = 0.3
DROP_FRACTION = 0.15
_EIGHT = np.ones((3, 3), dtype=bool)


def slice_probabilities(predictor, image: np.ndarray, z: int, neighbours: int = 0) -> tuple[np.ndarray, range]:
    """The model's probabilities (C, n, Y, X) for slices ``z - neighbours .. z + neighbours`` and their z range.

    Only the slices a 2.5D window needs around them are predicted, not the whole stack.
    """
    image = np.asarray(image)
    n_z = image.shape[0]
    z0, z1 = max(0, z - neighbours), min(n_z, z + neighbours + 1)
    context = max(m.config.k // 2 * m.config.stride for m in predictor.members)
    lo, hi = max(0, z0 - context), min(n_z, z1 + context)
    prediction = predictor.predict(image[lo:hi])
    return np.asarray(prediction.probs[:, z0 - lo : z1 - lo], dtype=np.float32), range(z0, z1)


def _touching(candidate: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The 8-connected components of ``candidate`` that contain a pixel of ``seed``."""
    if not seed.any():
        return np.zeros_like(candidate)
    lab, _n = ndimage.label(candidate, structure=_EIGHT)
    hit = np.unique(lab[seed & candidate])
    return np.isin(lab, hit[hit > 0])


def _erased_components(before: np.ndarray, erased: np.ndarray, drop_fraction: float) -> np.ndarray:
    """Components of ``before`` of which the ``erased`` pixels cover at least ``drop_fraction``."""
    if not erased.any():
        return np.zeros_like(before)
    lab, n = ndimage.label(before, structure=_EIGHT)
    if n == 0:
        return np.zeros_like(before)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    hits = np.bincount(lab[erased].ravel(), minlength=n + 1)
    drop = hits >= drop_fraction * np.maximum(sizes, 1)
    drop[0] = False
    return drop[lab]


def _refine_organ(
    prob: np.ndarray,
    before: np.ndarray,
    now: np.ndarray,
    grow_seed: np.ndarray,
    erased: np.ndarray,
    free: np.ndarray,
    grow: float,
    drop_fraction: float,
) -> tuple:
    """(pixels to add, pixels to clear) for one organ on one slice."""
    add = _touching((prob > grow) | now, grow_seed) & free & ~now
    clear = _erased_components(before, erased, drop_fraction) & now & ~_touching(now, grow_seed)
    return add, clear


def refine_labels(
    probs: np.ndarray,
    before: np.ndarray,
    current: np.ndarray,
    painted: np.ndarray,
    classes: tuple[str, ...] = CLASSES,
    grow: float = GROW_THRESHOLD,
    drop_fraction: float = DROP_FRACTION,
) -> np.ndarray:
    """Refined labels (Y, X) of one slice; see the module docstring.

    ``probs``: the model's per-class probabilities (C, Y, X); ``before``: the slice's labels before
    the clinician's strokes; ``current``: its labels now; ``painted``: the pixels the strokes changed.
    """
    current = np.asarray(current)
    painted = np.asarray(painted, dtype=bool)
    out = current.copy()
    for i, name in enumerate(classes):
        v = LABEL_VALUES[name]
        now = current == v
        add, clear = _refine_organ(
            probs[i],
            before == v,
            now,
            painted & now,
            painted & (before == v) & ~now,
            (out == 0) & ~painted,
            grow,
            drop_fraction,
        )
        out[add] = v
        out[clear & ~painted] = 0
    out[painted] = current[painted]
    return out


def refine_neighbour(
    probs: np.ndarray,
    labels: np.ndarray,
    centre_before: np.ndarray,
    centre_now: np.ndarray,
    centre_painted: np.ndarray,
    classes: tuple[str, ...] = CLASSES,
    grow: float = GROW_THRESHOLD,
    drop_fraction: float = DROP_FRACTION,
) -> np.ndarray:
    """A neighbouring slice's labels (Y, X) refined with the strokes of the centre slice.

    Organ regions of the neighbour's prediction under a stroke of that organ grow in (into
    background); its organ components mostly under the centre's erased pixels are dropped.
    """
    labels = np.asarray(labels)
    out = labels.copy()
    painted = np.asarray(centre_painted, dtype=bool)
    for i, name in enumerate(classes):
        v = LABEL_VALUES[name]
        now = labels == v
        stroke = painted & (centre_now == v)
        erased = painted & (centre_before == v) & (centre_now != v)
        add, clear = _refine_organ(probs[i], now, now, stroke, erased, out == 0, grow, drop_fraction)
        out[add] = v
        out[clear] = 0
    return out
