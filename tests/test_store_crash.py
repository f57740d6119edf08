"""kill -9 a process in the middle of writing to the label store, many times at random instants.

After every kill the store must open (read-only and read-write), pass its integrity check, and
hold every version the child reported as committed with exactly the content it wrote; no
partial version shows (versions are dense, every version's content matches what wrote it, and
a batch saved in one transaction is there for all its slices or for none).
"""

import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from napari_gitseg.store import LabelStore

NAME = "case7_day1"
IDS = [f"{NAME}_slice_{i:04d}" for i in range(1, 9)]
SHAPE = (8, 64, 64)
KILLS = 14  # a fixed count (no wall-clock budget): every 6th while opening, the others mid-write

# The child writes forever; write number i is a batch (all slices, one transaction) when
# i % 7 == 0, a review toggle when i % 7 == 3, a revert to v1 when i % 7 == 5, else one save.
# Saved content is a pure function of i, and the note records i, so every version is checkable.
# It prints a line only after the call returned (committed), flushed.
CHILD = textwrap.dedent(
    f"""
    import sys
    import numpy as np
    print("start", flush=True)
    from napari_gitseg.store import LabelStore
    IDS = {IDS!r}
    s = LabelStore.open(sys.argv[1], user="child")
    s.register_stack({NAME!r}, IDS, {SHAPE!r}, (3.0, 1.0, 1.0), "crash-test")
    print("ready", flush=True)
    i = int(sys.argv[2])
    while True:
        sid = IDS[i % len(IDS)]
        m = np.random.default_rng(i).random((3, {SHAPE[1]}, {SHAPE[2]})) > 0.5
        if i % 7 == 0:
            versions = s.save_many([dict(slice_id=x, masks=m, source="clinician", note=str(i)) for x in IDS])
            print("batch", i, " ".join(map(str, versions)), flush=True)
        elif i % 7 == 3 and s.latest(sid) is not None:
            v = s.set_reviewed(sid, not s.latest(sid).reviewed)
            print("review", i, sid, v, flush=True)
        elif i % 7 == 5 and s.latest(sid) is not None:
            v = s.revert(sid, 1)
            print("revert", i, sid, v, flush=True)
        else:
            v = s.save(sid, m, source="clinician", note=str(i))
            print("save", i, sid, v, flush=True)
        i += 1
    """
)


def expected_mask(i: int) -> np.ndarray:
    return np.random.default_rng(i).random((3, SHAPE[1], SHAPE[2])) > 0.5


def verify(store: LabelStore, committed: dict) -> None:
    """Every reported version present and right; every visible version consistent; batches whole."""
    assert store.integrity_check()
    batches_seen: dict[int, set] = {}
    for sid in IDS:
        history = store.history(sid)
        assert [h.version for h in history] == list(range(1, len(history) + 1))  # dense: no gap
        contents = {}
        for h in history:
            rec = store.get(sid, h.version)
            if h.note.isdigit():
                i = int(h.note)
                assert np.array_equal(rec.masks, expected_mask(i)), f"{sid} v{h.version}: wrong content"
                if i % 7 == 0:
                    batches_seen.setdefault(i, set()).add(sid)
            elif h.note.startswith("revert to v"):
                assert np.array_equal(rec.masks, contents[int(h.note[len("revert to v") :])])
            else:
                assert h.note in ("reviewed", "review withdrawn")
                assert h.reviewed == (h.note == "reviewed")
                assert np.array_equal(rec.masks, contents[h.version - 1])
            contents[h.version] = rec.masks
    for i, sids in batches_seen.items():  # one transaction: all slices or none
        assert sids == set(IDS), f"batch {i} only partly visible: {sorted(sids)}"
    for (sid, version), (kind, i) in committed.items():
        rec = store.get(sid, version)  # raises if a reported version is missing
        if kind in ("save", "batch"):
            assert rec.note == str(i), f"{sid} v{version} holds write {rec.note}, expected {i}"
        elif kind == "revert":
            assert rec.note == "revert to v1"
        else:
            assert rec.note in ("reviewed", "review withdrawn")


@pytest.mark.slow
def test_kill_during_saves_never_loses_a_committed_version(tmp_path):
    folder = tmp_path / "proj"
    rng = random.Random(1234)
    committed: dict[tuple[str, int], tuple[str, int]] = {}  # (slice id, version) -> (kind, write number)
    counter = 0
    kills = early_kills = 0
    while kills < KILLS:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(folder), str(counter)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout.readline().strip() == "start"
        reported = []
        if kills % 6 == 5:  # now and then: kill while opening (WAL recovery, schema creation, register)
            time.sleep(rng.uniform(0.0, 0.15))
            early_kills += 1
        else:
            line = proc.stdout.readline().strip()
            assert line == "ready", line
            # let a fixed number of writes commit (whatever the machine's speed), then kill at a
            # random instant of the ones that follow
            reported = [proc.stdout.readline() for _ in range(rng.randint(1, 6))]
            time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        out = "".join(reported) + out
        kills += 1
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[0] in ("save", "review", "revert"):
                committed[(parts[2], int(parts[3]))] = (parts[0], int(parts[1]))
                counter = max(counter, int(parts[1]) + 1)
            elif len(parts) == 2 + len(IDS) and parts[0] == "batch":
                for sid, v in zip(IDS, parts[2:]):
                    committed[(sid, int(v))] = ("batch", int(parts[1]))
                counter = max(counter, int(parts[1]) + 1)
            # a torn last line (killed mid-print) is simply not counted as reported
        counter += 1  # the write in flight at the kill may have committed unreported: skip its number

        if (folder / "gitseg_labels.sqlite").exists():
            if kills % 2 and committed:  # a crashed store can be viewed read-only before anyone repairs it
                ro = LabelStore.open(folder, readonly=True)
                verify(ro, committed)
                ro.close()
            store = LabelStore.open(folder)  # read-write: WAL recovery
            verify(store, committed)
            store.close()
    writes = {i for _kind, i in committed.values()}
    print(
        f"{kills} kills ({early_kills} while opening), {len(writes)} reported writes, "
        f"{len(committed)} reported versions"
    )
    assert len(writes) >= 20, len(writes)  # the test really exercised the store (at least 1 write per kill)
    assert {kind for kind, _ in committed.values()} == {"save", "batch", "review", "revert"}
