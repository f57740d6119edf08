"""Screenshot of Fill between in a real napari window (for the README walkthrough).

Run:  xvfb-run -a .venv/bin/python benchmarks/screenshot_fill_between.py --out resources/screenshots

A 144-slice phantom case is opened and segmented with the bundled model; in the Review dock the
clinician's correction of the stomach on two slices 4 apart is played in (the phantom's truth
painted with the layer's own paint path), then **Fill between** (key I) interpolates the stomach
on the three slices between. The window is captured on the middle one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def wait(app, condition, seconds: float = 120.0) -> None:
    """Process Qt events until ``condition()`` holds."""
    import time

    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("napari did not get there in time")
        app.processEvents()
        time.sleep(0.02)


def review_window(stack, title: str, project: str | None = None):
    """(app, viewer, Review dock) on ``stack``, reviewed in ``project`` (default: a temporary folder),
    with the bundled model's prediction stored and shown."""
    import tempfile

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_gitseg._widgets.review import ReviewWidget
    from napari_gitseg.layers import image_layer_data
    from napari_gitseg.predict import Predictor
    from napari_gitseg.resources import default_model_path

    prediction = Predictor([default_model_path()]).predict(stack)
    viewer = napari.Viewer(title=title)
    viewer.window._qt_window.resize(1500, 950)
    data, kwargs, _ = image_layer_data(stack)
    viewer.add_image(data, **kwargs)
    widget = ReviewWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Review and correct", area="right")
    widget.set_store_folder(project or tempfile.mkdtemp(prefix="gitseg-shot-"))
    widget._image.value = stack.name
    widget.start_review()
    app = QApplication.instance()
    wait(app, lambda: widget.labels_layer is not None)
    shown = widget.predictions_shown
    widget._hub.prediction_ready.emit(widget.session.stack, prediction)
    wait(app, lambda: widget.predictions_shown > shown)
    return app, viewer, widget


def goto_slice(app, viewer, widget, z: int) -> None:
    """Show slice ``z`` and wait until the Review dock is on it."""
    viewer.dims.current_step = (z, *viewer.dims.current_step[1:])
    wait(app, lambda: widget._z == z)


def save_shot(app, viewer, widget, out: str, name: str) -> Path:
    """Let the window settle, save it as ``out/name``, close the review and the viewer."""
    for _ in range(20):
        app.processEvents()
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    path = path / name
    viewer.screenshot(str(path), canvas_only=False)
    widget.close_review()
    viewer.close()
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="out/screenshots")
    parser.add_argument("--project", default=None, help="project folder (default: a temporary one)")
    args = parser.parse_args(argv)
    from napari_gitseg.classes import LABEL_VALUES
    from napari_gitseg.phantom import make_phantom_case

    case = make_phantom_case(7, n_slices=144)
    app, viewer, widget = review_window(case, "napari-gitseg: Fill between", args.project)
    stomach = case.masks[list(case.classes).index("stomach")]
    z0 = int(np.argmax(stomach.sum(axis=(1, 2))))
    z1 = z0 + 4
    layer = widget.labels_layer
    widget.select_organ("stomach")
    for z in (z0, z1):
        goto_slice(app, viewer, widget, z)
        idx = np.nonzero(stomach[z] & (layer.data[z] != LABEL_VALUES["stomach"]))
        layer.data_setitem((np.full(idx[0].shape, z), *idx), LABEL_VALUES["stomach"])  # the correction
    widget.fill_between().result(timeout=300)
    wait(app, lambda: bool(widget._fills))
    report = widget._unsaved.value  # (moving to another slice clears the dock's line)
    viewer.dims.current_step = (z0 + 2, *viewer.dims.current_step[1:])
    path = save_shot(app, viewer, widget, args.out, "walkthrough_2b_fill_between.png")
    print(f"fill between z{z0}..z{z1}: {report}\nsaved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
