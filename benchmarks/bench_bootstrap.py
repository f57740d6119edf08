"""Benchmark: few clinician labels + bootstrap rounds vs. full supervision, Dice on the same held-out cases.

Phantom part (always): ``--cases`` phantom cases for training and validation plus ``--test-cases``
held-out cases (another seed than the default model's data). Both arms use the same config (the
``cpu`` preset unless ``--preset``), the same validation case (``training.loop.split_validation``)
and are scored the same way (whole stacks through the ``Predictor``, ``training.metrics``):

* full supervision: every slice of the training cases labelled;
* bootstrap: ``--labels`` slices spread over the training cases (the rest of the truth hidden),
  then ``--rounds`` rounds of confident pseudo-labels (``--keep`` more per round), each candidate
  promoted only if it beats the active model on the frozen validation case.

Prints both Dice values, the ratio (goal >= 0.95) and the time of one round on the labelled
slices (goal <= 5 min on 2 CPU cores), all measured in this run.

Real part (when ``../shared/data/totalsegmentator-examples`` exists): the TotalSegmentator MR
example (20 slices, 3 mm; its labels are that tool's predictions, mapped with
``napari_gitseg.io.TOTALSEG_MR_LABELS``). One volume only, so a contiguous block of slices is the
held-out test set; both arms fine-tune from the bundled default model (phantom-trained), which is
also scored as it is.

Usage: ``python benchmarks/bench_bootstrap.py [--out DIR] [--quick]`` (``--quick``: a tiny smoke run).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: idle threads sleep (shared CPUs)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REAL = ROOT.parent / "shared" / "data" / "totalsegmentator-examples"


def _say(text: str) -> None:
    print(text, flush=True)


def _test_dice(bundle, stacks, config) -> dict:
    from training.bootstrap import evaluate_bundle

    metrics, _ = evaluate_bundle(bundle, stacks, config)
    return {
        "dice": metrics["mean_dice"],
        "score": metrics["score"],
        "per_class": {c: round(v["dice"], 4) for c, v in metrics["per_class"].items()},
    }


def phantom_benchmark(args, out: Path) -> dict:
    """Full supervision vs. bootstrap on phantom cases; returns the numbers it printed."""
    import torch

    torch.set_num_threads(args.threads)
    pool, test, config, (train_stacks, val_stacks) = _phantom_cases(args)
    full = _full_supervision_arm(config, train_stacks, val_stacks, test, out)
    boot = _bootstrap_arm(args, config, pool, test, out)
    report, round0, final = boot.pop("report"), boot["round0_test"], boot["final_test"]
    ratio = final["dice"] / full["test"]["dice"] if full["test"]["dice"] else float("nan")
    _say(f"{report['labels']} labels, round 0 only: test Dice {round0['dice']:.4f}")
    _say(
        f"{report['labels']} labels + {args.rounds} bootstrap rounds (active {report['final_version']}): "
        f"test Dice {final['dice']:.4f} (score {final['score']:.4f}), {boot['seconds'] / 60:.1f} min in all"
    )
    _say(f"ratio bootstrap / full supervision: {ratio:.3f} (goal >= 0.95)")
    round_min = report["rounds"][0]["seconds"] / 60
    _say(
        f"one round on {report['labels']} labelled slices: {round_min:.1f} min (goal <= 5 min); "
        f"full supervision took {full['seconds'] / 60:.1f} min"
    )
    return {"full": full, "bootstrap": boot, "ratio": ratio, "round_minutes": round_min, "config": config.to_dict()}


def _phantom_cases(args) -> tuple[list, list, object, tuple[list, list]]:
    """(training + validation cases, test cases, config, (training, validation) split) of the phantom part."""
    from napari_gitseg.phantom import make_phantom_case
    from training.config import preset
    from training.loop import split_validation

    size = (args.size, args.size)
    n_all = args.cases + args.test_cases
    t0 = time.perf_counter()
    stacks = [make_phantom_case(args.seed, case=c, n_slices=args.slices, size=size) for c in range(1, n_all + 1)]
    pool, test = stacks[: args.cases], stacks[args.cases :]
    overrides = json.loads(args.config) if args.config else {}
    config = preset(args.preset, num_threads=args.threads, **overrides)
    if args.finetune_epochs:
        config = config.replace(finetune_epochs=args.finetune_epochs)
    train_stacks, val_stacks = split_validation(pool, config.val_fraction, config.seed)
    _say(
        f"phantom: {len(train_stacks)} training + {len(val_stacks)} validation + {len(test)} test cases "
        f"({args.slices} slices, {args.size} px, seed {args.seed}; made in {time.perf_counter() - t0:.0f} s); "
        f"preset {args.preset}: {config.model['arch']}/{config.model['encoder']}, {config.epochs} epochs, "
        f"{config.size[0]} px"
    )
    return pool, test, config, (train_stacks, val_stacks)


def _full_supervision_arm(config, train_stacks: list, val_stacks: list, test: list, out: Path) -> dict:
    """Train on every slice of the training cases; slices, validation and test Dice, seconds."""
    from training.loop import train

    n_full = sum(s.image.shape[0] for s in train_stacks)
    t = time.perf_counter()
    full = train(config, train_stacks, val_stacks, out / "full" / "model", command="bench_bootstrap full")
    full_s = time.perf_counter() - t
    full_test = _test_dice(full.best_path, test, config)
    _say(
        f"full supervision: {n_full} labelled slices, validation Dice {full.best_dice:.4f}, "
        f"test Dice {full_test['dice']:.4f} (score {full_test['score']:.4f}), trained in {full_s / 60:.1f} min"
    )
    return {"n_slices": n_full, "val_dice": full.best_dice, "test": full_test, "seconds": full_s}


def _bootstrap_arm(args, config, pool: list, test: list, out: Path) -> dict:
    """``--labels`` slices then ``--rounds`` rounds; test Dice of round 0 and of the final model, its report."""
    from napari_gitseg.model.registry import ModelRegistry
    from training.bootstrap import run_bootstrap

    t = time.perf_counter()
    boot_config = config.replace(epochs=args.bootstrap_epochs) if args.bootstrap_epochs else config
    _say(
        f"bootstrap arm: round 0 {boot_config.epochs} epochs, later rounds {boot_config.finetune_epochs} "
        f"(fine-tuning the active model); full supervision: {config.epochs} epochs"
    )
    report = run_bootstrap(
        pool, labels=args.labels, rounds=args.rounds, keep=args.keep, out=out / "bootstrap", config=boot_config
    )
    boot_s = time.perf_counter() - t
    registry = ModelRegistry(Path(report["registry"]))
    round0 = _test_dice(registry.path_of("v0001"), test, config)
    final = _test_dice(registry.path_of(report["final_version"]), test, config)
    for r in report["rounds"]:
        _say(
            f"  round {r['round']}: {r['labels_spent']} labels + {r['pseudo_labels']} pseudo, candidate "
            f"validation Dice {r['candidate_dice']:.4f} -> {'promoted' if r['promoted'] else 'rejected'} "
            f"({r['seconds'] / 60:.1f} min)"
        )
    return {
        "labels": report["labels"],
        "rounds": report["rounds"],
        "round0_test": round0,
        "final_test": final,
        "seconds": boot_s,
        "final_version": report["final_version"],
        "report": report,
    }


def real_benchmark(args, out: Path) -> dict | None:
    """The TotalSegmentator MR example: default model as is, fine-tuned on all vs. few slices + rounds."""
    import numpy as np

    from napari_gitseg.io import TOTALSEG_MR_LABELS, read_nifti_labels
    from napari_gitseg.io.nifti import read_nifti
    from napari_gitseg.resources import default_model_path
    from training.bootstrap import run_bootstrap
    from training.config import preset
    from training.loop import train

    image = REAL / "example_mr_sm.nii.gz"
    labels = REAL / "example_seg_mr.nii.gz"
    if not image.is_file() or not labels.is_file():
        _say(f"real data: {REAL} not found, skipped")
        return None
    default = default_model_path()
    if default is None:
        _say("real data: no default model bundle (run benchmarks/train_default_model.sh), skipped")
        return None
    stack = read_nifti_labels(labels, TOTALSEG_MR_LABELS, read_nifti(image))
    n = stack.image.shape[0]
    test_z = np.arange(n) >= n - max(4, n // 4)  # the last block of slices: held-out test
    test = dataclasses.replace(stack, labelled=test_z)
    pool = dataclasses.replace(stack, masks=np.where(test_z[None, :, None, None], False, stack.masks), labelled=~test_z)
    config = preset(
        args.preset,
        num_threads=args.threads,
        init_from=str(default),
        finetune_epochs=args.real_epochs,
        val_fraction=0.25,
    )
    as_is = _test_dice(default, [test], config)
    _say(
        f"real MR ({stack.name}: {n} slices {stack.image.shape[1]}x{stack.image.shape[2]}, 3 mm; labels are "
        f"TotalSegmentator predictions): test = last {int(test_z.sum())} slices"
    )
    _say(f"  default model as is: test Dice {as_is['dice']:.4f} {as_is['per_class']}")
    t = time.perf_counter()
    full = train(config, [pool], None, out / "real_full" / "model", command="bench_bootstrap real full")
    full_test = _test_dice(full.best_path, [test], config)
    _say(
        f"  fine-tuned on all {int((~test_z).sum())} training slices: test Dice {full_test['dice']:.4f} "
        f"({(time.perf_counter() - t):.0f} s)"
    )
    n_labels = max(3, int((~test_z).sum()) // 3)
    report = run_bootstrap([pool], labels=n_labels, rounds=2, keep=3, out=out / "real_bootstrap", config=config)
    from napari_gitseg.model.registry import ModelRegistry

    registry = ModelRegistry(Path(report["registry"]))
    final = _test_dice(registry.path_of(report["final_version"]), [test], config)
    ratio = final["dice"] / full_test["dice"] if full_test["dice"] else float("nan")
    _say(
        f"  {report['labels']} labelled slices + 2 rounds: test Dice {final['dice']:.4f}; ratio to all slices "
        f"{ratio:.3f}; rounds "
        + ", ".join(
            f"r{r['round']} {r['candidate_dice']:.3f} {'promoted' if r['promoted'] else 'rejected'}"
            for r in report["rounds"]
        )
    )
    return {
        "default_as_is": as_is,
        "full": full_test,
        "bootstrap": final,
        "labels": report["labels"],
        "ratio": ratio,
        "rounds": report["rounds"],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write ``OUT/bench_bootstrap.json``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "out" / "bench_bootstrap"))
    p.add_argument("--cases", type=int, default=5, help="training + validation phantom cases")
    p.add_argument("--test-cases", type=int, default=2, help="held-out phantom cases")
    p.add_argument("--slices", type=int, default=144)
    p.add_argument("--size", type=int, default=266)
    p.add_argument("--seed", type=int, default=11, help="phantom seed (the default model used 7)")
    p.add_argument("--labels", type=int, default=100)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--keep", type=int, default=100)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--config", help="JSON object of training settings over the preset")
    p.add_argument("--finetune-epochs", type=int, default=8, help="epochs of the rounds after the first")
    p.add_argument(
        "--bootstrap-epochs",
        type=int,
        default=None,
        help="epochs of round 0 of the bootstrap arm (default: the preset's, as full supervision); "
        "with a third of the slices, ~3x the epochs gives both arms the same number of steps",
    )
    p.add_argument("--real-epochs", type=int, default=6, help="fine-tuning epochs on the real volume")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-real", action="store_true")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (minutes), not a measurement")
    args = p.parse_args(argv)
    if args.quick:
        args.cases, args.test_cases, args.slices, args.size = 3, 1, 24, 96
        args.labels, args.rounds, args.keep, args.preset, args.real_epochs = 12, 1, 6, "quick", 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = {"args": vars(args), "phantom": phantom_benchmark(args, out)}
    if not args.skip_real:
        result["real"] = real_benchmark(args, out)
    result["minutes"] = (time.perf_counter() - t0) / 60
    (out / "bench_bootstrap.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    _say(f"total {result['minutes']:.1f} min; details in {out / 'bench_bootstrap.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
