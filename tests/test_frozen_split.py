"""The frozen validation block of a GUI round holds organ slices when the clinician labelled enough of them."""

from __future__ import annotations

import numpy as np

from training.store_round import organ_slices_first
from training.train_data import block_split


def _entry(clinician, organ_at):
    masks = np.zeros((3, 60, 8, 8), bool)
    for z in organ_at:
        masks[1, z, 2:4, 2:4] = True
    return {"name": "case6_day20", "clinician": list(clinician), "masks": masks}


def test_the_block_is_held_from_organ_slices_when_three_or_more_hold_one():
    # the review queue's spread picks: organ slices in the middle, organ-free ones at the end of the scan
    entry = _entry([5, 15, 20, 25, 30, 40, 45, 50, 55], organ_at=[15, 20, 25, 30])
    assert organ_slices_first(entry) == [15, 20, 25, 30]
    for seed in range(10):
        held = block_split(organ_slices_first(entry), 0.2, seed)
        assert held and all(entry["masks"][:, z].any() for z in held)


def test_with_fewer_than_three_organ_slices_every_clinician_slice_counts():
    entry = _entry([5, 15, 20, 55], organ_at=[15, 20])
    assert organ_slices_first(entry) == [5, 15, 20, 55]
