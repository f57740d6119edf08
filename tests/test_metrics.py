"""Metrics against values computed by hand, and the challenge's empty-mask rules."""

import math

import numpy as np
import pytest
from scipy.spatial.distance import directed_hausdorff

from training.metrics import (
    challenge_score,
    dice_per_slice,
    evaluate,
    evaluate_cases,
    hausdorff_distance,
    iou_per_slice,
    normalized_hausdorff,
)


def test_dice_and_iou_of_one_slice_by_hand():
    pred = np.zeros((4, 4), bool)
    true = np.zeros((4, 4), bool)
    pred[0, 0:2] = True  # 2 pixels
    true[0, 1:4] = True  # 3 pixels, 1 shared
    # Dice = 2*1 / (2 + 3) = 0.4 ; IoU = 1 / (2 + 3 - 1) = 0.25
    assert dice_per_slice(pred, true) == pytest.approx(0.4)
    assert iou_per_slice(pred, true) == pytest.approx(0.25)


def test_dice_per_slice_is_per_image_with_empty_rules():
    pred = np.zeros((3, 2, 2), bool)
    true = np.zeros((3, 2, 2), bool)
    pred[0, 0, 0] = true[0, 0, 0] = True  # identical: 1
    true[1, 1, 1] = True  # missed organ: 0
    # slice 2: both empty -> 1 by default (challenge notebooks), 0 (page text), nan (skipped)
    np.testing.assert_allclose(dice_per_slice(pred, true), [1.0, 0.0, 1.0])
    np.testing.assert_allclose(dice_per_slice(pred, true, empty_dice=0.0), [1.0, 0.0, 0.0])
    assert math.isnan(dice_per_slice(pred, true, empty_dice=float("nan"))[2])
    # one side empty is 0 whatever the empty rule
    assert dice_per_slice(true[1], pred[1], empty_dice=0.5) == 0.0


def test_dice_per_slice_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        dice_per_slice(np.zeros((2, 3)), np.zeros((3, 2)))


def test_hausdorff_by_hand_is_symmetric():
    a = np.zeros((2, 4, 4), bool)
    b = np.zeros((2, 4, 4), bool)
    a[0, 0, 0] = True
    a[0, 0, 3] = True
    b[0, 0, 0] = True
    # a -> b: (0,0,3) is 3 away from (0,0,0); b -> a: 0. Symmetric HD = 3.
    assert hausdorff_distance(a, b) == pytest.approx(3.0)
    assert hausdorff_distance(b, a) == pytest.approx(3.0)
    # normalised by the volume diagonal sqrt(2² + 4² + 4²) = 6
    assert normalized_hausdorff(a, b) == pytest.approx(0.5)
    assert normalized_hausdorff(b, a) == pytest.approx(0.5)


def test_hausdorff_diagonal_spacing_and_unit_cube_by_hand():
    a = np.zeros((2, 4, 4), bool)
    b = np.zeros((2, 4, 4), bool)
    a[0, 0, 0] = True
    b[1, 3, 3] = True
    # voxel distance sqrt(1 + 9 + 9) = sqrt(19) over diagonal 6
    assert normalized_hausdorff(a, b) == pytest.approx(math.sqrt(19) / 6)
    # 3 mm slices, 1 mm pixels: sqrt(9 + 9 + 9) over sqrt(6² + 4² + 4²)
    assert normalized_hausdorff(a, b, spacing=(3, 1, 1)) == pytest.approx(math.sqrt(27) / math.sqrt(68))
    # MLE-bench: axes scaled by shape -> (0.5, 0.75, 0.75), divided by sqrt(3)
    unit = normalized_hausdorff(a, b, hd_normalization="unit_cube")
    assert unit == pytest.approx(math.sqrt(0.25 + 0.5625 + 0.5625) / math.sqrt(3))


def test_hausdorff_empty_rules():
    empty = np.zeros((2, 3, 3), bool)
    full = np.zeros((2, 3, 3), bool)
    full[1, 1, 1] = True
    assert normalized_hausdorff(empty, empty) == 0.0
    assert math.isnan(normalized_hausdorff(empty, empty, empty_hausdorff=float("nan")))
    assert normalized_hausdorff(empty, full) == 1.0
    assert normalized_hausdorff(full, empty) == 1.0
    assert math.isnan(hausdorff_distance(full, empty))


