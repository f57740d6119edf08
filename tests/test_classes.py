"""The per-class masks <-> one-label-per-pixel view, and the overlap-preserving edit rule."""

import numpy as np
import pytest

from napari_gitseg.classes import (
    CLASSES,
    LABEL_VALUES,
    label_color_dict,
    labels_to_masks,
    masks_to_labels,
    merge_label_edit,
)


def test_label_values_and_colours_are_fixed_and_distinct():
    assert [LABEL_VALUES[c] for c in CLASSES] == [1, 2, 3]
    colours = label_color_dict()
    assert colours[0][3] == 0  # background transparent
    assert len({colours[v] for v in (1, 2, 3)}) == 3


def test_masks_to_labels_priority_on_overlap():
    masks = np.zeros((3, 4, 4), bool)
    masks[0, :2] = True  # large bowel rows 0-1
    masks[2, 1:3] = True  # stomach rows 1-2 (overlap on row 1)
    labels = masks_to_labels(masks)
    assert (labels[0] == LABEL_VALUES["large_bowel"]).all()
    assert (labels[1] == LABEL_VALUES["stomach"]).all()  # stomach drawn last
    assert (labels[3] == 0).all()
    with pytest.raises(ValueError, match="classes"):
        masks_to_labels(masks[:2])


def test_labels_round_trip_without_overlap():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(5, 6)).astype(np.uint8)
    assert np.array_equal(masks_to_labels(labels_to_masks(labels)), labels)


def test_merge_keeps_stored_overlap_where_view_unchanged():
    stored = np.zeros((3, 4, 4), bool)
    stored[0, 0, :] = True
    stored[1, 0, :] = True  # overlap large/small bowel on row 0
    before = masks_to_labels(stored)
    after = before.copy()
    after[3, 3] = LABEL_VALUES["stomach"]  # paint one stomach pixel elsewhere
    merged = merge_label_edit(stored, before, after)
    assert merged[0, 0].all() and merged[1, 0].all()  # overlap survived
    assert merged[2, 3, 3] and merged[:, 3, 3].sum() == 1


def test_merge_changed_pixels_take_exactly_the_new_label():
    stored = np.zeros((3, 2, 2), bool)
    stored[0, 0, 0] = stored[1, 0, 0] = True
    before = masks_to_labels(stored)
    after = before.copy()
    after[0, 0] = 0  # erase the overlapping pixel
    merged = merge_label_edit(stored, before, after)
    assert not merged[:, 0, 0].any()
