"""The few-label fine-tuning recipe: how a model is adapted to a department's 5-100 clinician slices.

A GUI round (``training.bootstrap.run_round_from_store``) and ``gitseg train --init-from`` both start
from a trained bundle and have few labels. :func:`finetune_config` turns a preset into the recipe
for ``n`` labelled slices:

* **length**: ``steps_per_label`` steps per labelled slice, between ``min_steps`` and ``max_steps``, in
  epochs of one pass over the labels, with early stopping after ``patience_steps`` steps without a
  gain on the frozen validation slices;
* **learning rate** ``lr``, lower than from scratch, scaled down below ``lr_full_from`` training slices;
* **layers**: all weights train; BatchNorm statistics stay frozen below ``bn_free_from`` labels (a few
  near-identical slices give statistics that do not describe the next scan);
* **augmentation**: the default steps without left-right flips (the stomach is on the patient's left);
* **loss**: BCE + Dice, plus the classification head's BCE (weight 0.2) when the start model has one,
  so that the empty-slice gate keeps learning while the encoder under it changes;
* **mixing with the start**: ``keep_start`` (a quarter) of the start's weights plus three quarters of
  the fine-tuned ones (WiSE-FT), so the model keeps more of what it knew about other patients' scans.

Each setting was chosen by leave-one-patient-out GUI rounds on the real slices
(``benchmarks/bench_real.py --slice-rounds``); the tables are in ``docs/finetune-recipe.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from training.config import TrainConfig
from training.train_data import batches_per_pass

__all__ = ["FinetuneRecipe", "RECIPE", "finetune_config", "round_config"]


@dataclass(frozen=True)
class FinetuneRecipe:
    """The numbers of the fine-tuning recipe (see the module docstring)."""

    steps_per_label: float = 72.0  # 6, 18, 36 before: each longer one measured better (docs/finetune-recipe.md)
    min_steps: int = 60
    max_steps: int = 900
    steps_per_epoch: int = 20
    lr: float = 5e-4  # from ``lr_full_from`` labels on
    lr_full_from: int = 6  # fewer labels: the learning rate shrinks in proportion (see the module docstring)
    bn_free_from: int = 32
    patience_steps: int = 160
    keep_start: float = 0.25  # share of the starting model's weights in the result (WiSE-FT; module docstring)
    loss: tuple = (("bce", 0.5), ("dice", 0.5))  # pixel terms (module docstring)
    cls_weight: float = 0.2  # the classification head's term, when the start model has a head
    augmentation: tuple = (
        ("hflip", 0.0),
        ("shift_scale_rotate", 0.6),
        ("grid", 0.3),
        ("brightness_contrast", 0.5),
        ("dropout", 0.2),
    )

    def steps(self, n_labels: int) -> int:
        """Optimiser steps for ``n_labels`` labelled slices."""
        return int(min(self.max_steps, max(self.min_steps, round(self.steps_per_label * max(1, n_labels)))))

    def learning_rate(self, n_labels: int) -> float:
        """The learning rate for ``n_labels`` labelled slices: ``lr``, scaled by n / ``lr_full_from`` below it."""
        return self.lr * min(1.0, max(1, n_labels) / self.lr_full_from)


RECIPE = FinetuneRecipe()


def finetune_config(
    config: TrainConfig, n_labels: int, recipe: FinetuneRecipe = RECIPE, cls_head: bool | None = None
) -> TrainConfig:
    """``config`` (which must fine-tune: ``init_from`` set) with the recipe for ``n_labels`` slices.

    ``cls_head``: whether the start model has a classification head (its loss term needs one);
    None reads it from the ``init_from`` bundle's JSON. ``config.finetune_max_steps`` caps the
    recipe's length (the quick preset: 40 steps).
    """
    if not config.init_from:
        raise ValueError("finetune_config is for fine-tuning: set init_from to the bundle to start from")
    if int(n_labels) < 1:
        raise ValueError(f"fine-tuning needs at least one labelled slice, got {n_labels}")
    if cls_head is None:
        from napari_gitseg.model.bundle import read_bundle_info

        cls_head = bool(read_bundle_info(config.init_from).config.cls_head)
    loss = dict(recipe.loss) | ({"cls": recipe.cls_weight} if cls_head and recipe.cls_weight > 0 else {})
    steps = recipe.steps(int(n_labels))
    if config.finetune_max_steps is not None:  # a shorter round (the quick preset)
        steps = min(steps, config.finetune_max_steps)
    # an epoch is one pass of the training loader over the labels, at most steps_per_epoch steps
    # (the loader drops a last partial batch: 6 labels in batches of 4 are one step an epoch)
    per_epoch = min(recipe.steps_per_epoch, steps, batches_per_pass(int(n_labels), config.batch_size))
    epochs = max(1, math.ceil(steps / per_epoch))
    return config.replace(
        epochs=epochs,
        finetune_epochs=epochs,
        max_steps_per_epoch=per_epoch,
        lr=recipe.learning_rate(int(n_labels)),
        finetune_lr_factor=1.0,
        schedule="cosine",
        freeze_bn=int(n_labels) < recipe.bn_free_from,
        patience=max(1, math.ceil(recipe.patience_steps / per_epoch)),
        augmentation=dict(recipe.augmentation),
        keep_start=recipe.keep_start,
        loss=loss,
    )


def round_config(
    config: TrainConfig, init_from: str | None, n_labels: int, cls_head: bool | None = None
) -> TrainConfig:
    """The config a round trains with: from scratch without ``init_from``; else fine-tuning from it,
    with the recipe for ``n_labels`` slices unless ``config.few_label_recipe`` is off (``cls_head``:
    as in ``finetune_config``)."""
    if init_from is None:
        return config
    config = config.replace(init_from=str(init_from))
    return finetune_config(config, n_labels, cls_head=cls_head) if config.few_label_recipe else config
