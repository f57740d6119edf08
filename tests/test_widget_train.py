"""The Train dock in napari: one-click round in the background worker, progress, cancel, versions."""

import numpy as np
import pytest

from napari_gitseg.phantom import make_phantom_case
from napari_gitseg.project import save_stack_snapshot
from napari_gitseg.review import ReviewSession
from napari_gitseg.store import LabelStore


@pytest.fixture
def project(tmp_path):
    case = make_phantom_case(seed=8, n_slices=24, size=(96, 96))
    folder = tmp_path / "proj"
    session = ReviewSession(LabelStore.open(folder, user="dr_t"), case)
    save_stack_snapshot(folder, case)
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


def test_retrain_runs_a_round_and_lists_the_new_version(make_napari_viewer, qtbot, project):
    folder, case = project
    widget = make_widget(make_napari_viewer, folder)
    repredict = []
    widget._hub.repredict_requested.connect(repredict.append)
    widget._hub.project_opened.emit(str(folder), case.name)
    widget.retrain()
    assert widget.running and not widget._retrain.enabled
    progress_seen = []
    qtbot.waitUntil(lambda: progress_seen.append(widget._progress.value) or not widget.running, timeout=600000)
    kinds = [type(e).__name__ for e in widget.events_seen]
    assert kinds[0] == "Started" and kinds[-1] == "Done", kinds
    assert "Progress" in kinds and "Metrics" in kinds and "Error" not in kinds
    assert max(progress_seen) > 0 and widget._progress.value == 100
    assert len(widget.plot.loss_y) > 0 and len(widget.plot.dice_y) > 0
    qtbot.waitUntil(lambda: len(widget._versions.choices) >= 1, timeout=30000)
    assert "Promoted" in kinds  # the first model of a project is promoted
    qtbot.waitUntil(lambda: repredict == [case.name], timeout=30000)
    # the round never touched a clinician slice
    store = LabelStore.open(folder)
    for z in range(4, 20, 2):
        rec = store.latest(case.slice_ids[z])
        assert rec.source == "clinician" and np.array_equal(rec.masks, case.masks[:, z])


def test_cancel_stops_the_worker_and_keeps_the_registry(make_napari_viewer, qtbot, project):
    folder, _case = project
    widget = make_widget(make_napari_viewer, folder)
    widget.retrain()
    qtbot.waitUntil(lambda: any(type(e).__name__ == "Progress" for e in widget.events_seen), timeout=300000)
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.running, timeout=120000)
    kinds = [type(e).__name__ for e in widget.events_seen]
    assert "Cancelled" in kinds and "Promoted" not in kinds
    from napari_gitseg.retrain import registry_versions

    versions, active = registry_versions(folder)
    assert active is None or active in [v["version"] for v in versions]


def test_retrain_without_labels_is_a_clear_error(make_napari_viewer, qtbot, tmp_path):
    case = make_phantom_case(seed=9, n_slices=8, size=(64, 64))
    folder = tmp_path / "empty"
    ReviewSession(LabelStore.open(folder), case).store.close()
    widget = make_widget(make_napari_viewer, folder)
    widget.retrain()
    qtbot.waitUntil(lambda: not widget.running, timeout=60000)
    assert "Accept" in widget._status.value or "label" in widget._status.value
