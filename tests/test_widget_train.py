"""The Train dock in napari: one-click round in the background worker, progress, cancel, versions."""

import numpy as np
import pytest

from napari_gitseg.phantom import make_phantom_case
from napari_gitseg.project import Project
from napari_gitseg.review.session import ReviewSession
from napari_gitseg.store import LabelStore


@pytest.fixture
def project(tmp_path):
    case = make_phantom_case(seed=8, n_slices=24, size=(96, 96))
    folder = tmp_path / "proj"
    session = ReviewSession(Project(folder).open_store(user="dr_t"), case)
    Project(folder).save_snapshot(case)
    for z in range(4, 20, 2):  # a clinician labelled and accepted 8 slices
        session.store.save(case.slice_ids[z], case.masks[:, z], source="clinician")
        session.store.set_reviewed(case.slice_ids[z])
    session.store.close()
    return folder, case


def make_widget(make_napari_viewer, folder):
    from napari_gitseg._widgets.train import TrainWidget

    widget = TrainWidget(make_napari_viewer())
    widget.set_project(str(folder))
    widget._preset.value = "quick"
    return widget


@pytest.mark.slow
def test_retrain_runs_a_round_in_the_background_and_reports_it(make_napari_viewer, qtbot, project):
    folder, case = project
    widget = make_widget(make_napari_viewer, folder)
    widget._hub.project_opened.emit(str(folder), case.name)
    widget.retrain()
    assert widget.running and not widget._retrain.enabled and widget._cancel_btn.enabled
    progress_seen = []
    qtbot.waitUntil(lambda: progress_seen.append(widget._progress.value) or not widget.running, timeout=600000)
    kinds = [type(e).__name__ for e in widget.events_seen]
    assert kinds[0] == "Started" and kinds[-1] == "Done", kinds
    assert "Progress" in kinds and "Metrics" in kinds and "Error" not in kinds
    assert max(progress_seen) > 0 and widget._progress.value == 100
    assert len(widget.plot.loss_y) > 0 and len(widget.plot.dice_y) > 0
    assert widget._retrain.enabled and not widget._cancel_btn.enabled
    # the round compared its candidate with the bundled default model and said which won
    outcome = [e for e in widget.events_seen if type(e).__name__ in ("Promoted", "Rejected")]
    assert len(outcome) == 1
    from napari_gitseg.retrain import registry_versions

    versions, active = registry_versions(folder)
    if type(outcome[0]).__name__ == "Promoted":
        assert active == outcome[0].version and "promoted" in widget._status.value
    else:
        assert active is None and versions == [] and "not better" in widget._status.value
    # the trainer left a core to napari
    import json

    from napari_gitseg.retrain import trainer_threads_beside_gui

    (job_file,) = Project(folder).jobs_folder.glob("job-*.json")
    assert json.loads(job_file.read_text())["config"]["num_threads"] == trainer_threads_beside_gui()
    # the round never touched a clinician slice
    store = LabelStore.open(folder)
    for z in range(4, 20, 2):
        rec = store.latest(case.slice_ids[z])
        assert rec.source == "clinician" and np.array_equal(rec.masks, case.masks[:, z])


def test_a_promoted_model_is_listed_announced_and_repredicted(make_napari_viewer, qtbot, project, tiny_bundle):
    from napari_gitseg import events as ev
    from napari_gitseg.model.bundle import load_bundle

    folder, case = project
    widget = make_widget(make_napari_viewer, folder)
    repredict, models = [], []
    widget._hub.repredict_requested.connect(repredict.append)
    widget._hub.model_changed.connect(models.append)
    widget._hub.project_opened.emit(str(folder), case.name)
    model, bundle = load_bundle(tiny_bundle)
    version = Project(folder).registry().add(model, bundle.config, metrics={"val_dice": 0.5}, activate=True)
    for event in (
        ev.Started(kind="round"),
        ev.Promoted(version=version, val_dice=0.5, previous_version="default", previous_dice=0.4),
        ev.Done(result={}),
    ):
        widget.show_event(event)
    assert "New model v0001 promoted" in widget._status.value and "(was 0.400)" in widget._status.value
    qtbot.waitUntil(lambda: len(widget._versions.choices) == 1, timeout=30000)
    assert widget._versions.value == version and "active: v0001" in widget._version_info.value
    qtbot.waitUntil(lambda: repredict == [case.name], timeout=30000)
    assert models == [str(Project(folder).registry_folder / "v0001.json")]


@pytest.mark.slow
def test_cancel_stops_the_worker_and_keeps_the_registry(make_napari_viewer, qtbot, project):
    from napari_gitseg.retrain import registry_versions

    folder, _case = project
    before = registry_versions(folder)
    widget = make_widget(make_napari_viewer, folder)
    widget.retrain()
    qtbot.waitUntil(lambda: any(type(e).__name__ == "Progress" for e in widget.events_seen), timeout=300000)
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.running, timeout=120000)
    kinds = [type(e).__name__ for e in widget.events_seen]
    assert "Cancelled" in kinds and "Promoted" not in kinds
    assert registry_versions(folder) == before  # no version added, the active one unchanged


