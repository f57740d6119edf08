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


def _missed_disks_with_specks():
    from box_fakes import disk_stack

    from napari_gitseg.classes import masks_to_labels

    stack = disk_stack()  # the stomach's radius by slice: 0, 6, 9, 12, 14, 12, 9, 6, 0 px
    truth = masks_to_labels(stack.masks)
    pred = np.zeros_like(truth)  # the model missed the stomach everywhere
    pred[:, 2:6, 2:6] = 3  # and drew three false specks of it on every slice
    pred[:, 40:44, 2:6] = 3
    pred[:, 50:54, 10:14] = 3
    return stack, pred, truth


def test_arm_e_boxes_a_thick_miss_propagates_it_brushes_a_thin_one_and_erases_speckle(
    bench, import_benchmark, tmp_path
):
    correction_boxes = import_benchmark("correction_boxes")
    from box_fakes import FakeSegmenter

    stack, pred, truth = _missed_disks_with_specks()
    a = bench.brush_only(pred, truth, radius=3)
    e = correction_boxes.box_arm([(stack, pred, truth)], FakeSegmenter(), 3, tmp_path)
    row, rows_a = e.row(), a.row()
    assert row["reached_target"] == 1.0 and row["strokes"] < rows_a["strokes"]
    thin, thick = e.slices[1], e.slices[2]  # radius 6: thinner than BOX_MIN_HALF_WIDTH; radius 9: thicker
    assert thin.boxes == 0 and thin.painted_px > 0  # brushed
    assert thick.boxes == 1 and thick.painted_px == 0 and thick.propagations == 1  # boxed, then carried
    assert row["boxes"] == 1 and all(s.strokes == 0 for s in e.slices[3:8])  # the propagation replaced the specks
    assert row["erase_boxes"] == 4  # slices 0, 1, 2 and 8: three specks each, one erase box
    assert row["embedded"] >= 7 and sorted(p.name for p in tmp_path.iterdir())[0].startswith("case7_day1_")
    again = correction_boxes.box_arm([(stack, pred, truth)], FakeSegmenter(), 3, tmp_path)
    assert again.embedded == 0 and again.row()["strokes"] == row["strokes"]  # embeddings read back from disk


def test_arm_e_undoes_a_box_that_makes_the_slice_worse_and_brushes_instead(bench, import_benchmark, tmp_path):
    correction_boxes = import_benchmark("correction_boxes")
    from box_fakes import FakeSegmenter

    class BlindSegmenter(FakeSegmenter):  # finds nothing in any box
        def segment_scored(self, embedding, boxes):
            masks, scores = super().segment_scored(embedding, boxes)
            return np.zeros_like(masks), scores

    stack, pred, truth = _missed_disks_with_specks()
    e = correction_boxes.box_arm([(stack, pred, truth)], BlindSegmenter(), 3, None)
    row = e.row()
    assert row["reached_target"] == 1.0 and row["boxes"] == row["boxes_undone"] >= 5  # radius 9 and up: tried
    assert row["propagations"] == 0 and all(s.painted_px > 0 for s in e.slices[1:8])  # brushed instead
    box_and_brush = e.slices[4].strokes
    brush_alone = bench.correct(pred[4], truth[4], 3, None)[0].strokes
    assert box_and_brush <= brush_alone + 2  # the undone box and one erase box: a stroke each, nothing else


def test_effort_on_queue_slices_boxes_the_thick_misses_and_never_propagates(bench, import_benchmark, tmp_path):
    effort = import_benchmark("bench_effort_round")
    from box_fakes import FakeSegmenter

    stack, pred, truth = _missed_disks_with_specks()
    embeddings = effort.boxes_arm.DiskEmbeddings(FakeSegmenter(), stack.image, stack.name, tmp_path)
    queue = [2, 4, 6]  # isolated slices the review queue offers: no propagation between them
    with_boxes = effort.effort_e(queue, pred, truth, embeddings, 3)
    brush = sum(bench.correct(pred[z], truth[z], 3, None)[0].strokes for z in queue)
    assert len(queue) <= with_boxes <= 2 * len(queue) < brush  # a box (and an erase box) a slice; brushing: many
    assert effort.mean_slice_dice(truth, truth, queue) == 1.0 > effort.mean_slice_dice(pred, truth, queue)
