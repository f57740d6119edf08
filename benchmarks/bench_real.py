"""Benchmark: the default model on real MRI, old bundle against new bundle, side by side in one run.

Data (``../shared/data``; the benchmark prints a message and exits 0 when it is absent):

* ``uwmgi-real-slices/``: 18 real UW-Madison slices of 5 patients with the challenge's masks. The
  slices of a case-day are not neighbours, so each is read as a stack of its own (2.5D windows
  replicate it, as for any single slice).
* ``totalsegmentator-examples/example_mr_sm.nii.gz``: a real abdominal MR volume (20 axial slices,
  3 mm) read by the plugin's NIfTI reader (reoriented to the UW convention: axial, anterior up,
  radiological), with TotalSegmentator's labels mapped by ``napari_gitseg.io.TOTALSEG_MR_LABELS``:
  colon 15 -> large_bowel, small bowel 13 + duodenum 14 -> small_bowel, stomach 6 -> stomach.

Measured for each bundle (``--old``, default: ``resources/models/default.*`` as of commit
``OLD_REV``, the phantom-trained model, extracted from git into the output folder; ``--new``,
default: ``resources/models/default.json``):

1. zero-shot on the 18 real slices and on the MR volume;
2. leave-one-patient-out fine-tuning: the 4 other patients' slices become the clinician labels of
   a fresh project whose active model is the bundle, and ONE round runs exactly as the Train
   dock's Retrain button runs it (``retrain.round_job`` -> ``training.worker.run_job`` ->
   ``training.bootstrap.run_round_from_store``: frozen validation split of those labels, fine-tuning
   from the active model, promotion only if better). Scored on the held-out patient: the project's
   active model after the round (the candidate if promoted, else the bundle itself: what the
   clinician would get) and the fine-tuned candidate itself (promoted or not: how good the
   fine-tuning is). Every slice is predicted by a model that never saw its patient;
3. the label-efficiency curve: the same round with only n clinician slices (0, 3, 6, 12, spread
   over the 4 other patients; a fold whose other patients hold fewer uses them all), mean Dice on
   the held-out patients, as ``label_efficiency.png`` (dashed: the candidates).

Metrics (``training.metrics``): "Dice <class>" and "mean Dice" count only the (slice, class) rows
where the organ is in the truth or in the prediction (a model that finds nothing scores 0, not
the share of empty rows); "challenge Dice" is the challenge's per-row mean with empty vs empty = 1,
and "challenge score" = 0.4 Dice + 0.6 (1 - Hausdorff).

Usage: ``python benchmarks/bench_real.py [--old A.json] [--new B.json] [--out DIR] [--quick]``
(``--quick``: a smoke run of about 3 minutes with tiny fine-tuning, not a measurement). The full run
fine-tunes 5 x (1 + len(curve)) = 20 rounds per bundle with the ``cpu`` preset: about 12 minutes of
CPU time for both bundles (a 1-fold run took 135 CPU-seconds for 6 rounds); ``--folds N`` shortens it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle threads sleep (shared CPUs)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
REAL_SLICES = DATA / "uwmgi-real-slices"
TOTALSEG = DATA / "totalsegmentator-examples"
TOTALSEG_MR = (TOTALSEG / "example_mr_sm.nii.gz", TOTALSEG / "example_seg_mr.nii.gz")  # image, labels
OLD_REV = "30df64f"  # the last commit whose resources/models/default.* is the phantom-trained model
DEFAULT_MODEL = ROOT / "resources" / "models" / "default.json"


def _say(text: str) -> None:
    print(text, flush=True)


# ------------------------------------------------------------------------------------------ data
def unique_name(stack):
    """``stack`` (one slice) with its slice id renamed ``<case-day>_z<NNNN>_slice_<NNNN>``: a stack name of its own.

    Stacks are named after their case-day, and the real slices of one case-day are read as
    separate stacks (they are not neighbours), so each needs a name of its own in a label store.
    """
    import dataclasses

    if stack.image.shape[0] != 1:
        raise ValueError(f"{stack.source}: expected a single slice, got {stack.image.shape[0]}")
    sid = stack.slice_ids[0]
    prefix, sep, number = sid.rpartition("_slice_")
    if not sep:
        prefix, number = sid, "0000"
    return dataclasses.replace(stack, slice_ids=[f"{prefix}_z{number}_slice_{number}"],
                               meta={**stack.meta, "original_slice_id": sid})


def read_real_slices(root: Path = REAL_SLICES) -> list:
    """The labelled real slices under ``root`` (challenge layout + train.csv), one stack per slice."""
    from napari_gitseg.io.uwmgi import case_day_folders, read_case_day

    stacks = []
    for case_day in case_day_folders(root):
        for png in sorted((case_day / "scans").glob("slice_*.png")):
            stacks.append(unique_name(read_case_day(case_day, only=[png])))
    return [s for s in stacks if s.masks is not None and bool(s.labelled.any())]


def patient_of(stack) -> str:
    """The patient (``caseN``) a stack belongs to."""
    from training.splits import case_of

    return case_of(stack.slice_ids[0])


def patient_folds(stacks: Sequence) -> list[tuple[str, list, list]]:
    """Leave-one-patient-out: (held-out patient, training stacks, test stacks) per patient, sorted."""
    patients = sorted({patient_of(s) for s in stacks}, key=lambda p: (len(p), p))
    return [(p, [s for s in stacks if patient_of(s) != p], [s for s in stacks if patient_of(s) == p])
            for p in patients]


def choose_slices(stacks: Sequence, n: int, seed: int = 0) -> list:
    """``n`` stacks (at most all) spread over the patients: one per patient in turn, each patient's order shuffled."""
    import numpy as np

    n = min(n, len(stacks))  # a fold whose other patients hold fewer slices uses them all
    rng = np.random.default_rng(seed)
    by_patient: dict[str, list] = {}
    for s in stacks:
        by_patient.setdefault(patient_of(s), []).append(s)
    queues = [[group[i] for i in rng.permutation(len(group))] for _p, group in sorted(by_patient.items())]
    chosen = []
    while len(chosen) < n:
        for queue in queues:
            if queue and len(chosen) < n:
                chosen.append(queue.pop(0))
    return chosen


