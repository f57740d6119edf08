"""One training run: its parts and progress (``TrainRun``), and what it returns (``TrainResult``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from napari_gitseg import events as ev
from napari_gitseg.cancel import Cancel, is_cancelled
from napari_gitseg.model.bundle import bundle_paths
from napari_gitseg.model.factory import ModelConfig
from training import ddp
from training.checkpoints import STATE_SUFFIX
from training.config import TrainConfig
from training.train_data import Cached


class TrainingCancelled(Exception):
    """Training stopped on request; ``result`` is the partial ``TrainResult`` (best bundle so far)."""

    def __init__(self, result: TrainResult | None = None, message: str = "training cancelled"):
        super().__init__(message)
        self.result = result


@dataclass
class TrainResult:
    """What a training run produced: the best bundle, its epoch and metrics, and the epoch history."""

    best_path: Path | None = None
    best_epoch: int = 0
    best_dice: float | None = None
    best_metrics: dict = field(default_factory=dict)
    epochs_run: int = 0
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    cancelled: bool = False
    seconds: float = 0.0
    steps: int = 0
    config: dict = field(default_factory=dict)
    model: torch.nn.Module | None = field(default=None, repr=False)  # last weights (in memory only)

    def to_dict(self) -> dict:
        """JSON-ready summary (without the in-memory model)."""
        return {
            "best_path": None if self.best_path is None else str(self.best_path),
            "best_epoch": self.best_epoch,
            "best_dice": self.best_dice,
            "best_metrics": self.best_metrics,
            "epochs_run": self.epochs_run,
            "history": self.history,
            "stopped_early": self.stopped_early,
            "cancelled": self.cancelled,
            "seconds": round(self.seconds, 2),
            "steps": self.steps,
        }


@dataclass
class TrainRun:
    """One training run: its parts (set up once) and its progress (what the steps below share)."""

    config: TrainConfig
    model_config: ModelConfig
    normalization: dict
    init_path: str | None  # the bundle it was fine-tuned from
    device: torch.device
    net: torch.nn.Module  # the model, or its DistributedDataParallel wrapper
    train_ds: torch.utils.data.Dataset
    val_ds: torch.utils.data.Dataset
    val_set: Cached
    loader: torch.utils.data.DataLoader
    generator: torch.Generator  # the sampling order
    augment: object  # training.augment.Augmentation
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object | None
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    epochs: int
    steps: int  # per epoch
    lr: float
    out_stem: Path
    emit: Callable[[ev.Event], None]
    cancel: Cancel
    t_start: float
    result: TrainResult
    meta: dict = field(default_factory=dict)  # data description, command line, notes (for the bundle)
    start_epoch: int = 1
    epoch: int = 0  # the epoch running (or last run)
    best_dice: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)
    done_steps: int = 0
    n_nonfinite: int = 0
    weight_sum: dict | None = None  # config.average_last: float64 sums of the weights of the averaged epochs
    averaged_epochs: list[int] = field(default_factory=list)
    keep_resume_state: bool = True  # write STEM.resume.pt (a round never resumes: False)
    resume_every_s: float = 0.0  # ... after an epoch once this long has passed since the last (0: every epoch)
    last_resume_save: float | None = None  # time.perf_counter() of the last write (None: since t_start)

    @property
    def json_path(self) -> Path:
        return bundle_paths(self.out_stem)[0]

    @property
    def state_path(self) -> Path:
        return self.out_stem.parent / (self.out_stem.name + STATE_SUFFIX)

    @property
    def channels_last(self) -> bool:
        return self.device.type in ("cpu", "cuda")

    @property
    def fine_tune(self) -> bool:
        return bool(self.config.init_from)

    def autocast(self):
        """Mixed precision on CUDA when the config asks for it; a no-op elsewhere."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def cancelled(self) -> bool:
        """True when ``cancel`` is set (on any rank under DDP)."""
        flag = is_cancelled(self.cancel)
        return ddp.any_flag(flag) if ddp.is_active() else flag
