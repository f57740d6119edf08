"""LabelStore: versions, provenance, review queue, protection of clinician work, and faults
(newer/older schema, read-only folder, full disk, two processes, damaged data)."""

import contextlib
import errno
import hashlib
import multiprocessing as mp
import os
import shutil
import sqlite3
import subprocess
import threading

import numpy as np
import pytest

from napari_gitseg.store import DB_NAME, SCHEMA_VERSION, LabelStore, StoreError
from napari_gitseg.store import schema as store_schema

NAME = "case1_day0"
IDS = [f"{NAME}_slice_{i:04d}" for i in range(1, 7)]
SHAPE = (6, 12, 10)


def mask(seed: int, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).random((3, shape[1], shape[2])) > 0.6


@pytest.fixture
def store(tmp_path):
    s = LabelStore.open(tmp_path / "proj", user="dr_a")
    s.register_stack(NAME, IDS, SHAPE, (3.0, 1.5, 1.5), "somewhere")
    yield s
    s.close()


def _hashes(folder):
    """sha256 of the store file and its WAL (the -shm file is a rebuildable index that holds no data)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.glob(DB_NAME + "*"))
        if not p.name.endswith("-shm")
    }


def _assert_untouched(folder, before):
    """Files that existed are byte-identical; SQLite may only have added an empty WAL."""
    after = _hashes(folder)
    assert {name: after.get(name) for name in before} == before
    for name in set(after) - set(before):
        assert name == DB_NAME + "-wal" and (folder / name).stat().st_size == 0, name


# ---- versions and provenance ---------------------------------------------------------------------
def test_every_save_is_a_new_version_with_provenance(store):
    v1 = store.save(IDS[0], mask(1), source="model", model_version="v0001", confidence=0.4)
    v2 = store.save(IDS[0], mask(2), source="clinician", note="fixed the stomach")
    assert (v1, v2) == (1, 2)
    latest = store.latest(IDS[0])
    assert latest.version == 2 and latest.source == "clinician" and latest.user == "dr_a"
    assert latest.note == "fixed the stomach" and latest.created > 0
    assert np.array_equal(latest.masks, mask(2))
    old = store.get(IDS[0], 1)
    assert old.model_version == "v0001" and old.confidence == pytest.approx(0.4) and old.user is None
    assert np.array_equal(old.masks, mask(1))
    assert [(h.version, h.source) for h in store.history(IDS[0])] == [(1, "model"), (2, "clinician")]
    assert store.latest(IDS[1]) is None and store.history(IDS[1]) == []
    assert store.save(IDS[1], mask(3), source="clinician", user="dr_b") == 1
    assert store.latest(IDS[1]).user == "dr_b"
    many = store.latest_many([IDS[0], IDS[1], IDS[2]])
    assert many[IDS[0]].version == 2 and np.array_equal(many[IDS[1]].masks, mask(3)) and many[IDS[2]] is None
    with pytest.raises(StoreError, match="no version 7"):
        store.get(IDS[0], 7)


def test_prediction_never_overwrites_clinician_or_reviewed(store):
    store.save(IDS[0], mask(1), source="clinician")
    store.save(IDS[1], mask(2), source="model", model_version="v0002", confidence=0.2)
    assert store.set_reviewed(IDS[1], user="dr_c") == 2
    results = store.save_many(
        [
            dict(slice_id=IDS[0], masks=mask(9), source="model", confidence=0.9),
            dict(slice_id=IDS[1], masks=mask(9), source="pseudo", confidence=0.9),
            dict(slice_id=IDS[2], masks=mask(9), source="model", confidence=0.9),
        ]
    )
    assert results == [None, None, 1]
    assert store.save(IDS[0], mask(9), source="pseudo") is None
    assert np.array_equal(store.latest(IDS[0]).masks, mask(1)) and store.latest(IDS[0]).version == 1
    reviewed = store.latest(IDS[1])
    assert np.array_equal(reviewed.masks, mask(2)) and reviewed.reviewed
    # the review is its own version and keeps the mask's provenance; the reviewer is its user
    assert (reviewed.source, reviewed.model_version, reviewed.user, reviewed.note) == (
        "model",
        "v0002",
        "dr_c",
        "reviewed",
    )
    assert store.set_reviewed(IDS[1]) == 2  # already reviewed: nothing new written
    # withdrawing the review of a prediction makes it a prediction again
    assert store.set_reviewed(IDS[1], False) == 3 and not store.latest(IDS[1]).reviewed
    assert store.save(IDS[1], mask(8), source="model", confidence=0.5) == 4
    # a clinician's edit stays protected even when its review is withdrawn
    store.set_reviewed(IDS[0], True)
    store.set_reviewed(IDS[0], False)
    assert store.save(IDS[0], mask(9), source="model") is None
    assert [h.reviewed for h in store.history(IDS[0])] == [False, True, False]
    with pytest.raises(StoreError, match="no saved version"):
        store.set_reviewed(IDS[5])


def test_revert_adds_a_version_and_keeps_history(store):
    store.save(IDS[0], mask(1), source="model", model_version="v0001", confidence=0.3)
    for seed in (2, 3):
        store.save(IDS[0], mask(seed), source="clinician")
    v = store.revert(IDS[0], 1, user="dr_z")
    assert v == 4
    rec = store.latest(IDS[0])
    assert np.array_equal(rec.masks, mask(1)) and rec.note == "revert to v1"
    assert rec.source == "clinician" and rec.user == "dr_z"  # a clinician's act: predictions keep off
    assert [
        np.array_equal(store.get(IDS[0], h.version).masks, mask(s)) for h, s in zip(store.history(IDS[0]), (1, 2, 3, 1))
    ] == [True] * 4
    assert store.save(IDS[0], mask(5), source="model") is None
    with pytest.raises(StoreError, match="no version 9"):
        store.revert(IDS[0], 9)
    assert len(store.history(IDS[0])) == 4


def test_review_queue_is_least_confident_first_and_counts(store):
    confidences = [0.9, 0.1, 0.5, 0.3]
    store.save_many(
        [
            dict(slice_id=sid, masks=mask(i), source="model", confidence=c)
            for i, (sid, c) in enumerate(zip(IDS, confidences))
        ]
    )
    store.save(IDS[5], mask(5), source="pseudo")  # no confidence: goes last, with the never-predicted
    assert store.review_queue(NAME) == [IDS[1], IDS[3], IDS[2], IDS[0], IDS[4], IDS[5]]
    store.set_reviewed(IDS[1])
    store.save(IDS[3], mask(7), source="clinician")
    store.save(IDS[0], mask(8), source="model", confidence=0.05)  # a newer prediction: its confidence counts
    assert store.review_queue(NAME) == [IDS[0], IDS[2], IDS[4], IDS[5]]
    assert store.counts(NAME) == {
        "total": 6,
        "reviewed": 1,
        "clinician": 2,
        "pseudo": 1,
        "predicted": 2,
        "interpolated": 0,
        "propagated": 0,
    }
    assert store.clinician_slices(NAME) == [IDS[1], IDS[3]] == store.clinician_slices()
    assert store.pseudo_slices(NAME) == [IDS[5]]
    assert store.unreviewed_slices(NAME) == [IDS[0], IDS[2], IDS[4], IDS[5]]


def test_session_state_and_export(store):
    store.set_state("active_model", "v0003")
    store.set_state("last_slice", {"stack": NAME, "z": 4})
    assert store.get_state("active_model") == "v0003" and store.get_state("missing", 5) == 5
    assert store.get_state("last_slice") == {"stack": NAME, "z": 4}
    with pytest.raises(StoreError, match="JSON"):
        store.set_state("bad", object())
    store.save(IDS[0], mask(1), source="clinician")
    store.save(IDS[1], mask(2), source="model", confidence=0.5, model_version="v0003")
    store.save(IDS[3], mask(4), source="model", confidence=0.5)
    store.set_reviewed(IDS[3])
    ids, masks, prov = store.export_masks(NAME, reviewed_only=True)
    assert ids == IDS and masks.shape == (3, *SHAPE) and masks.dtype == bool
    assert np.array_equal(masks[:, 0], mask(1)) and not masks[:, 1].any() and np.array_equal(masks[:, 3], mask(4))
    assert [p["status"] for p in prov] == ["exported", "not reviewed", "no label", "exported", "no label", "no label"]
    assert prov[0]["user"] == "dr_a" and prov[1]["model_version"] == "v0003" and prov[3]["reviewed"]
    _, all_masks, _ = store.export_masks(NAME, reviewed_only=False)
    assert np.array_equal(all_masks[:, 1], mask(2)) and not all_masks[:, 2].any()


def test_bad_input_is_refused(store):
    with pytest.raises(StoreError, match="shape"):
        store.save(IDS[0], np.zeros((3, 5, 5), bool), source="clinician")
    with pytest.raises(StoreError, match="provenance"):
        store.save(IDS[0], mask(1), source="robot")
    with pytest.raises(StoreError, match="boolean"):
        store.save(IDS[0], mask(1) * 0.7, source="model")
    with pytest.raises(StoreError, match="confidence"):
        store.save(IDS[0], mask(1), source="model", confidence=float("nan"))
    with pytest.raises(StoreError, match="no registered stack"):
        store.save("case9_day9_slice_0001", mask(1), source="clinician")
    with pytest.raises(StoreError, match="different stack"):
        store.register_stack(NAME, IDS, (6, 20, 20), (3, 1, 1), "other")
    with pytest.raises(StoreError, match="already belongs"):
        store.register_stack("other_name", IDS, SHAPE, (3, 1, 1), "other")
    with pytest.raises(StoreError, match="slice ids"):
        store.register_stack("short", IDS[:2], SHAPE, (3, 1, 1), "other")
    assert store.save(IDS[0], mask(1).astype(np.uint8), source="clinician") == 1  # 0/1 integers are fine
    assert store.history(IDS[0])[0].version == 1 and len(store.history(IDS[0])) == 1
    store.register_stack(NAME, IDS, SHAPE, (3.0, 1.5, 1.5), "somewhere")  # idempotent
    assert store.stacks() == [NAME]


def test_reopen_restores_everything(tmp_path, store):
    store.save(IDS[2], mask(3), source="clinician")
    store.set_state("active_model", "v0007")
    store.close()
    with LabelStore.open(tmp_path / "proj") as again:
        # commits survive power loss: WAL journal, fsync on every commit
        assert again._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert again._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert np.array_equal(again.latest(IDS[2]).masks, mask(3))
        assert again.stacks() == [NAME] and again.integrity_check()
        assert again.stack_info(NAME)["spacing"] == (3.0, 1.5, 1.5)
        assert again.get_state("active_model") == "v0007"
    with pytest.raises(StoreError, match="no label store"):
        LabelStore.open(tmp_path / "empty", create=False)
    assert not (tmp_path / "empty").exists()


def test_damaged_mask_data_is_detected(tmp_path, store):
    store.save(IDS[0], mask(1), source="clinician")
    store.close()
    raw = sqlite3.connect(tmp_path / "proj" / DB_NAME)
    blob = bytearray(raw.execute("SELECT masks FROM versions").fetchone()[0])
    blob[len(blob) // 2] ^= 0xFF
    raw.execute("UPDATE versions SET masks = ?", (bytes(blob),))
    raw.commit()
    raw.close()
    with LabelStore.open(tmp_path / "proj") as again:
        with pytest.raises(StoreError, match="checksum"):
            again.latest(IDS[0])
        assert not again.integrity_check()


# ---- schema versions -------------------------------------------------------------------------------
def test_newer_schema_is_refused_without_touching_the_files(tmp_path, store):
    store.save(IDS[0], mask(1), source="clinician")
    store.close()
    raw = sqlite3.connect(tmp_path / "proj" / DB_NAME)
    raw.execute("PRAGMA wal_autocheckpoint = 0")
    raw.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    raw.commit()
    # copy the store while it still has committed changes in its WAL (as after a crash)
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    for p in (tmp_path / "proj").glob(DB_NAME + "*"):
        shutil.copy2(p, crashed / p.name)
    raw.close()
    assert (crashed / (DB_NAME + "-wal")).stat().st_size > 0
    for folder in (tmp_path / "proj", crashed):
        before = _hashes(folder)
        for readonly in (False, True):
            with pytest.raises(StoreError, match=rf"newer napari-gitseg \(schema 99 > {SCHEMA_VERSION}\); upgrade"):
                LabelStore.open(folder, readonly=readonly)
        _assert_untouched(folder, before)


def test_older_schema_is_migrated_in_one_transaction(tmp_path, store, monkeypatch):
    store.save(IDS[0], mask(1), source="clinician")
    store.close()
    folder = tmp_path / "proj"
    new = SCHEMA_VERSION + 1
    monkeypatch.setattr(store_schema, "SCHEMA_VERSION", new)
    monkeypatch.setattr("napari_gitseg.store.label_store.SCHEMA_VERSION", new)
    monkeypatch.setattr("napari_gitseg.store.sqlite.SCHEMA_VERSION", new)

    def broken(conn):
        conn.execute("ALTER TABLE versions ADD COLUMN half_done TEXT")
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setitem(store_schema.MIGRATIONS, SCHEMA_VERSION, broken)
    with pytest.raises(StoreError):
        LabelStore.open(folder)
    raw = sqlite3.connect(folder / DB_NAME)
    columns = [r[1] for r in raw.execute("PRAGMA table_info(versions)")]
    assert "half_done" not in columns  # rolled back
    assert raw.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    assert raw.execute("SELECT count(*) FROM versions").fetchone()[0] == 1
    raw.close()

    with pytest.raises(StoreError, match="older napari-gitseg"):  # read-only cannot upgrade
        LabelStore.open(folder, readonly=True)

    monkeypatch.setitem(
        store_schema.MIGRATIONS, SCHEMA_VERSION, lambda conn: conn.execute("ALTER TABLE versions ADD COLUMN tool TEXT")
    )
    with LabelStore.open(folder) as migrated:
        assert np.array_equal(migrated.latest(IDS[0]).masks, mask(1))
        assert migrated.save(IDS[0], mask(2), source="clinician") == 2
    raw = sqlite3.connect(folder / DB_NAME)
    assert "tool" in [r[1] for r in raw.execute("PRAGMA table_info(versions)")]
    assert raw.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(new)
    raw.close()


def test_not_a_store_is_refused(tmp_path):
    folder = tmp_path / "x"
    folder.mkdir()
    (folder / DB_NAME).write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match="not a napari-gitseg label store"):
        LabelStore.open(folder)
    other = tmp_path / "y"
    other.mkdir()
    raw = sqlite3.connect(other / DB_NAME)
    raw.execute("CREATE TABLE patients (name TEXT)")
    raw.commit()
    raw.close()
    before = _hashes(other)
    with pytest.raises(StoreError, match="not a napari-gitseg label store"):
        LabelStore.open(other)
    _assert_untouched(other, before)


# ---- read-only ---------------------------------------------------------------------------------------
def test_readonly_open_views_and_exports_but_never_writes(tmp_path, store):
    store.save(IDS[0], mask(1), source="clinician")
    store.close()
    before = _hashes(tmp_path / "proj")
    ro = LabelStore.open(tmp_path / "proj", readonly=True)
    assert np.array_equal(ro.latest(IDS[0]).masks, mask(1))
    assert ro.export_masks(NAME)[1][:, 0].any() and ro.integrity_check()
    for write in (
        lambda: ro.save(IDS[1], mask(2), source="clinician"),
        lambda: ro.set_state("k", 1),
        lambda: ro.set_reviewed(IDS[0]),
        lambda: ro.revert(IDS[0], 1),
    ):
        with pytest.raises(StoreError, match="read-only"):
            write()
    ro.close()
    _assert_untouched(tmp_path / "proj", before)
    with pytest.raises(StoreError, match="no label store"):
        LabelStore.open(tmp_path / "nowhere", readonly=True)


def _run(*cmd):
    return subprocess.run(list(cmd), capture_output=True, text=True)


@contextlib.contextmanager
def _readonly_view(folder, view):
    """``view`` shows ``folder`` read-only: chmod for a normal user, a read-only bind mount for root."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.iterdir()]}
        for p in modes:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            yield folder
        finally:
            for p, m in modes.items():
                p.chmod(m)
        return
    # root ignores permission bits, so only a read-only file system stops it
    if shutil.which("mount") is None:
        pytest.skip("running as root (chmod does not stop root) and no `mount` to make a read-only bind")
    view.mkdir()
    r = _run("mount", "--bind", str(folder), str(view))
    if r.returncode != 0:
        pytest.skip(f"running as root (chmod does not stop root) and cannot bind-mount: {r.stderr.strip()}")
    try:
        r = _run("mount", "-o", "remount,bind,ro", str(view))
        if r.returncode != 0:
            pytest.skip(f"running as root and cannot remount read-only: {r.stderr.strip()}")
        yield view
    finally:
        _run("umount", "-l", str(view))


