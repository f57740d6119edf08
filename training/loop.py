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
  previous one intact); ``STEM.resume.pt`` after every epoch lets ``resume=True`` continue;
* DistributedDataParallel when ``torch.distributed`` is initialised (``training.ddp``).

``config.seed`` makes a CPU run bit-reproducible (same torch build and thread count), resumed or not.
Every point above in detail, and what is not reproducible: ``docs/training-notes.md``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from napari_gitseg import events as ev
from napari_gitseg.cancel import Cancel, is_cancelled
from napari_gitseg.io.errors import GitsegInputError
from napari_gitseg.io.stack import Stack
from napari_gitseg.model.bundle import BundleError, atomic_write_bytes, bundle_paths, load_bundle, save_bundle
from napari_gitseg.model.device import pick_device, torch_threads
from napari_gitseg.model.factory import ModelConfig, build_model, forward_logits
from napari_gitseg.model.normalize import DEFAULT_NORMALIZATION
from training import ddp
from training.config import TrainConfig
from training.datasets import SliceDataset

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
STATE_SUFFIX = ".resume.pt"
_STATE_FORMAT = "napari-gitseg-train-state"
_CACHE_LIMIT_BYTES = 1_500_000_000


class TrainingCancelled(Exception):
    """Training stopped on request; ``result`` is the partial ``TrainResult`` (best bundle so far)."""

    def __init__(self, result: TrainResult | None = None, message: str = "training cancelled"):
        super().__init__(message)
        self.result = result


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. the disk is full); the previous best bundle is intact."""


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


# ------------------------------------------------------------------------------------------ data
def check_stacks(
    stacks: Sequence[Stack], classes: Sequence[str], what: str = "training", allow_empty: bool = False
) -> list[Stack]:
    """Validate labelled stacks for training; returns them with masks in the order of ``classes``.

    Raises ``GitsegInputError`` naming the stack for: no masks, masks whose shape does not match the
    image, a class the model does not know (or a model class the labels lack), no labelled slice at
    all, or labelled slices that are all empty (unless ``allow_empty``: a model being fine-tuned
    already knows the organs and learns from a slice marked empty where not to paint them).
    """
    classes = tuple(classes)
    if not stacks:
        raise GitsegInputError(None, f"no {what} stacks given")
    out = []
    n_labelled = 0
    n_nonempty = 0
    for stack in stacks:
        if not isinstance(stack, Stack):
            raise TypeError(f"{what} data must be Stack objects, got {type(stack).__name__}")
        src = stack.source or stack.name
        if stack.masks is None:
            raise GitsegInputError(src, f"stack {stack.name} has no labels to train on")
        masks = np.asarray(stack.masks)
        expected = (len(stack.classes), *stack.image.shape)
        if masks.shape != expected:
            raise GitsegInputError(
                src,
                f"labels of stack {stack.name} have shape {masks.shape}, but the stack needs {expected} "
                f"(classes x slices x rows x columns of the image {stack.image.shape})",
            )
        unknown = [c for c in stack.classes if c not in classes]
        if unknown:
            raise GitsegInputError(
                src, f"class {unknown[0]!r} of stack {stack.name} is not one of the model's classes {list(classes)}"
            )
        missing = [c for c in classes if c not in stack.classes]
        if missing:
            raise GitsegInputError(src, f"stack {stack.name} has no labels for the model's class {missing[0]!r}")
        if tuple(stack.classes) != classes:
            order = [list(stack.classes).index(c) for c in classes]
            stack = dataclasses.replace(stack, masks=masks[order], classes=classes)
        labelled = np.ones(stack.image.shape[0], bool) if stack.labelled is None else np.asarray(stack.labelled, bool)
        if labelled.shape != (stack.image.shape[0],):
            raise GitsegInputError(
                src, f"stack {stack.name}: labelled flags {labelled.shape} for {stack.image.shape[0]} slices"
            )
        n_labelled += int(labelled.sum())
        n_nonempty += int(np.asarray(stack.masks)[:, labelled].any(axis=(0, 2, 3)).sum())
        out.append(stack)
    if n_labelled == 0:
        raise GitsegInputError(out[0].source, f"the {what} data has no labelled slice: label some slices first")
    if n_nonempty == 0 and not allow_empty:
        raise GitsegInputError(
            out[0].source, f"all {n_labelled} labelled {what} slices have empty masks: there is no organ to learn"
        )
    return out


def _labelled_of(stack: Stack) -> np.ndarray:
    return np.ones(stack.image.shape[0], bool) if stack.labelled is None else np.asarray(stack.labelled, bool)


def block_split(z_labelled: Sequence[int], val_fraction: float, seed: int) -> set[int]:
    """Validation slices of one case: one contiguous block of its labelled slices (about ``val_fraction``)."""
    z = np.sort(np.asarray(list(z_labelled), dtype=np.int64))
    if len(z) < 2:
        raise GitsegInputError(
            None, f"cannot hold out validation slices from {len(z)} labelled slice(s): label at least 2 slices"
        )
    n_blocks = min(len(z), max(2, int(round(1.0 / float(val_fraction)))))
    blocks = np.array_split(z, n_blocks)
    inner = list(range(1, n_blocks - 1)) or list(range(n_blocks))  # the ends are often organ-free
    pick = inner[int(np.random.default_rng(seed).integers(len(inner)))]
    return {int(v) for v in blocks[pick]}


def split_validation(
    stacks: Sequence[Stack], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Stack], list[Stack]]:
    """(train, validation) stacks: whole cases apart, or with a single case, blocks of slices.

    With one case, both sides get copies of the stacks whose ``labelled`` flags select their slices.
    """
    from training.splits import case_of, split_by_case

    stacks = list(stacks)
    cases = {case_of(s.name) for s in stacks}
    if len(cases) >= 2:
        train_names, val_names = split_by_case([s.name for s in stacks], val_fraction, seed)
        return [s for s in stacks if s.name in train_names], [s for s in stacks if s.name in val_names]
    # one case: blocks of slices of each stack
    train, val = [], []
    for i, stack in enumerate(stacks):
        labelled = _labelled_of(stack)
        zs = np.flatnonzero(labelled)
        if len(zs) < 2:
            train.append(stack)
            continue
        held = block_split(zs, val_fraction, seed + i)
        val_lab = np.zeros_like(labelled)
        val_lab[sorted(held)] = True
        train.append(dataclasses.replace(stack, labelled=labelled & ~val_lab))
        val.append(dataclasses.replace(stack, labelled=val_lab))
    if not val:
        raise GitsegInputError(stacks[0].source, "too few labelled slices to hold out a validation set")
    return train, val


def build_dataset(
    stacks: Sequence[Stack],
    config: TrainConfig,
    model_config: ModelConfig,
    normalization: dict | None = None,
    provenance: dict | None = None,
    what: str = "training",
) -> SliceDataset:
    """A ``SliceDataset`` of the labelled slices of ``stacks`` prepared as ``config`` and the model ask
    (slices that are all empty only when fine-tuning: ``config.init_from``)."""
    stacks = check_stacks(stacks, model_config.classes, what, allow_empty=bool(config.init_from))
    size = model_config.input_size if model_config.input_size is not None else config.size
    return SliceDataset(
        stacks,
        k=model_config.k,
        stride=model_config.stride,
        size=None if size is None else tuple(size),
        fit="resize" if model_config.input_size is not None else "crop",
        crop_to_body=bool(config.crop_to_body and model_config.input_size is None),
        ignore_ambiguous=config.ignore_ambiguous,
        normalization=normalization,
        provenance=provenance,
        provenance_weights={"clinician": 1.0, "pseudo": float(config.pseudo_weight)},
        classes=model_config.classes,
    )


def is_on_the_fly(dataset) -> bool:
    """True for a dataset that makes new items on every access (its ``on_the_fly`` attribute is True)."""
    return bool(getattr(dataset, "on_the_fly", False))


class _Cached(torch.utils.data.Dataset):
    """Keeps the deterministic items of a dataset in memory (augmentation happens per batch).

    Never caches a dataset made on the fly (``is_on_the_fly``): each access must reach it.
    Items are dicts with the keys image, masks, ignore, weight, slice and name.
    """

    def __init__(self, base, cache: bool):
        self.base = base
        self.cache: dict[int, dict] | None = {} if cache and not is_on_the_fly(base) else None

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        item = self.base[i]
        out = {key: item[key] for key in ("image", "masks", "ignore", "weight", "slice")}
        out["name"] = item["name"]
        if self.cache is not None:
            self.cache[i] = out
        return out


def _collate(items: list[dict]) -> dict:
    return {
        "image": torch.stack([it["image"] for it in items]),
        "masks": torch.stack([it["masks"] for it in items]),
        "ignore": torch.stack([it["ignore"] for it in items]),
        "weight": torch.stack([it["weight"] for it in items]),
        "slice": [int(it["slice"]) for it in items],
        "name": [it["name"] for it in items],
    }


def _as_dataset(data, config, model_config, normalization, what, provenance=None) -> SliceDataset:
    if isinstance(data, (SliceDataset, torch.utils.data.Dataset)):
        if len(data) == 0:
            raise GitsegInputError(None, f"the {what} dataset has no labelled slice: label some slices first")
        return data
    if isinstance(data, Stack):
        data = [data]
    return build_dataset(list(data), config, model_config, normalization, provenance, what=what)


def _dataset_all_empty(ds) -> bool:
    masks = getattr(ds, "_masks", None)
    samples = getattr(ds, "samples", None)
    if masks is not None and samples is not None:
        return not any(masks[i][:, z].any() for i, z in samples)
    return not any(bool(ds[i]["masks"].any()) for i in range(len(ds)))


# ------------------------------------------------------------------------------------------ model
def _init_model(config: TrainConfig, device: torch.device) -> tuple[torch.nn.Module, ModelConfig, dict, str | None]:
    """(model, its config, normalisation, the bundle it was initialised from)."""
    if config.init_from:
        path = Path(config.init_from)
        try:
            model, bundle = load_bundle(path, device="cpu")
        except BundleError as err:
            raise GitsegInputError(path, f"cannot fine-tune from this bundle: {err.problem}") from err
        return model.to(device), bundle.config, dict(bundle.normalization), str(bundle.json_path)
    torch.manual_seed(int(config.seed))
    model_config = config.model_config()
    normalization = dict(DEFAULT_NORMALIZATION if config.normalization is None else config.normalization)
    return build_model(model_config).to(device), model_config, normalization, None


def _set_bn_eval(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return (
        model.module
        if hasattr(model, "module") and isinstance(model, torch.nn.parallel.DistributedDataParallel)
        else model
    )


def state_digest(model: torch.nn.Module) -> str:
    """A short SHA-256 of the model's parameters and buffers (to compare replicas)."""
    import hashlib

    digest = hashlib.sha256()
    for key, value in sorted(_unwrap(model).state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------------------ validation
@torch.inference_mode()
def validate(
    model: torch.nn.Module, dataset, device: torch.device, classes: Sequence[str], batch_size: int = 16, autocast=None
) -> dict:
    """Validation metrics of ``model`` on ``dataset`` at its resolution, per stack, with ``evaluate_cases``."""
    from training.metrics import evaluate_cases

    was_training = model.training
    model.eval()
    loader = torch.utils.data.DataLoader(
        _Cached(dataset, cache=False) if not isinstance(dataset, _Cached) else dataset,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=_collate,
        num_workers=0,
    )
    per_stack: dict[str, list] = {}
    try:
        for batch in loader:
            x = batch["image"].to(device)
            with autocast() if autocast is not None else contextlib.nullcontext():
                seg, _ = forward_logits(model, x)
            pred = (seg.float() > 0).cpu().numpy()  # sigmoid(x) > 0.5
            true = batch["masks"].numpy() > 0.5
            for j, name in enumerate(batch["name"]):
                per_stack.setdefault(name, []).append((batch["slice"][j], pred[j], true[j]))
    finally:
        model.train(was_training)
    cases = []
    for name in sorted(per_stack):
        rows = sorted(per_stack[name], key=lambda r: r[0])
        p = np.stack([r[1] for r in rows], axis=1)  # (C, n, H, W)
        t = np.stack([r[2] for r in rows], axis=1)
        cases.append((p, t, None))
    return evaluate_cases(cases, classes=tuple(classes))


# ------------------------------------------------------------------------------------------ checkpoints
def _write_best_bundle(model, model_config, out_stem: Path, **meta) -> None:
    """Write the bundle at ``out_stem`` so that a failure at any point leaves the previous one intact."""
    json_path, weights_path = bundle_paths(out_stem)
    tmp_stem = out_stem.parent / f".{out_stem.name}.incoming"
    tmp_json, tmp_weights = bundle_paths(tmp_stem)
    pending = out_stem.parent / f".{out_stem.name}.json.pending"
    try:
        save_bundle(_unwrap(model), model_config, tmp_stem, **meta)
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


# ------------------------------------------------------------------------------------------ train
def train(
    config: TrainConfig,
    train_data,
    val_data,
    out_stem: str | os.PathLike,
    on_event: OnEvent = None,
    cancel: Cancel = None,
    *,
    resume: bool = False,
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
    "pseudo"}} for stack lists (pseudo-labels weigh ``config.pseudo_weight``). Returns a ``TrainResult``; raises
    ``TrainingCancelled`` when ``cancel`` is set, ``CheckpointWriteError`` when a checkpoint cannot be
    written, ``GitsegInputError`` for bad data.
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
        run = _set_up(config, train_data, val_data, out_stem, emit, cancel, device, provenance, t_start)
        run.meta = _bundle_meta(run, data_description, command, notes)
        if resume:
            _resume(run)
        return _run_epochs(run)