def test_hausdorff_matches_scipy_point_sets():
    rng = np.random.default_rng(3)
    for _ in range(5):
        a = rng.random((5, 12, 14)) > 0.93
        b = rng.random((5, 12, 14)) > 0.96
        pa, pb = np.argwhere(a).astype(float), np.argwhere(b).astype(float)
        expected = max(directed_hausdorff(pa, pb)[0], directed_hausdorff(pb, pa)[0])
        assert hausdorff_distance(a, b) == pytest.approx(expected)
        s = np.array([3.0, 1.5, 0.8])
        expected_mm = max(directed_hausdorff(pa * s, pb * s)[0], directed_hausdorff(pb * s, pa * s)[0])
        assert hausdorff_distance(a, b, sampling=s) == pytest.approx(expected_mm)


def test_challenge_score_formula():
    assert challenge_score(1.0, 0.0) == pytest.approx(1.0)
    assert challenge_score(0.0, 1.0) == pytest.approx(0.0)
    assert challenge_score(0.5, 0.25) == pytest.approx(0.4 * 0.5 + 0.6 * 0.75)


def _hand_case():
    """(C=3, Z=2, Y=4, X=4) case whose metrics are worked out in test_evaluate_by_hand."""
    pred = np.zeros((3, 2, 4, 4), bool)
    true = np.zeros((3, 2, 4, 4), bool)
    pred[0, 0, 1:3, 1:3] = true[0, 0, 1:3, 1:3] = True  # large bowel: perfect on slice 0
    true[1, 0, 2, 2] = True  # small bowel: missed entirely
    pred[2, 0, 0, 0:2] = True  # stomach: (0,0,0),(0,0,1)
    true[2, 0, 0, 1:3] = True  #          (0,0,1),(0,0,2)
    return pred, true


def test_evaluate_by_hand():
    pred, true = _hand_case()
    r = evaluate(pred, true)
    # Dice rows (class, slice): lb [1, 1(empty)], sb [0, 1(empty)], st [2*1/4=0.5, 1(empty)]
    assert r["per_class"]["large_bowel"]["dice"] == pytest.approx(1.0)
    assert r["per_class"]["small_bowel"]["dice"] == pytest.approx(0.5)
    assert r["per_class"]["stomach"]["dice"] == pytest.approx(0.75)
    assert r["mean_dice"] == pytest.approx(4.5 / 6)
    # IoU rows: lb [1, 1], sb [0, 1], st [1/3, 1]
    assert r["mean_iou"] == pytest.approx((4 + 1 / 3) / 6)
    # HD: lb identical 0; sb one empty 1; st every voxel 1 away -> 1 / diagonal sqrt(2²+4²+4²) = 1/6
    assert r["per_class"]["large_bowel"]["hausdorff"] == pytest.approx(0.0)
    assert r["per_class"]["small_bowel"]["hausdorff"] == pytest.approx(1.0)
    assert r["per_class"]["stomach"]["hausdorff"] == pytest.approx(1 / 6)
    assert r["hausdorff"] == pytest.approx(7 / 18)
    assert r["score"] == pytest.approx(0.4 * 0.75 + 0.6 * (1 - 7 / 18))
    # stomach counts over 2 slices x 16 px: TP 1, FP 1, FN 1, TN 29
    st = r["per_class"]["stomach"]
    assert st["precision"] == pytest.approx(0.5)
    assert st["recall"] == pytest.approx(0.5)
    assert st["mpa"] == pytest.approx((0.5 + 29 / 30) / 2)
    # small bowel: nothing predicted (precision 0: an organ was missed), recall 0
    assert r["per_class"]["small_bowel"]["precision"] == 0.0
    assert r["per_class"]["small_bowel"]["recall"] == 0.0
    assert r["per_class"]["large_bowel"]["precision"] == pytest.approx(1.0)
    assert r["n_slices"] == 2 and r["n_cases"] == 1


def test_perfect_and_empty_cases_score_one():
    pred, true = _hand_case()
    assert evaluate(true, true)["score"] == pytest.approx(1.0)
    empty = np.zeros_like(true)
    r = evaluate(empty, empty)
    assert r["mean_dice"] == 1.0 and r["hausdorff"] == 0.0 and r["score"] == pytest.approx(1.0)
    assert r["per_class"]["stomach"]["precision"] == 1.0 and r["per_class"]["stomach"]["recall"] == 1.0


