"""The few-label fine-tuning recipe: length scaled to the label count, frozen BatchNorm for few labels,
no left-right flips, and where it applies (GUI rounds and ``gitseg train --init-from``)."""

from __future__ import annotations

import pytest

from training.augment import resolve_spec
from training.config import preset
from training.finetune import RECIPE, finetune_config, round_config


def _steps(config) -> int:
    return config.finetune_epochs * config.max_steps_per_epoch


def test_length_grows_with_the_labels_within_bounds():
    base = preset("cpu", init_from="model.json")
    steps = [_steps(finetune_config(base, n)) for n in (1, 5, 12, 30, 100, 1000)]
    assert steps == sorted(steps) and steps[0] >= RECIPE.min_steps and steps[-1] <= RECIPE.max_steps + RECIPE.steps_per_epoch
    assert steps[2] > steps[1] and steps[4] > steps[3]


def test_recipe_settings():
    few = finetune_config(preset("cpu", init_from="model.json"), 6)
    many = finetune_config(preset("cpu", init_from="model.json"), 80)
    assert few.freeze_bn and not many.freeze_bn
    assert few.lr == RECIPE.lr and few.finetune_lr_factor == 1.0
    assert few.patience == RECIPE.patience and few.finetune_epochs == few.epochs
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
