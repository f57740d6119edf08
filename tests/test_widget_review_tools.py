"""The Review dock's new tools in a real napari viewer: close path, pseudo-labels from the trainer,
Fill between, Refine, keyboard shortcuts, the effort counters."""

import csv
from types import SimpleNamespace

import numpy as np
import pytest
from test_widget_review import goto, open_review

from napari_gitseg.classes import LABEL_VALUES
from napari_gitseg.phantom import make_phantom_case
from napari_gitseg.store import LabelStore


@pytest.fixture
def case():
    return make_phantom_case(seed=4, n_slices=10, size=(80, 80))


def predict(widget, qtbot, case):
    masks = np.zeros((3, *case.shape), bool)
    masks[0, :, 5:12, 5:12] = True
    shown = widget.predictions_shown
    widget._hub.prediction_ready.emit(
        widget.session.stack,
        SimpleNamespace(masks=masks, confidence=np.linspace(0, 1, case.shape[0]), model_version="v1"),
    )
    qtbot.waitUntil(lambda: widget.predictions_shown > shown, timeout=10000)
    return masks


def press(viewer, key):
    handler = viewer.window._qt_viewer._key_map_handler
    handler.press_key(key)
    handler.release_key(key)


def test_destroying_the_dock_saves_the_edit_and_closes_the_store(make_napari_viewer, qtbot, case, tmp_path):
    viewer, widget = open_review(make_napari_viewer, qtbot, case, tmp_path / "proj")
    goto(viewer, 3)
    widget.labels_layer.paint((3, 30, 30), LABEL_VALUES["stomach"])
    store = widget.session.store
    widget.native.deleteLater()  # what Qt does when napari closes the dock or quits
    qtbot.waitUntil(lambda: store._closed, timeout=10000)
    assert LabelStore.open(tmp_path / "proj").latest(case.slice_ids[3]).masks[2, 30, 30]


def test_pseudo_labels_of_the_trainer_show_on_unedited_slices_only(make_napari_viewer, qtbot, case, tmp_path):
    viewer, widget = open_review(make_napari_viewer, qtbot, case, tmp_path / "proj")
    predict(widget, qtbot, case)
    layer = widget.labels_layer
    goto(viewer, 2)
    layer.paint((2, 40, 40), LABEL_VALUES["large_bowel"])  # being edited, not saved yet
    trainer = LabelStore.open(tmp_path / "proj")
    pseudo = np.zeros((3, *case.shape[1:]), bool)
    pseudo[1, 50:60, 50:60] = True
    for z in (2, 5):
        trainer.save(case.slice_ids[z], pseudo, source="pseudo", model_version="v2")
    trainer.close()
    widget.sync_now()
    qtbot.waitUntil(lambda: layer.data[5, 55, 55] == LABEL_VALUES["small_bowel"], timeout=10000)
    assert layer.data[5, 8, 8] == 0  # the whole slice is the pseudo-label now
    assert layer.data[2, 40, 40] == LABEL_VALUES["large_bowel"] and layer.data[2, 55, 55] == 0  # untouched
    shown = np.asarray(layer._slice.image.raw)  # what napari draws: slice 2, still the clinician's edit
    assert shown[40, 40] == LABEL_VALUES["large_bowel"] and shown[55, 55] == 0
    goto(viewer, 5)  # slice 5 was not on screen (no redraw then): going there draws the pseudo-label
    assert np.asarray(layer._slice.image.raw)[55, 55] == LABEL_VALUES["small_bowel"]
    goto(viewer, 2)
    widget.accept_slice()  # the clinician accepts what they see on slice 2, never the unseen pseudo-label
    widget.flush()
    rec = LabelStore.open(tmp_path / "proj").latest(case.slice_ids[2])
    assert rec.reviewed and rec.masks[0, 40, 40] and not rec.masks[1, 55, 55]
    widget.close_review()


def open_with_model(make_napari_viewer, qtbot, case, tmp_path, bundle):
    """A review of ``case`` in ``tmp_path / "proj"`` whose Refine / Learn use the model ``bundle``."""
    viewer, widget = open_review(make_napari_viewer, qtbot, case, tmp_path / "proj")
    widget._hub.model_changed.emit(str(bundle))
    return viewer, widget


def correct_and_accept(viewer, widget, z, labels):
    """Go to slice ``z``, paint it to ``labels`` (one layer edit) and accept it."""
    goto(viewer, z)
    layer = widget.labels_layer
    idx = np.nonzero(layer.data[z] != labels)
    layer.data_setitem((np.full(idx[0].shape, z), *idx), labels[idx])
    widget.accept_slice()


def disk_paint(layer, z, centre, radius, value):
    layer.brush_size = 2 * radius
    layer.paint((z, *centre), value)


