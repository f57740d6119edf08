"""Validation metrics of a model on a dataset, per stack, as ``gitseg eval`` computes them."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch

from napari_gitseg.model.factory import forward_logits
from training.train_data import Cached, collate


@torch.inference_mode()
def validate(
    model: torch.nn.Module, dataset, device: torch.device, classes: Sequence[str], batch_size: int = 16, autocast=None
) -> dict:
    """Validation metrics of ``model`` on ``dataset`` at its resolution, per stack, with ``evaluate_cases``."""
    from training.metrics import evaluate_cases

    was_training = model.training
    model.eval()
    loader = torch.utils.data.DataLoader(
        Cached(dataset, cache=False) if not isinstance(dataset, Cached) else dataset,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate,
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
