"""The Segment dock in a real napari viewer: run, progress, layers, colours, scale, cancel."""

import numpy as np
import pytest

from napari_gitseg.classes import COLORS, LABEL_VALUES
from napari_gitseg.layers import image_layer_data
from napari_gitseg.phantom import make_phantom_case


@pytest.fixture
def viewer_with_case(make_napari_viewer):
    viewer = make_napari_viewer()
    case = make_phantom_case(seed=4, n_slices=12, size=(96, 96))
    data, kwargs, _ = image_layer_data(case)
    viewer.add_image(data, **kwargs)
    return viewer, case


def make_widget(viewer, bundle):
    from napari_gitseg._widgets.segment import SegmentWidget

    widget = SegmentWidget(viewer)
    widget.set_model_path(bundle)
    return widget


def test_run_adds_prediction_layer_with_organ_colours_and_scale(viewer_with_case, qtbot, tiny_bundle):
    viewer, case = viewer_with_case
    widget = make_widget(viewer, tiny_bundle)
    received = []
    widget._hub.prediction_ready.connect(lambda stack, pred: received.append((stack, pred)))
    widget._uncertainty.value = True
    assert widget._image.value == case.name
    widget.run()
    assert widget.running
    widget.run()  # a second Run while one is going is refused, not started twice
    qtbot.waitUntil(lambda: not widget.running, timeout=60000)
    layer = viewer.layers[f"{case.name} prediction"]
    assert layer.data.shape == case.shape
    np.testing.assert_allclose(layer.scale, case.spacing)
    for organ, value in LABEL_VALUES.items():
        np.testing.assert_allclose(layer.colormap.map(np.array([value]))[0], COLORS[organ], atol=1e-6)
    assert widget._progress.value == 100
    assert len(received) == 1
    stack, prediction = received[0]
    assert stack.slice_ids == case.slice_ids and prediction.masks.shape == (3, *case.shape)
    assert prediction.confidence.shape == (case.shape[0],)
    assert f"{case.name} uncertainty" in [lyr.name for lyr in viewer.layers]
    # per-class visibility: hiding the stomach makes its colour transparent, data untouched
    before = layer.data.copy()
    widget._visible["stomach"].value = False
    assert layer.colormap.map(np.array([LABEL_VALUES["stomach"]]))[0][3] == 0
    assert np.array_equal(layer.data, before)


def test_cancel_removes_the_partial_result(viewer_with_case, qtbot, tiny_bundle):
    viewer, case = viewer_with_case
    widget = make_widget(viewer, tiny_bundle)
    widget._cancel.set()  # cancelled before the first batch is done
    widget.run()
    widget._cancel.set()
    qtbot.waitUntil(lambda: not widget.running, timeout=60000)
    assert f"{case.name} prediction" not in [lyr.name for lyr in viewer.layers]
    assert "Cancelled" in widget._status.value


def test_missing_model_is_a_clear_message_not_a_crash(viewer_with_case, tmp_path):
    viewer, _case = viewer_with_case
    widget = make_widget(viewer, tmp_path / "nope.json")
    widget.run()
    assert not widget.running and len(viewer.layers) == 1


def test_every_control_has_a_tooltip_and_the_model_field_describes_the_chosen_bundle(
    viewer_with_case, tmp_path, tiny_bundle
):
    from napari_gitseg._widgets.segment import TOOLTIPS
    from napari_gitseg.resources import default_model_path

    viewer, _case = viewer_with_case
    widget = make_widget(viewer, default_model_path())
    controls = [
        widget._image,
        widget._device,
        widget._uncertainty,
        widget._run,
        widget._cancel_btn,
        *widget._visible.values(),
    ]
    assert all(c.tooltip and c.tooltip in TOOLTIPS.values() for c in controls)
    assert widget._model.tooltip.startswith(str(default_model_path()))
    assert "Unet with timm-tf_efficientnet_lite0" in widget._model.tooltip  # the bundled model's summary
    # the bundled model learnt without mirrored images: the flip option is off, greyed, and says why
    assert not widget._tta.enabled and not widget._tta.value and "left-right mirrored" in widget._tta.tooltip
    widget.set_model_path(tiny_bundle)  # follows the chosen file
    assert widget._model.tooltip.startswith(str(tiny_bundle)) and "tiny: Unet with resnet18" in widget._model.tooltip
    assert widget._tta.enabled and widget._tta.tooltip == TOOLTIPS["tta"]  # it records no augmentation
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    widget._model.value = str(broken)  # as typed or picked with Select file
    assert "cannot be read as a model bundle" in widget._model.tooltip and "not valid JSON" in widget._model.tooltip


