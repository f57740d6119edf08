"""The bootstrap loop: few clinician labels, confident pseudo-labels, promotion on a frozen validation set.

Two entry points share one recipe:

``run_bootstrap(stacks, labels=100, rounds=R, keep=K, out=DIR)`` simulates the workflow on fully
labelled data (phantom or challenge cases), for benchmarks and ``gitseg bootstrap``: whole cases are
held apart as the frozen validation set; round 0 trains on ``labels`` slices spread over the other
cases (the rest of their truth hidden) and registers the model in the ``ModelRegistry`` at
``DIR/models``; each later round r predicts every unlabelled slice, takes the ``r * keep`` most
confident as pseudo-labels (lower loss weight, never over clinician labels), fine-tunes a candidate
from the active model and promotes it only if its Dice on the frozen set beats the active model's.
Report: ``DIR/bootstrap_report.json`` and ``.png`` (frozen-set Dice per round).

``run_round_from_store(project, config, keep=K)`` runs ONE round on a project folder for the GUI's
Retrain button: clinician labels and kept pseudo-labels from the project's label store, a frozen
validation split of the clinician labels (remembered, so later rounds score on the same slices),
fine-tuning from the active model (else the default model, else from scratch), promotion only if
better, and the ``keep`` most confident predictions on unreviewed slices stored as ``"pseudo"``.

A candidate is judged on slices it never trained on, so a round never replaces the active model by
one that does worse there. Every step in detail: ``docs/training-notes.md``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from napari_gitseg import events as ev
from napari_gitseg.io.errors import GitsegInputError
from napari_gitseg.io.stack import Stack
from napari_gitseg.project import MIN_CLINICIAN_LABELS, Project, round_refusal
from training.config import TrainConfig, preset
from training.finetune import round_config
from training.loop import TrainingCancelled, check_stacks, split_validation, train

__all__ = [
    "choose_labelled",
    "evaluate_bundle",
    "plot_report",
    "run_bootstrap",
    "run_round_from_store",
    "select_pseudo",
]

FROZEN_STATE_KEY = "frozen_validation"
ROUNDS_STATE_KEY = "bootstrap_rounds"
EFFORT_STATE_KEY = "bootstrap_dice_vs_effort"  # one point per GUI round: minutes of clinician effort, Dice


# ------------------------------------------------------------------------------------------ helpers
def choose_labelled(stacks: Sequence[Stack], n: int) -> dict[str, list[int]]:
    """``n`` labelled slices spread over the stacks (shares by size, evenly spaced along z in each)."""
    if int(n) < 1:
        raise ValueError(f"the number of labelled slices must be >= 1, got {n}")
    avail = {s.name: np.flatnonzero(_labelled(s)) for s in stacks}
    total = sum(len(v) for v in avail.values())
    if total == 0:
        raise GitsegInputError(None, "no labelled slice to choose from")
    n = min(int(n), total)
    names = [s.name for s in stacks]
    exact = np.array([len(avail[k]) * n / total for k in names])
    share = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - share), kind="stable")[: n - int(share.sum())]:
        share[i] += 1
    out = {}
    for name, k in zip(names, share):
        zs = avail[name]
        if k <= 0:
            continue
        pos = np.floor((np.arange(k) + 0.5) * len(zs) / k).astype(int)
        out[name] = [int(zs[p]) for p in pos]
    return out


def select_pseudo(candidates: Sequence[tuple], k: int, max_empty_fraction: float = 0.25) -> list:
    """Keys of the ``k`` most confident candidates ``(key, confidence, is_empty)``.

    At most ``floor(max_empty_fraction * k)`` organ-free slices are kept (an empty prediction is
    often the most confident one, but teaches little). Ties keep the input order.
    """
    k = max(0, int(k))
    max_empty = int(np.floor(float(max_empty_fraction) * k))
    order = sorted(range(len(candidates)), key=lambda i: -float(candidates[i][1]))
    kept, n_empty = [], 0
    for i in order:
        if len(kept) >= k:
            break
        key, _conf, empty = candidates[i][:3]
        if empty:
            if n_empty >= max_empty:
                continue
            n_empty += 1
        kept.append(key)
    return kept


def _labelled(stack: Stack) -> np.ndarray:
    return np.ones(stack.image.shape[0], bool) if stack.labelled is None else np.asarray(stack.labelled, bool)


def _predictor(bundle_path, config: TrainConfig):
    from napari_gitseg.predict import Predictor

    return Predictor(
        [bundle_path], device=config.device, batch_size=config.val_batch_size, num_threads=config.num_threads
    )


def _predict(predictor, stack: Stack, cancel):
    from napari_gitseg.predict import PredictionCancelled

    try:
        return predictor.predict(stack, cancel=cancel)
    except PredictionCancelled as err:
        raise TrainingCancelled(None, "cancelled while predicting") from err


def evaluate_bundle(
    bundle_path, stacks: Sequence[Stack], config: TrainConfig, cancel=None, keep_predictions: bool = False
) -> tuple[dict, dict]:
    """Metrics of a bundle on the labelled slices of ``stacks`` (whole stacks through the Predictor).

    Returns (metrics from ``training.metrics.evaluate_cases``, {stack name: (masks, confidence)} when
    ``keep_predictions``).
    """
    from training.metrics import evaluate_cases

    predictor = _predictor(bundle_path, config)
    cases, preds = [], {}
    for stack in stacks:
        pred = _predict(predictor, stack, cancel)
        lab = _labelled(stack)
        if lab.any() and stack.masks is not None:
            cases.append((pred.masks, stack.masks, lab))
        if keep_predictions:
            preds[stack.name] = (pred.masks, pred.confidence)
    metrics = evaluate_cases(cases, classes=tuple(predictor.classes)) if cases else {}
    return metrics, preds


def _predict_stacks(bundle_path, stacks: Sequence[Stack], config: TrainConfig, cancel) -> dict:
    predictor = _predictor(bundle_path, config)
    out = {}
    for stack in stacks:
        pred = _predict(predictor, stack, cancel)
        out[stack.name] = (pred.masks, pred.confidence)
    return out


def _register(registry, bundle_path, frozen: dict, activate: bool, notes: str) -> str:
    from napari_gitseg.model.bundle import load_bundle

    model, bundle = load_bundle(bundle_path)
    metrics = dict(bundle.metrics)
    metrics["train_val_dice"] = metrics.pop("val_dice", None)
    metrics.update(
        {
            "val_dice": frozen.get("mean_dice"),
            "val_score": frozen.get("score"),
            "val_hausdorff": frozen.get("hausdorff"),
            "per_class": frozen.get("per_class", {}),
            "n_val_slices": frozen.get("n_slices"),
        }
    )
    return registry.add(
        model,
        bundle.config,
        normalization=bundle.normalization,
        training=bundle.training,
        metrics=metrics,
        notes=notes,
        activate=activate,
    )


def _emit(on_event, event) -> None:
    if on_event is not None:
        on_event(event)


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


# ------------------------------------------------------------------------------------------ simulation
def run_bootstrap(
    stacks: Sequence[Stack],
    labels: int = 100,
    rounds: int = 3,
    keep: int = 100,
    out: str | Path = "bootstrap_out",
    config: TrainConfig | None = None,
    on_event: Callable | None = None,
    cancel=None,
) -> dict:
    """Simulate ``rounds`` bootstrap rounds after round 0 on ``labels`` slices; returns the report dict."""
    t0 = time.perf_counter()
    config = config or preset("cpu")
    if int(rounds) < 0 or int(keep) < 0:
        raise ValueError(f"rounds and keep must be >= 0, got {rounds} and {keep}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stacks = check_stacks(list(stacks), _trained_classes(config))
    pool, val_stacks = split_validation(stacks, config.val_fraction, config.seed)
    chosen = choose_labelled(pool, labels)
    n_labels = sum(len(v) for v in chosen.values())
    clinician = _clinician_view(pool, chosen)
    registry = Project(out).registry()
    report: dict = {
        "labels": n_labels,
        "keep": int(keep),
        "rounds": [],
        "train_stacks": [s.name for s in pool],
        "val_stacks": [s.name for s in val_stacks],
        "n_val_slices": int(sum(_labelled(s).sum() for s in val_stacks)),
        "config": config.to_dict(),
    }
    active: str | None = None
    active_dice: float | None = None
    active_preds: dict | None = None
    n_phases = int(rounds) + 1
    for r in range(n_phases):
        t_round = time.perf_counter()
        emit = ev.scaled_progress(on_event, r / n_phases, (r + 0.85) / n_phases)
        train_stacks = list(clinician.values())
        n_pseudo = 0
        provenance = None
        if r > 0:
            if active_preds is None:
                active_preds = _predict_stacks(registry.path_of(active), pool, config, cancel)
            kept = _pseudo_candidates(clinician, active_preds, r * int(keep), config.pseudo_max_empty)
            n_pseudo = len(kept)
            train_stacks, provenance = _with_pseudo(clinician, active_preds, kept)
        cfg = config if r == 0 else config.replace(init_from=str(registry.path_of(active)))
        result = train(
            cfg,
            train_stacks,
            val_stacks,
            out / "rounds" / f"round{r}" / "candidate",
            on_event=emit,
            cancel=cancel,
            data_description={"bootstrap_round": r, "clinician_labels": n_labels, "pseudo_labels": n_pseudo},
            provenance=provenance,
        )
        _emit(
            on_event,
            ev.Progress(
                epoch=result.epochs_run,
                epochs=result.epochs_run,
                step=0,
                steps=0,
                loss=None,
                fraction=(r + 0.9) / n_phases,
                phase="validate",
            ),
        )
        frozen, _ = evaluate_bundle(result.best_path, val_stacks, config, cancel)
        cand = float(frozen["mean_dice"])
        entry = {
            "round": r,
            "labels_spent": n_labels,
            "pseudo_labels": n_pseudo,
            "trained_on": n_labels + n_pseudo,
            "candidate_dice": cand,
            "candidate_score": frozen.get("score"),
            "previous_dice": active_dice,
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
        }
        version = _promote_if_better(
            registry, result.best_path, frozen, (active, active_dice), f"bootstrap round {r}", on_event
        )
        entry["promoted"] = version is not None
        if version is not None:
            active, active_dice, active_preds = version, cand, None
        entry.update(
            {"active_version": active, "active_dice": active_dice, "seconds": round(time.perf_counter() - t_round, 1)}
        )
        report["rounds"].append(entry)
        _emit(on_event, ev.RoundDone(round=r, labels_spent=n_labels, val_dice=active_dice))
        _emit(
            on_event,
            ev.Log(
                f"round {r}: candidate Dice {_fmt(cand)}, active {active} Dice {_fmt(active_dice)} "
                f"({n_labels} clinician + {n_pseudo} pseudo labels, {entry['seconds']} s)"
            ),
        )
    report.update(
        {
            "final_version": active,
            "final_dice": active_dice,
            "registry": str(registry.folder),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    )
    (out / "bootstrap_report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    report["plot"] = str(plot_report(report, out / "bootstrap_report.png"))
    return report


def _trained_classes(config: TrainConfig) -> tuple[str, ...]:
    """The classes a run of ``config`` learns: those of the bundle it starts from, if any."""
    if config.init_from:
        from napari_gitseg.model.bundle import read_bundle_info

        return tuple(read_bundle_info(config.init_from).config.classes)
    return tuple(config.model_config().classes)


def _clinician_view(pool: Sequence[Stack], chosen: dict[str, list[int]]) -> dict[str, Stack]:
    """The pool as the simulated clinician labelled it: the chosen slices keep their truth, the rest
    of the truth stays hidden (empty masks, unlabelled)."""
    clinician: dict[str, Stack] = {}
    for stack in pool:
        lab = np.zeros(stack.image.shape[0], bool)
        lab[chosen.get(stack.name, [])] = True
        masks = np.zeros_like(stack.masks)
        masks[:, lab] = stack.masks[:, lab]
        clinician[stack.name] = dataclasses.replace(stack, masks=masks, labelled=lab)
    return clinician


def _pseudo_candidates(clinician: dict[str, Stack], preds: dict, k: int, max_empty_fraction: float) -> list:
    """The ``k`` most confident predictions of unlabelled slices, as ``select_pseudo`` keeps them."""
    cands = []
    for name, stack in clinician.items():
        masks, conf = preds[name]
        for z in np.flatnonzero(~_labelled(stack)):
            cands.append(((name, int(z)), float(conf[z]), not masks[:, z].any()))
    return select_pseudo(cands, k, max_empty_fraction)


def _with_pseudo(clinician: dict[str, Stack], preds: dict, kept: list) -> tuple[list[Stack], dict]:
    """Training stacks with the kept pseudo-labels filled into unlabelled slices, and their provenance."""
    by_stack: dict[str, list[int]] = {}
    for name, z in kept:
        by_stack.setdefault(name, []).append(z)
    stacks, provenance = [], {}
    for name, stack in clinician.items():
        lab = _labelled(stack).copy()
        prov = {int(z): "clinician" for z in np.flatnonzero(lab)}
        zs = by_stack.get(name, [])
        if zs:
            masks = stack.masks.copy()
            pm = preds[name][0]
            for z in zs:
                if lab[z]:  # never replace a clinician label
                    continue
                masks[:, z] = pm[:, z]
                lab[z] = True
                prov[int(z)] = "pseudo"
            stack = dataclasses.replace(stack, masks=masks, labelled=lab)
        stacks.append(stack)
        provenance[name] = prov
    return stacks, provenance


def plot_report(report: dict, path: str | Path) -> Path:
    """PNG of the frozen-set Dice per round (candidate and active) against the labels trained on."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    rounds = report.get("rounds", [])
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    x = [r["trained_on"] for r in rounds]
    ax.plot(x, [r["candidate_dice"] for r in rounds], "o", label="candidate")
    ax.plot(x, [r["active_dice"] for r in rounds], "-s", label="active model")
    for r in rounds:
        ax.annotate(
            f"r{r['round']}",
            (r["trained_on"], r["candidate_dice"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    if report.get("full_dice") is not None:
        ax.axhline(report["full_dice"], color="grey", ls="--", label="full supervision")
    ax.set_xlabel(f"slices trained on ({report.get('labels', '?')} clinician + pseudo-labels)")
    ax.set_ylabel("Dice on the frozen validation set")
    ax.set_title("Bootstrap rounds")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


# ------------------------------------------------------------------------------------------ one GUI round
def _store_stacks(project: Project, store) -> list[dict]:
    """Per registered stack: the snapshot image, clinician and pseudo labels from the store."""
    out = []
    for name in store.stacks():
        info = store.stack_info(name)
        stack = project.load_snapshot(name)
        if tuple(stack.image.shape) != tuple(info["shape"]):
            raise GitsegInputError(
                project.snapshot_path(name),
                f"the image has shape {stack.image.shape} "
                f"but the label store {store.path} records {tuple(info['shape'])} for "
                f"stack {name}",
            )
        ids = list(info["slice_ids"])
        index = {sid: z for z, sid in enumerate(ids)}
        classes = tuple(info["classes"])
        clin_ids = store.clinician_slices(name)
        pseudo_ids = [s for s in store.pseudo_slices(name) if s not in set(clin_ids)]
        records = store.latest_many(clin_ids + pseudo_ids)
        masks = np.zeros((len(classes), *stack.image.shape), dtype=bool)
        expected = (len(classes), *stack.image.shape[1:])
        for sid, rec in records.items():
            if rec is None:
                continue
            if rec.masks.shape != expected:
                raise GitsegInputError(
                    store.path,
                    f"labels of slice {sid} have shape {rec.masks.shape}, but "
                    f"the image of stack {name} needs {expected}",
                )
            masks[:, index[sid]] = rec.masks
        out.append(
            {
                "name": name,
                "image": stack,
                "classes": classes,
                "masks": masks,
                "clinician": sorted(index[s] for s in clin_ids),
                "pseudo": sorted(index[s] for s in pseudo_ids),
                "slice_ids": ids,
            }
        )
    return out


def _frozen_split(entries: list[dict], store, val_fraction: float, seed: int) -> dict[str, set[int]]:
    """Validation slices {stack: z set} of the clinician labels, remembered in the store between rounds."""
    from training.splits import case_of, split_by_case
    from training.train_data import block_split

    labelled_cases = sorted({case_of(e["name"]) for e in entries if e["clinician"]})
    mode = "case" if len(labelled_cases) >= 2 else "blocks"
    state = store.get_state(FROZEN_STATE_KEY) or {}

    def assign(st: dict) -> dict[str, set[int]]:
        val = {}
        for e in entries:
            if st.get("mode") == "case":
                zs = e["clinician"] if case_of(e["name"]) in st.get("val_cases", []) else []
            else:
                lo, hi = st.get("blocks", {}).get(e["name"], (1, 0))
                zs = [z for z in e["clinician"] if lo <= z <= hi]
            val[e["name"]] = set(zs)
        return val

    def valid(val: dict) -> bool:
        n_val = sum(len(v) for v in val.values())
        n_all = sum(len(e["clinician"]) for e in entries)
        return 0 < n_val < n_all

    if state.get("mode") == mode:
        val = assign(state)
        if valid(val):
            return val
    if mode == "case":
        ids = [f"{e['name']}_slice_{z:04d}" for e in entries for z in e["clinician"]]
        _train, val_ids = split_by_case(ids, val_fraction, seed)
        state = {"mode": "case", "val_cases": sorted({case_of(i) for i in val_ids})}
    else:
        blocks = {}
        for i, e in enumerate(entries):
            if len(e["clinician"]) >= 2:
                held = block_split(e["clinician"], val_fraction, seed + i)
                blocks[e["name"]] = [min(held), max(held)]
        state = {"mode": "blocks", "blocks": blocks}
    val = assign(state)
    if not valid(val):
        n_all = sum(len(e["clinician"]) for e in entries)
        raise GitsegInputError(
            store.path,
            f"cannot hold out a validation set from {n_all} clinician-labelled "
            f"slice(s): label at least {MIN_CLINICIAN_LABELS} slices first",
        )
    store.set_state(FROZEN_STATE_KEY, state)
    return val


def _record_effort(store, n_round: int, n_clinician: int, dice: float | None) -> list[dict]:
    """Append this round's point (minutes of clinician effort from the store's effort log, Dice) to the
    project's Dice-against-effort curve; returns the curve."""
    minutes = sum(float(r["seconds"]) for r in store.effort()) / 60.0
    curve = list(store.get_state(EFFORT_STATE_KEY, []) or [])
    curve.append(
        {"round": n_round, "clinician_minutes": round(minutes, 2), "clinician_slices": n_clinician, "dice": dice}
    )
    store.set_state(EFFORT_STATE_KEY, curve)
    return curve


def plot_effort_curve(curve: list[dict], path: str | Path) -> Path:
    """PNG of the active model's validation Dice against minutes of clinician effort, one point per round."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    points = [c for c in curve if c.get("dice") is not None]
    ax.plot([c["clinician_minutes"] for c in points], [c["dice"] for c in points], "-o")
    for c in points:
        ax.annotate(
            f"r{c['round']} ({c['clinician_slices']} sl)",
            (c["clinician_minutes"], c["dice"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    ax.set_xlabel("minutes of clinician effort (Review dock effort log)")
    ax.set_ylabel("validation Dice of the active model")
    ax.set_title("Dice against clinician effort")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _round_stacks(entries: list[dict], val_sets: dict[str, set[int]]) -> tuple[list, list, dict, int]:
    """(training stacks, frozen validation stacks, provenance, pseudo-label count) of a round.

    Training: each stack's clinician labels outside the frozen set, and its pseudo-labels;
    validation: the frozen clinician slices."""
    train_stacks, val_stacks, provenance, n_pseudo = [], [], {}, 0
    for e in entries:
        stack, n = e["image"], e["image"].image.shape[0]
        clin = [z for z in e["clinician"] if z not in val_sets[e["name"]]]
        held = sorted(val_sets[e["name"]])
        lab = np.zeros(n, bool)
        lab[clin] = True
        lab[e["pseudo"]] = True
        if lab.any():
            prov = {z: "clinician" for z in clin}
            prov.update({z: "pseudo" for z in e["pseudo"]})
            n_pseudo += len(e["pseudo"])
            provenance[e["name"]] = prov
            train_stacks.append(dataclasses.replace(stack, masks=e["masks"], labelled=lab, classes=e["classes"]))
        if held:
            vlab = np.zeros(n, bool)
            vlab[held] = True
            val_stacks.append(dataclasses.replace(stack, masks=e["masks"], labelled=vlab, classes=e["classes"]))
    return train_stacks, val_stacks, provenance, n_pseudo


def _round_baseline(registry, classes: tuple, on_event) -> tuple[str | None, Path | None]:
    """(name, bundle path) a round fine-tunes from and must beat: the project's active model, else the
    default model when it has the project's classes, else (None, None): training from scratch."""
    from napari_gitseg.model.bundle import BundleError, read_bundle_info
    from napari_gitseg.resources import default_model_path

    active = registry.active()
    if active is not None:
        return active, registry.path_of(active)
    default = default_model_path()
    if default is None:
        return None, None
    try:
        info = read_bundle_info(default)
    except BundleError as err:
        _emit(on_event, ev.Log(f"ignoring the default model: {err}"))
        return None, None
    if tuple(info.config.classes) != tuple(classes):
        _emit(on_event, ev.Log(f"the default model {default} has other classes; training from scratch"))
        return None, None
    return "default", default


def _promote_or_reject(
    registry, candidate: Path, baseline: tuple, val_stacks, cfg, cancel, notes: str, on_event
) -> dict:
    """Score the candidate and the baseline on the frozen slices; register and activate the candidate
    only if it scores higher (or there is no baseline). Returns promoted, version, dice figures."""
    baseline_name, baseline_path = baseline
    cand_metrics, _ = evaluate_bundle(candidate, val_stacks, cfg, cancel)
    base = None
    if baseline_path is not None:
        base = float(evaluate_bundle(baseline_path, val_stacks, cfg, cancel)[0]["mean_dice"])
    new = _promote_if_better(registry, candidate, cand_metrics, (baseline_name, base), notes, on_event)
    return {
        "promoted": new is not None,
        "version": new if new is not None else registry.active(),
        "candidate_dice": float(cand_metrics["mean_dice"]),
        "baseline_dice": base,
        "candidate_score": cand_metrics.get("score"),
    }


def _promote_if_better(registry, candidate: Path, metrics: dict, baseline: tuple, notes: str, on_event) -> str | None:
    """Register and activate ``candidate`` when its frozen-set Dice (``metrics``) is above the
    baseline's (``baseline`` = (name, Dice); no Dice: nothing to beat); emit Promoted or Rejected.
    Returns the new version, or None when the candidate was rejected."""
    baseline_name, base = baseline
    cand = float(metrics["mean_dice"])
    if base is not None and not cand > base:
        _emit(
            on_event,
            ev.Rejected(
                candidate_dice=cand,
                active_dice=base,
                reason=f"frozen-set Dice {_fmt(cand)} is not above {baseline_name}'s {_fmt(base)}",
            ),
        )
        return None
    version = _register(registry, candidate, metrics, True, notes)
    _emit(on_event, ev.Promoted(version=version, val_dice=cand, previous_version=baseline_name, previous_dice=base))
    return version


def _write_pseudo_labels(
    store, entries: list[dict], model_path: Path, model_label: str | None, cfg, keep: int, cancel
) -> int:
    """Predict the project's stacks with ``model_path``; save the ``keep`` most confident predictions of
    unreviewed slices as pseudo-labels (the store's write path keeps clinician work); returns how many."""
    preds = _predict_stacks(model_path, [e["image"] for e in entries], cfg, cancel)
    cands = []
    for e in entries:
        masks, conf = preds[e["name"]]
        unreviewed = set(store.unreviewed_slices(e["name"]))
        for z, sid in enumerate(e["slice_ids"]):
            if sid in unreviewed:
                cands.append(((e["name"], z, sid), float(conf[z]), not masks[:, z].any()))
    kept = select_pseudo(cands, int(keep), cfg.pseudo_max_empty)
    items = [
        {
            "slice_id": sid,
            "masks": preds[name][0][:, z],
            "source": "pseudo",
            "model_version": model_label,
            "confidence": float(preds[name][1][z]),
        }
        for name, z, sid in kept
    ]
    return sum(1 for v in store.save_many(items) if v is not None) if items else 0


def _open_round_store(project: Project):
    """The project's label store (GitsegInputError naming the folder when there is none)."""
    from napari_gitseg.store import StoreError

    if not project.folder.is_dir():
        raise GitsegInputError(project.folder, "project folder not found")
    try:
        return project.open_store(create=False)
    except StoreError as err:
        raise GitsegInputError(project.folder, f"no usable label store: {err}") from err


def run_round_from_store(
    project_folder: str | Path,
    config: TrainConfig | None = None,
    keep: int = 50,
    on_event: Callable | None = None,
    cancel=None,
) -> dict:
    """One bootstrap round on a project folder (label store + snapshots + registry); returns a summary.

    Fine-tunes the active (or default) model on the clinician labels outside the frozen validation
    slices and the stored pseudo-labels, promotes the candidate only if it scores higher on the frozen
    slices, then stores the ``keep`` most confident predictions of the active model as pseudo-labels."""
    t0 = time.perf_counter()
    config = config or preset("cpu")
    project = Project(project_folder)
    store = _open_round_store(project)
    try:
        entries = _store_stacks(project, store)
        n_clin = sum(len(e["clinician"]) for e in entries)
        refusal = round_refusal(n_clin)
        if refusal is not None:
            raise GitsegInputError(project.folder, refusal)
        val_sets = _frozen_split(entries, store, config.val_fraction, config.seed)
        train_stacks, val_stacks, provenance, n_pseudo = _round_stacks(entries, val_sets)
        n_val = sum(len(v) for v in val_sets.values())
        registry = project.registry()
        baseline = _round_baseline(registry, tuple(entries[0]["classes"]), on_event)
        cfg = round_config(config, None if baseline[1] is None else str(baseline[1]), max(1, n_clin - n_val))
        work = project.round_workdir()
        try:
            result = train(
                cfg,
                train_stacks,
                val_stacks,
                work / "candidate",
                on_event=ev.scaled_progress(on_event, 0.0, 0.8),
                cancel=cancel,
                data_description={
                    "project": str(project.folder),
                    "clinician_train": n_clin - n_val,
                    "clinician_val": n_val,
                    "pseudo": n_pseudo,
                },
                provenance=provenance,
            )
            _emit(
                on_event,
                ev.Progress(
                    epoch=result.epochs_run, epochs=result.epochs_run, loss=None, fraction=0.82, phase="validate"
                ),
            )
            outcome = _promote_or_reject(
                registry,
                result.best_path,
                baseline,
                val_stacks,
                cfg,
                cancel,
                f"retrained on {n_clin - n_val} clinician + {n_pseudo} pseudo labels",
                on_event,
            )
            version = outcome["version"]
            now_path = registry.path_of(version) if version is not None else baseline[1]
            written = 0
            if now_path is not None and int(keep) > 0:
                _emit(on_event, ev.Progress(fraction=0.9, phase="pseudo-labels"))
                written = _write_pseudo_labels(
                    store, entries, now_path, version if version is not None else baseline[0], cfg, keep, cancel
                )
            n_round = int(store.get_state(ROUNDS_STATE_KEY, 0) or 0) + 1
            store.set_state(ROUNDS_STATE_KEY, n_round)
            dice_now = outcome["candidate_dice"] if outcome["promoted"] else outcome["baseline_dice"]
            curve = _record_effort(store, n_round, n_clin, dice_now)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        summary = {
            "round": n_round,
            "promoted": outcome["promoted"],
            "active_version": version,
            "baseline": baseline[0],
            "baseline_dice": outcome["baseline_dice"],
            "candidate_dice": outcome["candidate_dice"],
            "candidate_score": outcome["candidate_score"],
            "clinician_train": n_clin - n_val,
            "clinician_val": n_val,
            "pseudo_used": n_pseudo,
            "pseudo_written": written,
            "clinician_minutes": curve[-1]["clinician_minutes"],
            "dice_vs_effort": curve,
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        _emit(on_event, ev.RoundDone(round=n_round, labels_spent=n_clin, val_dice=dice_now))
        return summary
    finally:
        store.close()
