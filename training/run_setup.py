"""The set-up of a training run: model, data, loader, loss, augmentation and optimiser, in the order
that fixes its seeds, and the description every checkpoint bundle records."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import torch

from napari_gitseg import events as ev
from napari_gitseg.io.errors import GitsegInputError
from napari_gitseg.model.bundle import BundleError, load_bundle
from napari_gitseg.model.factory import ModelConfig, build_model
from napari_gitseg.model.normalize import DEFAULT_NORMALIZATION
from training import ddp
from training.config import TrainConfig
from training.train_data import Cached, fits_in_memory, make_loader, prepare_data
from training.train_run import TrainResult, TrainRun


def _init_model(config: TrainConfig, device: torch.device) -> tuple[torch.nn.Module, ModelConfig, dict, str | None]:
    """(model, its config, normalisation, the bundle it was initialised from).

    Seeds torch's global generator first, also when fine-tuning: dropout and stochastic depth draw
    from it, and an unseeded round gave a different model on every run."""
    torch.manual_seed(int(config.seed))
    if config.init_from:
        path = Path(config.init_from)
        try:
            model, bundle = load_bundle(path, device="cpu")
        except BundleError as err:
            raise GitsegInputError(path, f"cannot fine-tune from this bundle: {err.problem}") from err
        return model.to(device), bundle.config, dict(bundle.normalization), str(bundle.json_path)
    model_config = config.model_config()
    normalization = dict(DEFAULT_NORMALIZATION if config.normalization is None else config.normalization)
    return build_model(model_config).to(device), model_config, normalization, None


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


def set_up(config, train_data, val_data, out_stem, emit, cancel, device, provenance, t_start) -> TrainRun:
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
    train_ds, val_ds = prepare_data(config, train_data, val_data, model_config, normalization, provenance)
    cache = fits_in_memory(train_ds, val_ds)
    train_set, val_set = Cached(train_ds, cache), Cached(val_ds, cache)
    loss_fn = build_loss(config.loss).to(device)
    if loss_fn.needs_cls and not model_config.cls_head:
        raise ValueError("the loss has a 'cls' term but the model has no classification head (cls_head)")
    augment = build_augmentation(config.augmentation, seed=config.seed + 1)
    epochs = int(config.finetune_epochs or config.epochs) if fine_tune else int(config.epochs)
    lr = float(config.lr) * (float(config.finetune_lr_factor) if fine_tune else 1.0)
    generator = torch.Generator().manual_seed(int(config.seed) + 2)
    loader, steps = make_loader(train_set, config, generator)
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
    return TrainRun(
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


def bundle_meta(run: TrainRun, data_description: dict | None, command: str | None, notes: str) -> dict:
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
