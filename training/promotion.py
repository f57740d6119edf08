"""Judging a candidate: bundles scored on the frozen validation slices (whole stacks through the
``Predictor``), and a candidate registered and activated only when it beats the model it would replace."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from napari_gitseg import events as ev
from napari_gitseg.io.stack import Stack
from training.config import TrainConfig
from training.train_data import labelled_of
from training.train_run import TrainingCancelled


def _predictor(bundle_path, config: TrainConfig):
    from napari_gitseg.predict import Predictor

    # eager, not frozen graphs: a round makes a fresh Predictor per bundle and predicts a stack or two,
    # and tracing a frozen graph costs more than it saves there (Predictor's ``freeze``)
    return Predictor(
        [bundle_path],
        device=config.device,
        batch_size=config.val_batch_size,
        num_threads=config.num_threads,
        freeze=False,
    )


def _predict(predictor, stack: Stack, cancel):
    from napari_gitseg.predict import PredictionCancelled

    try:
        return predictor.predict(stack, cancel=cancel)
    except PredictionCancelled as err:
        raise TrainingCancelled(None, "cancelled while predicting") from err


def evaluate_bundle(
    bundle_path, stacks: Sequence[Stack], config: TrainConfig, cancel=None, keep_predictions: bool = False
) -> tuple[dict, dict]:
    """Metrics of a bundle on the labelled slices of ``stacks`` (whole stacks through the Predictor).

    Returns (metrics from ``training.metrics.evaluate_cases``, {stack name: (masks, confidence)} when
    ``keep_predictions``).
    """
    from training.metrics import evaluate_cases

    predictor = _predictor(bundle_path, config)
    cases, preds = [], {}
    for stack in stacks:
        pred = _predict(predictor, stack, cancel)
        lab = labelled_of(stack)
        if lab.any() and stack.masks is not None:
            cases.append((pred.masks, stack.masks, lab))
        if keep_predictions:
            preds[stack.name] = (pred.masks, pred.confidence)
    metrics = evaluate_cases(cases, classes=tuple(predictor.classes)) if cases else {}
    return metrics, preds


def predict_stacks(bundle_path, stacks: Sequence[Stack], config: TrainConfig, cancel) -> dict:
    predictor = _predictor(bundle_path, config)
    out = {}
    for stack in stacks:
        pred = _predict(predictor, stack, cancel)
        out[stack.name] = (pred.masks, pred.confidence)
    return out


def _register(registry, bundle_path, frozen: dict, activate: bool, notes: str) -> str:
    from napari_gitseg.model.bundle import load_bundle

    model, bundle = load_bundle(bundle_path)
    metrics = dict(bundle.metrics)
    metrics["train_val_dice"] = metrics.pop("val_dice", None)
    metrics.update(
        {
            "val_dice": frozen.get("mean_dice"),
            "val_score": frozen.get("score"),
            "val_hausdorff": frozen.get("hausdorff"),
            "per_class": frozen.get("per_class", {}),
            "n_val_slices": frozen.get("n_slices"),
        }
    )
    return registry.add(
        model,
        bundle.config,
        normalization=bundle.normalization,
        training=bundle.training,
        metrics=metrics,
        notes=notes,
        activate=activate,
    )


def promote_or_reject(
    registry, candidate: Path, baseline: tuple, val_stacks, cfg, cancel, notes: str, on_event
) -> dict:
    """Score the candidate and the baseline on the frozen slices; register and activate the candidate
    only if it scores higher (or there is no baseline). Returns promoted, version, dice figures."""
    baseline_name, baseline_path = baseline
    cand_metrics, _ = evaluate_bundle(candidate, val_stacks, cfg, cancel)
    base = None
    if baseline_path is not None:
        base = float(evaluate_bundle(baseline_path, val_stacks, cfg, cancel)[0]["mean_dice"])
    new = promote_if_better(registry, candidate, cand_metrics, (baseline_name, base), notes, on_event)
    return {
        "promoted": new is not None,
        "version": new if new is not None else registry.active(),
        "candidate_dice": float(cand_metrics["mean_dice"]),
        "baseline_dice": base,
        "candidate_score": cand_metrics.get("score"),
    }


def promote_if_better(registry, candidate: Path, metrics: dict, baseline: tuple, notes: str, on_event) -> str | None:
    """Register and activate ``candidate`` when its frozen-set Dice (``metrics``) is above the
    baseline's (``baseline`` = (name, Dice); no Dice: nothing to beat); emit Promoted or Rejected.
    Returns the new version, or None when the candidate was rejected."""
    baseline_name, base = baseline
    cand = float(metrics["mean_dice"])
    if base is not None and not cand > base:
        emit(
            on_event,
            ev.Rejected(
                candidate_dice=cand,
                active_dice=base,
                reason=f"frozen-set Dice {format_dice(cand)} is not above {baseline_name}'s {format_dice(base)}",
            ),
        )
        return None
    version = _register(registry, candidate, metrics, True, notes)
    emit(on_event, ev.Promoted(version=version, val_dice=cand, previous_version=baseline_name, previous_dice=base))
    return version


def emit(on_event, event) -> None:
    if on_event is not None:
        on_event(event)


def format_dice(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"
