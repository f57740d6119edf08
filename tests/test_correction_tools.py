"""Fill between (interpolate.py), model-assisted refine (refine.py), the effort log (effort.py) and the
ReviewSession actions built on them, without Qt."""

import csv

import numpy as np
import pytest

from napari_gitseg.classes import LABEL_VALUES, masks_to_labels
from napari_gitseg.review.effort import EffortLog, effort_csv_path, summary_text, write_effort_csv
from napari_gitseg.review.interpolate import fill_between, itk_available
from napari_gitseg.review.refine import refine_labels, refine_neighbour
from napari_gitseg.review.session import ReviewSession
from napari_gitseg.store import LabelStore


def disk(shape, centre, radius):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def dice(a, b):
    return 2 * (a & b).sum() / max(1, a.sum() + b.sum())


@pytest.mark.parametrize("method", ["distance", "itk"])
def test_fill_between_follows_a_moving_growing_disk(method):
    if method == "itk" and not itk_available():
        pytest.skip("itk-morphologicalcontourinterpolation is not installed")
    shape = (64, 64)
    truth = [disk(shape, (20 + 3 * k, 20 + 2 * k), 8 + k) for k in range(5)]
    out = fill_between(truth[0], truth[4], 3, method=method)
    assert out.shape == (3, *shape) and out.dtype == bool
    for k in range(1, 4):
        assert dice(out[k - 1], truth[k]) > 0.85, (method, k)
    areas = out.sum(axis=(1, 2))
    assert truth[0].sum() < areas[0] and areas[-1] < truth[4].sum()  # grows from one end to the other


def test_fill_between_lets_an_ending_organ_shrink_away_and_checks_input():
    shape = (40, 40)
    start = disk(shape, (20, 20), 10)
    out = fill_between(start, np.zeros(shape, bool), 3)
    areas = out.sum(axis=(1, 2))
    assert areas[0] > areas[1] > areas[2] and start.sum() > areas[0]
    assert not fill_between(np.zeros(shape, bool), np.zeros(shape, bool), 2).any()
    with pytest.raises(ValueError, match="unknown interpolation"):
        fill_between(start, start, 1, method="linear")


def test_refine_grows_strokes_to_the_model_region_drops_erased_blobs_and_keeps_painted_pixels():
    shape = (60, 60)
    probs = np.zeros((3, *shape), np.float32)
    organ = disk(shape, (20, 20), 9)
    probs[2][organ] = 0.4  # the model was unsure: below 0.5, nothing shown
    false_blob = disk(shape, (45, 45), 6)
    probs[1][false_blob] = 0.9
    before = np.zeros(shape, np.uint8)
    before[false_blob] = LABEL_VALUES["small_bowel"]
    current = before.copy()
    stroke = disk(shape, (20, 20), 2)
    current[stroke] = LABEL_VALUES["stomach"]
    erase = np.zeros(shape, bool)
    erase[44:47, 38:52] = True  # one line through the false positive
    current[erase] = 0
    current[0:3, 0:3] = LABEL_VALUES["large_bowel"]  # painted far from any model region
    painted = stroke | erase
    painted[0:3, 0:3] = True
    out = refine_labels(probs, before, current, painted)
    assert (out[organ] == LABEL_VALUES["stomach"]).all()  # one stroke took in the whole region
    assert not (out == LABEL_VALUES["small_bowel"]).any()  # the erased blob is gone whole
    assert np.array_equal(out[painted], current[painted])  # painted pixels never change
    # trimming the edge of a true organ keeps the organ
    before2 = np.where(organ, LABEL_VALUES["stomach"], 0).astype(np.uint8)
    trim = organ & (np.arange(60)[None, :] > 27)
    current2 = before2.copy()
    current2[trim] = 0
    out2 = refine_labels(probs, before2, current2, trim)
    assert (out2[organ & ~trim] == LABEL_VALUES["stomach"]).all() and not out2[trim].any()


