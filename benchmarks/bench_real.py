"""Benchmark: the default model on real MRI it never saw, old bundle against new, side by side in one run.

Usage: ``python benchmarks/bench_real.py --folds out/folds [--old A.json] [--new B.json] [--out DIR]``
(about 3 minutes without ``--slice-rounds``). Data from ``../shared/data`` (absent: a message, exit 0):
four real volumes with the challenge's masks (``uwmgi-real-volumes/``, scored by 3-D Dice per organ),
18 isolated real slices of 5 more patients (``uwmgi-real-slices/``, per (slice, organ) row) and
TotalSegmentator's example MR volume (zero-shot for every bundle).

Leave-patient-out: a figure on a real patient comes from a model that never saw that patient. The
default model learnt from every real scan above, so each patient is scored with a **fold bundle**
(``--folds``: trained by ``benchmarks/train_default_model.sh`` with ``LEAVE_OUT=...``), the first whose
JSON (``training.data.real_image_patients``) does not list that patient; a bundle that does not record
its real patients is refused. The old bundle (``--old``, default: ``resources/models/default.*`` of git
``OLD_REV``, the last model trained without real images) never saw any.

``--slice-rounds`` adds leave-one-patient-out GUI rounds on the 18 slices (each bundle fine-tuned on
the other patients' slices) and the label-efficiency curve with 3 / 6 / 12 of them. The data and the
metrics (``training.metrics``) in detail: ``docs/benchmarks.md``. The clinician's loop on a whole real
scan is ``benchmarks/bench_real_loop.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
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
sys.path.insert(0, str(ROOT / "benchmarks"))
OLD_REV = "ce9c1b9"  # the last commit whose default model learnt no real image (and the bowels swapped)
DEFAULT_MODEL = ROOT / "resources" / "models" / "default.json"

from real_data import (  # noqa: E402  (the real data and which fold bundle may score which patient)
    REAL_SLICES,
    bundle_for,
    choose_slices,
    fold_bundles,
    patient_folds,
    patient_of,
    read_data,
)


def _say(text: str) -> None:
    print(text, flush=True)


def bundle_from_git(rev: str, dest: Path) -> Path:
    """``resources/models/default.{json,safetensors}`` as of git ``rev``, written under ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for suffix in ("json", "safetensors"):
        try:
            data = subprocess.run(
                ["git", "-C", str(ROOT), "show", f"{rev}:resources/models/default.{suffix}"],
                check=True,
                capture_output=True,
            ).stdout
        except (OSError, subprocess.CalledProcessError) as err:
            raise SystemExit(
                f"bench_real: cannot take the old bundle from git {rev} ({err}); pass --old BUNDLE.json"
            ) from err
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


def score_volume(pred, truth, labelled, classes: Sequence[str]) -> dict[str, float]:
    """3-D Dice per organ (a volume's pixels pooled; NaN where the organ is in neither) and their mean."""
    import numpy as np

    from training.metrics import volume_dice

    dice = volume_dice(pred, truth, labelled)
    rows = {f"3-D Dice {name}": float(d) for name, d in zip(classes, dice, strict=True)}
    rows["mean 3-D Dice"] = float(np.nanmean(dice)) if not np.isnan(dice).all() else float("nan")
    return rows


def volume_rows(pick: dict[str, Path | None], volumes: Sequence, config, classes: Sequence[str]) -> dict[str, dict]:
    """{volume: 3-D Dice rows} of each volume predicted by the bundle ``pick`` names for its patient
    (volumes whose patient has no bundle are left out)."""
    out = {}
    for stack in volumes:
        bundle = pick.get(patient_of(stack))
        if bundle is not None:
            ((pred, truth, labelled),) = predict_cases(bundle, [stack], config)
            out[stack.name] = score_volume(pred, truth, labelled, classes)
    return out


def mean_rows(tables: Sequence[dict[str, float]]) -> dict[str, float]:
    """Row-wise mean of metric rows (NaN rows left out of their row's mean)."""
    import numpy as np

    return {key: float(np.nanmean([t[key] for t in tables])) for key in tables[0]} if tables else {}


@functools.lru_cache(maxsize=8)
def _cached_predictor(bundle: str, _stamp: tuple, device, batch_size: int, threads):
    from napari_gitseg.predict import Predictor

    return Predictor([Path(bundle)], device=device, batch_size=batch_size, num_threads=threads)


def bundle_predictor(bundle: str, device, batch_size: int, threads):
    """One Predictor per bundle file for the whole run (building its frozen graph takes seconds); a file
    rewritten at the same path (a project folder made again) gets a new one."""
    stat = Path(bundle).stat()
    return _cached_predictor(bundle, (stat.st_mtime_ns, stat.st_size), device, batch_size, threads)


