"""Screenshot of Learn from corrections in a real napari window (the real MR volume, or the phantom).

Run:  xvfb-run -a .venv/bin/python benchmarks/screenshot_learn.py --out out/screenshots
      xvfb-run -a .venv/bin/python benchmarks/screenshot_learn.py --phantom --out resources/screenshots

Without ``--phantom`` it needs ../shared/data/totalsegmentator-examples (the picture shows real
data: keep it under ``out/``, not in the repository). The volume (or a 144-slice phantom case) is
segmented with the bundled model; in the Review dock every 4th slice is corrected to the truth
(painted with the layer's own paint path) and accepted, then **Learn from corrections** (Shift+L)
relabels the other slices. The window is captured on a slice between two corrected ones, with the
dock's report.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from screenshot_fill_between import goto_slice, review_window, save_shot, wait  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="out/screenshots")
    parser.add_argument("--every", type=int, default=4)
    parser.add_argument("--phantom", action="store_true", help="a phantom case instead of the real MR volume")
    parser.add_argument("--project", default=None, help="project folder (default: a temporary one)")
    args = parser.parse_args(argv)
    from real_data import TOTALSEG_MR, read_totalseg_mr

    from napari_gitseg.phantom import make_phantom_case

    if not args.phantom and not TOTALSEG_MR[0].is_file():
        raise SystemExit(f"needs {TOTALSEG_MR[0]} (../shared is not here); or pass --phantom")
    from napari_gitseg.classes import masks_to_labels

    volume = make_phantom_case(7, n_slices=144) if args.phantom else read_totalseg_mr(*TOTALSEG_MR)
    app, viewer, widget = review_window(volume, "napari-gitseg: Learn from corrections", args.project)
    truth, layer = masks_to_labels(volume.masks, tuple(volume.classes)), widget.labels_layer
    for z in range(0, len(truth), args.every):
        goto_slice(app, viewer, widget, z)
        idx = np.nonzero(layer.data[z] != truth[z])
        layer.data_setitem((np.full(idx[0].shape, z), *idx), truth[z][idx])  # the clinician's correction
        widget.accept_slice()
    widget.flush()  # the accepts are stored ...
    end = time.monotonic() + 2.0
    while time.monotonic() < end:  # ... and their jumps to the next least confident slice have landed
        app.processEvents()
        time.sleep(0.02)
    goto_slice(app, viewer, widget, 2 + args.every * (len(truth) // (2 * args.every)))
    widget.learn_from_corrections().result(timeout=600)
    wait(app, lambda: "relabelled" in widget._unsaved.value or "Nothing" in widget._unsaved.value)
    report = f"slice {widget._z}: {widget._unsaved.value}"
    path = save_shot(
        app, viewer, widget, args.out, "walkthrough_2c_learn.png" if args.phantom else "learn_from_corrections.png"
    )
    print(f"{report}\nsaved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
