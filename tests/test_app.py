"""``gitseg view`` (napari_gitseg.app): the docks on the opened data, and ``--segment`` as ``make run`` uses it."""

import pytest

from napari_gitseg.app import DOCKS, dock_gitseg
from napari_gitseg.cli import build_parser
from napari_gitseg.layers import layer_role


@pytest.mark.parametrize("segment", [False, True])
def test_the_sample_opens_with_the_docks_and_segment_shows_the_models_masks(
    make_napari_viewer, qtbot, tiny_bundle, segment
):
    viewer = make_napari_viewer()
    widgets = dock_gitseg(viewer, sample=True, model=str(tiny_bundle), segment=segment)
    assert sorted(widgets) == sorted(DOCKS)
    segmenter = widgets["Segment organs"]
    truth = [layer for layer in viewer.layers if layer_role(layer) == "truth"]
    assert len(truth) == 1  # the sample comes with its phantom's true masks
    assert viewer.dims.current_step[0] == viewer.layers[0].data.shape[0] // 2
    if not segment:
        assert not segmenter.running and truth[0].visible
        assert not [layer for layer in viewer.layers if layer_role(layer) == "prediction"]
        return
    assert segmenter.running  # started at once, in the background
    qtbot.waitUntil(lambda: not segmenter.running, timeout=120000)
    predicted = [layer for layer in viewer.layers if layer_role(layer) == "prediction"]
    assert len(predicted) == 1 and predicted[0].visible
    assert predicted[0].data.shape == viewer.layers[0].data.shape
    assert not truth[0].visible  # the model's masks are what one sees; the truth stays one click away


def test_view_takes_segment_and_make_run_asks_for_it():
    from pathlib import Path

    args = build_parser().parse_args(["view", "--sample", "--segment"])
    assert args.segment and args.sample
    assert not build_parser().parse_args(["view"]).segment
    makefile = Path(__file__).resolve().parents[1] / "Makefile"
    run_line = next(line for line in makefile.read_text().splitlines() if "gitseg view" in line)
    assert "--segment" in run_line