def predict_cases(bundle: Path, stacks: Sequence, config) -> list[tuple]:
    """(prediction, truth, labelled) of every stack, predicted by ``bundle`` through the Predictor."""
    import numpy as np

    predictor = bundle_predictor(str(bundle), config.device, config.val_batch_size, config.num_threads)
    out = []
    for s in stacks:
        labelled = np.ones(s.image.shape[0], bool) if s.labelled is None else s.labelled
        out.append((predictor.predict(s).masks, s.masks, labelled))
    return out


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
            store.register_stack(
                stack.name, stack.slice_ids, stack.image.shape, stack.spacing, stack.source, stack.classes
            )
            save_stack_snapshot(folder, stack)
            chosen = range(len(stack.slice_ids)) if only is None else only.get(stack.name, ())
            store.save_many(
                [{"slice_id": stack.slice_ids[z], "masks": stack.masks[:, z], "source": "clinician"} for z in chosen]
            )
    model, info = load_bundle(bundle)
    ModelRegistry(registry_folder(folder)).add(
        model,
        info.config,
        normalization=info.normalization,
        training=info.training,
        metrics=info.metrics,
        notes=f"bundle under test: {bundle}",
        activate=True,
    )
    return folder


@contextlib.contextmanager
def candidates_kept(dest: Path):
    """While active, a copy of each bundle a round trains goes to ``dest/N/`` (listed in the yielded list).

    The round deletes its work folder, and with it a candidate that was not promoted; the copy lets
    the benchmark score the fine-tuned model itself as well as what the clinician ends up with.
    The round itself runs unchanged (the wrapper only copies files after training returns).
    """
    import training.store_round as store_round
    from napari_gitseg.model.bundle import bundle_paths

    real_train, kept = store_round.train, []

    def train_and_keep(*args, **kwargs):
        result = real_train(*args, **kwargs)
        if result.best_path is not None:
            folder = dest / str(len(kept))
            folder.mkdir(parents=True, exist_ok=True)
            for file in bundle_paths(result.best_path):
                shutil.copy2(file, folder / file.name)
            kept.append(folder / Path(result.best_path).name)
        return result

    store_round.train = train_and_keep
    try:
        yield kept
    finally:
        store_round.train = real_train


def gui_round(project: Path, preset: str, overrides: dict, keep: int = 0) -> tuple[Path, dict]:
    """One Retrain round on ``project`` as the Train dock starts it: (active bundle afterwards, summary);
    ``keep``: pseudo-labels the round saves for the next one."""
    from napari_gitseg.model.registry import ModelRegistry
    from napari_gitseg.project import registry_folder
    from napari_gitseg.retrain import round_job
    from training.worker import load_job, run_job

    job = load_job(round_job(project, preset=preset, keep=keep, overrides=overrides))
    summary = run_job(job, emit=lambda _event: None)
    registry = ModelRegistry(registry_folder(project), create=False)
    return registry.path_of(registry.active()), summary


def finetuned_cases(bundle: Path, folds, n: int | None, args, work: Path) -> tuple[list, list, dict]:
    """One GUI round per fold on ``n`` clinician slices (None: all) -> (cases, candidate cases, info).

    ``cases``: the held-out patient predicted by the project's active model after the round;
    ``candidate cases``: by the model the round fine-tuned, promoted or not.
    """
    cases, candidate_cases, rounds = [], [], []
    config = eval_config(args)
    for i, (patient, train, test) in enumerate(folds):
        clinician = train if n is None else choose_slices(train, n, seed=args.seed + i)
        folder = work / f"{patient}-{'all' if n is None else n}"
        shutil.rmtree(folder, ignore_errors=True)
        t0 = time.perf_counter()
        with candidates_kept(folder / "candidates") as kept:
            active, summary = gui_round(
                make_project(folder / "project", bundle, clinician), args.preset, round_overrides(args)
            )
        rounds.append(
            {
                "held_out": patient,
                "clinician": len(clinician),
                "seconds": time.perf_counter() - t0,
                **{k: summary[k] for k in ("promoted", "candidate_dice", "baseline_dice", "epochs_run")},
            }
        )
        held_out = predict_cases(active, test, config)
        cases += held_out
        candidate_cases += held_out if summary["promoted"] else predict_cases(kept[-1], test, config)
        shutil.rmtree(folder, ignore_errors=True)
    return (
        cases,
        candidate_cases,
        {
            "promoted": sum(r["promoted"] for r in rounds),
            "rounds": len(rounds),
            "seconds": sum(r["seconds"] for r in rounds),
            "folds": rounds,
        },
    )