def test_fill_between_with_keys_and_undo(make_napari_viewer, qtbot, case, tmp_path):
    viewer, widget = open_review(make_napari_viewer, qtbot, case, tmp_path / "proj")
    widget.interpolation = "distance"  # the ITK path is tested without Qt (its first use loads for long)
    predict(widget, qtbot, case)
    layer = widget.labels_layer
    viewer.layers.selection.active = layer
    press(viewer, "3")
    assert widget._organ.value == "stomach" and layer.selected_label == LABEL_VALUES["stomach"]
    goto(viewer, 2)
    disk_paint(layer, 2, (40, 30), 8, LABEL_VALUES["stomach"])
    goto(viewer, 6)
    disk_paint(layer, 6, (40, 46), 8, LABEL_VALUES["stomach"])
    press(viewer, "I")
    qtbot.waitUntil(
        lambda: all(layer.data[z, 40, 30 + 4 * (z - 2)] == LABEL_VALUES["stomach"] for z in (3, 4, 5)), timeout=15000
    )
    store = LabelStore.open(tmp_path / "proj")
    assert [store.latest(case.slice_ids[z]).source for z in (3, 4, 5)] == ["interpolated"] * 3
    assert layer.data[4, 8, 8] == LABEL_VALUES["large_bowel"]  # the other organ stays
    assert not (layer.data[[0, 1, 7, 8, 9]] == LABEL_VALUES["stomach"]).any()  # only between the two slices
    assert case.slice_ids[4] not in store.clinician_slices()
    press(viewer, "Shift-I")
    qtbot.waitUntil(lambda: not (layer.data[3:6] == LABEL_VALUES["stomach"]).any(), timeout=10000)
    assert store.latest(case.slice_ids[4]).source == "model"
    widget.close_review()


def test_refine_never_changes_painted_pixels_and_ctrl_z_takes_it_back(
    make_napari_viewer, qtbot, case, tmp_path, tiny_bundle
):
    viewer, widget = open_with_model(make_napari_viewer, qtbot, case, tmp_path, tiny_bundle)
    layer = widget.labels_layer
    goto(viewer, 4)
    disk_paint(layer, 4, (40, 40), 4, LABEL_VALUES["small_bowel"])
    qtbot.waitUntil(
        lambda: widget.effort.slices.get(4) is not None and widget.effort.slices[4].strokes == 1, timeout=5000
    )
    painted = widget.effort.slices[4].painted.copy()
    before = np.array(layer.data[4], copy=True)
    fut = widget.refine_slice()
    fut.result(timeout=120)
    qtbot.waitUntil(lambda: widget.effort.slices[4].assists == 1, timeout=10000)
    after = np.array(layer.data[4], copy=True)
    assert np.array_equal(after[painted], before[painted])
    assert widget.effort.slices[4].strokes == 1  # the refine is not counted as a stroke
    layer.undo()  # napari's Ctrl+Z: one step takes the whole refine back
    assert np.array_equal(layer.data[4], before)
    widget.close_review()


def test_shortcuts_undo_across_saves_and_effort_counters(make_napari_viewer, qtbot, case, tmp_path):
    viewer, widget = open_review(make_napari_viewer, qtbot, case, tmp_path / "proj")
    predict(widget, qtbot, case)
    layer = widget.labels_layer
    viewer.layers.selection.active = layer
    assert "[A]" in widget._accept.tooltip and "[I]" in widget._fill.tooltip and "[R]" in widget._refine.tooltip
    goto(viewer, 4)
    layer.paint((4, 40, 40), LABEL_VALUES["stomach"])
    widget.flush()  # saved
    assert LabelStore.open(tmp_path / "proj").latest(case.slice_ids[4]).masks[2, 40, 40]
    layer.undo()  # Ctrl+Z still works after the save
    assert layer.data[4, 40, 40] == 0
    press(viewer, "A")  # Accept stores what is on screen now, and jumps to the least confident slice
    qtbot.waitUntil(lambda: viewer.dims.current_step[0] == 0, timeout=10000)
    rec = LabelStore.open(tmp_path / "proj").latest(case.slice_ids[4])
    assert rec.reviewed and not rec.masks[2, 40, 40]
    press(viewer, "N")
    qtbot.waitUntil(lambda: viewer.dims.current_step[0] == 1, timeout=10000)
    press(viewer, "Shift-N")
    assert viewer.dims.current_step[0] == 0
    press(viewer, "1")
    assert layer.selected_label == LABEL_VALUES["large_bowel"]

    # effort: two strokes on slice 1, accepted; slice 0 accepted unedited
    goto(viewer, 1)
    layer.paint((1, 30, 30), LABEL_VALUES["stomach"])
    layer.paint((1, 50, 50), LABEL_VALUES["stomach"])
    qtbot.waitUntil(lambda: getattr(widget.effort.slices.get(1), "strokes", 0) == 2, timeout=5000)
    widget.accept_slice()
    assert widget._effort_status.value.startswith("2 slices reviewed, 0 accepted unedited, median ")
    qtbot.waitUntil(lambda: viewer.dims.current_step[0] not in (1, 4), timeout=10000)
    widget.accept_slice()  # the next least confident slice, unedited
    assert widget._effort_status.value.startswith("3 slices reviewed, 1 accepted unedited, median ")
    out = tmp_path / "reviewed.csv"
    widget.export_to(str(out)).result(timeout=20)
    rows = list(csv.DictReader((tmp_path / "reviewed.effort.csv").open()))
    by_z = {int(r["z"]): r for r in rows}
    assert by_z[1]["strokes"] == "2" and int(by_z[1]["painted_px"]) > 0 and by_z[1]["accepted_unedited"] == "0"
    assert sum(r["accepted_unedited"] == "1" for r in rows) == 1
    widget.close_review()


