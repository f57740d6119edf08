"""One bootstrap round on a project folder, for the GUI's Retrain button (``run_round_from_store``).

Clinician labels and kept pseudo-labels come from the project's label store; a frozen validation
split of the clinician labels is remembered in the store, so later rounds score on the same slices;
the round fine-tunes from the active model (else the default model, else from scratch), promotes the
candidate only if it scores higher there, and stores the ``keep`` most confident predictions on
unreviewed slices as ``"pseudo"``.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_gitseg import events as ev
from napari_gitseg.io.errors import GitsegInputError
from napari_gitseg.project import MIN_CLINICIAN_LABELS, Project, round_refusal
from training.config import TrainConfig, preset
from training.finetune import round_config
from training.loop import train
from training.promotion import emit, promote_or_reject
from training.pseudo_labels import write_pseudo_labels

FROZEN_STATE_KEY = "frozen_validation"
ROUNDS_STATE_KEY = "bootstrap_rounds"
EFFORT_STATE_KEY = "bootstrap_dice_vs_effort"  # one point per GUI round: minutes of clinician effort, Dice


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
                held = block_split(organ_slices_first(e), val_fraction, seed + i)
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


def organ_slices_first(entry: dict) -> list[int]:
    """The clinician slices a validation block is held from: those holding an organ when at least 3 do, else all.

    A block of organ-free slices cannot tell a better model from a worse one (on a real scan the review
    queue's spread picks put the inner block among empty slices, and no round was ever promoted)."""
    organ = [z for z in entry["clinician"] if entry["masks"][:, z].any()]
    return organ if len(organ) >= 3 else list(entry["clinician"])


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
        emit(on_event, ev.Log(f"ignoring the default model: {err}"))
        return None, None
    if tuple(info.config.classes) != tuple(classes):
        emit(on_event, ev.Log(f"the default model {default} has other classes; training from scratch"))
        return None, None
    return "default", default


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


def _open_round_store(project: Project):
    """The project's label store (GitsegInputError naming the folder when there is none)."""
    from napari_gitseg.store import StoreError

    if not project.folder.is_dir():
        raise GitsegInputError(project.folder, "project folder not found")
    try:
        return project.open_store(create=False)
    except StoreError as err:
        raise GitsegInputError(project.folder, f"no usable label store: {err}") from err


@dataclass
class _RoundPlan:
    """What one GUI round trains on and is judged against, read from the project before training."""

    entries: list[dict]
    n_clin: int  # clinician-labelled slices
    n_val: int  # of which held out as the frozen validation set
    train_stacks: list
    val_stacks: list
    provenance: dict
    n_pseudo: int
    registry: object  # napari_gitseg.model.registry.ModelRegistry
    baseline: tuple  # (name, bundle path) the round fine-tunes from and must beat
    cfg: TrainConfig


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
        plan = _plan_round(project, store, config, on_event)
        work = project.round_workdir()
        try:
            result = _train_candidate(plan, project, work, on_event, cancel)
            done = _judge_and_label(plan, store, result, keep, on_event, cancel)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        summary = _round_summary(plan, result, done, t0)
        emit(on_event, ev.RoundDone(round=done["round"], labels_spent=plan.n_clin, val_dice=done["dice_now"]))
        return summary
    finally:
        store.close()


def _plan_round(project: Project, store, config: TrainConfig, on_event) -> _RoundPlan:
    """Read the labels, hold out the frozen slices, pick the baseline model and the round's config."""
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
    return _RoundPlan(entries, n_clin, n_val, train_stacks, val_stacks, provenance, n_pseudo, registry, baseline, cfg)


def _train_candidate(plan: _RoundPlan, project: Project, work: Path, on_event, cancel):
    """Train the round's candidate in ``work`` (the first 80 % of the progress); its ``TrainResult``."""
    result = train(
        plan.cfg,
        plan.train_stacks,
        plan.val_stacks,
        work / "candidate",
        on_event=ev.scaled_progress(on_event, 0.0, 0.8),
        cancel=cancel,
        data_description={
            "project": str(project.folder),
            "clinician_train": plan.n_clin - plan.n_val,
            "clinician_val": plan.n_val,
            "pseudo": plan.n_pseudo,
        },
        provenance=plan.provenance,
        resume_state=False,  # a round is never resumed: a killed round is run again
    )
    emit(
        on_event,
        ev.Progress(epoch=result.epochs_run, epochs=result.epochs_run, loss=None, fraction=0.82, phase="validate"),
    )
    return result


def _judge_and_label(plan: _RoundPlan, store, result, keep: int, on_event, cancel) -> dict:
    """Promote or reject the candidate, store new pseudo-labels, count the round; the outcome with
    pseudo-labels ``written``, the ``round`` number, the Dice now (``dice_now``) and the effort ``curve``."""
    outcome = promote_or_reject(
        plan.registry,
        result.best_path,
        plan.baseline,
        plan.val_stacks,
        plan.cfg,
        cancel,
        f"retrained on {plan.n_clin - plan.n_val} clinician + {plan.n_pseudo} pseudo labels",
        on_event,
    )
    version = outcome["version"]
    now_path = plan.registry.path_of(version) if version is not None else plan.baseline[1]
    written = 0
    if now_path is not None and int(keep) > 0:
        emit(on_event, ev.Progress(fraction=0.9, phase="pseudo-labels"))
        label = version if version is not None else plan.baseline[0]
        written = write_pseudo_labels(store, plan.entries, now_path, label, plan.cfg, keep, cancel)
    n_round = int(store.get_state(ROUNDS_STATE_KEY, 0) or 0) + 1
    store.set_state(ROUNDS_STATE_KEY, n_round)
    dice_now = outcome["candidate_dice"] if outcome["promoted"] else outcome["baseline_dice"]
    curve = _record_effort(store, n_round, plan.n_clin, dice_now)
    return {**outcome, "written": written, "round": n_round, "dice_now": dice_now, "curve": curve}


def _round_summary(plan: _RoundPlan, result, done: dict, t0: float) -> dict:
    """The summary ``run_round_from_store`` returns (``t0``: when the round started)."""
    return {
        "round": done["round"],
        "promoted": done["promoted"],
        "active_version": done["version"],
        "baseline": plan.baseline[0],
        "baseline_dice": done["baseline_dice"],
        "candidate_dice": done["candidate_dice"],
        "candidate_score": done["candidate_score"],
        "clinician_train": plan.n_clin - plan.n_val,
        "clinician_val": plan.n_val,
        "pseudo_used": plan.n_pseudo,
        "pseudo_written": done["written"],
        "clinician_minutes": done["curve"][-1]["clinician_minutes"],
        "dice_vs_effort": done["curve"],
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "seconds": round(time.perf_counter() - t0, 1),
    }
