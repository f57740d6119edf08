"""The Review dock in a real napari viewer: paint, accept, predictions, reopen."""

from types import SimpleNamespace

import numpy as np
import pytest

from napari_gitseg.classes import LABEL_VALUES
from napari_gitseg.layers import image_layer_data
from napari_gitseg.phantom import make_phantom_case
from napari_gitseg.store import LabelStore


@pytest.fixture
def case():
    return make_phantom_case(seed=2, n_slices=10, size=(80, 80))


def open_review(make_napari_viewer, qtbot, case, folder):
    from napari_gitseg._widgets.review import ReviewWidget

    viewer = make_napari_viewer()
    data, kwargs, _ = image_layer_data(case)
    viewer.add_image(data, **kwargs)
    widget = ReviewWidget(viewer)
    widget.set_store_folder(str(folder))
    widget._image.value = case.name
    widget.start_review()
    qtbot.waitUntil(lambda: widget.labels_layer is not None, timeout=10000)
    return viewer, widget


def goto(viewer, z):
    step = list(viewer.dims.current_step)
    step[0] = z
    viewer.dims.current_step = tuple(step)


def test_paint_accept_reopen_and_prediction_keeps_corrections(make_napari_viewer, qtbot, case, tmp_path):
    folder = tmp_path / "proj"
    viewer, widget = open_review(make_napari_viewer, qtbot, case, folder)
    layer = widget.labels_layer
    assert layer.data.shape == case.shape
    np.testing.assert_allclose(layer.scale, case.spacing)

    goto(viewer, 4)
    layer.brush_size = 5
    layer.paint((4, 40, 40), LABEL_VALUES["stomach"])  # napari's own paint tool path
    qtbot.waitUntil(lambda: "unsaved" in widget._unsaved.value, timeout=5000)
    widget.accept_slice()
    sid = case.slice_ids[4]
    qtbot.waitUntil(
        lambda: (LabelStore.open(folder).latest(sid) or SimpleNamespace(reviewed=False)).reviewed, timeout=10000
    )
    rec = LabelStore.open(folder).latest(sid)
    assert rec.source == "clinician" and rec.masks[2, 40, 40]

    # paint on another slice and move away: autosave on slice change
    goto(viewer, 7)
    layer.paint((7, 20, 20), LABEL_VALUES["large_bowel"])
    goto(viewer, 8)
    qtbot.waitUntil(lambda: LabelStore.open(folder).latest(case.slice_ids[7]) is not None, timeout=10000)
    assert LabelStore.open(folder).latest(case.slice_ids[7]).masks[0, 20, 20]

    # a model prediction arrives: every slice but the corrected ones is replaced
    pred_masks = np.zeros((3, *case.shape), bool)
    pred_masks[1, :, 60:70, 60:70] = True
    prediction = SimpleNamespace(masks=pred_masks, confidence=np.linspace(0, 1, case.shape[0]), model_version="v0009")
    widget._hub.prediction_ready.emit(widget.session.stack, prediction)
    qtbot.waitUntil(lambda: layer.data[0, 65, 65] == LABEL_VALUES["small_bowel"], timeout=10000)
    assert layer.data[4, 40, 40] == LABEL_VALUES["stomach"] and layer.data[4, 65, 65] == 0
    assert layer.data[7, 20, 20] == LABEL_VALUES["large_bowel"]
    qtbot.waitUntil(lambda: "Reviewed 1 of 10" in widget._status.value, timeout=10000)
    widget.close_review()

    # reopen in a fresh viewer: the same corrections are shown
    viewer2, widget2 = open_review(make_napari_viewer, qtbot, case, folder)
    assert widget2.labels_layer.data[4, 40, 40] == LABEL_VALUES["stomach"]
    assert widget2.labels_layer.data[7, 20, 20] == LABEL_VALUES["large_bowel"]
    assert widget2.labels_layer.data[0, 65, 65] == LABEL_VALUES["small_bowel"]
    widget2.close_review()


