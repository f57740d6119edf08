"""Benchmark: the clinician's loop on a real scan: label N slices, retrain, Dice on the rest of the scan.

Per real volume, with a model that never saw the patient (``--folds``, picked from the bundles' own
records): predictions stored in a fresh project as the Segment dock stores them; the first N slices
the review queue offers labelled with the challenge's masks; one Retrain click (``retrain.round_job``,
the worker, promotion only if better), then a second click on the labels plus the saved pseudo-labels
(bootstrap). ``--arms learn``: Learn from corrections (Shift+L) on the same slices instead. ``--mr``:
also TotalSegmentator's MR volume with the shipped model. Scored: 3-D Dice on the scan's other slices
with the project's active model. Output: a table, ``OUT/bench_real_loop.json``, ``OUT/real_loop.png``.
Protocol details and results: ``docs/default-model.md``.

Usage: ``python benchmarks/bench_real_loop.py --folds out/folds [--n 0,3,6,12,24] [--volumes case6,...] [--mr]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle threads sleep (shared CPUs)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_real  # noqa: E402  (projects, rounds and scoring)
import real_data  # noqa: E402  (the real data and the fold bundles)

KEEP = 50  # pseudo-labels a round saves: the Train dock's default


def _say(text: str) -> None:
    print(text, flush=True)


def start_project(folder: Path, bundle: Path, stack, config) -> tuple[Path, list[int]]:
    """A project on ``stack`` whose active model is ``bundle``, with that model's predictions stored as the
    Segment dock stores them; returns (project, slices in review-queue order: least confident first)."""
    from napari_gitseg.store import LabelStore
    from training.bootstrap import evaluate_bundle

    project = bench_real.make_project(folder, bundle, [stack], only={stack.name: []})
    _metrics, preds = evaluate_bundle(bundle, [stack], config, keep_predictions=True)
    masks, confidence = preds[stack.name]
    with LabelStore.open(project, create=False) as store:
        store.save_many(
            [
                {
                    "slice_id": sid,
                    "masks": masks[:, z],
                    "source": "model",
                    "model_version": "fold",
                    "confidence": float(confidence[z]),
                }
                for z, sid in enumerate(stack.slice_ids)
            ]
        )
        index = {sid: z for z, sid in enumerate(stack.slice_ids)}
        queue = [index[sid] for sid in store.review_queue(stack.name)]
    return project, queue


def label_slices(project: Path, stack, zs: Sequence[int]) -> None:
    """The clinician corrects slices ``zs`` to the truth and accepts them."""
    from napari_gitseg.store import LabelStore

    with LabelStore.open(project, create=False) as store:
        store.save_many(
            [
                {"slice_id": stack.slice_ids[z], "masks": stack.masks[:, z], "source": "clinician", "reviewed": True}
                for z in zs
            ]
        )


def score_rest(bundle: Path, stack, labelled: Sequence[int], config, classes) -> dict[str, float]:
    """3-D Dice rows of ``bundle`` on the slices of ``stack`` outside ``labelled``."""
    import numpy as np

    ((pred, truth, _lab),) = bench_real.predict_cases(bundle, [stack], config)
    rest = np.ones(stack.image.shape[0], bool)
    rest[list(labelled)] = False
    return bench_real.score_volume(pred, truth, rest, classes)


def loop_on_volume(stack, bundle: Path, ns: Sequence[int], args, work: Path) -> dict:
    """{n: {"round": rows, "bootstrap": rows, ...}} for one volume; n = 0 is the model alone."""
    from napari_gitseg.model.bundle import read_bundle_info

    classes = read_bundle_info(bundle).config.classes
    config = bench_real.eval_config(args)
    out: dict = {}
    for n in ns:  # each n from a fresh project: the model's predictions, then n labels
        folder = work / f"{stack.name}-{n}"
        shutil.rmtree(folder, ignore_errors=True)
        project, queue = start_project(folder, bundle, stack, config)
        chosen = sorted(queue[:n])
        if n == 0:
            out[n] = {"model": score_rest(bundle, stack, [], config, classes)}
            shutil.rmtree(folder, ignore_errors=True)
            continue
        label_slices(project, stack, chosen)
        with_organ = int(stack.masks[:, chosen].any(axis=(0, 2, 3)).sum())
        row = {"slices": chosen, "slices_with_organ": with_organ}
        if "learn" in args.arms:
            row.update(learn_arm(stack, bundle, chosen, config, classes))
            _say(
                f"  {stack.name} n={n:2d}: learn from corrections {row['learn']['mean 3-D Dice']:.3f} "
                f"(the model as shown {row['shown']['mean 3-D Dice']:.3f}; {row['learn_outcome']})"
            )
        if "round" in args.arms:
            row.update(two_rounds(project, stack, bundle, chosen, args))
            _say(
                f"  {stack.name} n={n:2d} ({with_organ} with an organ): round {row['round']['mean 3-D Dice']:.3f} "
                f"({row['round_outcome']}, {row['round_seconds']:.0f} s), bootstrap "
                f"{row['bootstrap']['mean 3-D Dice']:.3f} ({row['bootstrap_outcome']})"
            )
        out[n] = row
        shutil.rmtree(folder, ignore_errors=True)
    return out


def learn_arm(stack, bundle: Path, chosen: list[int], config, classes) -> dict:
    """Learn from corrections (Shift+L) on the model's labels with ``chosen`` corrected to the truth: no
    training round, seconds on the CPU. Rows: "shown" (the model's labels, one organ per pixel, as the
    Review dock shows them) and "learn" (after it), both on the other slices."""
    import numpy as np

    from napari_gitseg.classes import labels_to_masks, masks_to_labels
    from napari_gitseg.review.adapt import learn_from_corrections

    predictor = bench_real.bundle_predictor(str(bundle), config.device, config.val_batch_size, config.num_threads)
    pred = predictor.predict(stack)
    z_all = range(stack.image.shape[0])
    shown = np.stack([masks_to_labels(pred.masks[:, z], classes) for z in z_all])
    truth = {z: masks_to_labels(stack.masks[:, z], classes) for z in chosen}
    rest = np.ones(len(shown), bool)
    rest[chosen] = False
    t0 = time.perf_counter()
    new, check = learn_from_corrections(stack.image, pred.probs, shown, truth, [int(z) for z in np.flatnonzero(rest)])
    learned = shown.copy()
    for z, labels in new.items():
        learned[z] = labels

    def rows(labels):
        masks = np.stack([labels_to_masks(labels[z], classes) for z in z_all], axis=1)
        return bench_real.score_volume(masks, stack.masks, rest, classes)

    kept = ",".join(classes[v - 1] for v in check.kept)
    outcome = ("used" if check.passed else "not used: lost its held-out check") + (f"; kept {kept}" if kept else "")
    seconds = time.perf_counter() - t0
    return {"shown": rows(shown), "learn": rows(learned), "learn_outcome": outcome, "learn_seconds": seconds}


def click_retrain(project: Path, bundle: Path, keep: int, args) -> tuple[Path, str, dict]:
    """One Retrain click: (active bundle afterwards, outcome, summary). A round the worker refuses (e.g. every
    labelled slice empty: nothing to learn) leaves the model as it was, as in the Train dock."""
    from napari_gitseg.io.errors import GitsegInputError

    try:
        active, summary = bench_real.gui_round(project, args.preset, bench_real.round_overrides(args), keep=keep)
    except GitsegInputError as err:
        return bundle, f"refused: {err.problem}", {}
    return active, "promoted" if summary["promoted"] else "kept", summary


def two_rounds(project: Path, stack, bundle: Path, chosen: list[int], args) -> dict:
    """The first click (saving pseudo-labels) and the second (training on them too), each scored on the rest."""
    from napari_gitseg.model.bundle import read_bundle_info

    classes, config = read_bundle_info(bundle).config.classes, bench_real.eval_config(args)
    t0 = time.perf_counter()
    active, outcome, first = click_retrain(project, bundle, KEEP, args)
    t1 = time.perf_counter()
    row = {
        "round": score_rest(active, stack, chosen, config, classes),
        "round_outcome": outcome,
        "round_seconds": t1 - t0,
        "pseudo": first.get("pseudo_written", 0),
    }
    if args.one_round:
        return row | {"bootstrap": row["round"], "bootstrap_outcome": "not run", "bootstrap_seconds": 0.0}
    active, outcome, _second = click_retrain(project, active, 0, args)
    row.update(
        {
            "bootstrap": score_rest(active, stack, chosen, config, classes),
            "bootstrap_outcome": outcome,
            "bootstrap_seconds": time.perf_counter() - t1,
        }
    )
    return row


def curve_of(results: dict, arm: str) -> dict[str, dict[int, float]]:
    """{volume: {n: mean 3-D Dice}} of ``arm`` (round or bootstrap; n = 0 is the model alone)."""
    return {
        name: {int(n): (row["model"] if int(n) == 0 else row[arm])["mean 3-D Dice"] for n, row in rows.items()}
        for name, rows in results.items()
    }


def print_table(results: dict) -> None:
    """One line per (volume, n): mean 3-D Dice on the other slices after one round and after the bootstrap,
    and (``--arms learn``) the model's labels as shown and after Learn from corrections."""
    _say(f"\n{'volume':<16} {'n':>3}  {'round':>7}  {'bootstrap':>9}  {'boot/round':>10}  {'shown':>6}  {'learn':>6}")
    for name, rows in results.items():
        for n, row in rows.items():
            if int(n) == 0:
                _say(f"{name:<16} {0:>3}  {row['model']['mean 3-D Dice']:7.3f}  {'':>9}  {'(the model alone)':>10}")
                continue
            line = f"{name:<16} {int(n):>3}  "
            if "round" in row:
                a, b = row["round"]["mean 3-D Dice"], row["bootstrap"]["mean 3-D Dice"]
                line += f"{a:7.3f}  {b:9.3f}  {bench_real.ratio(a, b):10.2f}  "
            else:
                line += f"{'':>7}  {'':>9}  {'':>10}  "
            if "learn" in row:
                line += f"{row['shown']['mean 3-D Dice']:6.3f}  {row['learn']['mean 3-D Dice']:6.3f}"
            _say(line)