@dataclass
class _Run:
    """One training run: its parts (set up once) and its progress (what the steps below share)."""

    config: TrainConfig
    model_config: ModelConfig
    normalization: dict
    init_path: str | None  # the bundle it was fine-tuned from
    device: torch.device
    net: torch.nn.Module  # the model, or its DistributedDataParallel wrapper
    train_ds: torch.utils.data.Dataset
    val_ds: torch.utils.data.Dataset
    val_set: _Cached
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


# ---- set-up ------------------------------------------------------------------------------------------
def _prepare_data(config, train_data, val_data, model_config, normalization, provenance):
    """(train dataset, validation dataset); ``val_data=None`` splits the training stacks."""
    if val_data is None:
        if isinstance(train_data, (SliceDataset, torch.utils.data.Dataset)):
            raise ValueError("val_data=None needs the training data as stacks (to split by case)")
        train_stacks = [train_data] if isinstance(train_data, Stack) else list(train_data)
        train_stacks = check_stacks(train_stacks, model_config.classes, allow_empty=bool(config.init_from))
        train_data, val_data = split_validation(train_stacks, config.val_fraction, config.seed)
    train_ds = _as_dataset(train_data, config, model_config, normalization, "training", provenance)
    val_ds = _as_dataset(val_data, config, model_config, normalization, "validation")
    if not config.init_from and not is_on_the_fly(train_ds) and _dataset_all_empty(train_ds):
        raise GitsegInputError(
            None, f"all {len(train_ds)} labelled training slices have empty masks: there is no organ to learn"
        )
    return train_ds, val_ds


