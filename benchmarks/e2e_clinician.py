"""End to end as a clinician, in a real napari window (run under Xvfb on a headless machine).

Open a phantom case folder (drag-and-drop path) -> segment with the model -> start review ->
correct three slices by painting -> accept them -> one Retrain round in the background
worker -> the promoted model re-predicts unreviewed slices -> export the CSV -> close ->
reopen and find everything. Saves a screenshot at each step.

    xvfb-run -a .venv/bin/python benchmarks/e2e_clinician.py --out out/e2e
The test suite runs the same flow with a short configuration (tests/test_e2e_clinician.py).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


def _wait(app, predicate, timeout: float, what: str) -> float:
    t0 = time.perf_counter()
    while not predicate():
        app.processEvents()
        time.sleep(0.01)
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"e2e: timed out waiting for {what}")
    return time.perf_counter() - t0


def _show_dock(widget) -> None:
    """Bring the tabbed dock holding ``widget`` to the front (for the screenshots)."""
    from qtpy.QtWidgets import QDockWidget

    w = widget.native
    while w is not None and not isinstance(w, QDockWidget):
        w = w.parentWidget()
    if w is not None:
        w.raise_()


def _is_reviewed(store, slice_id: str) -> bool:
    """Whether the store on disk (read through a separate connection) holds ``slice_id`` as reviewed."""
    record = store.latest(slice_id)
    return bool(record is not None and record.reviewed)


@dataclass
class _Flow:
    """What the steps of the clinician flow share: the app, the first viewer's docks, the answer, the report."""

    app: object
    viewer: object
    segment: object
    review: object
    train: object
    truth: np.ndarray
    out: Path
    project: Path
    case_dir: Path
    screenshots: bool
    report: dict = field(default_factory=lambda: {"steps": [], "step_seconds": {}})
    started: float = field(default_factory=time.perf_counter)

    def step(self, name: str, viewer=None) -> None:
        """Record a finished step, the seconds since the previous one, and its screenshot."""
        self.report["steps"].append(name)
        now = time.perf_counter()
        self.report["step_seconds"][name] = round(now - self.started, 2)
        self.started = now
        if self.screenshots:
            (viewer or self.viewer).screenshot(
                str(self.out / f"{len(self.report['steps']):02d}_{name}.png"), canvas_only=False
            )


def _case_folder(out: Path, real, seed: int, n_slices: int, size: int, data_root: Path | None):
    """(folder the viewer opens, the real label volume's masks or None for a phantom case)."""
    from napari_gitseg.io import read_stack
    from napari_gitseg.phantom import write_phantom_dataset

    if real is None:
        data_root = data_root or out / "data"
        write_phantom_dataset(data_root, n_cases=1, seed=seed, n_slices=n_slices, size=(size, size))
        return data_root / "train" / "case1", None
    from napari_gitseg.io import TOTALSEG_MR_LABELS, read_nifti_labels

    case_dir = Path(real[0])
    return case_dir, read_nifti_labels(real[1], TOTALSEG_MR_LABELS, read_stack(case_dir)).masks


def _segment(flow: _Flow) -> None:
    """1. Segment the opened image with the model."""
    from training.metrics import evaluate

    t0 = time.perf_counter()
    flow.segment._image.value = flow.viewer.layers[0].name
    flow.segment.run()
    _wait(flow.app, lambda: not flow.segment.running, 900, "the first prediction")
    flow.report["predict_seconds"] = round(time.perf_counter() - t0, 2)
    flow.report["dice_before"] = round(evaluate(flow.segment.last_prediction.masks, flow.truth)["mean_dice"], 4)
    flow.step("segmented")


