"""Which bowel is which, checked on every source of labels, so a swap can never come back silently.

Until 2026-12-06 the real data in ../shared had ``large_bowel`` and ``small_bowel`` exchanged, and a
model trained on it learnt the colon as small bowel. Anatomy tells them apart without any model: the
large bowel frames the abdomen (ascending colon on one side, descending on the other), the small
bowel lies in the middle, so on average the large bowel's pixels lie further from the body's midline.
Each test skips when its data is absent (a user's clone has no ../shared).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_gitseg.classes import CLASSES

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LB, SB, ST = CLASSES.index("large_bowel"), CLASSES.index("small_bowel"), CLASSES.index("stomach")
MARGIN = 0.015  # of the image width; the real case-days below differ by 0.03-0.10


def lateral_distance(masks: np.ndarray, c: int) -> float:
    """Mean |column - midline| of class ``c``'s pixels over (C, Z, H, W) masks, as a share of the width
    (midline: the middle of all organ pixels' columns, so a body off the image centre does not count)."""
    organs = masks.any(axis=0)
    cols = np.nonzero(organs)[-1]
    mid = 0.5 * (cols.min() + cols.max())
    mine = np.nonzero(masks[c])[-1]
    return float(np.abs(mine - mid).mean() / masks.shape[-1])


def assert_large_bowel_lateral(masks: np.ndarray, what: str) -> None:
    lb, sb = lateral_distance(masks, LB), lateral_distance(masks, SB)
    assert lb > sb + MARGIN, (
        f"{what}: the large bowel lies {lb:.3f} from the midline, the small bowel {sb:.3f}: "
        "large_bowel and small_bowel look swapped"
    )


def test_the_check_sees_a_swap():
    """The anatomy check itself: a frame of large bowel round central small-bowel loops passes, swapped fails."""
    masks = np.zeros((3, 1, 64, 64), bool)
    masks[LB, 0, 10:54, 6:14] = masks[LB, 0, 10:54, 50:58] = True  # ascending and descending colon
    masks[SB, 0, 24:40, 22:42] = True  # loops in the middle
    assert_large_bowel_lateral(masks, "synthetic frame")
    with pytest.raises(AssertionError, match="swapped"):
        assert_large_bowel_lateral(masks[[SB, LB, ST]], "swapped frame")


@pytest.mark.skipif(not (DATA / "uwmgi-train-masks").is_dir(), reason="../shared/data/uwmgi-train-masks is not here")
def test_challenge_masks_put_the_large_bowel_lateral():
    from training.real_masks import RealMaskFolder

    source = RealMaskFolder(DATA / "uwmgi-train-masks")
    names = source.names[:: max(1, len(source.names) // 6)][:6]  # a few patients across the folder
    for name in names:
        assert_large_bowel_lateral(source.load(name).masks, f"uwmgi-train-masks {name}")


@pytest.mark.parametrize("folder", ["uwmgi-real-volumes", "uwmgi-real-slices"])
def test_real_scans_put_the_large_bowel_lateral(folder):
    if not (DATA / folder).is_dir():
        pytest.skip(f"../shared/data/{folder} is not here")
    from training.real_images import read_labelled_scans

    stacks = [s for s in read_labelled_scans([DATA / folder]) if s.masks[[LB, SB]].any(axis=(1, 2, 3)).all()]
    lb = [lateral_distance(s.masks, LB) for s in stacks]
    sb = [lateral_distance(s.masks, SB) for s in stacks]
    assert len(stacks) >= 4, f"{folder}: too few scans with both bowels to judge ({len(stacks)})"
    assert np.mean(lb) > np.mean(sb) + MARGIN, f"{folder}: large bowel {np.mean(lb):.3f} vs small {np.mean(sb):.3f}"


def test_totalsegmentator_mr_colon_is_large_bowel():
    image, labels = (DATA / "totalsegmentator-examples" / f for f in ("example_mr_sm.nii.gz", "example_seg_mr.nii.gz"))
    if not (image.is_file() and labels.is_file()):
        pytest.skip("../shared/data/totalsegmentator-examples is not here")
    from napari_gitseg.io import TOTALSEG_MR_LABELS, read_nifti_labels
    from napari_gitseg.io.nifti import read_nifti

    stack = read_nifti_labels(labels, TOTALSEG_MR_LABELS, read_nifti(image))
    assert_large_bowel_lateral(stack.masks, "TotalSegmentator MR (colon -> large_bowel)")


def test_phantom_frames_with_the_large_bowel():
    from napari_gitseg.phantom import make_phantom_case

    assert_large_bowel_lateral(make_phantom_case(0).masks, "phantom")
