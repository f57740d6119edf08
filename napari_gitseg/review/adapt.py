"""Learn from corrections: a per-scan pixel classifier that carries a clinician's corrections to the other slices.

The model's mistakes on one scan repeat from slice to slice (a wall it always takes into the
organ, a tissue it calls bowel), so after a clinician has corrected some slices of a scan, the
others can be corrected the same way. ``learn_from_corrections`` learns, on the corrected slices only,
which label each pixel near the model's organs should get, from:

- the model's per-class probabilities (raw and smoothed),
- the image (smoothed at several scales, gradient, Laplacian, local contrast, the neighbouring
  slices),
- each organ's signed distance to the model's outline (clipped to ``band`` px);

a small multilayer perceptron (one per scan, trained in seconds on the CPU). ``Corrector.apply``
relabels the pixels within ``band`` px of the model's organs (or where the model is unsure) on
the other slices; pixels far from any organ keep the model's label, and so does an organ the
corrections show on fewer than ``min_evidence`` slices (on real scans, corrections that only
removed a few false stomach pixels otherwise taught it to erase the whole stomach elsewhere).

The corrector is checked before it is offered, so it needs ``MIN_CORRECTED`` corrected slices:
every fourth of them (the last one, with fewer than four) is held out, a corrector fitted on the
rest must score a higher Dice on them than the model, and only then is it refitted on all of them.
Its output is a prediction, never a clinician label. No Qt and no store here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from napari_gitseg.cancel import Cancel, is_cancelled
from napari_gitseg.model.normalize import normalize_stack

NORMALIZATION = {"method": "percentile", "low": 1.0, "high": 99.0}  # the image features' scale

__all__ = [
    "MIN_CORRECTED",
    "AdaptConfig",
    "AdaptCancelled",
    "Corrector",
    "CorrectorCheck",
    "kept_note",
    "learn_from_corrections",
    "organs_to_keep",
    "pixel_features",
    "mean_dice",
]

MIN_CORRECTED = 2  # corrected slices learn_from_corrections needs: one at least is held out for the check


class AdaptCancelled(Exception):
    """Learning from corrections was cancelled."""


@dataclass(frozen=True)
class AdaptConfig:
    """How the per-scan corrector is fitted (defaults chosen on the phantom, the band checked on the real MR
    volume too; see benchmarks/bench_correction.py)."""

    steps: int = 800  # optimiser steps of 8192 pixels
    batch: int = 8192
    hidden: tuple[int, ...] = (128, 64)
    lr: float = 3e-3
    band: int = 8  # pixels around the model's organs that may change
    unsure: float = 0.05  # ... and wherever some class has at least this probability
    seed: int = 0
    max_pixels: int = 400_000  # training pixels at most (an even subsample beyond: features stay ~100 MB)
    min_evidence: int = 2  # corrected slices an organ must be on before the corrector may add or remove it
    min_gain: float = 0.005  # held-out Dice the corrector must gain over the model to be used (a tie keeps the
    # model's output, whatever the CPU's rounding: 0.926 vs 0.927 on one processor was 0.927 vs 0.926 on another)


@dataclass
class CorrectorCheck:
    """The held-out check: mean slice Dice of the model and of the corrector on corrected slices it did not see."""

    held_out: list[int]
    model_dice: float
    corrector_dice: float
    min_gain: float = AdaptConfig.min_gain
    kept: tuple[int, ...] = ()  # label values left as the model drew them (too few corrected slices show them)
    min_evidence: int = AdaptConfig.min_evidence  # the corrected slices an organ needed (the config's)

    @property
    def passed(self) -> bool:
        """True when the corrector beat the model on the held-out slices by at least ``min_gain``."""
        return self.corrector_dice >= self.model_dice + self.min_gain


def _signed_distance(mask: np.ndarray, clip: int) -> np.ndarray:
    """Distance to the outline of ``mask`` (negative inside), clipped to ``clip`` and scaled to -1..1."""
    if not mask.any():
        return np.ones(mask.shape, np.float32)
    sd = ndimage.distance_transform_edt(~mask) - ndimage.distance_transform_edt(mask)
    return (np.clip(sd, -clip, clip) / clip).astype(np.float32)


def pixel_features(image: np.ndarray, probs: np.ndarray, labels: np.ndarray, z: int, band: int = 8) -> np.ndarray:
    """Features (F, Y, X) of slice ``z``: probabilities, image filters, neighbouring slices, organ distances.

    ``image``: the normalised stack (Z, Y, X); ``probs``: the model's probabilities (C, Z, Y, X);
    ``labels``: the model's labels of slice ``z`` (Y, X; 0 = background, organ i = i + 1).
    """
    x = image[z]
    f = [probs[:, z].astype(np.float32)]
    f += [ndimage.gaussian_filter(probs[:, z].astype(np.float32), (0, s, s)) for s in (2, 4)]
    f += [x[None]] + [ndimage.gaussian_filter(x, s)[None] for s in (1, 2, 4, 8)]
    f += [ndimage.gaussian_gradient_magnitude(x, s)[None] for s in (1, 3)]
    f += [ndimage.gaussian_laplace(x, s)[None] for s in (1.5, 3)]
    local_var = ndimage.gaussian_filter(x * x, 2) - ndimage.gaussian_filter(x, 2) ** 2
    f.append(np.sqrt(np.maximum(local_var, 0))[None])
    n_z = image.shape[0]
    f += [ndimage.gaussian_filter(image[min(max(z + dz, 0), n_z - 1)], 1)[None] for dz in (-2, -1, 1, 2)]
    f += [_signed_distance(labels == v, band)[None] for v in range(1, probs.shape[0] + 1)]
    return np.concatenate(f).astype(np.float32)


def changeable(probs_z: np.ndarray, labels_z: np.ndarray, config: AdaptConfig) -> np.ndarray:
    """The pixels of one slice the corrector may relabel: near the model's organs or where it is unsure."""
    near = ndimage.binary_dilation(labels_z > 0, iterations=config.band) if labels_z.any() else labels_z > 0
    return near | (probs_z.max(0) >= config.unsure)