def test_removing_the_review_layer_saves_the_pending_edit(make_napari_viewer, qtbot, case, tmp_path):
    folder = tmp_path / "proj"
    viewer, widget = open_review(make_napari_viewer, qtbot, case, folder)
    goto(viewer, 2)
    widget.labels_layer.paint((2, 30, 30), LABEL_VALUES["small_bowel"])
    viewer.layers.remove(widget.labels_layer)
    assert widget.session is None
    assert LabelStore.open(folder).latest(case.slice_ids[2]).masks[1, 30, 30]
    widget.close_review()


def test_after_close_review_viewer_events_are_harmless_and_review_reopens(make_napari_viewer, qtbot, case, tmp_path):
    folder = tmp_path / "proj"
    viewer, widget = open_review(make_napari_viewer, qtbot, case, folder)
    goto(viewer, 3)
    widget.labels_layer.paint((3, 30, 30), LABEL_VALUES["stomach"])
    widget.close_review()  # saves the pending edit
    assert widget.session is None and not widget._accept.enabled
    assert LabelStore.open(folder).latest(case.slice_ids[3]).masks[2, 30, 30]
    goto(viewer, 6)  # closing napari moves dims and removes layers: nothing may reach the closed store
    viewer.layers.clear()
    assert widget.session is None
    data, kwargs, _ = image_layer_data(case)
    viewer.add_image(data, **kwargs)
    widget._image.value = case.name
    widget.start_review()  # the same dock opens the store again
    qtbot.waitUntil(lambda: widget.labels_layer is not None, timeout=10000)
    assert widget.labels_layer.data[3, 30, 30] == LABEL_VALUES["stomach"]
    widget.close_review()


def test_store_work_submitted_while_python_exits_still_runs(monkeypatch):
    """At interpreter exit no thread can start: the store thread runs the job in place (the last edit saved)."""
    from concurrent.futures import ThreadPoolExecutor

    from napari_gitseg._widgets._store_thread import StoreThread

    io = StoreThread()
    assert io.submit(lambda: 1).result() == 1  # the thread

    def refuse(self, *args, **kwargs):
        raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    monkeypatch.setattr(ThreadPoolExecutor, "submit", refuse)
    saved = []
    assert io.submit(saved.append, "edit").result() is None and saved == ["edit"]
    with pytest.raises(ValueError, match="disk full"):
        io.submit(lambda: (_ for _ in ()).throw(ValueError("disk full"))).result()


def test_accept_jumps_at_once_to_the_queue_answer_asked_ahead_and_asks_again_after_a_prediction(
    make_napari_viewer, qtbot, case, tmp_path
):
    viewer, widget = open_review(make_napari_viewer, qtbot, case, tmp_path / "proj")
    confidence = np.linspace(0.3, 0.9, len(case.slice_ids))
    prediction = SimpleNamespace(masks=case.masks, confidence=confidence, model_version="v0001")
    widget._hub.prediction_ready.emit(widget.session.stack, prediction)
    qtbot.waitUntil(lambda: widget.predictions_shown > 0, timeout=10000)
    goto(viewer, 2)
    widget.flush()  # the store thread has answered what comes after slice 2
    first = widget.session.next_in_queue(2)
    assert first is not None and widget._queue_next.answer(2).result() == first and widget._queue_next.answer(3) is None
    widget.accept_slice()
    assert widget._z == first  # at once: no round trip through the store thread

    widget.flush()
    stale = widget._queue_next.answer(first).result()
    later = np.full(len(confidence), 0.99)
    surprise = next(z for z in range(len(later)) if z not in (2, first, stale))
    later[surprise] = 0.01  # a new prediction: one slice far less confident than the rest
    widget._hub.prediction_ready.emit(
        widget.session.stack, SimpleNamespace(**{**vars(prediction), "confidence": later})
    )
    qtbot.waitUntil(lambda: widget.predictions_shown > 1, timeout=10000)
    widget.flush()
    fresh = widget.session.next_in_queue(first)
    assert fresh == surprise != stale
    widget.accept_slice()
    assert widget._z == fresh  # the answer asked before the prediction was not used
    widget.close_review()