def test_the_model_is_loaded_off_the_gui_thread_when_the_dock_opens(viewer_with_case, tiny_bundle):
    import threading

    from napari_gitseg.predict.warm import clear_cache, is_loaded

    viewer, _case = viewer_with_case
    clear_cache()
    widget = make_widget(viewer, tiny_bundle)
    thread = widget.warm_up_thread
    assert thread is not None and thread is not threading.current_thread()
    thread.join(timeout=120)
    assert not thread.is_alive() and is_loaded(tiny_bundle, widget._device.value)
    clear_cache()


def test_a_second_run_reuses_the_layer_and_shows_exactly_the_masks(viewer_with_case, qtbot, tiny_bundle):
    """The overlay is filled batch by batch; at the end it equals the prediction (no second full
    rewrite of the layer), its metadata carries the new confidence, and the organ colours are
    set again only when the visibility changed (a new colormap redraws the layer)."""
    from napari_gitseg.classes import masks_to_labels

    viewer, case = viewer_with_case
    widget = make_widget(viewer, tiny_bundle)
    widget._visible["small_bowel"].value = False
    for _ in range(2):
        widget.run()
        qtbot.waitUntil(lambda: not widget.running, timeout=60000)
    layer = widget.result_layer
    assert [lyr.name for lyr in viewer.layers].count(f"{case.name} prediction") == 1
    prediction = widget.last_prediction
    assert np.array_equal(layer.data, masks_to_labels(prediction.masks))
    assert layer.metadata["gitseg"]["confidence"] is prediction.confidence
    assert layer.colormap.map(np.array([LABEL_VALUES["small_bowel"]]))[0][3] == 0  # still hidden
    changes = []
    layer.events.colormap.connect(lambda _e: changes.append(1))
    widget._apply_visibility()
    assert changes == []  # nothing changed: no new colormap
    widget._visible["small_bowel"].value = True
    assert changes and layer.colormap.map(np.array([LABEL_VALUES["small_bowel"]]))[0][3] > 0


def test_segmenting_another_scan_shows_it_and_hides_the_others(make_napari_viewer, qtbot, tiny_bundle):
    """With two scans open, Run on the hidden one shows it and hides the other scan's image and
    organs, so the prediction lies over its own image; the stack's own hidden layers stay hidden."""
    from napari_gitseg.layers import stack_layer_data

    viewer = make_napari_viewer()
    cases = [make_phantom_case(seed=4, case=c, n_slices=8, size=(64, 64)) for c in (1, 2)]
    for i, case in enumerate(cases):
        for data, kwargs, kind in stack_layer_data(case, visible=i == 0):
            getattr(viewer, f"add_{kind}")(data, **kwargs)
    first, second = cases
    widget = make_widget(viewer, tiny_bundle)
    widget._image.value = second.name
    widget.run()
    qtbot.waitUntil(lambda: not widget.running, timeout=60000)
    visible = {layer.name: layer.visible for layer in viewer.layers}
    assert visible[second.name] and visible[f"{second.name} prediction"]
    assert not visible[first.name] and not visible[f"{first.name} organs"]
    assert not visible[f"{second.name} organs"]  # hidden before, still hidden


def test_closing_while_the_model_warms_up_exits_cleanly():
    """The warm-up thread runs torch for a second or two after loading the model; a process that ends
    meanwhile (napari closed at once) must wait for it, not abort ("terminate called without an active
    exception": a daemon thread killed inside torch aborted about every other such exit)."""
    import subprocess
    import sys

    for delay in (0.0, 0.05, 0.1, 0.2, 0.3):  # ends at several points of the warm-up's prediction
        code = (
            "import time, torch\n"
            "from napari_gitseg._widgets.segment import start_warm_up\n"
            "from napari_gitseg.predict.warm import is_loaded\n"
            "from napari_gitseg.resources import default_model_path\n"
            "model = str(default_model_path())\n"
            "start_warm_up(model, 'cpu')\n"
            "while not is_loaded(model, 'cpu'):\n"
            "    time.sleep(0.005)\n"
            f"time.sleep({delay})\n"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and "terminate called" not in done.stderr, (delay, done.stderr[-2000:])
