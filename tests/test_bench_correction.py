"""The simulated clinician of benchmarks/bench_correction.py on tiny synthetic slices (the benchmark itself
runs the model over a 144-slice phantom and ../shared)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest


@pytest.fixture
def bench(import_benchmark):
    return import_benchmark("bench_correction")


def _truth() -> np.ndarray:
    truth = np.zeros((40, 40), np.uint8)
    truth[5:20, 5:20] = 1
    truth[25:35, 22:38] = 3
    return truth


def test_brush_strokes_reach_the_target_and_count_what_they_paint(bench):
    truth = _truth()
    start = truth.copy()
    start[5:20, 5:9] = 0  # a missed band of the first organ
    start[0:4, 30:40] = 3  # a false blob of the other
    result, labels = bench.correct(start, truth, radius=3, probs=None)
    assert result.start_dice < bench.TARGET_DICE <= result.end_dice == bench.slice_dice(labels, truth)
    assert 2 <= result.strokes < bench.MAX_STROKES and result.painted_px >= result.strokes
    untouched, _ = bench.correct(truth, truth, radius=3, probs=None)  # accepted unedited
    assert untouched.strokes == 0 and untouched.end_dice == 1.0


def test_gap_dice_judges_a_fill_and_an_empty_gap_is_no_warning(bench):
    truth = np.stack([_truth()] * 3)
    worse = truth.copy()
    worse[1] = 0
    assert bench.gap_dice(truth, truth) == 1.0 and bench.gap_dice(worse, truth) < 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # adjacent key slices: nothing between, no numpy warning
        assert bench.gap_dice(truth[:0], truth[:0]) == 1.0


def test_arm_e_boxes_a_missed_organ_propagates_it_and_erases_speckle(bench, import_benchmark, tmp_path):
    correction_boxes = import_benchmark("correction_boxes")
    from box_fakes import FakeSegmenter, disk_stack

    from napari_gitseg.classes import masks_to_labels

    stack = disk_stack()
    truth = masks_to_labels(stack.masks)
    pred = np.zeros_like(truth)  # the model missed the stomach everywhere
    pred[:, 2:6, 2:6] = 3  # and drew a false speck on every slice
    pred[:, 40:44, 2:6] = 3
    pred[:, 50:54, 10:14] = 3
    a = bench.brush_only(pred, truth, radius=3)
    e = correction_boxes.box_arm([(stack, pred, truth)], FakeSegmenter(), 3, tmp_path)
    row, rows_a = e.row(), a.row()
    assert row["reached_target"] == 1.0 and row["strokes"] < rows_a["strokes"]
    assert row["boxes"] == 1 and row["propagations"] >= 1  # one box on slice 1, then carried
    assert row["erase_boxes"] == 3  # slices 0, 1 and 8: the propagation replaced the specks on 2-7
    assert row["embedded"] >= 7 and sorted(p.name for p in tmp_path.iterdir())[0].startswith("case7_day1_")
    again = correction_boxes.box_arm([(stack, pred, truth)], FakeSegmenter(), 3, tmp_path)
    assert again.embedded == 0 and again.row()["strokes"] == row["strokes"]  # embeddings read back from disk
