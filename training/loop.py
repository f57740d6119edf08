"""The train loop: one model, keep the best epoch by validation Dice, stop early, resume, cancel.

``train(config, train_data, val_data, out_stem)`` trains the network ``config`` describes (or
fine-tunes the bundle ``config.init_from``) and writes the best epoch's model as a bundle at
``out_stem`` (``STEM.safetensors`` + ``STEM.json``; the JSON holds the full config, a description
of the data, the validation metrics and the command line). What it does:

* data: ``SliceDataset``\\ s, or lists of ``Stack``\\ s with masks (checked first: labels whose shape
  does not match the stack, classes the model does not have, no labelled slice, only empty labels
  all raise ``GitsegInputError`` naming the stack). ``val_data=None`` holds out a validation split
  of the training stacks by case (or, with one case, by blocks of slices): ``split_validation``;
* optimisation: Adam or AdamW, cosine (per step) or plateau (per epoch, on validation Dice)
  learning-rate schedule, batch augmentation on the device (``training.augment``), the combined
  loss (``training.losses``) with per-sample weights (pseudo-labels weigh less), mixed precision on
  CUDA only, deterministic seeding (model init, sampling order, augmentation);
* validation after each epoch with ``training.metrics.evaluate_cases`` (the implementation behind
  ``gitseg eval``), per stack, at the training resolution;
* checkpoints: the best bundle is replaced only by a better epoch and only atomically (a failure
  while writing, e.g. a full disk, leaves the previous best bundle intact and raises
  ``CheckpointWriteError``); after every epoch the resume state (model, optimizer, scheduler,
  counters, random states) goes to ``STEM.resume.pt``, a torch file that loads with
  ``weights_only=True``; ``resume=True`` continues from it. It is removed when a run completes;
* early stopping after ``patience`` epochs without a validation Dice gain of ``min_delta``;
* cancellation (``cancel``: a ``threading.Event`` or a callable) is checked before every step and
  raises ``TrainingCancelled`` with the partial result; the last best bundle stays intact;
* DistributedDataParallel when ``torch.distributed`` is initialised (see ``training.ddp``):
  ``DistributedSampler``, every rank validates, rank 0 decides and writes.

Reproducibility. ``config.seed`` fixes the initial weights (``torch.manual_seed`` before the model is
built), the order of the samples (a private ``torch.Generator``), the augmentation (its own
generator) and the validation split; nothing reads Python's or numpy's global random state, so
other code drawing from them does not change a run. On the CPU, with the same torch build and the
same number of threads, two runs give bit-identical weights, and a resumed run (``resume=True``)
continues exactly as the uninterrupted one (tested). Not bit-reproducible: runs on different
thread counts or CPUs (reduction order), CUDA runs (non-deterministic cuDNN/atomics kernels; we do
not force ``torch.use_deterministic_algorithms``, which would slow training), mixed precision, and
DDP runs compared with single-process runs (different batches per step).
"""

from __future__ import annotations

import contextlib
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

from napari_gitseg.cancel import Cancel, is_cancelled
from napari_gitseg.io.errors import GitsegInputError
from napari_gitseg.io.stack import Stack
from napari_gitseg.model.bundle import BundleError, atomic_write_bytes, bundle_paths, load_bundle, save_bundle
from napari_gitseg.model.device import pick_device
from napari_gitseg.model.factory import ModelConfig, build_model, forward_logits
from napari_gitseg.model.normalize import DEFAULT_NORMALIZATION
from training import ddp
from training import events as ev
from training.config import TrainConfig
from training.datasets import SliceDataset