def read_totalseg_mr(image: Path, labels: Path):
    """The TotalSegmentator MR volume with its labels mapped to the plugin's classes (UW orientation)."""
    from napari_gitseg.io import TOTALSEG_MR_LABELS, read_nifti_labels
    from napari_gitseg.io.nifti import read_nifti

    return read_nifti_labels(labels, TOTALSEG_MR_LABELS, read_nifti(image))


def bundle_from_git(rev: str, dest: Path) -> Path:
    """``resources/models/default.{json,safetensors}`` as of git ``rev``, written under ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for suffix in ("json", "safetensors"):
        try:
            data = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:resources/models/default.{suffix}"],
                                  check=True, capture_output=True).stdout
        except (OSError, subprocess.CalledProcessError) as err:
            raise SystemExit(f"bench_real: cannot take the old bundle from git {rev} ({err}); pass --old BUNDLE.json") from err
        (dest / f"default.{suffix}").write_bytes(data)
    return dest / "default.json"


# ------------------------------------------------------------------------------------------ scoring
def score_cases(cases: Sequence[tuple], classes: Sequence[str]) -> dict[str, float]:
    """Metric rows of (pred, truth, labelled) cases: organ-row Dice per class and mean, challenge Dice and score."""
    from training.metrics import evaluate_cases

    organ = evaluate_cases(cases, classes=tuple(classes), empty_dice=float("nan"))
    challenge = evaluate_cases(cases, classes=tuple(classes))
    rows = {f"Dice {name}": organ["per_class"][name]["dice"] for name in classes}
    rows["mean Dice"] = organ["mean_dice"]
    rows["challenge Dice"] = challenge["mean_dice"]
    rows["challenge score"] = challenge["score"]
    return rows


def predict_cases(bundle: Path, stacks: Sequence, config) -> list[tuple]:
    """(prediction, truth, labelled) of every stack, predicted by ``bundle`` through the Predictor."""
    from training.bootstrap import evaluate_bundle

    _metrics, preds = evaluate_bundle(bundle, stacks, config, keep_predictions=True)
    return [(preds[s.name][0], s.masks, s.labelled) for s in stacks]


# ------------------------------------------------------------------------------------------ GUI rounds
def make_project(folder: Path, bundle: Path, clinician: Sequence, only: dict[str, Sequence[int]] | None = None) -> Path:
    """A project whose label store holds ``clinician`` as clinician labels and whose active model is ``bundle``.

    ``only``: per stack name, the slice indices saved as clinician labels (default: all of them); the
    stacks' other slices are in the project (images, neighbours of the 2.5D windows) but unlabelled.
    """
    from napari_gitseg.model.bundle import load_bundle
    from napari_gitseg.model.registry import ModelRegistry
    from napari_gitseg.project import registry_folder, save_stack_snapshot
    from napari_gitseg.store import LabelStore

    with LabelStore.open(folder) as store:
        for stack in clinician:
            store.register_stack(stack.name, stack.slice_ids, stack.image.shape, stack.spacing, stack.source,
                                 stack.classes)
            save_stack_snapshot(folder, stack)
            chosen = range(len(stack.slice_ids)) if only is None else only.get(stack.name, ())
            store.save_many([{"slice_id": stack.slice_ids[z], "masks": stack.masks[:, z], "source": "clinician"}
                             for z in chosen])
    model, info = load_bundle(bundle)
    ModelRegistry(registry_folder(folder)).add(model, info.config, normalization=info.normalization,
                                               training=info.training, metrics=info.metrics,
                                               notes=f"bundle under test: {bundle}", activate=True)
    return folder


@contextlib.contextmanager
def candidates_kept(dest: Path):
    """While active, a copy of each bundle a round trains goes to ``dest/N/`` (listed in the yielded list).

    The round deletes its work folder, and with it a candidate that was not promoted; the copy lets
    the benchmark score the fine-tuned model itself as well as what the clinician ends up with.
    The round itself runs unchanged (the wrapper only copies files after training returns).
    """
    import training.bootstrap as bootstrap
    from napari_gitseg.model.bundle import bundle_paths

    real_train, kept = bootstrap.train, []

    def train_and_keep(*args, **kwargs):
        result = real_train(*args, **kwargs)
        if result.best_path is not None:
            folder = dest / str(len(kept))
            folder.mkdir(parents=True, exist_ok=True)
            for file in bundle_paths(result.best_path):
                shutil.copy2(file, folder / file.name)
            kept.append(folder / Path(result.best_path).name)
        return result

    bootstrap.train = train_and_keep
    try:
        yield kept
    finally:
        bootstrap.train = real_train


def gui_round(project: Path, preset: str, overrides: dict) -> tuple[Path, dict]:
    """One Retrain round on ``project`` as the Train dock starts it: (active bundle afterwards, summary)."""
    from napari_gitseg.model.registry import ModelRegistry
    from napari_gitseg.project import registry_folder
    from napari_gitseg.retrain import round_job
    from training.worker import load_job, run_job

    job = load_job(round_job(project, preset=preset, keep=0, overrides=overrides))
    summary = run_job(job, emit=lambda _event: None)
    registry = ModelRegistry(registry_folder(project), create=False)
    return registry.path_of(registry.active()), summary


def finetuned_cases(bundle: Path, folds, n: int | None, args, work: Path) -> tuple[list, list, dict]:
    """One GUI round per fold on ``n`` clinician slices (None: all) -> (cases, candidate cases, info).

    ``cases``: the held-out patient predicted by the project's active model after the round;
    ``candidate cases``: by the model the round fine-tuned, promoted or not.
    """
    cases, candidate_cases, rounds = [], [], []
    config = _eval_config(args)
    for i, (patient, train, test) in enumerate(folds):
        clinician = train if n is None else choose_slices(train, n, seed=args.seed + i)
        folder = work / f"{patient}-{'all' if n is None else n}"
        shutil.rmtree(folder, ignore_errors=True)
        t0 = time.perf_counter()
        with candidates_kept(folder / "candidates") as kept:
            active, summary = gui_round(make_project(folder / "project", bundle, clinician), args.preset,
                                        _round_overrides(args))
        rounds.append({"held_out": patient, "clinician": len(clinician), "seconds": time.perf_counter() - t0,
                       **{k: summary[k] for k in ("promoted", "candidate_dice", "baseline_dice", "epochs_run")}})
        held_out = predict_cases(active, test, config)
        cases += held_out
        candidate_cases += held_out if summary["promoted"] else predict_cases(kept[-1], test, config)
        shutil.rmtree(folder, ignore_errors=True)
    return cases, candidate_cases, {"promoted": sum(r["promoted"] for r in rounds), "rounds": len(rounds),
                                    "seconds": sum(r["seconds"] for r in rounds), "folds": rounds}


def _round_overrides(args) -> dict:
    overrides = {"num_threads": args.threads}
    overrides.update(json.loads(args.config) if args.config else {})
    return overrides


def _eval_config(args):
    from training.config import preset

    return preset(args.preset, **_round_overrides(args))


# ------------------------------------------------------------------------------------------ output
def ratio(old: float, new: float) -> float:
    """new / old; inf when only old is 0, nan when both are."""
    if old == 0:
        return float("nan") if new == 0 else float("inf")
    return new / old


def format_table(rows: dict[str, tuple[float, float]], title: str = "metric") -> str:
    """A text table: one row per metric, columns old, new, new/old."""
    width = max([len(title), *(len(k) for k in rows)])
    lines = [f"{title:<{width}}  {'old':>8}  {'new':>8}  {'new/old':>8}", "-" * (width + 30)]
    for name, (old, new) in rows.items():
        lines.append(f"{name:<{width}}  {old:8.4f}  {new:8.4f}  {ratio(old, new):8.2f}")
    return "\n".join(lines)


def side_by_side(old: dict[str, float], new: dict[str, float], prefix: str = "") -> dict[str, tuple[float, float]]:
    """Pair the metric rows of the two bundles: {prefix + name: (old, new)}."""
    if list(old) != list(new):
        raise ValueError(f"the bundles' metric rows differ: {list(old)} vs {list(new)}")
    return {f"{prefix}{name}": (old[name], new[name]) for name in old}


def plot_curve(curve: dict[str, dict[int, float]], path: Path, dashed: Sequence[str] = ()) -> Path:
    """PNG of mean Dice on held-out patients against clinician slices, one line per entry (``dashed`` ones dashed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, points in curve.items():
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], "--o" if name in dashed else "-o", label=name)
    ax.set_xticks(sorted({x for points in curve.values() for x in points}))
    ax.set_xlabel("clinician-labelled real slices (other patients)")
    ax.set_ylabel("mean Dice on the held-out patient")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("Label efficiency on real MRI (leave one patient out)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------ main
def measure(bundle: Path, slices: list, volume, folds, args, work: Path) -> dict:
    """Every figure of one bundle: zero-shot rows, fine-tuned rows, label-efficiency points."""
    from napari_gitseg.model.bundle import read_bundle_info

    classes = read_bundle_info(bundle).config.classes
    config = _eval_config(args)
    out = {"zero-shot real slices": score_cases(predict_cases(bundle, slices, config), classes)}
    if volume is not None:
        out["zero-shot TotalSegmentator MR"] = score_cases(predict_cases(bundle, [volume], config), classes)
    cases, candidates, info = finetuned_cases(bundle, folds, None, args, work)
    out["after a round on the other 4 patients"] = score_cases(cases, classes)
    out["its fine-tuned candidate"] = score_cases(candidates, classes)
    out["rounds"] = {"all": info}
    held_out = [stack for _patient, _train, test in folds for stack in test]  # the patients every curve point scores
    out["zero-shot held-out patients"] = score_cases(predict_cases(bundle, held_out, config), classes)
    zero = out["zero-shot held-out patients"]["mean Dice"]
    curve, candidate_curve = {0: zero}, {0: zero}
    for n in args.curve:
        cases, candidates, info = finetuned_cases(bundle, folds, n, args, work)
        curve[n] = score_cases(cases, classes)["mean Dice"]
        candidate_curve[n] = score_cases(candidates, classes)["mean Dice"]
        out["rounds"][str(n)] = info
        _say(f"    {n:2d} clinician slices: mean Dice {curve[n]:.4f} after the round, {candidate_curve[n]:.4f} "
             f"candidate ({info['promoted']}/{info['rounds']} promoted, {info['seconds']:.0f} s)")
    out["candidate_curve"] = candidate_curve
    out["curve"] = curve
    return out


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", help=f"old bundle (default: resources/models/default.* of git {OLD_REV})")
    p.add_argument("--new", default=str(DEFAULT_MODEL), help="new bundle (default: resources/models/default.json)")
    p.add_argument("--out", default=str(ROOT / "out" / "bench_real"))
    p.add_argument("--preset", default="cpu", help="training preset of the rounds (the Train dock's default: cpu)")
    p.add_argument("--config", help="JSON object of training settings over the preset")
    p.add_argument("--curve", default="3,6,12", help="clinician slices of the label-efficiency curve")
    p.add_argument("--folds", type=int, default=None, help="use only the first N leave-one-patient-out folds")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run: 2 folds, curve 3, tiny rounds; not a measurement")
    args = p.parse_args(argv)
    if args.quick:
        args.folds, args.curve, args.preset = args.folds or 2, "3", "quick"
        args.config = args.config or json.dumps({"epochs": 1, "finetune_epochs": 1, "max_steps_per_epoch": 2})
    args.curve = [int(n) for n in str(args.curve).split(",") if n.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table and write ``OUT/bench_real.json`` and ``OUT/label_efficiency.png``."""
    args = _parse(argv)
    if not REAL_SLICES.is_dir():
        _say(f"bench_real: {REAL_SLICES} not found (no ../shared/data here): skipped")
        return 0
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    old = Path(args.old) if args.old else bundle_from_git(OLD_REV, out / "old_bundle")
    new = Path(args.new)
    t0 = time.perf_counter()
    slices = read_real_slices()
    image, labels = TOTALSEG_MR
    volume = read_totalseg_mr(image, labels) if image.is_file() and labels.is_file() else None
    folds = patient_folds(slices)[: args.folds] if args.folds else patient_folds(slices)
    _say(f"real slices: {len(slices)} of {len(patient_folds(slices))} patients; {len(folds)} leave-one-patient-out "
         f"folds; rounds: preset {args.preset} {_round_overrides(args)}; TotalSegmentator MR: "
         f"{'absent' if volume is None else volume.shape}")
    results = {}
    for name, bundle in (("old", old), ("new", new)):
        _say(f"{name}: {bundle}")
        results[name] = measure(bundle, slices, volume, folds, args, out / "work" / name)
    shutil.rmtree(out / "work", ignore_errors=True)
    png = print_report(results, old, new, out)
    report = {"args": vars(args), "old": str(old), "new": str(new), "results": results,
              "minutes": (time.perf_counter() - t0) / 60}
    (out / "bench_real.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    _say(f"\ntotal {report['minutes']:.1f} min; {png}; details in {out / 'bench_real.json'}")
    return 0


def print_report(results: dict, old: Path, new: Path, out: Path) -> Path:
    """Print the old/new tables and the rounds' promotions; draw the label-efficiency PNG (returned)."""
    sections = [k for k in results["old"] if k not in ("rounds", "curve", "candidate_curve")]
    for section in sections:
        _say("\n" + format_table(side_by_side(results["old"][section], results["new"][section]), section))
    curve_rows = {}
    for n in results["old"]["curve"]:
        curve_rows[f"{n} slices, after the round"] = (results["old"]["curve"][n], results["new"]["curve"][n])
        if n:
            curve_rows[f"{n} slices, candidate"] = (results["old"]["candidate_curve"][n],
                                                    results["new"]["candidate_curve"][n])
    _say("\n" + format_table(curve_rows, "label efficiency (mean Dice, held-out patients)"))
    for name in ("old", "new"):
        _say(f"{name}: rounds promoted " + ", ".join(f"{k}: {v['promoted']}/{v['rounds']}"
                                                     for k, v in results[name]["rounds"].items()))
    lines, dashed = {}, []
    for name, bundle in (("old", old), ("new", new)):
        label = f"{name} ({bundle.parent.name}/{bundle.name})"
        lines[label] = results[name]["curve"]
        lines[f"{label}, candidate"] = results[name]["candidate_curve"]
        dashed.append(f"{label}, candidate")
    return plot_curve(lines, out / "label_efficiency.png", dashed=dashed)


if __name__ == "__main__":
    sys.exit(main())