def test_retrain_without_labels_is_a_clear_error(make_napari_viewer, qtbot, tmp_path):
    case = make_phantom_case(seed=9, n_slices=8, size=(64, 64))
    folder = tmp_path / "empty"
    ReviewSession(LabelStore.open(folder), case).store.close()
    widget = make_widget(make_napari_viewer, folder)
    widget.retrain()
    qtbot.waitUntil(lambda: not widget.running, timeout=60000)
    assert "Accept" in widget._status.value or "label" in widget._status.value


def test_a_gui_round_leaves_one_core_to_napari():
    from napari_gitseg.retrain import trainer_threads_beside_gui

    assert [trainer_threads_beside_gui(n) for n in (1, 2, 4, 16)] == [1, 1, 3, 15]
    assert trainer_threads_beside_gui() >= 1


def test_every_control_says_what_it_does(make_napari_viewer):
    """Hovering a control of the Train dock explains it; the preset's tooltip names every preset."""
    from napari_gitseg._widgets.train import PRESETS, TOOLTIPS, TrainWidget

    dock = TrainWidget(make_napari_viewer())
    for name, text in TOOLTIPS.items():
        assert getattr(dock, f"_{name}").native.toolTip() == text and text
    assert all(f"{p}:" in TOOLTIPS["preset"] for p in PRESETS)
    assert set(dock._preset.choices) == set(PRESETS)


def test_each_scan_is_segmented_by_its_own_projects_model(make_napari_viewer, qtbot, tmp_path, tiny_bundle):
    """A model adapted to one patient's labels (project A's active version) segments that patient's scan
    only: opening patient B's project, which has no trained version, goes back to the model chosen for
    every scan; opening A again picks A's version up (also in a new session, where nothing was announced)."""
    from napari_gitseg._widgets.review import ReviewWidget
    from napari_gitseg._widgets.segment import SegmentWidget
    from napari_gitseg._widgets.train import TrainWidget
    from napari_gitseg.model.bundle import load_bundle

    viewer = make_napari_viewer()
    segment, review, train = SegmentWidget(viewer), ReviewWidget(viewer), TrainWidget(viewer)
    chosen = str(segment._model.value)
    assert chosen  # the bundled default (or whatever the file box holds)
    project_a, project_b = tmp_path / "caseA" / "gitseg_project", tmp_path / "caseB" / "gitseg_project"
    model, bundle = load_bundle(tiny_bundle)
    Project(project_a).registry().add(model, bundle.config, metrics={"val_dice": 0.5}, activate=True)
    adapted = str(Project(project_a).active_model_path())
    assert Project(project_b).active_model_path() is None

    train._hub.project_opened.emit(str(project_a), "caseA_day0")
    qtbot.waitUntil(lambda: str(segment._model.value) == adapted, timeout=30000)
    assert review._model_path == adapted  # Refine follows the same model
    assert "active version v0001" in segment._status.value
    train._hub.project_opened.emit(str(project_b), "caseB_day0")
    qtbot.waitUntil(lambda: str(segment._model.value) == chosen, timeout=30000)
    assert review._model_path is None  # the bundled default
    assert "no trained version in this project yet" in segment._status.value
    train._hub.project_opened.emit(str(project_a), "caseA_day0")
    qtbot.waitUntil(lambda: str(segment._model.value) == adapted, timeout=30000)

    # a model picked in the file box is the one for projects without a version from then on
    segment._model.value = str(tiny_bundle)
    train._hub.project_opened.emit(str(project_b), "caseB_day0")
    qtbot.waitUntil(lambda: train._project.value is not None and str(train._project.value) == str(project_b))
    qtbot.wait(300)
    assert str(segment._model.value) == str(tiny_bundle)
    import threading

    for thread in threading.enumerate():  # model warm-ups of the switches: done before the viewer closes
        if thread.name == "gitseg-model-warm-up":
            thread.join(60)


def test_the_status_line_keeps_its_height_when_the_verdict_arrives(make_napari_viewer, qtbot):
    """A round's status changes often; the line keeps room for its longest text (the verdict and the
    pseudo-labels) so the widgets below it, the plot among them, are not laid out again at each change."""
    from napari_gitseg import events as ev
    from napari_gitseg._widgets.train import TrainWidget

    viewer = make_napari_viewer(show=True)
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Train")
    widget._announce_version = lambda version: None  # no project: nothing to look up
    widget.refresh_versions = lambda: None
    label = widget._status.native
    widget.show_event(ev.Started(job_id="j", pid=1, kind="round"))
    qtbot.wait(50)
    short, plot_y = label.height(), widget.plot.y()
    widget.show_event(ev.Promoted(version="v0002", val_dice=0.913, previous_version="v0001", previous_dice=0.905))
    widget.show_event(ev.Done(result={"pseudo_written": 48}))
    qtbot.wait(50)
    wrapped = label.heightForWidth(label.width()) > 1.5 * label.fontMetrics().lineSpacing()
    assert "48 new pseudo-label" in widget._status.value and wrapped  # the verdict takes more than a line
    assert label.height() == short and widget.plot.y() == plot_y
