"""The few-label fine-tuning recipe: how a model is adapted to a department's 5-100 clinician slices.

A GUI round (``training.bootstrap.run_round_from_store``) and ``gitseg train --init-from`` both start
from a trained bundle and have few labels. :func:`finetune_config` turns a preset into the recipe
for ``n`` labelled slices:

* **length in steps, scaled to the label count**: ``steps_per_label`` optimiser steps per labelled
  slice, at least ``min_steps`` and at most ``max_steps`` (each step a batch of ``batch_size``), in
  epochs of one pass over the labels (at most ``steps_per_epoch`` steps), so that early stopping on
  the frozen validation slices can act;
* **learning rate** ``lr`` (lower than training from scratch: the features are already there),
  scaled down in proportion below ``lr_full_from`` training slices (2 slices: a third of it);
* **which layers train**: all weights; BatchNorm statistics stay frozen below ``bn_free_from`` labels (a
  batch of a few near-identical slices gives statistics that do not describe the next scan). Freezing
  the whole encoder (the decoder and heads train: 0.36 M of 3.73 M weights) did worse (see below);
* **augmentation**: the default geometric and intensity steps without left-right flips (the
  stomach is on the patient's left; a flip teaches nothing true);
* **early stopping** after ``patience_steps`` steps (whole epochs) without a gain on the frozen set.
* **loss**: BCE + Dice, plus the classification head's BCE (weight 0.2) when the start model has one
  (the default model's own training loss); the preset's loss (BCE + Tversky weighted against false
  positives) is for training from scratch; without its term the classification head (the empty-slice
  gate) gets no gradient while the encoder under it changes (on the real slices below the gate changed
  no result with either loss: the candidates score the same with the gate off);
* **mixing with the start**: the round's model is ``keep_start`` (a quarter) of the weights it started
  from plus three quarters of the fine-tuned ones (WiSE-FT, Wortsman et al. 2022), so it keeps more of
  what the start knew about other patients' scans.

The settings were chosen by measurement on the real UW-Madison slices (``benchmarks/bench_real.py``,
leave-one-patient-out through this code path); the figures are in the closing notes and README.
Length: with the first real-anatomy default model, 12 steps per label did worse than 6 on the
held-out patients (12 clinician slices: mean Dice 0.244 against 0.303). With the shipped default
(stage 3, weight-averaged), five leave-one-patient-out GUI rounds on the 18 real slices, mean Dice
on the held-out patient of the project's active model after the round (zero-shot: 0.302):

    labels per round              all (~14)   12 chosen   3 chosen
    6 steps/label, at least 60    0.347       0.362       0.300 (candidates 0.158; 4/5 promoted)
    18 steps/label, at least 180  0.386       0.386       0.254 (5/5 promoted)
    lr 1e-3, 12 steps/label       0.342       -           -

So the recipe ran 18 steps per label (36 since, below) but kept the old floor of 60 steps: the same schedule as
the measured winner from 10 labels on (216 steps for 12) and as the old one up to 3 labels, where
fine-tuning longer on so few slices did worse. Early stopping ended the long rounds after 86-180
steps; a round on 12 labels takes about 3 min instead of 1 on 2 CPU cores.

Longer again (session of 2026-12-03, 2-core Xeon, the recipe otherwise as shipped then: loss, mixing
and learning rate below), five leave-one-patient-out rounds per row, held-out patient's mean Dice per
fold and overall, every row run in the same session:

    labels per round            18 steps/label, patience 80 steps     36 steps/label, patience 160
    all (~14), two runs of 36   0.321 0.370 0.372 0.533 0.187  0.431  0.286 0.353 0.502 0.566 0.192  0.447
                                                                      0.332 0.448 0.489 0.511 0.239  0.452
    12 chosen                   0.309 0.347 0.439 0.542 0.216  0.435  0.311 0.460 0.449 0.542 0.206  0.459
    3 chosen (60 vs 72 steps)   0.251 0.169 0.395 0.357 0.203  0.299  0.288 0.194 0.401 0.443 0.200  0.349

Better at every label count (+0.02 with a dozen slices, +0.05 with three, where 2 training slices now
get 72 steps instead of the floor's 60), so the recipe runs 36 steps per label with 160 steps of
patience; early stopping ended these rounds after 190-290 steps, and a round on 12 labels takes
about twice as long as before (about 6 min on 2 CPU cores). The ceiling stays 600 steps.

Learning rate for very few labels. A round counts the slices it trains on: its clinician slices
less the frozen validation ones (here 3 chosen slices train on 2, 6 on 5, 12 on 6-10). Same five
rounds, the length above; with 3 slices the 60-step floor is 30 steps per training slice, and at 5e-4
it pulled the model away from what it knew (its candidates scored below zero-shot). Repeats of the
same setting differ by about 0.03:

    3 chosen slices, lr       5e-4 (two runs)   1.7e-4 (this rule)   1.5e-4   5e-5
    active model after it     0.265 / 0.300     0.342                0.323    0.323
    the round's candidate     0.146 / 0.158     0.342                0.323    0.323
    6 chosen slices, lr       5e-4              1.5e-4
    active model after it     0.362             0.350

So the rate is ``lr`` from 6 training slices on and ``lr * n / 6`` below (1.7e-4 for 2, 4.2e-4 for 5).

The rate with more labels, at 36 steps per label (a later session, 2-core Xeon, same five rounds;
the 5e-4 rows are the length table's above; repeats of one setting differ by up to 0.1 per fold):

    lr                     5e-4 (shipped)                         1e-3                               2e-3
    all (~14)              0.447 / 0.452                          0.477 (0.289 0.494 0.441 0.583 0.184)  0.372
    12 chosen              0.459                                  0.394 (0.359 0.332 0.455 0.439 0.200)  -

A higher rate gains with all slices in one run and loses more with a dozen, and 2e-3 loses, so
``lr`` stays 5e-4. A larger share of the start (``keep_start`` 0.4 instead of 0.25) gave 0.410 with
all slices (0.447 / 0.452); batches of 4 instead of 8 (more steps per epoch, a third faster) 0.444
with all slices and 0.417 with a dozen (0.459), so the rounds keep the preset's batch of 8.

Mixing with the start (``keep_start``), measured without retraining: the same five rounds' fine-tuned
models, each mixed with the bundle it started from, on the held-out patient (paired, so the spread
between repeats does not enter; the start alone: 0.302):

    share of the start            0 (fine-tuned alone)  0.25     0.5      0.75
    3 chosen slices               0.305                 0.315    0.322    0.324
    12 chosen slices              0.355                 0.381    0.375    0.346
    all (~14)                     0.362                 0.412    0.410    0.377

A quarter: +0.01 to +0.05, most where the loop lives (more labels).

Loss. Five leave-one-patient-out rounds per row (the rounds' candidates, mixed as above; both losses
run in the same session), held-out patient's mean Dice per fold (case11, case101, case110, case117,
case125) and overall:

    all slices, preset loss: 0.5 BCE + 0.5 Tversky(FP 0.7, FN 0.3)   0.301 0.334 0.376 0.473 0.178   0.390
    all slices, 0.5 BCE + 0.5 Dice + 0.2 classification BCE         0.336 0.329 0.496 0.513 0.212   0.430
    12 chosen, preset loss                                          0.305 0.330 0.448 0.512 0.250   0.420
    12 chosen, BCE + Dice + classification                          0.299 0.393 0.459 0.523 0.266   0.440
    3 chosen, preset loss                                           0.291 0.197 0.396 0.359 0.205   0.315
    3 chosen, BCE + Dice + classification                           0.265 0.173 0.404 0.369 0.207   0.311

Better on four of five patients with 12 or more slices (all slices: stomach 0.522 -> 0.653), a tie
with 3; the real slices' main error is organ pixels the model misses, and the preset's Tversky weighs
false positives more. (The 12-slice rows also show the spread between sessions: the preset loss gave
0.36-0.39 there in earlier runs.)

Which layers train. Five leave-one-patient-out rounds per row, both rows in one session on a 2-core
Xeon, the rest of the recipe as shipped; mean Dice on the held-out patient after the round (and of
the round's candidate, promoted or not), rounds promoted:

    labels              all weights train (shipped)      encoder frozen (decoder + heads: 0.36 M of 3.73 M)
    all (~14)           0.431 (candidate 0.431), 5/5     0.403 (0.403), 5/5; stomach 0.647 -> 0.572
    3 chosen            0.317 (0.317), 4/5               0.316 (0.322), 3/5

A frozen encoder trains in two thirds of the time but learns less from a dozen slices and is no
better with three, so all weights train.

Augmentation strength (session of 2026-12-03, 2-core Xeon, five leave-one-patient-out rounds on all
the other patients' slices, held-out patient's mean Dice per fold and overall, every round promoted):

    recipe at 18 steps per label (shipped then)             0.321 0.370 0.372 0.533 0.187   0.431
    nnU-Net-like intensity and scale: scale 0.75-1.3,       0.321 0.358 0.392 0.537 0.195   0.431
      brightness 0.15 / contrast 0.3, gamma 0.7-1.5 (p 0.3),
      Gaussian noise (p 0.15), Gaussian blur (p 0.2)
    the same at 36 steps per label                          0.300 0.373 0.438 0.509 0.215   0.424
    BCE + Tversky weighted against misses (FP 0.3, FN 0.7)  0.304 0.369 0.391 0.501 0.191   0.414

Stronger augmentation changes nothing here (the real slices' look is already in the 10-14 slices a
round trains on), and weighting misses more does worse, so the recipe keeps its augmentation and loss
(the gamma, noise and blur steps stay available in ``training.augment`` for other runs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from training.config import TrainConfig
from training.loop import batches_per_pass

__all__ = ["FinetuneRecipe", "RECIPE", "finetune_config", "round_config"]


@dataclass(frozen=True)
class FinetuneRecipe:
    """The numbers of the fine-tuning recipe (see the module docstring)."""

    steps_per_label: float = 36.0  # see the module docstring (6, then 18 before; measured against both)
    min_steps: int = 60
    max_steps: int = 600
    steps_per_epoch: int = 20
    lr: float = 5e-4  # from ``lr_full_from`` labels on
    lr_full_from: int = 6  # fewer labels: the learning rate shrinks in proportion (see the module docstring)
    bn_free_from: int = 32
    patience_steps: int = 160
    keep_start: float = 0.25  # share of the starting model's weights in the result (WiSE-FT; module docstring)
    loss: tuple = (("bce", 0.5), ("dice", 0.5))  # pixel terms (module docstring)
    cls_weight: float = 0.2  # the classification head's term, when the start model has a head
    augmentation: tuple = (("hflip", 0.0), ("shift_scale_rotate", 0.6), ("grid", 0.3), ("brightness_contrast", 0.5),
                           ("dropout", 0.2))

    def steps(self, n_labels: int) -> int:
        """Optimiser steps for ``n_labels`` labelled slices."""
        return int(min(self.max_steps, max(self.min_steps, round(self.steps_per_label * max(1, n_labels)))))

    def learning_rate(self, n_labels: int) -> float:
        """The learning rate for ``n_labels`` labelled slices: ``lr``, scaled by n / ``lr_full_from`` below it."""
        return self.lr * min(1.0, max(1, n_labels) / self.lr_full_from)


RECIPE = FinetuneRecipe()


def finetune_config(config: TrainConfig, n_labels: int, recipe: FinetuneRecipe = RECIPE,
                    cls_head: bool | None = None) -> TrainConfig:
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


def round_config(config: TrainConfig, init_from: str | None, n_labels: int,
                 cls_head: bool | None = None) -> TrainConfig:
    """The config a round trains with: from scratch without ``init_from``; else fine-tuning from it,
    with the recipe for ``n_labels`` slices unless ``config.few_label_recipe`` is off (``cls_head``:
    as in ``finetune_config``)."""
    if init_from is None:
        return config
    config = config.replace(init_from=str(init_from))
    return finetune_config(config, n_labels, cls_head=cls_head) if config.few_label_recipe else config