def plot(results: dict, path: Path) -> Path:
    """Dice on the other slices against clinician-labelled slices; solid: one round, dashed: bootstrap."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    rounds, boots = curve_of(results, "round"), curve_of(results, "bootstrap")
    for i, name in enumerate(results):
        color = f"C{i}"
        xs = sorted(rounds[name])
        ax.plot(xs, [rounds[name][x] for x in xs], "-o", color=color, label=f"{name}, one round")
        ax.plot(xs, [boots[name][x] for x in xs], "--s", color=color, alpha=0.7, label=f"{name}, bootstrap")
    ax.set_xticks(sorted({x for c in rounds.values() for x in c}))
    ax.set_xlabel("slices the clinician labelled on this scan (review-queue order)")
    ax.set_ylabel("3-D Dice on the scan's other slices")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    ax.set_title("The clinician's loop on real scans (model never saw the patient)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folds", nargs="*", default=[], help="leave-patient-out bundles (JSON files or folders)")
    p.add_argument("--new", default=str(bench_real.DEFAULT_MODEL), help="also a candidate (for patients it never saw)")
    p.add_argument("--n", default="0,3,6,12,24", help="clinician-labelled slices per scan")
    p.add_argument("--volumes", help="only these patients (comma-separated caseN; none: no UW volume)")
    p.add_argument("--mr", action="store_true", help="also the TotalSegmentator MR volume, with --new (never saw it)")
    p.add_argument("--preset", default="quick", help="training preset of the rounds (default quick)")
    p.add_argument("--config", help="JSON object of training settings over the preset")
    p.add_argument("--one-round", action="store_true", help="no bootstrap click (e.g. for the long cpu preset)")
    p.add_argument("--arms", default="round", help="round (Retrain clicks) and/or learn (Learn from corrections)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="the rounds' training seed (repeat with others: the spread)")
    p.add_argument("--out", default=str(ROOT / "out" / "bench_real_loop"))
    args = p.parse_args(argv)
    args.n = [int(n) for n in args.n.split(",") if n.strip()]
    args.config = json.dumps({"seed": args.seed} | (json.loads(args.config) if args.config else {}))
    args.arms = {a.strip() for a in args.arms.split(",") if a.strip()}
    if not args.arms or args.arms - {"round", "learn"}:
        p.error(f"--arms takes round and/or learn, got {sorted(args.arms)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the loop on every real volume; print the table, write the JSON and the PNG."""
    args = _parse(argv)
    if not real_data.REAL_VOLUMES.is_dir():
        _say(f"bench_real_loop: {real_data.REAL_VOLUMES} not found (no ../shared/data here): skipped")
        return 0
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    candidates = [*real_data.fold_bundles(args.folds), Path(args.new)]
    volumes = real_data.read_real_volumes()
    if args.volumes:
        volumes = [v for v in volumes if real_data.patient_of(v) in args.volumes.split(",")]
    t0, results, picks = time.perf_counter(), {}, {}
    for stack in volumes:
        bundle = real_data.bundle_for([real_data.patient_of(stack)], candidates)
        if bundle is None:
            _say(f"{stack.name}: no bundle that never saw {real_data.patient_of(stack)}: skipped")
            continue
        picks[stack.name] = str(bundle)
        _say(f"{stack.name} ({stack.image.shape[0]} slices): model {bundle}")
        results[stack.name] = loop_on_volume(stack, bundle, args.n, args, out / "work")
    if args.mr and real_data.TOTALSEG_MR[0].is_file():
        mr = real_data.read_totalseg_mr(*real_data.TOTALSEG_MR)
        ns = [n for n in args.n if n <= mr.image.shape[0] // 2]  # at least half the scan left to score
        picks[mr.name] = args.new
        _say(f"{mr.name} ({mr.image.shape[0]} slices, TotalSegmentator MR): model {args.new}; n = {ns}")
        results[mr.name] = loop_on_volume(mr, Path(args.new), ns, args, out / "work")
    shutil.rmtree(out / "work", ignore_errors=True)
    print_table(results)
    png = plot(results, out / "real_loop.png") if results and "round" in args.arms else None
    report = {
        "args": {**vars(args), "arms": sorted(args.arms)},
        "models": picks,
        "results": results,
        "minutes": (time.perf_counter() - t0) / 60,
    }
    (out / "bench_real_loop.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    _say(f"\ntotal {report['minutes']:.1f} min; {png}; details in {out / 'bench_real_loop.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
