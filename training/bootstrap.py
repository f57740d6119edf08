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

``run_round_from_store(project, config, keep=K)`` (``training.store_round``) runs ONE round on a
project folder for the GUI's Retrain button, from the labels in the project's label store.

A candidate is judged on slices it never trained on (``training.promotion``), so a round never
replaces the active model by one that does worse there; pseudo-labels: ``training.pseudo_labels``.
Every step in detail: ``docs/training-notes.md``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_gitseg import events as ev
from napari_gitseg.io.errors import GitsegInputError
from napari_gitseg.io.stack import Stack
from napari_gitseg.project import Project
from training.bootstrap_plots import plot_report
from training.config import TrainConfig, preset
from training.loop import check_stacks, split_validation, train
from training.promotion import emit, evaluate_bundle, format_dice, predict_stacks, promote_if_better
from training.pseudo_labels import pseudo_candidates, select_pseudo, with_pseudo
from training.store_round import run_round_from_store
from training.train_data import labelled_of

__all__ = [
    "choose_labelled",
    "evaluate_bundle",
    "plot_report",
    "run_bootstrap",
    "run_round_from_store",
    "select_pseudo",
]


def choose_labelled(stacks: Sequence[Stack], n: int) -> dict[str, list[int]]:
    """``n`` labelled slices spread over the stacks (shares by size, evenly spaced along z in each)."""
    if int(n) < 1:
        raise ValueError(f"the number of labelled slices must be >= 1, got {n}")
    avail = {s.name: np.flatnonzero(labelled_of(s)) for s in stacks}
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


@dataclass
class _Simulation:
    """The simulated workflow: the pool as the clinician labelled it, the frozen set, the active model."""

    config: TrainConfig
    out: Path
    keep: int  # pseudo-labels added per round
    pool: list[Stack]
    val_stacks: list[Stack]
    clinician: dict[str, Stack]
    n_labels: int
    registry: object  # napari_gitseg.model.registry.ModelRegistry
    report: dict
    active: str | None = None
    active_dice: float | None = None
    active_preds: dict | None = None  # the active model's predictions of the pool (made when first needed)


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
    sim = _set_up_simulation(stacks, labels, keep, out, config)
    n_phases = int(rounds) + 1
    for r in range(n_phases):
        t_round = time.perf_counter()
        emit_round = ev.scaled_progress(on_event, r / n_phases, (r + 0.85) / n_phases)
        result, n_pseudo = _train_round(sim, r, emit_round, cancel)
        emit(
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
        _judge_round(sim, r, result, n_pseudo, t_round, on_event, cancel)
    return _write_report(sim, t0)


def _set_up_simulation(stacks: Sequence[Stack], labels: int, keep: int, out: Path, config: TrainConfig) -> _Simulation:
    """Hold out the frozen validation cases, hide the truth of all but ``labels`` slices, open the registry."""
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
        "n_val_slices": int(sum(labelled_of(s).sum() for s in val_stacks)),
        "config": config.to_dict(),
    }
    return _Simulation(config, out, int(keep), pool, val_stacks, clinician, n_labels, registry, report)


def _round_training_set(sim: _Simulation, r: int, cancel) -> tuple[list[Stack], dict | None, int]:
    """(training stacks, provenance, pseudo-label count) of round ``r``: after round 0 with the
    ``r * keep`` most confident predictions of the active model as pseudo-labels."""
    if r == 0:
        return list(sim.clinician.values()), None, 0
    if sim.active_preds is None:
        sim.active_preds = predict_stacks(sim.registry.path_of(sim.active), sim.pool, sim.config, cancel)
    kept = pseudo_candidates(sim.clinician, sim.active_preds, r * sim.keep, sim.config.pseudo_max_empty)
    train_stacks, provenance = with_pseudo(sim.clinician, sim.active_preds, kept)
    return train_stacks, provenance, len(kept)


def _train_round(sim: _Simulation, r: int, on_event, cancel) -> tuple:
    """(``TrainResult``, pseudo-label count) of round ``r``'s candidate (after round 0: fine-tuned from the active)."""
    train_stacks, provenance, n_pseudo = _round_training_set(sim, r, cancel)
    cfg = sim.config if r == 0 else sim.config.replace(init_from=str(sim.registry.path_of(sim.active)))
    result = train(
        cfg,
        train_stacks,
        sim.val_stacks,
        sim.out / "rounds" / f"round{r}" / "candidate",
        on_event=on_event,
        cancel=cancel,
        data_description={"bootstrap_round": r, "clinician_labels": sim.n_labels, "pseudo_labels": n_pseudo},
        provenance=provenance,
        resume_state=False,  # a round is never resumed
    )
    return result, n_pseudo


def _judge_round(sim: _Simulation, r: int, result, n_pseudo: int, t_round: float, on_event, cancel) -> None:
    """Score round ``r``'s candidate on the frozen set, promote it if better, add the round to the report."""
    frozen, _ = evaluate_bundle(result.best_path, sim.val_stacks, sim.config, cancel)
    cand = float(frozen["mean_dice"])
    entry = {
        "round": r,
        "labels_spent": sim.n_labels,
        "pseudo_labels": n_pseudo,
        "trained_on": sim.n_labels + n_pseudo,
        "candidate_dice": cand,
        "candidate_score": frozen.get("score"),
        "previous_dice": sim.active_dice,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
    }
    version = promote_if_better(
        sim.registry, result.best_path, frozen, (sim.active, sim.active_dice), f"bootstrap round {r}", on_event
    )
    entry["promoted"] = version is not None
    if version is not None:
        sim.active, sim.active_dice, sim.active_preds = version, cand, None
    seconds = round(time.perf_counter() - t_round, 1)
    entry.update({"active_version": sim.active, "active_dice": sim.active_dice, "seconds": seconds})
    sim.report["rounds"].append(entry)
    emit(on_event, ev.RoundDone(round=r, labels_spent=sim.n_labels, val_dice=sim.active_dice))
    emit(
        on_event,
        ev.Log(
            f"round {r}: candidate Dice {format_dice(cand)}, active {sim.active} Dice {format_dice(sim.active_dice)} "
            f"({sim.n_labels} clinician + {n_pseudo} pseudo labels, {entry['seconds']} s)"
        ),
    )


def _write_report(sim: _Simulation, t0: float) -> dict:
    """Finish the report (final model, registry, time), write it as JSON and plot it; returns it."""
    report = sim.report
    report.update(
        {
            "final_version": sim.active,
            "final_dice": sim.active_dice,
            "registry": str(sim.registry.folder),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    )
    (sim.out / "bootstrap_report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    report["plot"] = str(plot_report(report, sim.out / "bootstrap_report.png"))
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
