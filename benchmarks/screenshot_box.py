"""Screenshot of the Box tool on a real slice in a real napari window (for the README walkthrough).

Run:  xvfb-run -a .venv/bin/python benchmarks/screenshot_box.py --out resources/screenshots

A real UW-Madison scan (``../shared/data/uwmgi-real-volumes``, case146 day 25) is opened and segmented
with the bundled model; in the Review dock the box tool (B) is turned on and a box is dragged around
the stomach on the slice where the model drew it worst (of those with a large stomach; the drag is
played in through the layer's own drag callback, as a mouse does); LiteMedSAM's mask replaces the stomach
inside the box. The window is captured with the box shown.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from screenshot_fill_between import goto_slice, review_window, save_shot, wait  # noqa: E402

VOLUMES = REPO.parent / "shared" / "data" / "uwmgi-real-volumes"


def drag(layer, widget, z: int, first, second, moves: int = 5, between=None) -> float:
    """Play a left-button drag from ``first`` to ``second`` ((y, x) pixels of slice ``z``) into the box tool
    through its own drag callback: a press, ``moves`` moves (``between()`` after each, e.g. to let the
    event loop run), the release. Returns the time of the release (``time.perf_counter``)."""

    def at(kind, point) -> dict:
        return {"type": kind, "button": 1, "modifiers": (), "position": tuple(layer.data_to_world((z, *point)))}

    event = SimpleNamespace(**at("mouse_press", first))
    gen = widget._box_drag(layer, event)
    next(gen)
    for i in range(1, moves + 1):
        event.__dict__.update(at("mouse_move", np.array(first) + i / moves * (np.array(second) - first)))
        next(gen)
        if between is not None:
            between()
    event.__dict__.update(at("mouse_release", second))
    released = time.perf_counter()
    for _ in gen:
        pass
    return released


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="out/screenshots")
    parser.add_argument("--case", default="case146_day25")
    parser.add_argument("--project", default=None, help="project folder (default: a temporary one)")
    args = parser.parse_args(argv)
    from napari_gitseg.classes import LABEL_VALUES
    from napari_gitseg.io import read_stacks
    from napari_gitseg.review.boxes import mask_box

    stack = next(s for s in read_stacks(VOLUMES) if s.name == args.case)
    app, viewer, widget = review_window(stack, "napari-gitseg: a box on a real slice", args.project)
    stomach = stack.masks[list(stack.classes).index("stomach")]
    layer = widget.labels_layer
    big = [z for z in range(len(stomach)) if stomach[z].sum() > 1000]
    z = min(big, key=lambda z: _dice(layer.data[z] == LABEL_VALUES["stomach"], stomach[z]))  # the model's worst
    goto_slice(app, viewer, widget, z)
    before = float(_dice(layer.data[z] == LABEL_VALUES["stomach"], stomach[z]))
    widget.select_organ("stomach")
    widget.toggle_box_mode()
    wait(app, lambda: (widget.session.name, z) in widget._boxes.segmenter.cache, 300)  # computed ahead
    box = mask_box(stomach[z]).grown(4, stomach.shape[1:])
    shown = widget.box_results
    drag(layer, widget, z, (box.y0, box.x0), (box.y1 - 1, box.x1 - 1))
    wait(app, lambda: widget.box_results > shown, 120)
    after = float(_dice(layer.data[z] == LABEL_VALUES["stomach"], stomach[z]))
    layer.opacity = 0.4  # the image under the mask readable

    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()  # the prediction's notification would cover the slider
    end = time.monotonic() + 1
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.05)
    path = save_shot(app, viewer, widget, args.out, "walkthrough_2d_box.png")
    print(f"{args.case} slice {z}: stomach Dice {before:.3f} (model) -> {after:.3f} (one box)\nsaved {path}")
    return 0


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * (a & b).sum() / max(1, a.sum() + b.sum())


if __name__ == "__main__":
    raise SystemExit(main())
