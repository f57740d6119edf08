"""Pseudo-labels: the most confident predictions of unlabelled slices, kept for training.

``select_pseudo`` picks them (few organ-free slices); the simulation fills them into its training
stacks (``pseudo_candidates``, ``with_pseudo``), a GUI round saves them in the label store
(``write_pseudo_labels``), where they never replace clinician work.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_gitseg.io.stack import Stack
from training.promotion import predict_stacks
from training.train_data import labelled_of


def select_pseudo(candidates: Sequence[tuple], k: int, max_empty_fraction: float = 0.25) -> list:
    """Keys of the ``k`` most confident candidates ``(key, confidence, is_empty)``.

    At most ``floor(max_empty_fraction * k)`` organ-free slices are kept (an empty prediction is
    often the most confident one, but teaches little). Ties keep the input order.
    """
    k = max(0, int(k))
    max_empty = int(np.floor(float(max_empty_fraction) * k))
    order = sorted(range(len(candidates)), key=lambda i: -float(candidates[i][1]))
    kept, n_empty = [], 0
    for i in order:
        if len(kept) >= k:
            break
        key, _conf, empty = candidates[i][:3]
        if empty:
            if n_empty >= max_empty:
                continue
            n_empty += 1
        kept.append(key)
    return kept


def pseudo_candidates(clinician: dict[str, Stack], preds: dict, k: int, max_empty_fraction: float) -> list:
    """The ``k`` most confident predictions of unlabelled slices, as ``select_pseudo`` keeps them."""
    cands = []
    for name, stack in clinician.items():
        masks, conf = preds[name]
        for z in np.flatnonzero(~labelled_of(stack)):
            cands.append(((name, int(z)), float(conf[z]), not masks[:, z].any()))
    return select_pseudo(cands, k, max_empty_fraction)


def with_pseudo(clinician: dict[str, Stack], preds: dict, kept: list) -> tuple[list[Stack], dict]:
    """Training stacks with the kept pseudo-labels filled into unlabelled slices, and their provenance."""
    by_stack: dict[str, list[int]] = {}
    for name, z in kept:
        by_stack.setdefault(name, []).append(z)
    stacks, provenance = [], {}
    for name, stack in clinician.items():
        lab = labelled_of(stack).copy()
        prov = {int(z): "clinician" for z in np.flatnonzero(lab)}
        zs = by_stack.get(name, [])
        if zs:
            masks = stack.masks.copy()
            pm = preds[name][0]
            for z in zs:
                if lab[z]:  # never replace a clinician label
                    continue
                masks[:, z] = pm[:, z]
                lab[z] = True
                prov[int(z)] = "pseudo"
            stack = dataclasses.replace(stack, masks=masks, labelled=lab)
        stacks.append(stack)
        provenance[name] = prov
    return stacks, provenance


def write_pseudo_labels(
    store, entries: list[dict], model_path: Path, model_label: str | None, cfg, keep: int, cancel
) -> int:
    """Predict the project's stacks with ``model_path``; save the ``keep`` most confident predictions of
    unreviewed slices as pseudo-labels (the store's write path keeps clinician work); returns how many."""
    preds = predict_stacks(model_path, [e["image"] for e in entries], cfg, cancel)
    cands = []
    for e in entries:
        masks, conf = preds[e["name"]]
        unreviewed = set(store.unreviewed_slices(e["name"]))
        for z, sid in enumerate(e["slice_ids"]):
            if sid in unreviewed:
                cands.append(((e["name"], z, sid), float(conf[z]), not masks[:, z].any()))
    kept = select_pseudo(cands, int(keep), cfg.pseudo_max_empty)
    items = [
        {
            "slice_id": sid,
            "masks": preds[name][0][:, z],
            "source": "pseudo",
            "model_version": model_label,
            "confidence": float(preds[name][1][z]),
        }
        for name, z, sid in kept
    ]
    return sum(1 for v in store.save_many(items) if v is not None) if items else 0
