"""The trainer's events (napari_gitseg.events), the background worker (training.worker) and its client
(napari_gitseg.jobs), with real subprocesses."""

from __future__ import annotations

import errno
import json
import random
import time

import pytest

from napari_gitseg import events as ev
from napari_gitseg.jobs import WorkerProcess
from training.worker import JobError, execute, load_job

# a job config that runs in a few seconds
TINY = {"epochs": 2, "max_steps_per_epoch": 2, "batch_size": 4, "size": [64, 64], "val_batch_size": 8}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Three tiny phantom cases written in the UW-Madison layout (PNG folders + train.csv)."""
    from napari_gitseg.phantom import write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("data"), n_cases=3, seed=0, n_slices=16, size=(64, 64))


def _collect(worker: WorkerProcess, timeout: float = 120.0, on_event=None) -> list:
    out = []
    t0 = time.monotonic()
    for event in worker.events():
        out.append(event)
        if on_event is not None:
            on_event(event)
        if time.monotonic() - t0 > timeout:  # a safety net, not a timing assertion
            worker.kill()
            pytest.fail(f"the worker did not finish within {timeout} s; events so far: {out[-5:]}")
    return out


def _on_first(kind, action):
    """An event callback that runs ``action`` at the first event of type ``kind``; and the events it fired on."""
    fired: list = []

    def on_event(e):
        if isinstance(e, kind) and not fired:
            action()
            fired.append(e)

    return on_event, fired


# ---------------------------------------------------------------------------------------- events
ALL_EVENTS = [
    ev.Started(job_id="j1", pid=42, kind="train", config={"epochs": 3, "model": {"arch": "Unet"}}),
    ev.Progress(epoch=1, epochs=3, step=2, steps=5, loss=0.5, fraction=0.25, phase="train"),
    ev.Metrics(epoch=1, train_loss=0.4, val_dice=0.7, val_score=0.8, per_class={"stomach": 0.9}),
    ev.Checkpoint(path="/x/model.json", epoch=1, val_dice=0.7, best=True),
    ev.Promoted(version="v0002", val_dice=0.8, previous_version="v0001", previous_dice=0.7),
    ev.Rejected(candidate_dice=0.6, active_dice=0.7, reason="worse"),
    ev.RoundDone(round=1, labels_spent=100, val_dice=0.8),
    ev.Done(result={"best_dice": 0.7, "history": [1, 2]}),
    ev.Error(message="boom", kind="input", traceback_tail="Traceback ..."),
    ev.Cancelled(),
    ev.Log(text="hello"),
]


@pytest.mark.parametrize("event", ALL_EVENTS, ids=lambda e: type(e).__name__)
def test_every_event_survives_a_json_line(event):
    line = ev.to_json_line(event)
    assert "\n" not in line and json.loads(line)["type"] == type(event).__name__
    assert ev.parse_line(line + "\n") == event
    assert ev.parse_line(line.encode()) == event


@pytest.mark.parametrize(
    "line",
    [
        "not json at all",
        "",
        "[1, 2]",
        '{"no": "type"}',
        '{"type": "Nope"}',
        '{"type": "Progress", "epoch": "one"}',
        '{"type": "Metrics", "val_dice": true}',
        '{"type": "Done", "result": [1]}',
        b"\xff\xfe garbage",
        "{" * 5000,
    ],
)
def test_unreadable_lines_become_log_events(line):
    event = ev.parse_line(line)
    assert isinstance(event, ev.Log)
    assert event.text == (line.decode("utf-8", errors="replace") if isinstance(line, bytes) else line)


def test_non_finite_numbers_become_null():
    line = ev.to_json_line(ev.Metrics(epoch=1, train_loss=float("nan"), val_dice=float("inf")))
    back = ev.parse_line(line)
    assert back.train_loss is None and back.val_dice is None
    with pytest.raises(TypeError):
        ev.to_json_line({"type": "Progress"})


def test_scaled_progress_maps_fractions():
    seen = []
    emit = ev.scaled_progress(seen.append, 0.5, 0.75)
    emit(ev.Progress(fraction=0.0))
    emit(ev.Progress(fraction=1.0))
    emit(ev.Progress(fraction=2.0))
    emit(ev.Log("x"))
    assert [e.fraction for e in seen[:3]] == [0.5, 0.75, 0.75] and seen[3] == ev.Log("x")


# ---------------------------------------------------------------------------------------- jobs
def test_job_files_are_checked(tmp_path):
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"kind": "train", "data": "d", "out": "o", "epoch": 3}))
    with pytest.raises(JobError, match=r"job\.json: unknown key 'epoch' for a 'train' job"):
        load_job(path)
    with pytest.raises(JobError, match="unknown job kind 'fit'"):
        load_job({"kind": "fit"})
    with pytest.raises(JobError, match="needs 'data'"):
        load_job({"kind": "bootstrap", "out": "o"})
    with pytest.raises(JobError, match="'rounds' must be a non-negative integer"):
        load_job({"kind": "bootstrap", "data": "d", "out": "o", "rounds": -1})
    path.write_text("{not json")
    with pytest.raises(JobError, match="not valid JSON"):
        load_job(path)
    job = load_job({"kind": "round", "project": "p"})
    assert job["keep"] == 50 and job["preset"] == "cpu" and job["job_id"]


def test_execute_reports_a_bad_training_setting(tmp_path):
    events: list = []
    code = execute(
        {"kind": "train", "data": str(tmp_path), "out": str(tmp_path), "config": {"epoch": 3}}, events.append
    )
    assert code == 1
    assert isinstance(events[0], ev.Started) and isinstance(events[-1], ev.Error)
    assert events[-1].kind == "bad_job" and "'epoch'" in events[-1].message


def test_execute_reports_missing_data(tmp_path):
    events: list = []
    code = execute({"kind": "train", "data": str(tmp_path / "nothing"), "out": str(tmp_path)}, events.append)
    assert code == 1 and events[-1].kind == "input" and "nothing" in events[-1].message


def test_execute_reports_a_full_disk(dataset, tmp_path, monkeypatch):
    def full_disk(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("training.checkpoints.save_bundle", full_disk)
    events: list = []
    code = execute(
        {"kind": "train", "data": str(dataset), "out": str(tmp_path), "preset": "quick", "config": TINY}, events.append
    )
    assert code == 1
    assert events[-1].kind == "disk" and "disk is full" in events[-1].message
    assert not any(isinstance(e, ev.Checkpoint) for e in events)


# ---------------------------------------------------------------------------------------- the process
@pytest.mark.slow
def test_worker_streams_events_in_order(dataset, tmp_path):
    job = {"kind": "train", "data": str(dataset), "out": str(tmp_path / "out"), "preset": "quick", "config": TINY}
    worker = WorkerProcess(job, tmp_path / "work").start()
    events = _collect(worker)
    assert worker.returncode == 0, worker.log_tail()
    kinds = [type(e).__name__ for e in events if not isinstance(e, ev.Log)]
    assert kinds[0] == "Started" and kinds[-1] == "Done"
    assert events[0].pid == worker.pid and events[0].job_id == worker.job["job_id"]
    assert events[0].config["epochs"] == 2 and events[0].config["size"] == [64, 64]  # the effective config
    first = {k: kinds.index(k) for k in ("Progress", "Metrics", "Checkpoint", "Done")}
    assert first["Progress"] < first["Metrics"] < first["Checkpoint"] < first["Done"]
    assert kinds.count("Metrics") == 2
    done = events[-1]
    from napari_gitseg.model.bundle import load_bundle

    _model, bundle = load_bundle(done.result["best_path"])
    assert bundle.metrics["val_dice"] == pytest.approx(done.result["best_dice"])
    assert done.result["worker_peak_rss_mb"] > 50  # VmHWM of the worker itself (torch alone is more)
    assert worker.log_path.is_file()  # stderr (logs) went to the log file, not into the event stream


@pytest.mark.slow
def test_worker_cancels_on_sigterm(dataset, tmp_path):
    config = dict(TINY, epochs=500, max_steps_per_epoch=4)
    job = {"kind": "train", "data": str(dataset), "out": str(tmp_path / "out"), "preset": "quick", "config": config}
    worker = WorkerProcess(job, tmp_path / "work").start()
    on_event, sent = _on_first(ev.Checkpoint, worker.cancel)
    events = _collect(worker, on_event=on_event)
    assert sent, "no checkpoint before the end"
    assert isinstance(events[-1], ev.Cancelled)
    assert worker.returncode == 0
    epochs = [e.epoch for e in events if isinstance(e, ev.Metrics)]
    assert max(epochs) <= sent[0].epoch + 1  # stopped within the next epoch, not after 500
    from napari_gitseg.model.bundle import load_bundle

    load_bundle(sent[0].path)  # the best bundle so far is intact


def test_worker_reports_a_bad_job(tmp_path):
    worker = WorkerProcess({"kind": "train", "data": "d", "out": "o", "colour": "red"}, tmp_path).start()
    events = _collect(worker)
    assert worker.returncode == 1
    errors = [e for e in events if isinstance(e, ev.Error)]
    assert len(errors) == 1 and errors[0].kind == "bad_job" and "'colour'" in errors[0].message
    assert str(worker.job_path) in errors[0].message


@pytest.mark.slow
def test_kill_9_never_corrupts_the_registry(dataset, tmp_path):
    """SIGKILL at random instants of a bootstrap job (which registers models): the registry stays usable."""
    from napari_gitseg.model.bundle import load_bundle
    from napari_gitseg.model.registry import ModelRegistry

    rng = random.Random(1234)
    config = dict(TINY, epochs=1, max_steps_per_epoch=2)
    # (event, occurrence): while a bundle is written, while the registry changes, in round 1, mid-training
    triggers = [("Checkpoint", 1), ("Promoted", 1), ("Checkpoint", 2), ("Progress", 3)]
    n_killed = 0
    for i, (trigger, nth) in enumerate(triggers):
        out = tmp_path / f"run{i}"
        job = {
            "kind": "bootstrap",
            "data": str(dataset),
            "out": str(out),
            "preset": "quick",
            "config": config,
            "labels": 8,
            "rounds": 2,
            "keep": 4,
        }
        worker = WorkerProcess(job, tmp_path / f"work{i}").start()
        delay = rng.uniform(0.0, 0.15)
        killed: list = []
        seen: list = []

        def on_event(e, trigger=trigger, nth=nth, worker=worker, delay=delay, killed=killed, seen=seen):
            if type(e).__name__ == trigger:
                seen.append(e)
            if len(seen) == nth and not killed:
                time.sleep(delay)
                worker.kill()
                killed.append(delay)

        events = _collect(worker, on_event=on_event)
        if killed:
            n_killed += 1
            assert isinstance(events[-1], ev.Error) and "exited with code -9" in events[-1].message
        registry = ModelRegistry(out / "models")
        names = [v["version"] for v in registry.versions()]  # the index reads (it checks the active one is listed)
        if registry.active() is not None:
            registry.load()  # the active model loads (checksum, shapes)
        for name in names:
            load_bundle(registry.path_of(name))
        for candidate in (out / "rounds").glob("round*/candidate.json"):
            load_bundle(candidate)
    assert n_killed >= 3  # the instants were reached: the test really killed the worker mid-job


@pytest.mark.slow
def test_a_round_killed_mid_write_leaves_labels_and_registry_usable_and_the_next_round_works(tmp_path):
    """kill -9 the worker of a GUI round while it writes a checkpoint; restart; everything is there."""
    import numpy as np

    from napari_gitseg.phantom import make_phantom_case
    from napari_gitseg.project import Project
    from napari_gitseg.retrain import round_job
    from napari_gitseg.review.session import ReviewSession

    case = make_phantom_case(seed=8, n_slices=16, size=(64, 64))
    project = tmp_path / "proj"
    session = ReviewSession(Project(project).open_store(user="dr_t"), case)
    Project(project).save_snapshot(case)
    labelled = list(range(2, 14, 2))
    for z in labelled:
        session.store.save(case.slice_ids[z], case.masks[:, z], source="clinician")
        session.store.set_reviewed(case.slice_ids[z])
    session.store.close()
    job = round_job(project, preset="quick", keep=4, overrides=TINY)

    worker = WorkerProcess(job, Project(project).jobs_folder).start()
    kill_on_checkpoint, killed = _on_first(ev.Checkpoint, worker.kill)
    events = _collect(worker, on_event=kill_on_checkpoint)
    assert killed and isinstance(events[-1], ev.Error) and "code -9" in events[-1].message

    def check_project():
        store = Project(project).open_store()
        try:
            for z in labelled:  # every committed correction is there, unchanged
                rec = store.latest(case.slice_ids[z])
                assert rec.source == "clinician" and rec.reviewed
                assert np.array_equal(rec.masks, case.masks[:, z])
        finally:
            store.close()
        registry = Project(project).registry()
        if registry.active() is not None:  # reading the index checks the active version is listed
            registry.load()

    check_project()
    events = _collect(WorkerProcess(job, Project(project).jobs_folder).start())  # the next round after the crash
    kinds = [type(e).__name__ for e in events]
    assert kinds[-1] == "Done" and "Error" not in kinds, events[-3:]
    assert ("Promoted" in kinds) != ("Rejected" in kinds)
    check_project()


def test_the_trainer_runs_at_a_lower_cpu_priority_than_the_gui(tmp_path, monkeypatch):
    """A round on 2 cores must not starve napari: the worker lowers its own priority before torch starts."""
    import os
    import subprocess
    import sys

    if not hasattr(os, "nice"):
        pytest.skip("no nice levels on this platform")
    monkeypatch.delenv("GITSEG_WORKER_NICE", raising=False)
    env = WorkerProcess({"kind": "train"}, tmp_path).environment()
    assert env["GITSEG_WORKER_NICE"] == "10"
    probe = "from training.worker import run_behind_the_gui; print(run_behind_the_gui())"
    for value, expected in (("5", 5), ("0", 0), ("not a number", 0)):
        out = subprocess.run(
            [sys.executable, "-c", probe], env={**env, "GITSEG_WORKER_NICE": value}, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        assert int(out.stdout.split()[-1]) == min(19, os.nice(0) + expected)