__all__ = [
    "CheckpointWriteError",
    "TrainResult",
    "TrainingCancelled",
    "build_dataset",
    "check_stacks",
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
def check_stacks(stacks: Sequence[Stack], classes: Sequence[str], what: str = "training") -> list[Stack]:
    """Validate labelled stacks for training; returns them with masks in the order of ``classes``.

    Raises ``GitsegInputError`` naming the stack for: no masks, masks whose shape does not match the
    image, a class the model does not know (or a model class the labels lack), no labelled slice at
    all, or labelled slices that are all empty.
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
                src, f"labels of stack {stack.name} have shape {masks.shape}, but the stack needs {expected} "
                f"(classes x slices x rows x columns of the image {stack.image.shape})"
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
            raise GitsegInputError(src, f"stack {stack.name}: labelled flags {labelled.shape} for "
                                        f"{stack.image.shape[0]} slices")
        n_labelled += int(labelled.sum())
        n_nonempty += int(np.asarray(stack.masks)[:, labelled].any(axis=(0, 2, 3)).sum())
        out.append(stack)
    if n_labelled == 0:
        raise GitsegInputError(out[0].source, f"the {what} data has no labelled slice: label some slices first")
    if n_nonempty == 0:
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
        raise GitsegInputError(None, f"cannot hold out validation slices from {len(z)} labelled slice(s): "
                                     "label at least 2 slices")
    n_blocks = min(len(z), max(2, int(round(1.0 / float(val_fraction)))))
    blocks = np.array_split(z, n_blocks)
    inner = list(range(1, n_blocks - 1)) or list(range(n_blocks))  # the ends are often organ-free
    pick = inner[int(np.random.default_rng(seed).integers(len(inner)))]
    return {int(v) for v in blocks[pick]}


def split_validation(stacks: Sequence[Stack], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[Stack], list[Stack]]:
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
    """A ``SliceDataset`` of the labelled slices of ``stacks`` prepared as ``config`` and the model ask."""
    stacks = check_stacks(stacks, model_config.classes, what)
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


class _Cached(torch.utils.data.Dataset):
    """Keeps the deterministic items of a SliceDataset in memory (augmentation happens per batch)."""

    def __init__(self, base, cache: bool):
        self.base = base
        self.cache: dict[int, dict] | None = {} if cache else None

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
    return build_model(model_config).to(device), model_config, dict(DEFAULT_NORMALIZATION), None


def _set_bn_eval(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


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
def validate(model: torch.nn.Module, dataset, device: torch.device, classes: Sequence[str],
             batch_size: int = 16, autocast=None) -> dict:
    """Validation metrics of ``model`` on ``dataset`` at its resolution, per stack, with ``evaluate_cases``."""
    from training.metrics import evaluate_cases

    was_training = model.training
    model.eval()
    loader = torch.utils.data.DataLoader(
        _Cached(dataset, cache=False) if not isinstance(dataset, _Cached) else dataset,
        batch_size=batch_size, shuffle=False, collate_fn=_collate, num_workers=0,
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

    ``train_data``/``val_data``: ``SliceDataset`` or lists of labelled ``Stack``\\ s (``val_data=None``:
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
    prev_threads = torch.get_num_threads()
    if config.num_threads and device.type == "cpu":
        torch.set_num_threads(max(1, int(config.num_threads) // max(1, ddp.local_world_size())))
    try:
        return _train(config, train_data, val_data, out_stem, emit, cancel, device, resume,
                      data_description, command, notes, t_start, provenance)
    finally:
        torch.set_num_threads(prev_threads)


def _train(config, train_data, val_data, out_stem, emit, cancel, device, resume, data_description,
           command, notes, t_start, provenance) -> TrainResult:
    main = ddp.is_main()
    fine_tune = bool(config.init_from)
    model, model_config, normalization, init_path = _init_model(config, device)
    if fine_tune and model_config.input_size and list(config.size or []) != list(model_config.input_size):
        # a model fine-tuned at another size than it learnt (and is predicted) at lost Dice
        # (the quick preset's 96 px on the 160 px default model); keep the model's own size
        emit(ev.Log(f"fine-tuning at the model's input size {list(model_config.input_size)} "
                    f"instead of {config.size}"))
        config = config.replace(size=list(model_config.input_size))

    if val_data is None:
        if isinstance(train_data, (SliceDataset, torch.utils.data.Dataset)):
            raise ValueError("val_data=None needs the training data as stacks (to split by case)")
        train_stacks = [train_data] if isinstance(train_data, Stack) else list(train_data)
        train_stacks = check_stacks(train_stacks, model_config.classes)
        train_data, val_data = split_validation(train_stacks, config.val_fraction, config.seed)
    train_ds = _as_dataset(train_data, config, model_config, normalization, "training", provenance)
    val_ds = _as_dataset(val_data, config, model_config, normalization, "validation")
    if _dataset_all_empty(train_ds):
        raise GitsegInputError(None, f"all {len(train_ds)} labelled training slices have empty masks: "
                                     "there is no organ to learn")
    item = train_ds[0]
    per_item = (item["image"].numel() + item["masks"].numel()) * 4
    cache = per_item * (len(train_ds) + len(val_ds)) < _CACHE_LIMIT_BYTES
    train_set, val_set = _Cached(train_ds, cache), _Cached(val_ds, cache)

    from training.augment import build_augmentation
    from training.losses import build_loss

    loss_fn = build_loss(config.loss).to(device)
    if loss_fn.needs_cls and not model_config.cls_head:
        raise ValueError("the loss has a 'cls' term but the model has no classification head (cls_head)")
    augment = build_augmentation(config.augmentation, seed=config.seed + 1)

    epochs = int(config.finetune_epochs or config.epochs) if fine_tune else int(config.epochs)
    lr = float(config.lr) * (float(config.finetune_lr_factor) if fine_tune else 1.0)
    world = ddp.world_size()
    generator = torch.Generator().manual_seed(int(config.seed) + 2)
    if ddp.is_active():
        sampler = torch.utils.data.distributed.DistributedSampler(
            train_set, num_replicas=world, rank=ddp.rank(), shuffle=True, seed=int(config.seed), drop_last=False)
    else:
        sampler = torch.utils.data.RandomSampler(train_set, generator=generator)
    per_rank = math.ceil(len(train_set) / world)
    drop_last = per_rank > config.batch_size
    loader = torch.utils.data.DataLoader(train_set, batch_size=config.batch_size, sampler=sampler,
                                         collate_fn=_collate, num_workers=0, drop_last=drop_last)
    steps = len(loader)
    if config.max_steps_per_epoch:
        steps = min(steps, int(config.max_steps_per_epoch))
    steps = max(steps, 1)

    channels_last = device.type in ("cpu", "cuda")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    opt_cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(params, lr=lr, weight_decay=float(config.weight_decay), foreach=True)
    if config.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * steps),
                                                               eta_min=lr * 0.01)
    elif config.schedule == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5,
                                                               patience=max(1, int(config.patience) // 2))
    else:
        scheduler = None

    amp_dtype = None
    if config.amp and device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=amp_dtype)

    net = model
    if ddp.is_active():
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    result = TrainResult(config=config.to_dict())
    json_path, _ = bundle_paths(out_stem)
    state_path = out_stem.parent / (out_stem.name + STATE_SUFFIX)
    start_epoch = 1
    best_dice: float | None = None
    best_epoch = 0
    bad_epochs = 0
    history: list[dict] = []
    if resume and state_path.is_file():
        state = _load_state(state_path)
        saved_cfg = json.loads(state["config"])
        if saved_cfg.get("model") != config.to_dict().get("model") or saved_cfg.get("init_from") != config.init_from:
            raise GitsegInputError(state_path, "the resume state was written for a different model config")
        _unwrap(net).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        generator.set_state(state["sampler_rng"])
        if augment._gen is not None and state.get("augment_rng") is not None:
            augment._gen.set_state(state["augment_rng"])
        start_epoch = int(state["epoch"]) + 1
        best_dice = None if state["best_dice"] < 0 else float(state["best_dice"])
        best_epoch = int(state["best_epoch"])
        bad_epochs = int(state["bad_epochs"])
        history = json.loads(state["history"])
        if best_epoch and json_path.is_file():
            result.best_path = json_path
        emit(ev.Log(f"resuming from {state_path} after epoch {state['epoch']}"))

    data_desc = dict(data_description or {})
    data_desc.setdefault("n_train_slices", len(train_ds))
    data_desc.setdefault("n_val_slices", len(val_ds))
    for key, ds in (("train_stacks", train_ds), ("val_stacks", val_ds)):
        names = getattr(ds, "names", None)
        if names is not None:
            data_desc.setdefault(key, list(names))
    if hasattr(train_ds, "provenance_of"):
        counts: dict[str, int] = {}
        for i in range(len(train_ds)):
            p = train_ds.provenance_of(i) or "unspecified"
            counts[p] = counts.get(p, 0) + 1
        data_desc.setdefault("provenance", counts)
    command = command if command is not None else shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])

    def checkpoint_meta(epoch: int, metrics: dict) -> dict:
        return {
            "normalization": normalization,
            "training": {
                "config": config.to_dict(),
                "data": data_desc,
                "command": command,
                "epoch": epoch,
                "epochs": epochs,
                "lr": lr,
                "init_from": init_path,
                "world_size": world,
                "device": str(device),
                "history": history,
            },
            "metrics": {
                "val_dice": metrics.get("mean_dice"),
                "val_score": metrics.get("score"),
                "val_hausdorff": metrics.get("hausdorff"),
                "val_iou": metrics.get("mean_iou"),
                "per_class": metrics.get("per_class", {}),
                "epoch": epoch,
                "n_val_slices": metrics.get("n_slices"),
            },
            "notes": notes,
        }

    total_steps = max(1, (epochs - start_epoch + 1) * steps)
    done_steps = 0
    n_nonfinite = 0
    epoch = start_epoch - 1
    result.history = history

    def cancelled_now() -> bool:
        flag = is_cancelled(cancel)
        return ddp.any_flag(flag) if ddp.is_active() else flag

    def finish(stopped_early: bool = False, cancelled: bool = False) -> TrainResult:
        result.best_epoch = best_epoch
        result.best_dice = best_dice
        result.epochs_run = epoch
        result.stopped_early = stopped_early
        result.cancelled = cancelled
        result.seconds = time.perf_counter() - t_start
        result.model = _unwrap(net)
        if result.best_path is None and best_epoch and json_path.is_file():
            result.best_path = json_path
        return result

    for epoch in range(start_epoch, epochs + 1):
        net.train()
        if config.freeze_bn and fine_tune:
            _set_bn_eval(net)
        if isinstance(sampler, torch.utils.data.distributed.DistributedSampler):
            sampler.set_epoch(epoch)
        losses = []
        for step, batch in enumerate(loader, start=1):
            if step > steps:
                break
            if cancelled_now():
                epoch -= 1
                raise TrainingCancelled(finish(cancelled=True))
            x = batch["image"].to(device, non_blocking=True)
            y = batch["masks"].to(device, non_blocking=True)
            ignore = batch["ignore"].to(device)
            weight = batch["weight"].to(device)
            x, y, ignore = augment(x, y, ignore)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast():
                seg, cls = forward_logits(net, x)
            loss = loss_fn(seg.float(), y, ignore=ignore, weight=weight,
                           cls_logits=None if cls is None else cls.float())
            optimizer.zero_grad(set_to_none=True)
            nonfinite = not bool(torch.isfinite(loss))
            if ddp.is_active():
                nonfinite = ddp.any_flag(nonfinite)
            if nonfinite:
                n_nonfinite += 1
                if n_nonfinite > max(3, steps):
                    raise FloatingPointError(
                        f"training diverged: the loss was not finite in {n_nonfinite} steps (lower the lr, now {lr:g})")
                continue
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
                scheduler.step()
            value = float(loss.detach())
            losses.append(value)
            done_steps += 1
            result.steps += 1
            emit(ev.Progress(epoch=epoch, epochs=epochs, step=step, steps=steps, loss=value,
                             fraction=min(1.0, done_steps / total_steps), phase="train"))
        if cancelled_now():
            epoch -= 1
            raise TrainingCancelled(finish(cancelled=True))
        if ddp.is_active():  # BatchNorm running statistics drift apart per rank: take rank 0's everywhere
            ddp.broadcast_buffers(_unwrap(net))
        metrics = validate(_unwrap(net), val_set, device, model_config.classes, config.val_batch_size, autocast)
        dice = float(metrics["mean_dice"])
        train_loss = float(np.mean(losses)) if losses else None
        improved = best_dice is None or dice > best_dice + float(config.min_delta)
        if ddp.is_active():
            improved = ddp.broadcast_flag(improved)
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(dice)
        history.append({"epoch": epoch, "train_loss": train_loss, "val_dice": dice, "val_score": metrics["score"],
                        "lr": optimizer.param_groups[0]["lr"]})
        emit(ev.Metrics(epoch=epoch, train_loss=train_loss, val_dice=dice, val_score=float(metrics["score"]),
                        per_class={c: v.get("dice") for c, v in metrics["per_class"].items()}))
        if improved:
            best_dice, best_epoch, bad_epochs = dice, epoch, 0
            result.best_metrics = metrics
            if main:
                _write_best_bundle(net, model_config, out_stem, **checkpoint_meta(epoch, metrics))
                result.best_path = json_path
                emit(ev.Checkpoint(path=str(json_path), epoch=epoch, val_dice=dice, best=True))
        else:
            bad_epochs += 1
        if main:
            _save_state(state_path, {
                "format": _STATE_FORMAT,
                "epoch": epoch,
                "model": {k: v.detach().cpu() for k, v in _unwrap(net).state_dict().items()},
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else {},
                "rng": torch.get_rng_state(),
                "sampler_rng": generator.get_state(),
                "augment_rng": augment._gen.get_state() if augment._gen is not None else None,
                "best_dice": -1.0 if best_dice is None else float(best_dice),
                "best_epoch": best_epoch,
                "bad_epochs": bad_epochs,
                "history": json.dumps(history),
                "config": json.dumps(config.to_dict()),
            })
        if config.patience and bad_epochs >= int(config.patience) and epoch < epochs:
            if main:
                state_path.unlink(missing_ok=True)
            if ddp.is_active():
                ddp.barrier()
            return finish(stopped_early=True)
    if main:
        state_path.unlink(missing_ok=True)
    if ddp.is_active():
        ddp.barrier()
    return finish()