def round_overrides(args) -> dict:
    overrides = {"num_threads": args.threads}
    overrides.update(json.loads(args.config) if args.config else {})
    return overrides


def eval_config(args):
    from training.config import preset

    return preset(args.preset, **round_overrides(args))


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
def measure_rounds(bundle: Path, slices: list, folds, args, work: Path) -> dict:
    """``--slice-rounds``: GUI rounds on the other patients' real slices, and the label-efficiency points."""
    from napari_gitseg.model.bundle import read_bundle_info

    classes = read_bundle_info(bundle).config.classes
    config = eval_config(args)
    out = {}
    cases, candidates, info = finetuned_cases(bundle, folds, None, args, work)
    out["after a round on the other 4 patients"] = score_cases(cases, classes)
    out["its fine-tuned candidate"] = score_cases(candidates, classes)
    out["rounds"] = {"all": info}
    held_out = [stack for _patient, _train, test in folds for stack in test]  # the patients every curve point scores
    zero = score_cases(predict_cases(bundle, held_out, config), classes)["mean Dice"]
    curve, candidate_curve = {0: zero}, {0: zero}
    for n in args.curve:
        cases, candidates, info = finetuned_cases(bundle, folds, n, args, work)
        curve[n] = score_cases(cases, classes)["mean Dice"]
        candidate_curve[n] = score_cases(candidates, classes)["mean Dice"]
        out["rounds"][str(n)] = info
        _say(
            f"    {n:2d} clinician slices: mean Dice {curve[n]:.4f} after the round, {candidate_curve[n]:.4f} "
            f"candidate ({info['promoted']}/{info['rounds']} promoted, {info['seconds']:.0f} s)"
        )
    out["candidate_curve"] = candidate_curve
    out["curve"] = curve
    return out


def slices_by_pick(picks: dict[str, Path | None], slices: Sequence) -> list[tuple[Path, list]]:
    """The real slices grouped by the bundle that scores them (their patient's pick; unpicked ones left out)."""
    groups: dict[Path, list] = {}
    for s in slices:
        bundle = picks.get(patient_of(s))
        if bundle is not None:
            groups.setdefault(bundle, []).append(s)
    return list(groups.items())