def test_learn_from_corrections_relabels_unreviewed_slices_only_and_undoes(
    make_napari_viewer, qtbot, case, tmp_path, tiny_bundle
):
    from napari_gitseg.classes import masks_to_labels
    from napari_gitseg.review.adapt import AdaptConfig

    viewer, widget = open_with_model(make_napari_viewer, qtbot, case, tmp_path, tiny_bundle)
    widget.adapt_config = AdaptConfig(steps=300)  # the corrector's own tests use this length too (test_adapt.py)
    predict(widget, qtbot, case)
    layer = widget.labels_layer
    viewer.layers.selection.active = layer
    assert "[Shift+L]" in widget._learn.tooltip
    truth = masks_to_labels(case.masks)
    for z in range(2, 8):  # the clinician corrects the six slices with organs to the truth
        correct_and_accept(viewer, widget, z, truth[z])
    goto(viewer, 8)
    press(viewer, "Shift-L")
    qtbot.waitUntil(lambda: widget._learning is not None and widget._learning.done(), timeout=180000)
    result = widget._learning.result()
    qtbot.waitUntil(
        lambda: "relabelled" in widget._unsaved.value or "Nothing changed" in widget._unsaved.value, timeout=10000
    )
    store = LabelStore.open(tmp_path / "proj")
    assert result.check.held_out == [5] and result.check.passed, result.check
    assert result.relabelled == [0, 1, 8, 9]
    for z in range(2, 8):
        assert store.latest(case.slice_ids[z]).source == "clinician" and np.array_equal(layer.data[z], truth[z])
    for z in result.relabelled:
        rec = store.latest(case.slice_ids[z])
        assert rec.model_version == "learned" and not rec.reviewed
        assert np.array_equal(layer.data[z], masks_to_labels(rec.masks))  # shown, the slice on screen too
    qtbot.waitUntil(lambda: str(widget._versions.current_choice).endswith("model (learned)"), timeout=10000)
    press(viewer, "Shift-I")
    qtbot.waitUntil(lambda: store.latest(case.slice_ids[1]).model_version == "v1", timeout=10000)

    # Learn again: the model's prediction of the scan is reused (same scan, same model) ...
    calls = []
    predict_once = widget._predictor.predict
    widget._predictor.predict = lambda *a, **k: calls.append(1) or predict_once(*a, **k)
    widget._unsaved.value = ""
    again = widget.learn_from_corrections()
    assert again.result(timeout=180).relabelled == result.relabelled and calls == []
    qtbot.waitUntil(lambda: "relabelled" in widget._unsaved.value, timeout=10000)
    assert len(widget._fills) == 1
    # ... until the model changes
    widget._hub.model_changed.emit(str(tiny_bundle))
    widget._predictor = SimpleNamespace(predict=lambda *a, **k: calls.append(1) or predict_once(*a, **k))
    widget.learn_from_corrections().result(timeout=180)
    assert calls == [1]
    # the review closes before the finished job's report reaches the dock: nothing breaks, and the
    # closed review's undo history goes with it
    widget.close_review()
    qtbot.wait(100)
    assert widget._fills == [] and widget.labels_layer is None


def test_learn_needs_two_corrected_slices_and_closing_the_review_cancels_it(
    make_napari_viewer, qtbot, case, tmp_path, tiny_bundle
):
    from napari_gitseg.classes import masks_to_labels
    from napari_gitseg.predict import PredictionCancelled
    from napari_gitseg.review.adapt import AdaptCancelled

    viewer, widget = open_with_model(make_napari_viewer, qtbot, case, tmp_path, tiny_bundle)
    truth = masks_to_labels(case.masks)
    for z in (3, 5):
        correct_and_accept(viewer, widget, z, truth[z])
        if z == 3:  # one corrected slice is not enough: one is held out to check the result
            with pytest.raises(ValueError, match="at least 2 slices"):
                widget.learn_from_corrections().result(timeout=60)
    fut = widget.learn_from_corrections()
    widget.close_review()  # waits for the job, which stops at its next step
    assert fut.done() and isinstance(fut.exception(), (AdaptCancelled, PredictionCancelled))
    store = LabelStore.open(tmp_path / "proj")
    assert all(store.latest(sid) is None or store.latest(sid).model_version != "learned" for sid in case.slice_ids)
