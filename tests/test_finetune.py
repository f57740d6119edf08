"""The few-label fine-tuning recipe: length scaled to the label count, frozen BatchNorm for few labels,
no left-right flips, and where it applies (GUI rounds and ``gitseg train --init-from``)."""

from __future__ import annotations

import pytest

from training.augment import resolve_spec
from training.config import preset
from training.finetune import RECIPE, finetune_config, round_config


def _steps(config, n: int) -> int:
    """Optimiser steps the loop runs: an epoch is min(max_steps_per_epoch, batches of the n labels)."""
    per_epoch = min(config.max_steps_per_epoch, -(-n // config.batch_size))
    return config.finetune_epochs * per_epoch


def test_length_grows_with_the_labels_within_bounds():
    base = preset("cpu", init_from="model.json")
    targets = [RECIPE.steps(n) for n in (1, 5, 12, 30, 100, 1000)]
    assert targets == sorted(targets) and targets[0] == RECIPE.min_steps and targets[-1] == RECIPE.max_steps
    assert targets[2] > targets[1] and targets[4] > targets[3]
    for n, target in zip((1, 5, 12, 30, 100, 1000), targets):
        config = finetune_config(base, n)
        assert target <= _steps(config, n) < target + config.max_steps_per_epoch  # whole epochs


def test_recipe_settings():
    few = finetune_config(preset("cpu", init_from="model.json"), 6)
    many = finetune_config(preset("cpu", init_from="model.json"), 80)
    assert few.freeze_bn and not many.freeze_bn
    assert few.lr == RECIPE.lr and few.finetune_lr_factor == 1.0
    assert few.finetune_epochs == few.epochs and few.max_steps_per_epoch == 1  # 6 slices: one batch an epoch
    assert few.patience * few.max_steps_per_epoch >= RECIPE.patience_steps  # early stopping counts steps
    assert many.max_steps_per_epoch == 10 and _steps(many, 80) >= RECIPE.steps(80)
    assert resolve_spec(few.augmentation)["hflip"]["p"] == 0.0
    assert few.init_from == "model.json" and few.model == preset("cpu").model


def test_recipe_refuses_training_from_scratch_and_no_labels():
    with pytest.raises(ValueError, match="init_from"):
        finetune_config(preset("cpu"), 10)
    with pytest.raises(ValueError, match="at least one"):
        finetune_config(preset("cpu", init_from="m.json"), 0)


def test_round_config_applies_the_recipe_only_when_fine_tuning_and_asked():
    cpu = preset("cpu")
    assert round_config(cpu, None, 10) == cpu  # no model to start from: train from scratch as configured
    tuned = round_config(cpu, "active.json", 10)
    assert tuned.init_from == "active.json" and tuned.freeze_bn and tuned.lr == RECIPE.lr
    quick = preset("quick")
    kept = round_config(quick, "active.json", 10)  # the quick preset keeps its own tiny schedule
    assert kept.init_from == "active.json" and kept.epochs == quick.epochs and kept.lr == quick.lr