def drops_last_batch(n_items: int, batch_size: int) -> bool:
    """The training loader drops a last partial batch when a pass holds more than one batch."""
    return n_items > batch_size


def batches_per_pass(n_items: int, batch_size: int) -> int:
    """Optimiser steps in one pass of the training loader over ``n_items`` (one process)."""
    return n_items // batch_size if drops_last_batch(n_items, batch_size) else 1


def _make_loader(train_set, config: TrainConfig, generator: torch.Generator):
    """(training loader, steps per epoch): seeded random order, or a DistributedSampler under DDP."""
    world = ddp.world_size()
    if ddp.is_active():
        sampler = torch.utils.data.distributed.DistributedSampler(
            train_set, num_replicas=world, rank=ddp.rank(), shuffle=True, seed=int(config.seed), drop_last=False
        )
    else:
        sampler = torch.utils.data.RandomSampler(train_set, generator=generator)
    drop_last = drops_last_batch(math.ceil(len(train_set) / world), config.batch_size)
    loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=config.batch_size,
        sampler=sampler,
        collate_fn=_collate,
        num_workers=0,
        drop_last=drop_last,
    )
    steps = len(loader)
    if config.max_steps_per_epoch:
        steps = min(steps, int(config.max_steps_per_epoch))
    return loader, max(steps, 1)


