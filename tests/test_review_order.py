"""The review queue's order: uncertain first, organ-free slices later, picks spread over the scan."""

from __future__ import annotations

import numpy as np

from napari_gitseg.store.review_order import EMPTY_WEIGHT, review_order


def test_without_spread_or_empties_it_is_least_confident_first():
    conf = [0.9, 0.1, 0.5, 0.3]
    assert review_order([0, 1, 2, 3], conf, [True] * 4, [], n_slices=4) == [1, 3, 2, 0]


def test_a_slice_the_model_left_empty_waits_behind_a_less_uncertain_organ_slice():
    # uncertainty 0.6 with no organ counts 0.6 * EMPTY_WEIGHT < 0.3 with an organ
    assert 0.6 * EMPTY_WEIGHT < 0.3
    assert review_order([0, 40], [0.4, 0.7], [False, True], [], n_slices=48) == [40, 0]


def test_picks_spread_over_the_scan_and_keep_away_from_reviewed_slices():
    n = 120  # scale: 10 slices
    conf = np.full(n, 0.9)
    conf[[50, 51, 52]] = 0.2  # three uncertain neighbours
    conf[100] = 0.5  # one less uncertain slice far away
    order = review_order(list(range(n)), conf, [True] * n, [], n_slices=n)
    assert order[:2] == [50, 100]  # the neighbours of 50 count less than the far slice
    order = review_order(list(range(n)), conf, [True] * n, reviewed=[49], n_slices=n)
    assert order[0] == 100  # 50-52 lie next to a reviewed slice
    assert sorted(order) == list(range(n))  # every candidate once


def test_the_store_queue_offers_organ_slices_before_uncertain_empty_ones(tmp_path):
    from napari_gitseg.store import LabelStore

    ids = [f"case1_day1_slice_{i:04d}" for i in range(1, 5)]
    organ = np.zeros((3, 8, 8), bool)
    organ[2, 2:5, 2:5] = True
    with LabelStore.open(tmp_path / "p", create=True) as store:
        store.register_stack("case1_day1", ids, (4, 8, 8), (3.0, 1.5, 1.5))
        store.save_many(
            [
                dict(slice_id=ids[0], masks=np.zeros_like(organ), source="model", confidence=0.3),  # empty, unsure
                dict(slice_id=ids[2], masks=organ, source="model", confidence=0.6),
                dict(slice_id=ids[3], masks=organ, source="model", confidence=0.95),
            ]
        )
        assert store.review_queue("case1_day1") == [ids[2], ids[0], ids[3], ids[1]]  # never predicted: last
