"""The simulated clinician of benchmarks/bench_correction.py on tiny synthetic slices (the benchmark itself
runs the model over a 144-slice phantom and ../shared)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("bench_correction", None)
    import bench_correction

    return bench_correction


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
