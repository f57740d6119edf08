"""The train loop: one model, keep the best epoch by validation Dice, stop early, resume, cancel.

``train(config, train_data, val_data, out_stem)`` trains the network ``config`` describes (or
fine-tunes the bundle ``config.init_from``) and writes the best epoch's model as a bundle at
``out_stem`` (``STEM.safetensors`` + ``STEM.json``; the JSON holds the full config, a description
of the data, the validation metrics and the command line). In short:

* data: ``SliceDataset``\\ s or ``Stack``\\ s with masks (bad labels raise ``GitsegInputError`` naming
  the stack); ``val_data=None`` holds out a validation split by case (``split_validation``);
* optimisation: Adam or AdamW, cosine or plateau schedule, augmentation on the device
  (``training.augment``), the combined loss (``training.losses``), mixed precision on CUDA only;
* validation after each epoch with ``training.metrics.evaluate_cases`` (as ``gitseg eval``), early
  stopping after ``patience`` epochs, ``cancel`` checked before every step (``TrainingCancelled``);
* checkpoints: the best bundle is only ever replaced atomically (``CheckpointWriteError`` leaves the
  previous one intact); ``STEM.resume.pt`` (every 30 s, after an epoch) lets ``resume=True`` continue;
* DistributedDataParallel when ``torch.distributed`` is initialised (``training.ddp``).

``config.seed`` makes a CPU run bit-reproducible (same torch build and thread count), resumed or not.
Every point above in detail, and what is not reproducible: ``docs/training-notes.md``. Here: ``train``
and the epoch loop; the data in ``training.train_data``, the set-up in ``training.run_setup``,
checkpoints and resume in ``training.checkpoints``, ``average_last``/``keep_start`` in
``training.weight_averaging``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from napari_gitseg import events as ev
from napari_gitseg.cancel import Cancel
from napari_gitseg.model.device import pick_device, torch_threads
from napari_gitseg.model.factory import forward_logits
from training import ddp
from training.checkpoints import RESUME_EVERY_S, CheckpointWriteError, checkpoint_epoch, load_resume_state
from training.config import TrainConfig
from training.ddp import unwrap
from training.run_setup import bundle_meta, set_up
from training.train_data import build_dataset, check_stacks, is_on_the_fly, split_validation
from training.train_run import TrainingCancelled, TrainResult, TrainRun
from training.validation import validate
from training.weight_averaging import add_to_average, write_average, write_blend

__all__ = [
    "CheckpointWriteError",
    "TrainResult",
    "TrainingCancelled",
    "build_dataset",
    "check_stacks",
    "is_on_the_fly",
    "split_validation",
    "train",
]

OnEvent = Callable[[ev.Event], None] | None


def train(
    config: TrainConfig,
    train_data,
    val_data,
    out_stem: str | os.PathLike,
    on_event: OnEvent = None,
    cancel: Cancel = None,
    *,
    resume: bool = False,
    resume_state: bool = True,
    resume_every_s: float = RESUME_EVERY_S,
    data_description: dict | None = None,
    command: str | None = None,
    notes: str = "",
    provenance: dict | None = None,
) -> TrainResult:
    """Train as ``config`` says; keep the best epoch by validation Dice as a bundle at ``out_stem``.

    ``train_data``/``val_data``: ``SliceDataset`` (or any torch ``Dataset`` whose items are dicts with
    image, masks, ignore, weight, slice and name; one whose ``on_the_fly`` attribute is True makes new
    items on every access and is never cached) or lists of labelled ``Stack``\\ s (``val_data=None``:
    split the training stacks, see ``split_validation``). ``provenance``: {stack: {z: "clinician" |
    "pseudo"}} for stack lists (pseudo-labels weigh ``config.pseudo_weight``). ``STEM.resume.pt`` is
    written after an epoch when ``resume_every_s`` have passed since the last (0: every epoch; an
    interrupted run loses at most that much work); ``resume_state=False`` writes none (a round: never resumed).
    Returns a ``TrainResult``; raises ``TrainingCancelled`` when ``cancel`` is set,
    ``CheckpointWriteError`` when a checkpoint cannot be written, ``GitsegInputError`` for bad data.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    t_start = time.perf_counter()
    main = ddp.is_main()
    emit = on_event if (on_event is not None and main) else (lambda _e: None)
    out_stem = Path(out_stem)
    if out_stem.suffix in (".json", ".safetensors"):
        out_stem = out_stem.with_suffix("")
    if main:
        out_stem.parent.mkdir(parents=True, exist_ok=True)
    device = pick_device(config.device) if not ddp.is_active() else ddp.device_for_rank(config.device)
    threads = None
    if config.num_threads and device.type == "cpu":
        threads = max(1, int(config.num_threads) // max(1, ddp.local_world_size()))
    with torch_threads(threads):
        run = set_up(config, train_data, val_data, out_stem, emit, cancel, device, provenance, t_start)
        run.meta = bundle_meta(run, data_description, command, notes)
        run.keep_resume_state = bool(resume_state)
        run.resume_every_s = float(resume_every_s)
        if resume:
            load_resume_state(run)
        return _run_epochs(run)


# ---- epochs --------------------------------------------------------------------------------------
def _run_epochs(run: TrainRun) -> TrainResult:
    """Train, validate and checkpoint epoch after epoch until the last one or early stopping."""
    run.epoch = run.start_epoch - 1
    run.result.history = run.history
    for epoch in range(run.start_epoch, run.epochs + 1):
        run.epoch = epoch
        losses = _train_epoch(run)
        metrics = _validate_epoch(run, losses)
        add_to_average(run)
        checkpoint_epoch(run, metrics)
        if run.config.patience and run.bad_epochs >= int(run.config.patience) and epoch < run.epochs:
            _end(run)
            return _finish(run, stopped_early=True)
    _end(run)
    return _finish(run)


def _train_epoch(run: TrainRun) -> list[float]:
    """One pass over the training loader (at most ``run.steps`` steps); returns the step losses."""
    net, config = run.net, run.config
    net.train()
    if config.freeze_bn and run.fine_tune:
        _set_bn_eval(net)
    sampler = run.loader.sampler
    if isinstance(sampler, torch.utils.data.distributed.DistributedSampler):
        sampler.set_epoch(run.epoch)
    losses: list[float] = []
    total_steps = max(1, (run.epochs - run.start_epoch + 1) * run.steps)
    for step, batch in enumerate(run.loader, start=1):
        if step > run.steps:
            break
        if run.cancelled():
            raise TrainingCancelled(_finish(run, cancelled=True))
        loss = _train_step(run, batch)
        if loss is None:
            continue
        losses.append(loss)
        run.done_steps += 1
        run.result.steps += 1
        run.emit(
            ev.Progress(
                epoch=run.epoch,
                epochs=run.epochs,
                step=step,
                steps=run.steps,
                loss=loss,
                fraction=min(1.0, run.done_steps / total_steps),
                phase="train",
            )
        )
    if run.cancelled():
        raise TrainingCancelled(_finish(run, cancelled=True))
    return losses


def _set_bn_eval(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def _train_step(run: TrainRun, batch: dict) -> float | None:
    """One optimiser step on ``batch``; None when the loss was not finite (the step is skipped)."""
    device = run.device
    x = batch["image"].to(device, non_blocking=True)
    y = batch["masks"].to(device, non_blocking=True)
    ignore = batch["ignore"].to(device)
    weight = batch["weight"].to(device)
    x, y, ignore = run.augment(x, y, ignore)
    if run.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with run.autocast():
        seg, cls = forward_logits(run.net, x)
    loss = run.loss_fn(seg.float(), y, ignore=ignore, weight=weight, cls_logits=None if cls is None else cls.float())
    run.optimizer.zero_grad(set_to_none=True)
    nonfinite = not bool(torch.isfinite(loss))
    if ddp.is_active():
        nonfinite = ddp.any_flag(nonfinite)
    if nonfinite:
        run.n_nonfinite += 1
        if run.n_nonfinite > max(3, run.steps):
            raise FloatingPointError(
                f"training diverged: the loss was not finite in {run.n_nonfinite} steps (lower the lr, now {run.lr:g})"
            )
        return None
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    if isinstance(run.scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
        run.scheduler.step()
    return float(loss.detach())


def _validate_epoch(run: TrainRun, losses: list[float]) -> dict:
    """Validation metrics after the epoch; updates the history, the plateau schedule and the events."""
    if ddp.is_active():  # BatchNorm running statistics drift apart per rank: take rank 0's everywhere
        ddp.broadcast_buffers(unwrap(run.net))
    metrics = validate(
        unwrap(run.net), run.val_set, run.device, run.model_config.classes, run.config.val_batch_size, run.autocast
    )
    dice = float(metrics["mean_dice"])
    train_loss = float(np.mean(losses)) if losses else None
    if isinstance(run.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        run.scheduler.step(dice)
    run.history.append(
        {
            "epoch": run.epoch,
            "train_loss": train_loss,
            "val_dice": dice,
            "val_score": metrics["score"],
            "lr": run.optimizer.param_groups[0]["lr"],
        }
    )
    run.emit(
        ev.Metrics(
            epoch=run.epoch,
            train_loss=train_loss,
            val_dice=dice,
            val_score=float(metrics["score"]),
            per_class={c: v.get("dice") for c, v in metrics["per_class"].items()},
        )
    )
    return metrics


def _end(run: TrainRun) -> None:
    """A run that completed (or stopped early): its averaged weights (``average_last``) become its
    bundle, mixed with the starting weights when asked (``keep_start``), and it needs no resume state."""
    write_average(run)
    write_blend(run)
    if ddp.is_main():
        run.state_path.unlink(missing_ok=True)
    if ddp.is_active():
        ddp.barrier()


def _finish(run: TrainRun, stopped_early: bool = False, cancelled: bool = False) -> TrainResult:
    """The run's ``TrainResult``: best bundle and epoch, epochs run (a cancelled epoch does not count)."""
    result = run.result
    result.best_epoch = run.best_epoch
    result.best_dice = run.best_dice
    result.epochs_run = run.epoch - 1 if cancelled else run.epoch
    result.stopped_early = stopped_early
    result.cancelled = cancelled
    result.seconds = time.perf_counter() - run.t_start
    result.model = unwrap(run.net)
    if result.best_path is None and run.best_epoch and run.json_path.is_file():
        result.best_path = run.json_path
    return result
