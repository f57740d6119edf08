"""The order in which the review queue offers a scan's unreviewed slices to the clinician.

Least confident first alone offered, on real scans, the uncertain organ-free slices at the ends of the
scan first (3 of the first 12 slices held an organ on case16): the clinician confirmed empty slices and a
retraining round learnt nothing. So each slice's uncertainty (1 - confidence) is weighted down where the
model drew no organ, and down where a reviewed or already queued slice lies within a twelfth of the scan
(the picks spread over the organs). On the four real volumes (models that never saw the patient), the
first 6 slices held an organ 22 times in 24, against 10 by confidence alone; the first 12, 39 of 48
against 23.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

EMPTY_WEIGHT = 0.25  # a slice the model left empty counts a quarter of its uncertainty
SPREAD_PARTS = 12  # within n_slices / 12 of a reviewed or queued slice, a slice counts less (linearly)


def review_order(
    candidates: Sequence[int],
    confidence: Sequence[float],
    has_organ: Sequence[bool],
    reviewed: Sequence[int],
    n_slices: int,
) -> list[int]:
    """``candidates`` (slice positions) in review order; ``confidence``/``has_organ`` are per candidate,
    ``reviewed`` the positions already reviewed. Greedy: each next slice has the highest weighted
    uncertainty given the slices reviewed and queued before it."""
    z = np.asarray(candidates, dtype=float)
    if z.size == 0:
        return []
    weight = (1.0 - np.asarray(confidence, float)) * np.where(np.asarray(has_organ, bool), 1.0, EMPTY_WEIGHT)
    scale = max(1.0, n_slices / SPREAD_PARTS)
    near = np.full(z.shape, np.inf)  # distance to the nearest reviewed or queued slice
    for r in reviewed:
        near = np.minimum(near, np.abs(z - r))
    order, left = [], np.ones(z.shape, bool)
    for _ in range(z.size):
        score = np.where(left, weight * np.minimum(1.0, near / scale), -np.inf)
        best = int(np.argmax(score))  # ties: the first in z order
        order.append(int(z[best]))
        left[best] = False
        near = np.minimum(near, np.abs(z - z[best]))
    return order
