"""Checkpoints of a training run: the best epoch's bundle and the resume state.

After each epoch ``checkpoint_epoch`` keeps the epoch as the best bundle when its validation Dice
improved, and saves ``STEM.resume.pt`` once ``RESUME_EVERY_S`` have passed since the last one or when
a cancel arrived (a few-label fine-tune runs one-step epochs; writing model + optimiser after each took
a quarter of its time). The bundle is only ever replaced atomically (``CheckpointWriteError`` leaves
the previous one intact), and ``load_resume_state`` continues a run.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from napari_gitseg import events as ev
from napari_gitseg.cancel import is_cancelled
from napari_gitseg.io.errors import GitsegInputError
from napari_gitseg.model.bundle import atomic_write_bytes, bundle_paths, save_bundle
from training import ddp
from training.ddp import unwrap

if TYPE_CHECKING:
    from training.train_run import TrainRun

STATE_SUFFIX = ".resume.pt"
RESUME_EVERY_S = 30.0  # seconds of training an interrupted run may lose
_STATE_FORMAT = "napari-gitseg-train-state"


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. the disk is full); the previous best bundle is intact."""


# ---- the best epoch ------------------------------------------------------------------------------
def checkpoint_epoch(run: TrainRun, metrics: dict) -> None:
    """Keep the epoch as the best bundle when its Dice improved by ``min_delta``; save the resume state when due."""
    dice = float(metrics["mean_dice"])
    improved = run.best_dice is None or dice > run.best_dice + float(run.config.min_delta)
    if ddp.is_active():
        improved = ddp.broadcast_flag(improved)
    main = ddp.is_main()
    if improved:
        run.best_dice, run.best_epoch, run.bad_epochs = dice, run.epoch, 0
        run.result.best_metrics = metrics
        if main:
            write_best_bundle(run.net, run.model_config, run.out_stem, **checkpoint_meta(run, metrics))
            run.result.best_path = run.json_path
            run.emit(ev.Checkpoint(path=str(run.json_path), epoch=run.epoch, val_dice=dice, best=True))
    else:
        run.bad_epochs += 1
    if main and run.keep_resume_state and _resume_due(run):
        save_resume_state(run)
        run.last_resume_save = time.perf_counter()


def _resume_due(run: TrainRun) -> bool:
    """True when ``run.resume_every_s`` have passed since the resume state was last written (or the run
    began), or when a cancel arrived during this epoch (the run stops at its next step: resume here)."""
    last = run.t_start if run.last_resume_save is None else run.last_resume_save
    return time.perf_counter() - last >= run.resume_every_s or is_cancelled(run.cancel)


def checkpoint_meta(run: TrainRun, metrics: dict) -> dict:
    """What the bundle of ``run.epoch`` records: normalisation, training set-up and history, metrics."""
    return {
        "normalization": run.normalization,
        "training": {
            "config": run.config.to_dict(),
            "data": run.meta.get("data", {}),
            "command": run.meta.get("command"),
            "epoch": run.epoch,
            "epochs": run.epochs,
            "lr": run.lr,
            "init_from": run.init_path,
            "world_size": ddp.world_size(),
            "device": str(run.device),
            "history": run.history,
        },
        "metrics": {
            "val_dice": metrics.get("mean_dice"),
            "val_score": metrics.get("score"),
            "val_hausdorff": metrics.get("hausdorff"),
            "val_iou": metrics.get("mean_iou"),
            "per_class": metrics.get("per_class", {}),
            "epoch": run.epoch,
            "n_val_slices": metrics.get("n_slices"),
        },
        "notes": run.meta.get("notes", ""),
    }