def _set_up_optimiser(model: torch.nn.Module, config: TrainConfig, lr: float, total_steps: int):
    """(optimizer, scheduler or None) as the config says: Adam/AdamW, cosine per step or plateau per epoch."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt_cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(params, lr=lr, weight_decay=float(config.weight_decay), foreach=True)
    if config.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps), eta_min=lr * 0.01)
    elif config.schedule == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=0.5, patience=max(1, int(config.patience) // 2)
        )
    else:
        scheduler = None
    return optimizer, scheduler


def _set_up(config, train_data, val_data, out_stem, emit, cancel, device, provenance, t_start) -> _Run:
    """Model, data, loader, loss, augmentation and optimiser of a run, in the order that fixes its seeds."""
    from training.augment import build_augmentation
    from training.losses import build_loss

    fine_tune = bool(config.init_from)
    model, model_config, normalization, init_path = _init_model(config, device)
    if fine_tune and model_config.input_size and list(config.size or []) != list(model_config.input_size):
        # a model fine-tuned at another size than it learnt (and is predicted) at lost Dice
        # (the quick preset's 96 px on the 160 px default model); keep the model's own size
        emit(ev.Log(f"fine-tuning at the model's input size {list(model_config.input_size)} instead of {config.size}"))
        config = config.replace(size=list(model_config.input_size))
    train_ds, val_ds = _prepare_data(config, train_data, val_data, model_config, normalization, provenance)
    cache = _fits_in_memory(train_ds, val_ds)
    train_set, val_set = _Cached(train_ds, cache), _Cached(val_ds, cache)
    loss_fn = build_loss(config.loss).to(device)
    if loss_fn.needs_cls and not model_config.cls_head:
        raise ValueError("the loss has a 'cls' term but the model has no classification head (cls_head)")
    augment = build_augmentation(config.augmentation, seed=config.seed + 1)
    epochs = int(config.finetune_epochs or config.epochs) if fine_tune else int(config.epochs)
    lr = float(config.lr) * (float(config.finetune_lr_factor) if fine_tune else 1.0)
    generator = torch.Generator().manual_seed(int(config.seed) + 2)
    loader, steps = _make_loader(train_set, config, generator)
    if device.type in ("cpu", "cuda"):
        model = model.to(memory_format=torch.channels_last)
    optimizer, scheduler = _set_up_optimiser(model, config, lr, epochs * steps)
    amp_dtype = None
    if config.amp and device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    net = model
    if ddp.is_active():
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return _Run(
        config=config,
        model_config=model_config,
        normalization=normalization,
        init_path=init_path,
        device=device,
        net=net,
        train_ds=train_ds,
        val_ds=val_ds,
        val_set=val_set,
        loader=loader,
        generator=generator,
        augment=augment,
        loss_fn=loss_fn,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16),
        amp_dtype=amp_dtype,
        epochs=epochs,
        steps=steps,
        lr=lr,
        out_stem=out_stem,
        emit=emit,
        cancel=cancel,
        t_start=t_start,
        result=TrainResult(config=config.to_dict()),
    )


def _fits_in_memory(train_ds, val_ds) -> bool:
    """Whether the items of both datasets fit the cache (judged from the first training item)."""
    item = train_ds[0]
    per_item = (item["image"].numel() + item["masks"].numel()) * 4
    return per_item * (len(train_ds) + len(val_ds)) < _CACHE_LIMIT_BYTES


def _bundle_meta(run: _Run, data_description: dict | None, command: str | None, notes: str) -> dict:
    """The data description, command line and notes every checkpoint bundle records."""
    data_desc = dict(data_description or {})
    data_desc.setdefault("n_train_slices", len(run.train_ds))
    data_desc.setdefault("n_val_slices", len(run.val_ds))
    for key, ds in (("train_stacks", run.train_ds), ("val_stacks", run.val_ds)):
        names = getattr(ds, "names", None)
        if names is not None:
            data_desc.setdefault(key, list(names))
    if hasattr(run.train_ds, "provenance_of"):
        counts: dict[str, int] = {}
        for i in range(len(run.train_ds)):
            p = run.train_ds.provenance_of(i) or "unspecified"
            counts[p] = counts.get(p, 0) + 1
        data_desc.setdefault("provenance", counts)
    command = command if command is not None else shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
    return {"data": data_desc, "command": command, "notes": notes}


# ---- resume ------------------------------------------------------------------------------------------
def _resume(run: _Run) -> None:
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
    _unwrap(run.net).load_state_dict(state["model"])
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


def _save_resume_state(run: _Run) -> None:
    """Everything ``_resume`` needs to continue after ``run.epoch`` exactly as an uninterrupted run."""
    _save_state(
        run.state_path,
        {
            "format": _STATE_FORMAT,
            "epoch": run.epoch,
            "model": {k: v.detach().cpu() for k, v in _unwrap(run.net).state_dict().items()},
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


# ---- epochs ------------------------------------------------------------------------------------------
def _run_epochs(run: _Run) -> TrainResult:
    """Train, validate and checkpoint epoch after epoch until the last one or early stopping."""
    run.epoch = run.start_epoch - 1
    run.result.history = run.history
    for epoch in range(run.start_epoch, run.epochs + 1):
        run.epoch = epoch
        losses = _train_epoch(run)
        metrics = _validate_epoch(run, losses)
        _add_to_average(run)
        _checkpoint(run, metrics)
        if run.config.patience and run.bad_epochs >= int(run.config.patience) and epoch < run.epochs:
            _end(run)
            return _finish(run, stopped_early=True)
    _end(run)
    return _finish(run)


# ---- weight averaging (config.average_last) ----------------------------------------------------------
def _add_to_average(run: _Run) -> None:
    """Add this epoch's weights to the average when it is one of the run's last ``average_last`` epochs."""
    n = int(run.config.average_last)
    if not n or run.epoch <= run.epochs - n:
        return
    state = _unwrap(run.net).state_dict()
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


def _write_average(run: _Run) -> None:
    """Validate the averaged weights and write them as the run's bundle (instead of the best epoch's).

    Stochastic weight averaging over the end of the schedule (Izmailov et al. 2018); BatchNorm
    statistics are averaged like the weights (the epochs averaged are close, at a low learning rate)."""
    if not run.averaged_epochs:
        return
    model = copy.deepcopy(_unwrap(run.net))
    model.load_state_dict(averaged_state(run.weight_sum, len(run.averaged_epochs), model.state_dict()))
    first, last = run.averaged_epochs[0], run.averaged_epochs[-1]
    _install_weights(run, model, last, f"weights averaged over epochs {first}-{last}")


def _write_blend(run: _Run) -> None:
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


def _install_weights(run: _Run, model: torch.nn.Module, epoch: int, what: str, **training: object) -> None:
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
        meta = _checkpoint_meta(run, metrics)
        meta["training"].update(training)
        if run.averaged_epochs:
            meta["training"]["averaged_epochs"] = list(run.averaged_epochs)
        _write_best_bundle(model, run.model_config, run.out_stem, **meta)
        run.result.best_path = run.json_path
        run.emit(ev.Checkpoint(path=str(run.json_path), epoch=epoch, val_dice=run.best_dice, best=True))


def _train_epoch(run: _Run) -> list[float]:
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


def _train_step(run: _Run, batch: dict) -> float | None:
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


def _validate_epoch(run: _Run, losses: list[float]) -> dict:
    """Validation metrics after the epoch; updates the history, the plateau schedule and the events."""
    if ddp.is_active():  # BatchNorm running statistics drift apart per rank: take rank 0's everywhere
        ddp.broadcast_buffers(_unwrap(run.net))
    metrics = validate(
        _unwrap(run.net), run.val_set, run.device, run.model_config.classes, run.config.val_batch_size, run.autocast
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


def _checkpoint(run: _Run, metrics: dict) -> None:
    """Keep the epoch as the best bundle when its Dice improved by ``min_delta``; save the resume state."""
    dice = float(metrics["mean_dice"])
    improved = run.best_dice is None or dice > run.best_dice + float(run.config.min_delta)
    if ddp.is_active():
        improved = ddp.broadcast_flag(improved)
    main = ddp.is_main()
    if improved:
        run.best_dice, run.best_epoch, run.bad_epochs = dice, run.epoch, 0
        run.result.best_metrics = metrics
        if main:
            _write_best_bundle(run.net, run.model_config, run.out_stem, **_checkpoint_meta(run, metrics))
            run.result.best_path = run.json_path
            run.emit(ev.Checkpoint(path=str(run.json_path), epoch=run.epoch, val_dice=dice, best=True))
    else:
        run.bad_epochs += 1
    if main:
        _save_resume_state(run)


def _checkpoint_meta(run: _Run, metrics: dict) -> dict:
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


def _end(run: _Run) -> None:
    """A run that completed (or stopped early): its averaged weights (``average_last``) become its
    bundle, mixed with the starting weights when asked (``keep_start``), and it needs no resume state."""
    _write_average(run)
    _write_blend(run)
    if ddp.is_main():
        run.state_path.unlink(missing_ok=True)
    if ddp.is_active():
        ddp.barrier()


def _finish(run: _Run, stopped_early: bool = False, cancelled: bool = False) -> TrainResult:
    """The run's ``TrainResult``: best bundle and epoch, epochs run (a cancelled epoch does not count)."""
    result = run.result
    result.best_epoch = run.best_epoch
    result.best_dice = run.best_dice
    result.epochs_run = run.epoch - 1 if cancelled else run.epoch
    result.stopped_early = stopped_early
    result.cancelled = cancelled
    result.seconds = time.perf_counter() - run.t_start
    result.model = _unwrap(run.net)
    if result.best_path is None and run.best_epoch and run.json_path.is_file():
        result.best_path = run.json_path
    return result
