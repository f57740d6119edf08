"""The review workflow without Qt: edits keep overlaps, accept, revert, predictions, export round trip."""

import json

import numpy as np
import pytest

from napari_gitseg.classes import LABEL_VALUES, masks_to_labels
from napari_gitseg.export import export_store, provenance_path
from napari_gitseg.io import read_masks, read_stack
from napari_gitseg.phantom import make_phantom_case
from napari_gitseg.review.session import ReviewSession
from napari_gitseg.store import LabelStore


@pytest.fixture
def case():
    return make_phantom_case(seed=5, n_slices=12, size=(64, 64))


@pytest.fixture
def session(tmp_path, case):
    return ReviewSession(LabelStore.open(tmp_path / "proj", user="dr_b"), case)


def fake_prediction(case, seed=0):
    rng = np.random.default_rng(seed)
    masks = case.masks.copy()
    masks[:, :, :4] = rng.random(masks[:, :, :4].shape) > 0.5  # some noise
    confidence = rng.random(case.shape[0]).astype(np.float32)
    return masks, confidence


def test_prediction_fills_unreviewed_slices_only(session, case):
    z = 6
    before = session.labels()[z]
    after = before.copy()
    after[10:20, 10:20] = LABEL_VALUES["stomach"]
    assert session.save_edit(z, before, after) == 1
    session.accept(z + 1)
    masks, conf = fake_prediction(case)
    updated = session.apply_prediction(masks, conf, "v0001")
    assert z not in updated and z + 1 not in updated and len(updated) == case.shape[0] - 2
    assert (session.labels()[z] == after).all()  # the correction survived the prediction
    assert np.array_equal(session.masks[:, 0], masks[:, 0])
    rec = session.record(0)
    assert rec.source == "model" and rec.model_version == "v0001" and rec.confidence == pytest.approx(conf[0])


def test_edit_keeps_overlap_the_view_cannot_show(session, case):
    z = int(np.argmax((case.masks.sum(axis=0) > 1).sum(axis=(1, 2))))
    overlap = case.masks[:, z].sum(axis=0) > 1
    assert overlap.any(), "phantom should have overlapping organs"
    session.apply_prediction(case.masks, np.ones(case.shape[0]), "truth")
    before = session.labels()[z]
    after = before.copy()
    far = np.argwhere(~case.masks[:, z].any(axis=0))[0]
    after[tuple(far)] = LABEL_VALUES["small_bowel"]
    session.save_edit(z, before, after)
    stored = session.store.latest(case.slice_ids[z]).masks
    assert (stored[:, overlap].sum(axis=0) > 1).all()  # overlap still stored
    assert stored[1][tuple(far)]


def test_a_prediction_stored_while_the_view_lagged_never_leaks_into_the_clinicians_save(session, case):
    """The clinician painted on a view that did not show the prediction yet: what they saw is saved."""
    z = 5
    seen = session.labels()[z].copy()  # empty: the view was made before the prediction arrived
    masks, conf = fake_prediction(case)
    session.apply_prediction(masks, conf, "v0001")  # stored meanwhile, not yet on screen
    painted = seen.copy()
    painted[30:40, 30:40] = LABEL_VALUES["large_bowel"]
    session.save_edit(z, seen, painted)
    assert np.array_equal(masks_to_labels(session.store.latest(case.slice_ids[z]).masks), painted)
    # accepting a slice as seen (no paint) stores what was seen, not the unseen prediction
    z2 = 8
    seen2 = np.zeros_like(seen)
    session.accept(z2, seen2, seen2.copy())
    rec = session.store.latest(case.slice_ids[z2])
    assert rec.reviewed and rec.source == "clinician" and not rec.masks.any()


def test_queue_accept_revert_and_reopen(tmp_path, session, case):
    masks, conf = fake_prediction(case, seed=1)
    session.apply_prediction(masks, conf, "v0001")
    queue = session.queue()
    assert queue[0] == int(np.argmin(conf)) and len(queue) == case.shape[0]
    z = queue[0]
    session.accept(z)
    assert z not in session.queue() and session.next_in_queue(z) == queue[1]
    before = session.labels()[z]
    after = np.zeros_like(before)
    session.save_edit(z, before, after)
    assert not session.masks[:, z].any()
    first = session.history(z)[0].version
    session.revert(z, first)
    assert np.array_equal(session.masks[:, z], masks[:, z])
    counts = session.counts()
    assert counts["reviewed"] >= 1 and counts["total"] == case.shape[0]
    session.store.close()
    again = ReviewSession(LabelStore.open(tmp_path / "proj"), case)  # session restore
    assert np.array_equal(again.masks, session.masks)


def test_export_round_trips_through_the_readers(tmp_path, session, case):
    from napari_gitseg.io import write_uwmgi_dataset

    session.apply_prediction(case.masks, np.ones(case.shape[0]), "v1")
    for z in (3, 4, 5):
        session.accept(z)
    out = tmp_path / "reviewed.csv"
    written = export_store(tmp_path / "proj", out, fmt="csv")
    assert out in written and provenance_path(out) in written
    root = write_uwmgi_dataset(tmp_path / "data", [case])
    like = read_stack(root / "train" / "case1")
    back = read_masks(out, like).masks
    assert np.array_equal(back[:, 3:6], case.masks[:, 3:6])
    assert not back[:, :3].any() and not back[:, 6:].any()  # unreviewed slices are not exported
    prov = json.loads(provenance_path(out).read_text())
    statuses = [p["status"] for p in prov["stacks"][case.name]]
    assert statuses.count("exported") == 3
    nii = tmp_path / "reviewed.nii.gz"
    export_store(tmp_path / "proj", nii, fmt="nii")
    assert np.array_equal(read_masks(nii, like).masks[:, 3:6], case.masks[:, 3:6])
    assert masks_to_labels(back).shape == case.shape