def write_best_bundle(model, model_config, out_stem: Path, **meta) -> None:
    """Write the bundle at ``out_stem`` so that a failure at any point leaves the previous one intact."""
    json_path, weights_path = bundle_paths(out_stem)
    tmp_stem = out_stem.parent / f".{out_stem.name}.incoming"
    tmp_json, tmp_weights = bundle_paths(tmp_stem)
    pending = out_stem.parent / f".{out_stem.name}.json.pending"
    try:
        save_bundle(unwrap(model), model_config, tmp_stem, **meta)
        doc = json.loads(tmp_json.read_text(encoding="utf-8"))
        doc["name"] = json_path.stem
        doc["weights"] = weights_path.name
        atomic_write_bytes(pending, (json.dumps(doc, indent=2) + "\n").encode("utf-8"))
    except OSError as err:
        for p in (tmp_json, tmp_weights, pending):
            with contextlib.suppress(OSError):
                p.unlink(missing_ok=True)
        reason = "the disk is full" if err.errno == errno.ENOSPC else (err.strerror or str(err))
        raise CheckpointWriteError(
            err.errno or errno.EIO,
            f"cannot write the checkpoint {json_path}: {reason}; the previous best bundle is intact",
        ) from err
    # only renames from here on (no space needed): never a JSON describing other weights
    json_path.unlink(missing_ok=True)
    os.replace(tmp_weights, weights_path)
    os.replace(pending, json_path)
    tmp_json.unlink(missing_ok=True)


# ---- resume --------------------------------------------------------------------------------------
def load_resume_state(run: TrainRun) -> None:
    """Continue from ``STEM.resume.pt`` when it exists: weights, optimiser, schedule, random states, counters."""
    if not run.state_path.is_file():
        return
    state = _load_state(run.state_path)
    saved_cfg = json.loads(state["config"])
    if (
        saved_cfg.get("model") != run.config.to_dict().get("model")
        or saved_cfg.get("init_from") != run.config.init_from
    ):
        raise GitsegInputError(run.state_path, "the resume state was written for a different model config")
    unwrap(run.net).load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    if run.scheduler is not None and state.get("scheduler"):
        run.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    run.generator.set_state(state["sampler_rng"])
    run.augment.set_state(state.get("augment_rng"))
    run.start_epoch = int(state["epoch"]) + 1
    run.best_dice = None if state["best_dice"] < 0 else float(state["best_dice"])
    run.best_epoch = int(state["best_epoch"])
    run.bad_epochs = int(state["bad_epochs"])
    run.history = json.loads(state["history"])
    run.weight_sum = dict(state.get("weight_sum") or {}) or None
    run.averaged_epochs = json.loads(state.get("averaged_epochs", "[]"))
    if run.best_epoch and run.json_path.is_file():
        run.result.best_path = run.json_path
    run.emit(ev.Log(f"resuming from {run.state_path} after epoch {state['epoch']}"))


def save_resume_state(run: TrainRun) -> None:
    """Everything ``load_resume_state`` needs to continue after ``run.epoch`` exactly as an uninterrupted run."""
    _save_state(
        run.state_path,
        {
            "format": _STATE_FORMAT,
            "epoch": run.epoch,
            "model": {k: v.detach().cpu() for k, v in unwrap(run.net).state_dict().items()},
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict() if run.scheduler is not None else {},
            "rng": torch.get_rng_state(),
            "sampler_rng": run.generator.get_state(),
            "augment_rng": run.augment.get_state(),
            "best_dice": -1.0 if run.best_dice is None else float(run.best_dice),
            "best_epoch": run.best_epoch,
            "bad_epochs": run.bad_epochs,
            "history": json.dumps(run.history),
            "config": json.dumps(run.config.to_dict()),
            "weight_sum": run.weight_sum or {},
            "averaged_epochs": json.dumps(run.averaged_epochs),
        },
    )


def _save_state(path: Path, state: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        reason = "the disk is full" if err.errno == errno.ENOSPC else (err.strerror or str(err))
        raise CheckpointWriteError(
            err.errno or errno.EIO, f"cannot write the resume state {path}: {reason}; the best bundle is intact"
        ) from err


def _load_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling refused or a damaged file
        raise GitsegInputError(path, f"cannot read the resume state ({err})") from err
    if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
        raise GitsegInputError(path, "not a napari-gitseg resume state")
    return state