def _correct_three_slices(flow: _Flow) -> tuple[list[int], dict]:
    """2. Review: the store takes the prediction; paint three slices right and Accept each.
    Returns (the corrected slices, their masks as accepted)."""
    from napari_gitseg.classes import masks_to_labels
    from napari_gitseg.store import LabelStore

    app, review, truth = flow.app, flow.review, flow.truth
    _show_dock(review)
    review._image.value = flow.viewer.layers[0].name
    review.start_review()
    _wait(app, lambda: review.labels_layer is not None, 60, "the review layer")
    flow.segment._hub.prediction_ready.emit(review.session.stack, flow.segment.last_prediction)
    _wait(app, lambda: review.predictions_shown > 0, 60, "predictions stored and shown")
    layer = review.labels_layer
    organ_slices = np.flatnonzero(truth.any(axis=(0, 2, 3)))
    chosen = [int(z) for z in organ_slices[np.linspace(0, len(organ_slices) - 1, 3).astype(int)]]
    on_disk = LabelStore.open(flow.project, readonly=True)  # checks that each Accept reached the disk
    for z in chosen:
        step_z = list(flow.viewer.dims.current_step)
        step_z[0] = z
        flow.viewer.dims.current_step = tuple(step_z)
        app.processEvents()
        target = masks_to_labels(truth[:, z])
        diff = np.nonzero(layer.data[z] != target)
        for value in np.unique(target[diff]):  # paint each organ's missing pixels, erase the wrong ones
            sel = target[diff] == value
            layer.data_setitem((np.full(sel.sum(), z), diff[0][sel], diff[1][sel]), int(value))
        t_accept = time.perf_counter()
        review.accept_slice()  # saves as reviewed, then shows the least-confident unreviewed slice
        _wait(app, lambda z=z: review._current_z() != z, 60, f"the next slice after accepting slice {z}")
        flow.report.setdefault("accept_to_next_slice_s", []).append(round(time.perf_counter() - t_accept, 3))
        _wait(app, lambda z=z: _is_reviewed(on_disk, review.session.stack.slice_ids[z]), 60, f"accept of slice {z}")
    on_disk.close()
    review.flush()
    corrected = {z: review.session.masks[:, z].copy() for z in chosen}
    review._goto(chosen[1])  # back to a corrected slice for the picture
    t_pause = time.perf_counter()
    while time.perf_counter() - t_pause < 0.5:  # let the slice's version list arrive
        app.processEvents()
        time.sleep(0.01)
    flow.step("corrected")
    flow.report["corrected_slices"] = chosen
    return chosen, corrected


def _retrain(flow: _Flow, preset: str, chosen: list[int], corrected: dict) -> None:
    """3. One Retrain round in the background worker; the corrected slices must survive re-prediction."""
    from training.metrics import evaluate

    app, segment, review, train = flow.app, flow.segment, flow.review, flow.train
    first_prediction = segment.last_prediction
    _show_dock(train)
    train.set_project(str(flow.project))
    train._preset.value = preset
    shown_before = review.predictions_shown  # before the round: a small stack is re-predicted in a blink
    t0 = time.perf_counter()
    train.retrain()
    _wait(app, lambda: train.running, 10, "the round to start")
    _wait(app, lambda: not train.running, 1800, "the retrain round")
    flow.report["round_seconds"] = round(time.perf_counter() - t0, 2)
    kinds = [type(e).__name__ for e in train.events_seen]
    flow.report["events"] = sorted(set(kinds))
    flow.report["promoted"] = promoted = "Promoted" in kinds
    if "Error" in kinds:
        raise RuntimeError(f"retrain failed: {[e for e in train.events_seen if type(e).__name__ == 'Error']}")
    app.processEvents()
    verdict = train._status.native  # the round's verdict: every wrapped line shows (none cut off)
    flow.report["verdict_lines_shown"] = verdict.height() >= verdict.heightForWidth(verdict.width())
    flow.step("retrained")
    _show_dock(segment)
    if promoted:  # the Segment dock re-predicts; the Review dock keeps the corrected slices
        # (a small stack may be re-predicted before this line runs: wait for a new result, not for "running")
        _wait(
            app,
            lambda: segment.last_prediction is not first_prediction and not segment.running,
            900,
            "re-prediction by the promoted model",
        )
        _wait(app, lambda: review.predictions_shown > shown_before, 60, "re-predicted slices stored and shown")
        flow.report["dice_after"] = round(evaluate(segment.last_prediction.masks, flow.truth)["mean_dice"], 4)
    for z in chosen:  # a prediction never overwrites a clinician's correction
        assert np.array_equal(review.session.masks[:, z], corrected[z]), f"corrected slice {z} changed"
    flow.step("repredicted")