def zero_shot(old: Path, new: Path, folds: list[Path], data: dict, config) -> dict:
    """The leave-patient-out tables: real volumes (3-D Dice), real slices and the MR volume, old vs new."""
    from napari_gitseg.model.bundle import read_bundle_info
    from training.real_images import patients_of

    classes = read_bundle_info(new).config.classes
    candidates = [*folds, new]
    picks = {p: bundle_for([p], candidates) for p in patients_of([*data["volumes"], *data["slices"]])}
    for who, bundle in picks.items():
        _say(f"  new model for {who}: {bundle if bundle is not None else 'none that never saw it: left out'}")
    out = {"picks": {k: None if v is None else str(v) for k, v in picks.items()}, "volumes": {}}
    scored = {p: b for p, b in picks.items() if b is not None}
    for name, pick in (("old", dict.fromkeys(scored, old)), ("new", scored)):
        rows = volume_rows(pick, data["volumes"], config, classes)
        out["volumes"][name] = {**rows, "mean over the volumes": mean_rows(list(rows.values()))}
    groups = slices_by_pick(scored, data["slices"])
    if groups:
        kept = [s for _b, group in groups for s in group]
        out["real slices"] = {
            "old": score_cases(predict_cases(old, kept, config), classes),
            "new": score_cases([c for b, group in groups for c in predict_cases(b, group, config)], classes),
        }
        out["real slices scored"] = len(kept)
    if data["mr"] is not None:  # no model learns from it: zero-shot for both
        out["TotalSegmentator MR"] = {}
        for name, bundle in (("old", old), ("new", new)):
            ((pred, truth, labelled),) = predict_cases(bundle, [data["mr"]], config)
            out["TotalSegmentator MR"][name] = {
                **score_volume(pred, truth, labelled, classes),
                **score_cases([(pred, truth, labelled)], classes),
            }
    return out


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", help=f"old bundle (default: resources/models/default.* of git {OLD_REV})")
    p.add_argument("--new", default=str(DEFAULT_MODEL), help="new bundle (default: resources/models/default.json)")
    p.add_argument(
        "--folds",
        nargs="*",
        default=[],
        help="leave-patient-out bundles of the new recipe (JSON files or folders of FOLD/default.json)",
    )
    p.add_argument("--out", default=str(ROOT / "out" / "bench_real"))
    p.add_argument("--slice-rounds", action="store_true", help="also the GUI rounds on the 18 real slices")
    p.add_argument("--preset", default="cpu", help="training preset of the rounds (the Train dock's default: cpu)")
    p.add_argument("--config", help="JSON object of training settings over the preset")
    p.add_argument("--curve", default="3,6,12", help="clinician slices of the label-efficiency curve")
    p.add_argument("--folds-limit", type=int, default=None, help="--slice-rounds: only the first N patient folds")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run of --slice-rounds: 2 folds, curve 3, tiny rounds")
    args = p.parse_args(argv)
    if args.quick:
        args.slice_rounds, args.folds_limit, args.curve, args.preset = True, args.folds_limit or 2, "3", "quick"
        args.config = args.config or json.dumps({"epochs": 1, "finetune_epochs": 1, "max_steps_per_epoch": 2})
    args.curve = [int(n) for n in str(args.curve).split(",") if n.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the tables and write ``OUT/bench_real.json`` (and the curve PNG)."""
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
    data = read_data()
    _say(
        f"real volumes: {[s.name for s in data['volumes']]}; real slices: {len(data['slices'])}; TotalSegmentator "
        f"MR: {'absent' if data['mr'] is None else data['mr'].shape}; old {old}; new {new}"
    )
    results = zero_shot(old, new, fold_bundles(args.folds), data, eval_config(args))
    print_zero_shot(results)
    if args.slice_rounds:
        folds = patient_folds(data["slices"])
        folds = folds[: args.folds_limit] if args.folds_limit else folds
        _say(f"rounds on the real slices: {len(folds)} folds, preset {args.preset} {round_overrides(args)}")
        unseen = bundle_for(sorted({patient_of(s) for s in data["slices"]}), [*fold_bundles(args.folds), new])
        if unseen is None:
            raise SystemExit(
                "bench_real --slice-rounds: no new bundle that never saw the real slices' patients "
                "(give the fold that left them out with --folds)"
            )
        results["rounds"] = {
            name: measure_rounds(b, data["slices"], folds, args, out / "work" / name)
            for name, b in (("old", old), ("new", unseen))
        }
        shutil.rmtree(out / "work", ignore_errors=True)
        results["curve_png"] = str(print_rounds(results["rounds"], old, unseen, out))
    report = {
        "args": vars(args),
        "old": str(old),
        "new": str(new),
        "results": results,
        "minutes": (time.perf_counter() - t0) / 60,
    }
    (out / "bench_real.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    _say(f"\ntotal {report['minutes']:.1f} min; details in {out / 'bench_real.json'}")
    return 0


def print_zero_shot(results: dict) -> None:
    """Print the old/new tables of ``zero_shot``."""
    vols = results["volumes"]
    rows = {f"{v} {k}": (vols["old"][v][k], vols["new"][v][k]) for v in vols["new"] for k in vols["new"][v]}
    _say("\n" + format_table(rows, "real volumes, 3-D Dice (new: a model that never saw the patient)"))
    for section in ("real slices", "TotalSegmentator MR"):
        if section in results:
            _say("\n" + format_table(side_by_side(results[section]["old"], results[section]["new"]), section))


def print_rounds(results: dict, old: Path, new: Path, out: Path) -> Path:
    """Print the ``--slice-rounds`` tables and promotions; draw the label-efficiency PNG (returned)."""
    for section in ("after a round on the other 4 patients", "its fine-tuned candidate"):
        _say("\n" + format_table(side_by_side(results["old"][section], results["new"][section]), section))
    curve_rows = {}
    for n in results["old"]["curve"]:
        curve_rows[f"{n} slices, after the round"] = (results["old"]["curve"][n], results["new"]["curve"][n])
        if n:
            curve_rows[f"{n} slices, candidate"] = (
                results["old"]["candidate_curve"][n],
                results["new"]["candidate_curve"][n],
            )
    _say("\n" + format_table(curve_rows, "label efficiency (mean Dice, held-out patients)"))
    for name in ("old", "new"):
        _say(
            f"{name}: rounds promoted "
            + ", ".join(f"{k}: {v['promoted']}/{v['rounds']}" for k, v in results[name]["rounds"].items())
        )
    lines, dashed = {}, []
    for name, bundle in (("old", old), ("new", new)):
        label = f"{name} ({bundle.parent.name}/{bundle.name})"
        lines[label] = results[name]["curve"]
        lines[f"{label}, candidate"] = results[name]["candidate_curve"]
        dashed.append(f"{label}, candidate")
    return plot_curve(lines, out / "label_efficiency.png", dashed=dashed)


if __name__ == "__main__":
    sys.exit(main())