def mean_dice(labels: np.ndarray, truth: np.ndarray, n_classes: int) -> float:
    """Mean Dice over the organs present in ``truth`` or ``labels`` (1.0 when neither has any)."""
    from napari_gitseg.overlap import dice_per_slice

    values = np.arange(1, n_classes + 1)[:, None, None]
    dice = dice_per_slice(labels[None] == values, truth[None] == values, empty_dice=np.nan)
    return float(np.nanmean(dice)) if np.isfinite(dice).any() else 1.0


@dataclass
class Corrector:
    """A fitted per-scan corrector: the network and the feature scaling; ``apply`` relabels one slice."""

    net: object
    mean: np.ndarray
    scale: np.ndarray
    config: AdaptConfig
    kept: tuple[int, ...] = ()  # label values it neither adds nor removes (see ``organs_to_keep``)

    def apply(self, image: np.ndarray, probs: np.ndarray, labels: np.ndarray, z: int) -> np.ndarray:
        """Corrected labels (Y, X) of slice ``z`` (``labels``: the model's labels of that slice)."""
        import torch

        where = changeable(probs[:, z], labels, self.config)
        out = np.array(labels, copy=True)
        if not where.any():
            return out
        feats = pixel_features(image, probs, labels, z, self.config.band)[:, where].T
        with torch.no_grad():
            logits = self.net(torch.from_numpy((feats - self.mean) / self.scale))
        out[where] = logits.argmax(1).numpy().astype(out.dtype)
        if self.kept:
            out = np.where(np.isin(labels, self.kept) | np.isin(out, self.kept), labels, out)
        return out


def organs_to_keep(corrected: dict[int, np.ndarray], n_classes: int, min_evidence: int) -> tuple[int, ...]:
    """Label values on fewer than ``min_evidence`` of the ``corrected`` slices: the corrector leaves them as
    the model drew them (it has seen too little of that organ to add or remove it elsewhere)."""
    shown_on = [sum(bool((np.asarray(c) == v).any()) for c in corrected.values()) for v in range(1, n_classes + 1)]
    return tuple(v for v, count in enumerate(shown_on, start=1) if count < min_evidence)