def test_refine_neighbour_follows_the_centre_strokes():
    shape = (40, 40)
    probs = np.zeros((3, *shape), np.float32)
    probs[0][disk(shape, (15, 15), 7)] = 0.35
    centre_before = np.zeros(shape, np.uint8)
    centre_now = centre_before.copy()
    stroke = disk(shape, (15, 15), 2)
    centre_now[stroke] = LABEL_VALUES["large_bowel"]
    out = refine_neighbour(probs, np.zeros(shape, np.uint8), centre_before, centre_now, stroke)
    assert (out[disk(shape, (15, 15), 7)] == LABEL_VALUES["large_bowel"]).all() and out.sum() > 0


def test_effort_log_counts_time_strokes_pixels_and_unedited_accepts(tmp_path):
    clock = iter([0.0, 10.0, 40.0, 46.0, 100.0]).__next__
    log = EffortLog("s1", clock=clock)
    log.enter(3)  # t=0
    before = np.zeros((8, 8), np.uint8)
    after = before.copy()
    after[1:3, 1:4] = 2
    assert log.stroke(3, before, after) == 6
    again = after.copy()
    again[1:3, 1:5] = 2
    assert log.stroke(3, after, again) == 2
    assert log.stroke(3, again, again) == 0  # painted over the same label: a stroke, no pixel
    log.accept(3)
    log.enter(5)  # t=10
    assert log.accept(5) is True
    log.enter(6)  # t=40
    log.enter(None)  # t=46
    rec = log.slices[3]
    assert (rec.seconds, rec.strokes, rec.painted_px, rec.accepted_unedited) == (10.0, 3, 8, False)
    assert np.array_equal(rec.origin, before)
    summary = log.summary()
    assert summary["reviewed"] == 2 and summary["accepted_unedited"] == 1 and summary["median_seconds"] == 20.0
    assert summary_text(summary) == "2 slices reviewed, 1 accepted unedited, median 20 s per slice"
    rows = log.rows([f"id{i}" for i in range(8)])
    assert [r["slice_id"] for r in rows] == ["id3", "id5", "id6"] and rows[2]["seconds"] == 6.0
    path = write_effort_csv([dict(r, session="s1", stack="st") for r in rows], effort_csv_path(tmp_path / "m.nii.gz"))
    assert path.name == "m.effort.csv"
    back = list(csv.DictReader(path.open()))
    assert back[0]["strokes"] == "3" and back[1]["accepted_unedited"] == "1"


@pytest.fixture
def session(tmp_path):
    from napari_gitseg.phantom import make_phantom_case

    case = make_phantom_case(seed=3, n_slices=10, size=(64, 64))
    return ReviewSession(LabelStore.open(tmp_path / "proj", user="dr_f"), case)


def test_session_fill_between_is_per_organ_bounded_provenanced_and_undoable(session):
    case = session.stack
    prediction = np.zeros_like(case.masks)
    prediction[0, :, 5:10, 5:10] = True  # large bowel everywhere, must stay
    session.apply_prediction(prediction, np.full(case.shape[0], 0.5), "v1")
    for z in (2, 6):
        before = session.labels()[z]
        after = before.copy()
        after[disk(case.shape[1:], (30, 30 + z), 8 + z)] = LABEL_VALUES["stomach"]
        session.save_edit(z, before, after)
    with pytest.raises(ValueError, match="not corrected"):
        session.fill_between(4, "stomach")
    result = session.fill_between(6, "stomach", method="distance")
    assert (result.z0, result.z1, result.filled) == (2, 6, [3, 4, 5])
    for z in (3, 4, 5):
        rec = session.store.latest(case.slice_ids[z])
        assert rec.source == "interpolated" and not rec.reviewed
        assert rec.masks[2].sum() > 100 and rec.masks[0, 7, 7]  # the stomach filled, the bowel kept
    for z in (0, 1, 7, 8, 9):
        assert not session.masks[2, z].any()  # bounded to the slices between
    assert case.slice_ids[4] not in session.store.clinician_slices()
    assert session.undo_fill(result) == [3, 4, 5]
    for z in (3, 4, 5):
        rec = session.store.latest(case.slice_ids[z])
        assert rec.source == "model" and not rec.masks[2].any() and not session.masks[2, z].any()
    labels = masks_to_labels(session.masks[:, 4])
    assert (labels[5:10, 5:10] == LABEL_VALUES["large_bowel"]).all()