def _export_close_reopen(flow: _Flow, chosen: list[int]) -> None:
    """4. Export the reviewed masks, close the viewer, reopen the project: the corrections are there."""
    from napari_gitseg.app import build_viewer
    from napari_gitseg.classes import masks_to_labels
    from napari_gitseg.io import read_masks, read_stack

    app, review = flow.app, flow.review
    csv = flow.out / "reviewed.csv"
    review.export_to(str(csv)).result(timeout=60)
    exported = read_masks(csv, read_stack(flow.case_dir)).masks
    flow.report["exported_slices"] = [int(z) for z in np.flatnonzero(exported.any(axis=(0, 2, 3)))]
    review.close_review()
    flow.viewer.close()
    app.processEvents()

    viewer2, widgets2 = build_viewer(path=str(flow.case_dir), store=str(flow.project))
    review2 = widgets2["Review and correct"]
    review2._image.value = viewer2.layers[0].name
    _show_dock(review2)
    review2.start_review()
    _wait(app, lambda: review2.labels_layer is not None, 60, "the reopened review")
    for z in chosen:
        assert (review2.labels_layer.data[z] == masks_to_labels(flow.truth[:, z])).all(), f"slice {z} lost on reopen"
    flow.report["reopened_ok"] = True
    flow.report["reviewed_after_reopen"] = review2.session.counts()["reviewed"]
    flow.step("reopened", viewer2)
    review2.close_review()
    viewer2.close()


def run_e2e(
    out: Path,
    *,
    model: str | None = None,
    n_slices: int = 144,
    size: int = 266,
    preset: str = "quick",
    seed: int = 21,
    screenshots: bool = True,
    data_root: Path | None = None,
    real: tuple[Path, Path] | None = None,
    project: Path | None = None,
) -> dict:
    """Run the whole clinician flow; returns a report dict (also written to out/report.json).

    ``real=(image.nii.gz, labels.nii.gz)`` runs it on a real MR volume instead of a phantom
    case, with the label volume (TotalSegmentator's MR classes) playing the clinician's answer.
    ``project``: the project folder (default ``out/project``; it must not hold a project yet).
    """
    from qtpy.QtWidgets import QApplication

    from napari_gitseg.app import build_viewer
    from napari_gitseg.resources import default_model_path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    case_dir, real_truth = _case_folder(out, real, seed, n_slices, size, data_root)
    project = Path(project).expanduser() if project is not None else out / "project"
    if project.is_dir() and any(project.iterdir()):
        raise SystemExit(f"{project}: not empty (the walkthrough starts from a new project)")
    model = model or default_model_path()
    if model is None:
        raise SystemExit("no model: pass --model or build resources/models/default.json")
    app = QApplication.instance() or QApplication([])
    viewer, widgets = build_viewer(path=str(case_dir), model=str(model), store=str(project))
    if real is None:
        truth_layer = viewer.layers[1]  # the case's train.csv masks, opened with the folder
        truth = truth_layer.metadata["gitseg"]["masks"]
        truth_layer.visible = False  # the clinician does not see the answer
    else:
        truth = real_truth
    flow = _Flow(
        app,
        viewer,
        *(widgets[n] for n in ("Segment organs", "Review and correct", "Retrain model")),
        truth=truth,
        out=out,
        project=project,
        case_dir=case_dir,
        screenshots=screenshots,
    )
    app.processEvents()
    flow.step("opened")
    _segment(flow)
    chosen, corrected = _correct_three_slices(flow)
    _retrain(flow, preset, chosen, corrected)
    _export_close_reopen(flow, chosen)
    (out / "report.json").write_text(json.dumps(flow.report, indent=2))
    return flow.report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/e2e")
    parser.add_argument("--model", default=None)
    parser.add_argument("--slices", type=int, default=144)
    parser.add_argument("--size", type=int, default=266)
    parser.add_argument("--preset", default="quick")
    parser.add_argument(
        "--real",
        nargs=2,
        metavar=("IMAGE", "LABELS"),
        help="a real MR NIfTI volume and its label volume (TotalSegmentator MR classes)",
    )
    parser.add_argument("--project", default=None, help="project folder (default: OUT/project); must be new")
    args = parser.parse_args()
    report = run_e2e(
        Path(args.out),
        model=args.model,
        n_slices=args.slices,
        size=args.size,
        preset=args.preset,
        real=tuple(Path(p) for p in args.real) if args.real else None,
        project=args.project,
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