def _training_pixels(
    image, probs, model_labels, corrected: dict[int, np.ndarray], config: AdaptConfig
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{z: (features (P, F), targets (P,))} of the changeable pixels of each corrected slice.

    Beyond ``config.max_pixels`` in all, every slice keeps the same share of its pixels (a fixed,
    seeded subsample), so a scan of 512 x 512 slices does not need gigabytes.
    """
    wheres = {z: changeable(probs[:, z], model_labels[z], config) for z in sorted(corrected)}
    share = min(1.0, config.max_pixels / max(1, sum(int(w.sum()) for w in wheres.values())))
    rng = np.random.default_rng(config.seed)
    pixels = {}
    for z, where in wheres.items():
        if share < 1.0:
            where = where & (rng.random(where.shape) < share)
        pixels[z] = (
            pixel_features(image, probs, model_labels[z], z, config.band)[:, where].T,
            np.asarray(corrected[z])[where].astype(np.int64),
        )
    return pixels


def _stacked(pixels: dict, zs) -> tuple[np.ndarray, np.ndarray]:
    """The training pixels of slices ``zs`` as one (features, targets) pair."""
    return np.concatenate([pixels[z][0] for z in zs]), np.concatenate([pixels[z][1] for z in zs])


def _fit(x: np.ndarray, y: np.ndarray, n_out: int, config: AdaptConfig, progress, cancel, kept=()) -> Corrector:
    """The corrector trained on pixel features ``x`` (P, F) and labels ``y`` (P,) with ``n_out`` classes.

    Deterministic for a given ``config.seed`` on a given CPU.
    """
    import torch

    if len(x) == 0:
        raise ValueError(
            "nothing to learn from: the model found no organ on or near the corrected slices; "
            "correct slices where it drew something"
        )
    mean, scale = x.mean(0), x.std(0) + 1e-6
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    sizes = (x.shape[1], *config.hidden)
    layers = [m for a, b in zip(sizes, sizes[1:]) for m in (torch.nn.Linear(a, b), torch.nn.ReLU())]
    net = torch.nn.Sequential(*layers, torch.nn.Linear(sizes[-1], n_out))
    opt = torch.optim.Adam(net.parameters(), config.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=config.steps)
    xt, yt = torch.from_numpy((x - mean) / scale), torch.from_numpy(y)
    for step in range(config.steps):
        if is_cancelled(cancel):
            raise AdaptCancelled("learning from corrections was cancelled")
        idx = torch.randint(0, len(xt), (min(config.batch, len(xt)),), generator=gen)
        loss = torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None and (step + 1) % 50 == 0:
            progress(step + 1, config.steps)
    net.eval()
    return Corrector(net, mean, scale, config, tuple(kept))


def kept_note(
    kept: tuple[int, ...], classes: tuple[str, ...] | None = None, min_evidence: int = AdaptConfig.min_evidence
) -> str:
    """A clause for the dock naming the organs the corrector left as the model drew them ("" when none)."""
    if not kept:
        return ""
    from napari_gitseg.classes import CLASSES

    names = [(classes or CLASSES)[v - 1].replace("_", " ") for v in kept]
    return (
        f"; {', '.join(names)} left as the model drew {'it' if len(names) == 1 else 'them'} "
        f"(on fewer than {min_evidence} of your corrected slices)"
    )


def _check(image, probs, model_labels, corrected, pixels, config, progress, cancel, kept) -> CorrectorCheck:
    """Fit on three quarters of the corrected slices (2 or 3: all but the last) and score the rest
    (the organs ``kept`` as the model drew them, as the final corrector will)."""
    zs = sorted(corrected)
    held = zs[3::4] if len(zs) >= 4 else zs[-1:]
    n = probs.shape[0]
    trial = _fit(*_stacked(pixels, [z for z in zs if z not in held]), n + 1, config, progress, cancel, kept)
    model = [mean_dice(model_labels[z], corrected[z], n) for z in held]
    fitted = [mean_dice(trial.apply(image, probs, model_labels[z], z), corrected[z], n) for z in held]
    return CorrectorCheck(
        held, float(np.mean(model)), float(np.mean(fitted)), config.min_gain, tuple(kept), config.min_evidence
    )


def learn_from_corrections(
    image: np.ndarray,
    probs: np.ndarray,
    model_labels: np.ndarray,
    corrected: dict[int, np.ndarray],
    targets: list[int],
    config: AdaptConfig = AdaptConfig(),
    progress: Callable[[str, int, int], None] | None = None,
    cancel: Cancel = None,
) -> tuple[dict[int, np.ndarray], CorrectorCheck]:
    """Carry the corrections of one scan to its ``targets`` slices: ({z: new labels}, the held-out check).

    ``image``: the raw stack (Z, Y, X); ``probs`` / ``model_labels``: the model's output for it;
    ``corrected``: {z: the clinician's labels}. When the held-out check fails, nothing is
    relabelled (the dict is empty) and the check says why.
    """
    if len(corrected) < MIN_CORRECTED:
        raise ValueError(
            f"learning from corrections needs at least {MIN_CORRECTED} corrected slices of this scan "
            f"(one is held out to check the result); {len(corrected)} given"
        )
    image = normalize_stack(image, NORMALIZATION)

    def stage(name):
        return None if progress is None else (lambda done, total: progress(name, done, total))

    pixels = _training_pixels(image, probs, model_labels, corrected, config)  # once, for the check and the fit
    kept = organs_to_keep(corrected, probs.shape[0], config.min_evidence)
    check = _check(image, probs, model_labels, corrected, pixels, config, stage("check"), cancel, kept)
    if not check.passed:
        return {}, check
    corrector = _fit(*_stacked(pixels, sorted(corrected)), probs.shape[0] + 1, config, stage("fit"), cancel, kept)
    out = {}
    for i, z in enumerate(targets):
        if is_cancelled(cancel):
            raise AdaptCancelled("learning from corrections was cancelled")
        out[z] = corrector.apply(image, probs, model_labels[z], z)
        if progress is not None:
            progress("apply", i + 1, len(targets))
    return out, check