def test_readonly_folder_gives_a_clear_error_and_readonly_open_works(tmp_path, store):
    store.save(IDS[0], mask(1), source="clinician")
    store.close()
    folder = tmp_path / "proj"
    with _readonly_view(folder, tmp_path / "view") as ro_folder:
        with pytest.raises(StoreError, match="read-only"):
            LabelStore.open(ro_folder)
        with LabelStore.open(ro_folder, readonly=True) as ro:  # clean store: no WAL left
            assert np.array_equal(ro.latest(IDS[0]).masks, mask(1))
            _, masks, prov = ro.export_masks(NAME)
            assert np.array_equal(masks[:, 0], mask(1)) and prov[0]["status"] == "exported"


def test_readonly_folder_with_unmerged_changes_is_not_read_stale(tmp_path, store):
    store.save(IDS[0], mask(1), source="clinician")
    store.close()
    folder = tmp_path / "proj"
    raw = sqlite3.connect(folder / DB_NAME)
    raw.execute("PRAGMA wal_autocheckpoint = 0")
    raw.execute("UPDATE versions SET note = 'in the WAL only'")
    raw.commit()
    crashed = tmp_path / "crashed"  # a crashed copy without its -shm index
    crashed.mkdir()
    for suffix in ("", "-wal"):
        shutil.copy2(folder / (DB_NAME + suffix), crashed / (DB_NAME + suffix))
    raw.close()
    with _readonly_view(crashed, tmp_path / "view") as ro_folder:
        try:
            ro = LabelStore.open(ro_folder, readonly=True)
        except StoreError as err:
            assert "read-only" in str(err) and "-wal" in str(err)
        else:  # this SQLite could read the WAL after all: then it must show the committed change
            assert ro.latest(IDS[0]).note == "in the WAL only"
            ro.close()


