"""The train loop's data: labelled stacks checked, a validation split held out, datasets and loader.

``check_stacks`` refuses bad labels naming the stack; ``split_validation`` holds out whole cases (or,
with one case, a block of slices); ``build_dataset`` makes the ``SliceDataset`` a run trains on;
``Cached`` keeps its deterministic items in memory and ``make_loader`` batches them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch

from napari_gitseg.io.errors import GitsegInputError
from napari_gitseg.io.stack import Stack
from napari_gitseg.model.factory import ModelConfig
from training import ddp
from training.config import TrainConfig
from training.datasets import SliceDataset

_CACHE_LIMIT_BYTES = 1_500_000_000


# ---- labelled stacks and the validation split ----------------------------------------------------
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


def labelled_of(stack: Stack) -> np.ndarray:
    """Which slices of ``stack`` are labelled (all of them when it does not say)."""
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
        labelled = labelled_of(stack)
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


# ---- datasets ------------------------------------------------------------------------------------
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


class Cached(torch.utils.data.Dataset):
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


def collate(items: list[dict]) -> dict:
    """One batch of ``Cached`` items: tensors stacked, slice indices and names as lists."""
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


def prepare_data(config, train_data, val_data, model_config, normalization, provenance):
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


def fits_in_memory(train_ds, val_ds) -> bool:
    """Whether the items of both datasets fit the cache (judged from the first training item)."""
    item = train_ds[0]
    per_item = (item["image"].numel() + item["masks"].numel()) * 4
    return per_item * (len(train_ds) + len(val_ds)) < _CACHE_LIMIT_BYTES


# ---- the training loader -------------------------------------------------------------------------
def drops_last_batch(n_items: int, batch_size: int) -> bool:
    """The training loader drops a last partial batch when a pass holds more than one batch."""
    return n_items > batch_size


def batches_per_pass(n_items: int, batch_size: int) -> int:
    """Optimiser steps in one pass of the training loader over ``n_items`` (one process)."""
    return n_items // batch_size if drops_last_batch(n_items, batch_size) else 1


def make_loader(train_set, config: TrainConfig, generator: torch.Generator):
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
        collate_fn=collate,
        num_workers=0,
        drop_last=drop_last,
    )
    steps = len(loader)
    if config.max_steps_per_epoch:
        steps = min(steps, int(config.max_steps_per_epoch))
    return loader, max(steps, 1)
