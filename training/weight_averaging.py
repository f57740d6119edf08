"""Weights made from several: the mean of a run's last epochs, or a fine-tuned model mixed with its start.

``average_last = N``: the bundle holds the mean weights of the run's last N epochs (stochastic weight
averaging); ``keep_start = a``: a fine-tuned bundle becomes ``(1 - a) * its weights + a * the
starting bundle's`` (WiSE-FT). Either result is validated again before it replaces the bundle.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch

from napari_gitseg import events as ev
from napari_gitseg.model.bundle import load_bundle
from training import ddp
from training.checkpoints import checkpoint_meta, write_best_bundle
from training.ddp import unwrap
from training.validation import validate

if TYPE_CHECKING:
    from training.train_run import TrainRun


def add_to_average(run: TrainRun) -> None:
    """Add this epoch's weights to the average when it is one of the run's last ``average_last`` epochs."""
    n = int(run.config.average_last)
    if not n or run.epoch <= run.epochs - n:
        return
    state = unwrap(run.net).state_dict()
    if run.weight_sum is None:
        run.weight_sum = {
            k: v.detach().to("cpu", torch.float64, copy=True) for k, v in state.items() if v.is_floating_point()
        }
    else:
        for k, total in run.weight_sum.items():
            total += state[k].detach().to("cpu", torch.float64)
    run.averaged_epochs.append(run.epoch)


def averaged_state(weight_sum: dict, count: int, like: dict) -> dict:
    """The state dict of ``like`` with its floating-point tensors replaced by ``weight_sum / count``
    (in their own dtypes); integer buffers (BatchNorm's batch counters) keep ``like``'s values."""
    return {k: (weight_sum[k] / count).to(v.dtype) if k in weight_sum else v for k, v in like.items()}


def write_average(run: TrainRun) -> None:
    """Validate the averaged weights and write them as the run's bundle (instead of the best epoch's).

    Stochastic weight averaging over the end of the schedule (Izmailov et al. 2018); BatchNorm
    statistics are averaged like the weights (the epochs averaged are close, at a low learning rate)."""
    if not run.averaged_epochs:
        return
    model = copy.deepcopy(unwrap(run.net))
    model.load_state_dict(averaged_state(run.weight_sum, len(run.averaged_epochs), model.state_dict()))
    first, last = run.averaged_epochs[0], run.averaged_epochs[-1]
    _install_weights(run, model, last, f"weights averaged over epochs {first}-{last}")


def write_blend(run: TrainRun) -> None:
    """Fine-tuning with ``keep_start = a``: the bundle becomes ``(1 - a) * its weights + a * the starting
    bundle's`` (WiSE-FT, Wortsman et al. 2022), validated once more."""
    share = float(run.config.keep_start)
    if not share or not run.init_path or not run.json_path.is_file():
        return
    model, _bundle = load_bundle(run.json_path, device="cpu")
    start, _ = load_bundle(run.init_path, device="cpu")
    start_state = start.state_dict()
    model.load_state_dict(
        {
            k: (v * (1 - share) + start_state[k] * share).to(v.dtype) if v.is_floating_point() else v
            for k, v in model.state_dict().items()
        }
    )
    _install_weights(
        run,
        model.to(run.device),
        run.best_epoch,
        f"weights mixed with the starting model ({share:.0%} of it)",
        kept_start=share,
    )


def _install_weights(run: TrainRun, model: torch.nn.Module, epoch: int, what: str, **training: object) -> None:
    """Validate ``model`` (weights made from the run's epochs) and write it as the run's bundle, ``training``
    added to the bundle's training record (with the averaged epochs, when there are any)."""
    metrics = validate(
        model, run.val_set, run.device, run.model_config.classes, run.config.val_batch_size, run.autocast
    )
    run.emit(
        ev.Log(
            f"{what}: validation Dice {float(metrics['mean_dice']):.4f} "
            f"(before: {run.best_dice}, epoch {run.best_epoch})"
        )
    )
    run.best_dice, run.best_epoch = float(metrics["mean_dice"]), epoch
    run.result.best_metrics = metrics
    if ddp.is_main():
        meta = checkpoint_meta(run, metrics)
        meta["training"].update(training)
        if run.averaged_epochs:
            meta["training"]["averaged_epochs"] = list(run.averaged_epochs)
        write_best_bundle(model, run.model_config, run.out_stem, **meta)
        run.result.best_path = run.json_path
        run.emit(ev.Checkpoint(path=str(run.json_path), epoch=epoch, val_dice=run.best_dice, best=True))
