"""LabelStore: versions, provenance, review queue, protection of clinician work, faults."""

import hashlib
import multiprocessing as mp
import os
import sqlite3

import numpy as np
import pytest

from napari_gitseg.store import LabelStore, StoreError
from napari_gitseg.store.label_store import DB_NAME

NAME = "case1_day0"
IDS = [f"{NAME}_slice_{i:04d}" for i in range(1, 7)]
SHAPE = (6, 12, 10)


def mask(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((3, SHAPE[1], SHAPE[2])) > 0.6


@pytest.fixture
def store(tmp_path):
    s = LabelStore.open(tmp_path / "proj", user="dr_a")
    s.register_stack(NAME, IDS, SHAPE, (3.0, 1.5, 1.5), "somewhere")
    yield s
    s.close()


def test_every_save_is_a_new_version_with_provenance(store):
    v1 = store.save(IDS[0], mask(1), source="model", model_version="v0001", confidence=0.4)
    v2 = store.save(IDS[0], mask(2), source="clinician")
    assert (v1, v2) == (1, 2)
    latest = store.latest(IDS[0])
    assert latest.version == 2 and latest.source == "clinician" and latest.user == "dr_a"
    assert np.array_equal(latest.masks, mask(2))
    old = store.get(IDS[0], 1)
    assert old.model_version == "v0001" and old.confidence == pytest.approx(0.4) and old.user is None
    assert np.array_equal(old.masks, mask(1))
    assert [h.version for h in store.history(IDS[0])] == [1, 2]
    assert store.latest(IDS[1]) is None


def test_prediction_never_overwrites_clinician_or_reviewed(store):
    store.save(IDS[0], mask(1), source="clinician")
    store.save(IDS[1], mask(2), source="model", confidence=0.2)
    store.set_reviewed(IDS[1])
    results = store.save_many([
        dict(slice_id=IDS[0], masks=mask(9), source="model", confidence=0.9),
        dict(slice_id=IDS[1], masks=mask(9), source="pseudo", confidence=0.9),
        dict(slice_id=IDS[2], masks=mask(9), source="model", confidence=0.9),
    ])
    assert results == [None, None, 1]
    assert np.array_equal(store.latest(IDS[0]).masks, mask(1))
    assert np.array_equal(store.latest(IDS[1]).masks, mask(2)) and store.latest(IDS[1]).reviewed


def test_revert_adds_a_version_and_keeps_history(store):
    for seed in (1, 2, 3):
        store.save(IDS[0], mask(seed), source="clinician")
    v = store.revert(IDS[0], 1)
    assert v == 4
    assert np.array_equal(store.latest(IDS[0]).masks, mask(1))
    assert store.latest(IDS[0]).note == "revert to v1"
    assert len(store.history(IDS[0])) == 4
    with pytest.raises(StoreError, match="no version 9"):
        store.revert(IDS[0], 9)


def test_review_queue_is_least_confident_first_and_counts(store):
    confidences = [0.9, 0.1, 0.5, 0.3]
    store.save_many([dict(slice_id=sid, masks=mask(i), source="model", confidence=c)
                     for i, (sid, c) in enumerate(zip(IDS, confidences))])
    assert store.review_queue(NAME) == [IDS[1], IDS[3], IDS[2], IDS[0], IDS[4], IDS[5]]
    store.set_reviewed(IDS[1])
    store.save(IDS[3], mask(7), source="clinician")
    assert store.review_queue(NAME)[:2] == [IDS[2], IDS[0]]
    counts = store.counts(NAME)
    assert counts == {"total": 6, "reviewed": 1, "clinician": 2, "pseudo": 0, "predicted": 2}
    assert store.clinician_slices(NAME) == [IDS[1], IDS[3]]


def test_session_state_and_export(store):
    store.set_state("active_model", "v0003")
    assert store.get_state("active_model") == "v0003" and store.get_state("missing", 5) == 5
    store.save(IDS[0], mask(1), source="clinician")
    store.save(IDS[1], mask(2), source="model", confidence=0.5)
    ids, masks, prov = store.export_masks(NAME, reviewed_only=True)
    assert ids == IDS and masks.shape == (3, *SHAPE)
    assert np.array_equal(masks[:, 0], mask(1)) and not masks[:, 1].any()
    assert [p["status"] for p in prov[:3]] == ["exported", "not reviewed", "no label"]
    _, all_masks, _ = store.export_masks(NAME, reviewed_only=False)
    assert np.array_equal(all_masks[:, 1], mask(2))


def test_bad_input_is_refused(store):
    with pytest.raises(StoreError, match="shape"):
        store.save(IDS[0], np.zeros((3, 5, 5), bool), source="clinician")
    with pytest.raises(StoreError, match="provenance"):
        store.save(IDS[0], mask(1), source="robot")
    with pytest.raises(StoreError, match="no registered stack"):
        store.save("case9_day9_slice_0001", mask(1), source="clinician")
    with pytest.raises(StoreError, match="different stack"):
        store.register_stack(NAME, IDS, (6, 20, 20), (3, 1, 1), "other")


def test_reopen_restores_everything(tmp_path, store):
    store.save(IDS[2], mask(3), source="clinician")
    store.close()
    again = LabelStore.open(tmp_path / "proj")
    assert np.array_equal(again.latest(IDS[2]).masks, mask(3))
    assert again.stacks() == [NAME] and again.integrity_check()


def _file_hash(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_newer_schema_is_refused_without_touching_the_file(tmp_path, store):
    store.save(IDS[0], mask(1), source="clinician")
    store._conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    store.close()
    db = tmp_path / "proj" / DB_NAME
    before = _file_hash(db)
    with pytest.raises(StoreError, match="newer napari-gitseg"):
        LabelStore.open(tmp_path / "proj")
    assert _file_hash(db) == before


def test_not_a_store_is_refused(tmp_path):
    folder = tmp_path / "x"
    folder.mkdir()
    (folder / DB_NAME).write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match="not a gitseg label store"):
        LabelStore.open(folder)


def test_readonly_open_views_and_exports_but_never_writes(tmp_path, store):
    store.save(IDS[0], mask(1), source="clinician")
    store.close()
    ro = LabelStore.open(tmp_path / "proj", readonly=True)
    assert np.array_equal(ro.latest(IDS[0]).masks, mask(1))
    assert ro.export_masks(NAME)[1][:, 0].any()
    with pytest.raises(StoreError, match="read-only"):
        ro.save(IDS[1], mask(2), source="clinician")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_readonly_folder_gives_a_clear_error(tmp_path, store):
    store.close()
    folder = tmp_path / "proj"
    os.chmod(folder / DB_NAME, 0o444)
    os.chmod(folder, 0o555)
    try:
        with pytest.raises(StoreError, match="read-only"):
            LabelStore.open(folder)
    finally:
        os.chmod(folder, 0o755)


def test_readonly_check_uses_write_access(tmp_path, store, monkeypatch):
    """Root ignores chmod, so simulate the access check a normal user's read-only folder fails."""
    store.close()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if mode == os.W_OK else real_access(p, mode))
    with pytest.raises(StoreError, match="read-only"):
        LabelStore.open(tmp_path / "proj")