# ---- full disk ---------------------------------------------------------------------------------------
def test_disk_full_keeps_the_last_committed_state(tmp_path, store):
    for i, sid in enumerate(IDS[:3]):
        store.save(sid, mask(i), source="clinician")
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLite now sees a full disk
    big = [dict(slice_id=sid, masks=mask(40 + i), source="clinician", note="x" * 200_000) for i, sid in enumerate(IDS)]
    with pytest.raises(StoreError, match="disk is full"):
        store.save_many(big)
    for i, sid in enumerate(IDS[:3]):
        rec = store.latest(sid)
        assert rec.version == 1 and np.array_equal(rec.masks, mask(i))
    assert store.latest(IDS[3]) is None and store.integrity_check()
    with LabelStore.open(tmp_path / "proj") as other:  # what another window sees
        assert [len(other.history(sid)) for sid in IDS] == [1, 1, 1, 0, 0, 0] and other.integrity_check()
    store._conn.execute("PRAGMA max_page_count = 1073741823")  # space freed: saving works again
    assert store.save_many(big)[:2] == [2, 2]


def test_real_full_disk_on_a_small_tmpfs(tmp_path):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and `mount` for a small tmpfs (the max_page_count test covers the logic)")
    small = tmp_path / "small"
    small.mkdir()
    r = _run("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small))
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        shape = (4, 128, 128)
        ids = [f"case2_day0_slice_{i:04d}" for i in range(1, 5)]
        s = LabelStore.open(small / "proj", user="dr_a")
        s.register_stack("case2_day0", ids, shape, (3, 1, 1), "tmpfs")
        s.save(ids[0], mask(1, shape), source="clinician")
        filler = small / "filler.bin"
        with open(filler, "wb", buffering=0) as f:  # take every free byte
            for chunk in (1 << 16, 4096, 1):
                try:
                    while True:
                        f.write(b"\0" * chunk)
                except OSError as err:
                    assert err.errno == errno.ENOSPC
        big = [
            dict(slice_id=sid, masks=np.random.default_rng(7 + i).random((3, 128, 128)) > 0.5, source="clinician")
            for i, sid in enumerate(ids)
        ] * 3
        with pytest.raises(StoreError, match="disk is full"):
            s.save_many(big)
        assert [len(s.history(sid)) for sid in ids] == [1, 0, 0, 0]
        assert np.array_equal(s.latest(ids[0]).masks, mask(1, shape))
        with LabelStore.open(small / "proj", readonly=True) as other:
            assert np.array_equal(other.latest(ids[0]).masks, mask(1, shape)) and other.latest(ids[1]) is None
        filler.unlink()  # space freed: the same window saves again
        assert s.save(ids[1], mask(2, shape), source="clinician") == 1
        s.close()
        with LabelStore.open(small / "proj") as again:
            assert again.integrity_check() and [len(again.history(sid)) for sid in ids] == [1, 1, 0, 0]
    finally:
        _run("umount", "-l", str(small))


# ---- concurrency ---------------------------------------------------------------------------------------
def _saver(folder: str, worker: int, n: int, barrier) -> None:
    barrier.wait()  # both open (and create) the store at the same instant
    s = LabelStore.open(folder, user=f"dr_{worker}")
    s.register_stack(NAME, IDS, SHAPE, (3.0, 1.5, 1.5), "somewhere")
    barrier.wait()  # and then both write at once
    for i in range(n):
        if i % 10 == 9:
            s.save_many(
                [
                    dict(slice_id=sid, masks=mask(worker * 1000 + i), source="clinician", note=f"{worker}:{i}")
                    for sid in IDS[:2]
                ]
            )
        else:
            s.save(IDS[i % 2], mask(worker * 1000 + i), source="clinician", note=f"{worker}:{i}")
        s.set_state(f"worker{worker}", i)
    s.close()


def test_two_processes_saving_at_once_lose_nothing(tmp_path):
    folder = str(tmp_path / "proj")  # does not exist yet: both processes create it
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    n = 60
    procs = [ctx.Process(target=_saver, args=(folder, w, n, barrier)) for w in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with LabelStore.open(folder) as store:
        expected = set()
        for w in (1, 2):
            for i in range(n):
                if i % 10 == 9:
                    expected |= {(sid, f"{w}:{i}") for sid in IDS[:2]}
                else:
                    expected.add((IDS[i % 2], f"{w}:{i}"))
        found = [(sid, h.note) for sid in IDS[:2] for h in store.history(sid)]
        assert len(found) == len(set(found)) and set(found) == expected
        for sid in IDS[:2]:
            versions = [h.version for h in store.history(sid)]
            assert versions == list(range(1, len(versions) + 1))
            for h in store.history(sid):
                w, i = map(int, h.note.split(":"))
                assert np.array_equal(store.get(sid, h.version).masks, mask(w * 1000 + i))
                assert h.user == f"dr_{w}"
        assert store.get_state("worker1") == n - 1 and store.get_state("worker2") == n - 1
        assert store.integrity_check()


def test_threads_sharing_one_store_do_not_mix_transactions(store):
    errors = []

    def work(t):
        try:
            for i in range(15):
                store.save_many(
                    [
                        dict(slice_id=IDS[t], masks=mask(t * 100 + i), source="clinician"),
                        dict(slice_id=IDS[5], masks=mask(t * 100 + i), source="model"),
                    ]
                )
                store.set_state(f"t{t}", i)
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=work, args=(t,)) for t in (0, 1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [len(store.history(IDS[t])) for t in (0, 1, 2)] == [15, 15, 15]
    assert [h.version for h in store.history(IDS[5])] == list(range(1, 46))
    assert store.integrity_check()


class _CollidingConnection:
    """Makes the next ``collisions`` version inserts fail as if another writer took the number."""

    def __init__(self, conn, collisions):
        self.conn, self.collisions = conn, collisions

    @property
    def in_transaction(self):
        return self.conn.in_transaction

    def execute(self, sql, *args):
        if sql.startswith("INSERT INTO versions") and self.collisions:
            self.collisions -= 1
            raise sqlite3.IntegrityError("UNIQUE constraint failed: versions.slice_id, versions.version")
        return self.conn.execute(sql, *args)

    def close(self):
        self.conn.close()


def test_a_version_number_collision_is_retried_then_reported(store):
    real = store._conn
    store.save(IDS[0], mask(1), source="clinician")
    store._conn = _CollidingConnection(real, collisions=1)
    assert store.save_many(
        [
            dict(slice_id=IDS[0], masks=mask(2), source="clinician"),
            dict(slice_id=IDS[1], masks=mask(3), source="clinician"),
        ]
    ) == [2, 1]
    store._conn = _CollidingConnection(real, collisions=10)
    with pytest.raises(StoreError, match="UNIQUE"):
        store.save(IDS[0], mask(4), source="clinician")
    store._conn = real
    assert [h.version for h in store.history(IDS[0])] == [1, 2] and len(store.history(IDS[1])) == 1
    assert np.array_equal(store.latest(IDS[0]).masks, mask(2))
