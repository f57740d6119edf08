"""LabelStore provenance added for review: ``interpolated`` and ``propagated`` slices, accept-as-shown, undo
of automatic saves, the schema migrations (1 -> 2, 3 -> 4), and the clinician effort table."""

import sqlite3

import numpy as np
import pytest

from napari_gitseg.store import DB_NAME, SCHEMA_VERSION, LabelStore

NAME = "case2_day1"
IDS = [f"{NAME}_slice_{i:04d}" for i in range(1, 6)]
SHAPE = (5, 8, 9)


def mask(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((3, SHAPE[1], SHAPE[2])) > 0.6


@pytest.fixture
def store(tmp_path):
    s = LabelStore.open(tmp_path / "proj", user="dr_c")
    s.register_stack(NAME, IDS, SHAPE, (3.0, 1.5, 1.5), "here")
    yield s
    s.close()


@pytest.mark.parametrize("source", ["interpolated", "propagated"])
def test_assisted_slice_is_no_clinician_label_until_accepted(store, source):
    store.save(IDS[0], mask(0), source="clinician")
    store.save(IDS[2], mask(2), source="clinician")
    v = store.save(IDS[1], mask(1), source=source, note="between z0 and z2")
    assert v == 1 and store.latest(IDS[1]).source == source
    assert IDS[1] not in store.clinician_slices(NAME)  # training never sees it as a clinician label
    assert IDS[1] not in store.pseudo_slices(NAME)
    assert IDS[1] in store.unreviewed_slices(NAME) and IDS[1] in store.review_queue(NAME)
    _ids, masks, prov = store.export_masks(NAME)
    assert not masks[:, 1].any() and prov[1]["status"] == "not reviewed"
    assert store.counts(NAME)[source] == 1 and store.counts(NAME)["clinician"] == 2
    store.accept(IDS[1], mask(1), seen_version=1)
    rec = store.latest(IDS[1])
    assert rec.reviewed and rec.source == source and rec.version == 2  # provenance kept, now reviewed
    assert IDS[1] in store.clinician_slices(NAME) and store.counts(NAME)[source] == 0


@pytest.mark.parametrize("source", ["interpolated", "propagated"])
def test_assisted_slice_is_kept_from_predictions_and_never_replaces_clinician_work(store, source):
    store.save(IDS[0], mask(0), source="clinician")
    assert store.save(IDS[0], mask(5), source=source) is None
    store.save(IDS[1], mask(1), source="model", confidence=0.2)
    assert store.save(IDS[1], mask(6), source=source) == 2  # a fill / propagation replaces a prediction
    assert store.save_many(
        [
            {"slice_id": IDS[1], "masks": mask(7), "source": "pseudo"},
            {"slice_id": IDS[1], "masks": mask(8), "source": "model"},
        ]
    ) == [None, None]
    assert store.save(IDS[1], mask(9), source=source) == 3  # doing it again is allowed
    assert store.save(IDS[1], mask(3), source="clinician") == 4  # and the clinician always may
    store.save(IDS[3], mask(3), source="imported", note="plan.dcm")  # a department's contours: a clinician label
    assert store.save(IDS[3], mask(13), source=source) is None


def test_accept_marks_only_the_version_seen_with_the_masks_seen(store):
    store.save(IDS[3], mask(3), source="model", confidence=0.5)
    assert store.accept(IDS[3], mask(3), seen_version=1) == 2
    assert store.latest(IDS[3]).source == "model" and store.latest(IDS[3]).reviewed
    assert store.accept(IDS[3], mask(3), seen_version=2) == 2  # already reviewed: nothing written
    store.save(IDS[4], mask(4), source="model")
    store.save(IDS[4], mask(14), source="pseudo")  # the trainer, unseen by the clinician
    assert store.accept(IDS[4], mask(4), seen_version=1) == 3
    rec = store.latest(IDS[4])
    assert rec.source == "clinician" and rec.reviewed and np.array_equal(rec.masks, mask(4))
    assert not store.get(IDS[4], 2).reviewed
    store.save(IDS[0], mask(0), source="model")
    assert store.accept(IDS[0], mask(10), seen_version=1) == 2  # same version, other masks on screen
    assert store.latest(IDS[0]).source == "clinician" and np.array_equal(store.latest(IDS[0]).masks, mask(10))


def test_restore_many_undoes_only_unchanged_slices(store):
    store.save(IDS[1], mask(1), source="model", model_version="m1", confidence=0.3)
    store.save(IDS[1], mask(11), source="interpolated")
    store.save(IDS[2], mask(2), source="model")
    store.save(IDS[2], mask(12), source="interpolated")
    store.save(IDS[2], mask(22), source="clinician")  # edited after the fill: the undo leaves it alone
    assert store.restore_many([(IDS[1], 1, 2), (IDS[2], 1, 2)], note="undo fill") == [3, None]
    rec = store.latest(IDS[1])
    assert rec.source == "model" and rec.model_version == "m1" and rec.confidence == pytest.approx(0.3)
    assert np.array_equal(rec.masks, mask(1)) and rec.note == "undo fill: back to v1"
    assert store.latest(IDS[2]).source == "clinician"


def downgrade(folder, sources: tuple[str, ...], version: int) -> sqlite3.Connection:
    """Make the store in ``folder`` look written by schema ``version``: its source CHECK without ``sources``;
    returns the open raw connection (committed), after checking that the first of them is refused now."""
    raw = sqlite3.connect(folder / DB_NAME)
    sql = raw.execute("SELECT sql FROM sqlite_master WHERE name = 'versions'").fetchone()[0].split("versions", 1)[1]
    for source in sources:
        sql = sql.replace(f", '{source}'", "")
    raw.execute("CREATE TABLE old " + sql)
    raw.execute("INSERT INTO old SELECT * FROM versions")
    raw.execute("DROP TABLE versions")
    raw.execute("ALTER TABLE old RENAME TO versions")
    raw.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
    raw.commit()
    with pytest.raises(sqlite3.IntegrityError):  # an old store cannot hold the new provenance
        raw.execute(
            "INSERT INTO versions (slice_id, version, source, reviewed, created, shape, masks, crc) "
            "VALUES (?, 9, ?, 0, 0, '[]', x'00', 0)",
            (IDS[1], sources[0]),
        )
    return raw


def test_schema_2_store_is_migrated_keeping_every_version(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    with LabelStore.open(tmp_path / "donor") as donor:  # made into a schema-2 store by hand below
        donor.register_stack(NAME, IDS, SHAPE, (3.0, 1.5, 1.5), "here")
        donor.save(IDS[0], mask(0), source="model")
        donor.save(IDS[0], mask(1), source="clinician")
    raw = sqlite3.connect(tmp_path / "donor" / DB_NAME)
    raw.execute("DROP TABLE effort")
    raw.commit()
    raw.close()
    raw = downgrade(tmp_path / "donor", ("interpolated", "propagated"), 2)
    raw.close()
    with LabelStore.open(tmp_path / "donor") as store:
        assert [h.source for h in store.history(IDS[0])] == ["model", "clinician"]
        assert np.array_equal(store.get(IDS[0], 1).masks, mask(0))
        assert store.save(IDS[1], mask(1), source="interpolated") == 1
        store.save_effort(
            "s1", [{"slice_id": IDS[1], "seconds": 3.5, "strokes": 2, "painted_px": 40, "accepted_unedited": False}]
        )
        assert store.effort(NAME)[0]["strokes"] == 2
    raw = sqlite3.connect(tmp_path / "donor" / DB_NAME)
    assert raw.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    assert raw.execute("SELECT value FROM meta WHERE key = 'migrated_from'").fetchone()[0] == "2"
    raw.close()


def test_effort_rows_are_replaced_per_session_and_slice(store):
    row = {"slice_id": IDS[2], "seconds": 10.0, "strokes": 1, "painted_px": 5, "accepted_unedited": False}
    store.save_effort("s1", [row])
    store.save_effort("s1", [dict(row, seconds=12.5, strokes=3)])
    store.save_effort("s2", [dict(row, slice_id=IDS[0], strokes=0, accepted_unedited=True)])
    rows = store.effort(NAME)
    assert [(r["session"], r["z"], r["strokes"]) for r in rows] == [("s1", 2, 3), ("s2", 0, 0)]
    assert rows[0]["seconds"] == 12.5 and rows[1]["accepted_unedited"] is True and rows[0]["user"] == "dr_c"


def test_a_fill_may_replace_a_propagation_and_an_accepted_prediction_is_kept_from_both(store):
    store.save(IDS[1], mask(1), source="propagated")
    assert store.save(IDS[1], mask(10), source="interpolated") == 2
    assert store.save(IDS[1], mask(11), source="propagated") == 3
    store.save(IDS[4], mask(4), source="model")
    store.set_reviewed(IDS[4])  # an accepted prediction is protected too
    assert store.save(IDS[4], mask(14), source="propagated") is None
    assert store.save(IDS[4], mask(15), source="interpolated") is None


def test_schema_3_store_is_migrated_to_allow_propagated(tmp_path):
    with LabelStore.open(tmp_path / "donor") as donor:
        donor.register_stack(NAME, IDS, SHAPE, (3.0, 1.5, 1.5), "here")
        donor.save(IDS[0], mask(0), source="interpolated")
    raw = downgrade(tmp_path / "donor", ("propagated",), 3)
    raw.close()
    with LabelStore.open(tmp_path / "donor") as store:
        assert [h.source for h in store.history(IDS[0])] == ["interpolated"]
        assert store.save(IDS[1], mask(1), source="propagated") == 1
    raw = sqlite3.connect(tmp_path / "donor" / DB_NAME)
    assert raw.execute("SELECT value FROM meta WHERE key = 'migrated_from'").fetchone()[0] == "3"
    raw.close()