def test_disk_full_keeps_the_last_committed_state(store):
    for i, sid in enumerate(IDS[:3]):
        store.save(sid, mask(i), source="clinician")
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLite now sees a full disk
    big = [dict(slice_id=sid, masks=np.random.default_rng(5).random((3, 12, 10)) > 0.5, source="clinician",
                note="x" * 200_000) for sid in IDS]
    with pytest.raises(StoreError, match="disk is full"):
        store.save_many(big)
    for i, sid in enumerate(IDS[:3]):
        rec = store.latest(sid)
        assert rec.version == 1 and np.array_equal(rec.masks, mask(i))
    assert store.latest(IDS[3]) is None and store.integrity_check()


def _saver(folder: str, worker: int, n: int) -> None:
    s = LabelStore.open(folder, user=f"dr_{worker}")
    for i in range(n):
        s.save(IDS[i % 2], mask(worker * 1000 + i), source="clinician", note=f"{worker}:{i}")
    s.close()


def test_two_processes_saving_at_once_lose_nothing(tmp_path, store):
    folder = str(tmp_path / "proj")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_saver, args=(folder, w, 30)) for w in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    notes = {h.note for sid in IDS[:2] for h in store.history(sid)}
    assert notes == {f"{w}:{i}" for w in (1, 2) for i in range(30)}
    for sid in IDS[:2]:
        versions = [h.version for h in store.history(sid)]
        assert versions == list(range(1, len(versions) + 1))
        for h in store.history(sid):
            w, i = map(int, h.note.split(":"))
            assert np.array_equal(store.get(sid, h.version).masks, mask(w * 1000 + i))
    assert isinstance(store._conn, sqlite3.Connection) and store.integrity_check()
