"""What the Train dock shows for each trainer event (``napari_gitseg.retrain.describe``), without Qt."""

from __future__ import annotations

from napari_gitseg import events as ev
from napari_gitseg.retrain import EventView, describe


def test_progress_moves_the_bar_the_plot_and_the_status():
    view = describe(ev.Progress(epoch=2, epochs=4, step=3, steps=4, loss=0.25, fraction=0.634))
    assert view.percent == 63 and view.loss_point == (1.75, 0.25)
    assert view.status == "Training: epoch 2/4, loss 0.250" and not view.done
    phase = describe(ev.Progress(phase="pseudo-labels", fraction=1.7))
    assert phase.status == "Predicting pseudo-labels…" and phase.percent == 100 and phase.loss_point is None
    assert describe(ev.Progress(phase="cleanup", fraction=-1)).status == "Cleanup…"
    assert describe(ev.Progress(phase="cleanup", fraction=-1)).percent == 0


def test_the_verdict_stays_on_the_status_line_when_the_round_ends():
    promoted = describe(ev.Promoted(version="v0002", val_dice=0.81234, previous_version="v0001", previous_dice=0.8))
    assert promoted.outcome == promoted.status == "New model v0002 promoted: validation Dice 0.812 (was 0.800)"
    first = describe(ev.Promoted(version="v0001", val_dice=None))
    assert first.status == "New model v0001 promoted: validation Dice –"
    rejected = describe(ev.Rejected(candidate_dice=0.7, active_dice=0.9))
    assert rejected.outcome == "New model not better (0.700 vs 0.900); the active model stays."
    done = describe(ev.Done(result={"pseudo_written": 3}), outcome=rejected.outcome)
    assert done.done and done.percent == 100
    assert done.status == rejected.outcome + " 3 new pseudo-label(s) wait for review."
    assert describe(ev.Done(result=None), outcome="x").status == "x"


def test_metrics_errors_cancel_and_the_rest():
    assert describe(ev.Metrics(epoch=3, val_dice=0.5)).dice_point == (3.0, 0.5)
    assert describe(ev.Metrics(epoch=3, val_dice=None)) == EventView()
    error = describe(ev.Error(message="disk full"))
    assert error.error == "disk full" and error.status == "Error: disk full" and error.outcome is None
    assert describe(ev.Cancelled()).status == "Cancelled; the active model is unchanged."
    assert describe(ev.Started(kind="round")).status == "Training…"
    assert describe(ev.Log("hello")) == EventView() and describe(object()) == EventView()