def test_accept_never_flags_a_pseudo_label_saved_by_the_trainer_meanwhile(tmp_path, session, case):
    """Issue 11 defect 1: the trainer's own connection saves a pseudo-label for the slice on screen."""
    masks, conf = fake_prediction(case)
    session.apply_prediction(masks, conf, "v0001")
    screen = session.labels()[1].copy()  # the prediction the clinician is looking at
    trainer = LabelStore.open(tmp_path / "proj")  # the background trainer, as at the end of a round
    pseudo = np.zeros_like(masks[:, 1])
    pseudo[0, 5:25, 5:25] = True
    assert trainer.save(case.slice_ids[1], pseudo, source="pseudo", model_version="v0002") is not None
    trainer.close()
    session.accept(1, before=screen, after=screen.copy())  # no edit
    rec = session.store.latest(case.slice_ids[1])
    assert rec.reviewed and np.array_equal(masks_to_labels(rec.masks), screen)  # exactly what was seen
    assert rec.source == "clinician"  # the clinician's statement about what they saw
    history = session.history(1)
    assert [h.source for h in history] == ["model", "pseudo", "clinician"]
    assert not history[1].reviewed  # the unseen pseudo-label was never flagged reviewed
    assert case.slice_ids[1] in session.store.clinician_slices()


def test_a_rounds_pseudo_labels_survive_the_repredict_after_promotion(tmp_path, session, case):
    """Issue 32: a promoted round stores its pseudo-labels, then the Segment dock re-predicts the stack with
    the promoted model; the next round still finds them (``pseudo_slices`` is what it trains on)."""
    masks, conf = fake_prediction(case)
    session.apply_prediction(masks, conf, "default")  # Segment with the bundled model, before any round
    pseudo_z = (2, 5, 9)
    trainer = LabelStore.open(tmp_path / "proj")  # the worker, at the end of the round that promoted v0001
    trainer.save_many(
        [
            {
                "slice_id": case.slice_ids[z],
                "masks": case.masks[:, z],
                "source": "pseudo",
                "model_version": "v0001",
                "confidence": 0.99,
            }
            for z in pseudo_z
        ]
    )
    trainer.close()
    assert session.sync() == list(pseudo_z)
    again, conf_again = fake_prediction(case, seed=1)
    updated = session.apply_prediction(again, conf_again, "v0001")  # the re-prediction after Promoted
    assert sorted(session.store.pseudo_slices(case.name)) == sorted(case.slice_ids[z] for z in pseudo_z)
    assert updated == [z for z in range(case.shape[0]) if z not in pseudo_z]
    for z in pseudo_z:  # the screen shows the pseudo-label the next round trains on
        assert np.array_equal(session.masks[:, z], case.masks[:, z])
        assert session.store.latest(case.slice_ids[z]).source == "pseudo"
    # the correction tools still relabel a pseudo-labelled slice (they act on the clinician's strokes)
    assert session.store_refined({5: masks_to_labels(again[:, 5])}, centre=4) == [5]
    assert case.slice_ids[5] not in session.store.pseudo_slices(case.name)


def test_sync_takes_in_versions_saved_by_another_connection(tmp_path, session, case):
    masks, conf = fake_prediction(case)
    session.apply_prediction(masks, conf, "v0001")
    assert session.sync() == []  # nothing new
    other = LabelStore.open(tmp_path / "proj")
    pseudo = np.zeros_like(masks[:, 3])
    pseudo[2, 10:20, 10:20] = True
    other.save(case.slice_ids[3], pseudo, source="pseudo")
    other.close()
    assert session.sync() == [3]
    assert np.array_equal(session.masks[:, 3], pseudo) and session.versions[3] == 2
    session.accept(3)  # accepting after the sync: the screen shows the pseudo-label now
    rec = session.store.latest(case.slice_ids[3])
    assert rec.source == "pseudo" and rec.reviewed and rec.version == 3


def test_apply_prediction_protects_clinician_work_in_one_write_without_reading_masks(session, case, monkeypatch):
    """Issue 11 defect 3: one protection check, in the store's write transaction."""
    before = session.labels()[2]
    after = before.copy()
    after[5:9, 5:9] = LABEL_VALUES["small_bowel"]
    session.save_edit(2, before, after)
    calls = {"write": 0, "latest": 0}
    store = session.store
    real_write, real_latest, real_many = store._write, store.latest, store.latest_many

    def write(*a, **k):
        calls["write"] += 1
        return real_write(*a, **k)

    def latest(*a, **k):
        calls["latest"] += 1
        return real_latest(*a, **k)

    def latest_many(*a, **k):
        calls["latest"] += 1
        return real_many(*a, **k)

    monkeypatch.setattr(store, "_write", write)
    monkeypatch.setattr(store, "latest", latest)
    monkeypatch.setattr(store, "latest_many", latest_many)
    masks, conf = fake_prediction(case)
    updated = session.apply_prediction(masks, conf, "v0001")
    assert calls == {"write": 1, "latest": 0}
    assert 2 not in updated and len(updated) == case.shape[0] - 1
    assert np.array_equal(session.labels()[2], after)
    assert not hasattr(session, "is_protected")
