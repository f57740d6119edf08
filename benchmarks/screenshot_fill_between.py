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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="out/screenshots")
    parser.add_argument("--project", default=None, help="project folder (default: a temporary one)")
    args = parser.parse_args(argv)
    import tempfile

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_gitseg._widgets.review import ReviewWidget
    from napari_gitseg.classes import LABEL_VALUES
    from napari_gitseg.layers import image_layer_data
    from napari_gitseg.phantom import make_phantom_case
    from napari_gitseg.predict import Predictor
    from napari_gitseg.resources import default_model_path

    case = make_phantom_case(7, n_slices=144)
    prediction = Predictor([default_model_path()]).predict(case)
    viewer = napari.Viewer(title="napari-gitseg: Fill between")
    viewer.window._qt_window.resize(1500, 950)
    data, kwargs, _ = image_layer_data(case)
    viewer.add_image(data, **kwargs)
    widget = ReviewWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Review and correct", area="right")
    widget.set_store_folder(args.project or tempfile.mkdtemp(prefix="gitseg-shot-"))
    widget._image.value = case.name
    widget.start_review()
    app = QApplication.instance()
    wait(app, lambda: widget.labels_layer is not None)
    shown = widget.predictions_shown
    widget._hub.prediction_ready.emit(widget.session.stack, prediction)
    wait(app, lambda: widget.predictions_shown > shown)
    stomach = case.masks[list(case.classes).index("stomach")]
    z0 = int(np.argmax(stomach.sum(axis=(1, 2))))
    z1 = z0 + 4
    layer = widget.labels_layer
    widget.select_organ("stomach")
    for z in (z0, z1):
        viewer.dims.current_step = (z, *viewer.dims.current_step[1:])
        wait(app, lambda z=z: widget._z == z)
        idx = np.nonzero(stomach[z] & (layer.data[z] != LABEL_VALUES["stomach"]))
        layer.data_setitem((np.full(idx[0].shape, z), *idx), LABEL_VALUES["stomach"])  # the correction
    widget.fill_between().result(timeout=300)
    wait(app, lambda: bool(widget._fills))
    viewer.dims.current_step = (z0 + 2, *viewer.dims.current_step[1:])
    for _ in range(20):
        app.processEvents()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "walkthrough_2b_fill_between.png"
    viewer.screenshot(str(path), canvas_only=False)
    print(f"fill between z{z0}..z{z1}: {widget._unsaved.value}\nsaved {path}")
    widget.close_review()
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