def test_labelled_limits_the_slices_that_count():
    pred, true = _hand_case()
    junk = pred.copy()
    junk[:, 1] = True  # predictions on slice 1, which has no ground truth
    lab = np.array([True, False])
    r = evaluate(junk, true, labelled=lab)
    # only slice 0 rows: lb 1, sb 0, st 0.5
    assert r["mean_dice"] == pytest.approx(0.5)
    assert r["n_slices"] == 1
    assert r == evaluate(pred, true, labelled=lab)
    assert evaluate(junk, true)["mean_dice"] < r["mean_dice"]
    with pytest.raises(ValueError, match="no labelled slice"):
        evaluate(pred, true, labelled=np.zeros(2, bool))
    with pytest.raises(ValueError, match="entries"):
        evaluate(pred, true, labelled=np.ones(3, bool))


def test_probability_inputs_are_thresholded_at_half():
    pred, true = _hand_case()
    probs = np.where(pred, 0.7, 0.3).astype(np.float32)
    assert evaluate(probs, true) == evaluate(pred, true)


def test_evaluate_checks_shapes_and_classes():
    pred, true = _hand_case()
    with pytest.raises(ValueError, match="same shape"):
        evaluate(pred[:, :1], true)
    with pytest.raises(ValueError, match="classes"):
        evaluate(pred[:2], true[:2])
    with pytest.raises(ValueError, match="hd_normalization"):
        evaluate(pred, true, hd_normalization="bogus")


def test_evaluate_cases_pools_rows_not_case_means():
    # case A: 1 slice, every class perfect and non-empty -> 3 Dice rows of 1, HD 0
    a = np.ones((3, 1, 2, 2), bool)
    # case B: 3 slices, every organ missed -> 9 Dice rows of 0, HD 1
    b_true = np.ones((3, 3, 2, 2), bool)
    b_pred = np.zeros_like(b_true)
    r = evaluate_cases([(a, a, None), (b_pred, b_true, np.ones(3, bool))])
    assert r["mean_dice"] == pytest.approx(3 / 12)  # not (1 + 0) / 2
    assert r["hausdorff"] == pytest.approx(0.5)  # mean over (case, class) pairs
    assert r["score"] == pytest.approx(0.4 * 0.25 + 0.6 * 0.5)
    assert r["n_cases"] == 2 and r["n_slices"] == 4
    # one case through evaluate_cases equals evaluate
    pred, true = _hand_case()
    assert evaluate_cases([(pred, true, None)]) == evaluate(pred, true)
    # an optional 4th item is the spacing
    with_spacing = evaluate_cases([(pred, true, None, (3.0, 1.0, 1.0))])
    assert with_spacing["hausdorff"] != evaluate(pred, true)["hausdorff"]


def test_evaluate_cases_rejects_bad_input():
    with pytest.raises(ValueError, match="no case"):
        evaluate_cases([])
    pred, true = _hand_case()
    with pytest.raises(ValueError, match="missing"):
        evaluate_cases([(pred, None, None)])
    with pytest.raises(ValueError, match="expected"):
        evaluate_cases([(pred, true)])


def test_volume_dice_pools_the_pixels_of_every_slice():
    """3-D Dice counts pixels over the whole volume: a big slice right and a small one wrong is not 0.5."""
    truth = np.zeros((3, 2, 10, 10), bool)
    truth[0, 0] = True  # 100 pixels of large bowel on slice 0
    truth[0, 1, 0, 0] = True  # 1 pixel on slice 1
    pred = truth.copy()
    pred[0, 1] = False  # the 1-pixel slice missed
    out = evaluate(pred, truth, classes=("large_bowel", "small_bowel", "stomach"))
    assert out["per_class"]["large_bowel"]["dice_3d"] == pytest.approx(200 / 201)
    assert out["per_class"]["large_bowel"]["dice"] == pytest.approx(0.5)  # per slice: 1 and 0
    assert np.isnan(out["per_class"]["stomach"]["dice_3d"])  # in neither volume
    assert out["mean_dice_3d"] == pytest.approx(200 / 201)


def test_volume_dice_alone_matches_evaluate():
    from training.metrics import volume_dice

    rng = np.random.default_rng(1)
    truth, pred = rng.random((3, 4, 12, 12)) > 0.7, rng.random((3, 4, 12, 12)) > 0.6
    truth[1] = pred[1] = False
    lab = np.array([True, False, True, True])
    full = evaluate(pred, truth, lab, classes=("large_bowel", "small_bowel", "stomach"))
    quick = volume_dice(pred, truth, lab)
    assert quick[0] == pytest.approx(full["per_class"]["large_bowel"]["dice_3d"]) and np.isnan(quick[1])
    assert quick[2] == pytest.approx(full["per_class"]["stomach"]["dice_3d"]) and 0 < quick[2] < 1
