"""Batch augmentation on the training device, built from kornia transforms.

``build_augmentation(spec, seed)`` returns an :class:`Augmentation`; calling it on a batch
``image`` (N, k, H, W) float in [0, 1] and ``masks`` (N, C, H, W) returns both transformed, the masks
moved exactly like the image (geometric steps) and untouched by the intensity steps.

Steps, in order (``spec`` keys; every step draws its parameters per sample): geometric ``hflip``,
``vflip``, ``rotate``, ``shift_scale_rotate``, ``elastic``, ``grid`` (image bilinear, masks nearest or
exact); intensity ``brightness_contrast``, ``gamma``, ``noise``, ``blur`` (the last three off by
default) and ``dropout`` (coarse dropout, image only); ``mixup`` (masks become soft). The kornia
transform behind each key: ``docs/training-notes.md``.

``spec`` is ``None``/``"default"`` (``DEFAULT_AUGMENTATION``), ``"none"``, or a dict merged over the
default (``{"base": "none", ...}`` starts from nothing). A step's value is a probability (default
settings), a dict of settings (``p`` plus the step's own), or ``None``/``False``/``0`` to turn it off.

Deterministic: an Augmentation built with ``seed`` draws one sub-seed per call from its own
``torch.Generator`` and runs kornia under ``torch.random.fork_rng`` seeded with it, so the same seed
gives the same sequence of batches without touching the global random state; ``seed=`` on a call
fixes that call alone. Geometric steps pad with 0 (the normalised background).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import kornia.augmentation as K
import torch
from kornia.constants import DataKey, Resample

DEFAULT_AUGMENTATION: dict[str, Any] = {
    "hflip": {"p": 0.5},
    "vflip": {"p": 0.0},
    "rotate": {"p": 0.0, "degrees": 30.0},
    "shift_scale_rotate": {"p": 0.5, "shift": 0.0625, "scale": 0.1, "degrees": 15.0},
    # kornia's displacement is in normalised units (1 = half the image) after smoothing uniform noise
    # with a Gaussian of ``sigma`` pixels: alpha 4, sigma 16 moves pixels by ~2 % of the image (~5 px at 256)
    "elastic": {"p": 0.0, "sigma": 16.0, "alpha": 4.0},
    "grid": {"p": 0.25, "scale": 0.05},
    "brightness_contrast": {"p": 0.5, "brightness": 0.1, "contrast": 0.15},
    # off by default (the shipped model's training did not use them); nnU-Net's intensity steps
    "gamma": {"p": 0.0, "gamma": (0.7, 1.5)},
    "noise": {"p": 0.0, "std": 0.03},
    "blur": {"p": 0.0, "sigma": (0.5, 1.0)},
    "dropout": {"p": 0.3, "holes": 4, "scale": (0.005, 0.02), "ratio": (0.5, 2.0)},
    "mixup": {"p": 0.0, "alpha": 0.4},
}
STEPS: tuple[str, ...] = tuple(DEFAULT_AUGMENTATION)


def resolve_spec(spec: str | Mapping | None) -> dict[str, dict]:
    """The full step dict (every step with ``p`` and settings) for a spec; raises ValueError if bad."""
    if spec is None or spec == "default":
        return copy.deepcopy(DEFAULT_AUGMENTATION)
    off = {step: {**settings, "p": 0.0} for step, settings in copy.deepcopy(DEFAULT_AUGMENTATION).items()}
    if spec in ("none", "off"):
        return off
    if not isinstance(spec, Mapping):
        raise ValueError(f"augmentation spec must be 'default', 'none' or a dict, got {spec!r}")
    spec = dict(spec)
    base = spec.pop("base", "default")
    if base not in ("default", "none"):
        raise ValueError(f"augmentation base must be 'default' or 'none', got {base!r}")
    out = copy.deepcopy(DEFAULT_AUGMENTATION) if base == "default" else off
    for step, value in spec.items():
        if step not in out:
            raise ValueError(f"unknown augmentation step {step!r}; known steps: {', '.join(STEPS)}")
        if value is None or value is False:
            out[step]["p"] = 0.0
        elif value is True:
            out[step]["p"] = DEFAULT_AUGMENTATION[step]["p"] or 0.5
        elif isinstance(value, (int, float)):
            out[step]["p"] = float(value)
        elif isinstance(value, Mapping):
            unknown = set(value) - set(out[step])
            if unknown:
                raise ValueError(
                    f"unknown setting(s) {sorted(unknown)} for augmentation {step!r} (known: {', '.join(out[step])})"
                )
            out[step].update(value)
            if "p" not in value:
                out[step]["p"] = DEFAULT_AUGMENTATION[step]["p"] or 0.5
        else:
            raise ValueError(f"augmentation {step!r}: expected a probability or a dict, got {value!r}")
        if not 0.0 <= float(out[step]["p"]) <= 1.0:
            raise ValueError(f"augmentation {step!r}: probability must be in [0, 1], got {out[step]['p']}")
    return out


class Augmentation:
    """Callable batch augmentation (see the module docstring)."""

    def __init__(self, spec: str | Mapping | None = None, seed: int | None = None) -> None:
        self.spec = resolve_spec(spec)
        self._gen = None if seed is None else torch.Generator().manual_seed(int(seed))
        s = self.spec
        geo: list = []
        if s["hflip"]["p"] > 0:
            geo.append(K.RandomHorizontalFlip(p=s["hflip"]["p"]))
        if s["vflip"]["p"] > 0:
            geo.append(K.RandomVerticalFlip(p=s["vflip"]["p"]))
        if s["rotate"]["p"] > 0:
            geo.append(K.RandomRotation(degrees=float(s["rotate"]["degrees"]), align_corners=False, p=s["rotate"]["p"]))
        if s["shift_scale_rotate"]["p"] > 0:
            a = s["shift_scale_rotate"]
            shift, scale = float(a["shift"]), a["scale"]
            scale_range = (1.0 - float(scale), 1.0 + float(scale)) if isinstance(scale, (int, float)) else tuple(scale)
            geo.append(
                K.RandomAffine(
                    degrees=float(a["degrees"]),
                    translate=(shift, shift),
                    scale=scale_range,
                    align_corners=False,
                    p=a["p"],
                )
            )
        if s["elastic"]["p"] > 0:
            e = s["elastic"]
            ks = 2 * round(2 * float(e["sigma"])) + 1  # odd, ±2 sigma
            geo.append(
                K.RandomElasticTransform(
                    kernel_size=(ks, ks),
                    sigma=(float(e["sigma"]),) * 2,
                    alpha=(float(e["alpha"]),) * 2,
                    align_corners=False,
                    p=e["p"],
                )
            )
        self._geometric = (
            K.AugmentationSequential(
                *geo,
                data_keys=["input", "mask"],
                extra_args={DataKey.MASK: {"resample": Resample.NEAREST, "align_corners": False}},
            )
            if geo
            else None
        )
        g = s["grid"]
        # kornia's thin-plate spline costs the same for p < 1 as for p = 1 (it warps the whole batch),
        # so the samples are picked here and only those are warped (at p = 1)
        self._grid_p = float(g["p"])
        self._grid = (
            K.RandomThinPlateSpline(scale=float(g["scale"]), align_corners=False, p=1.0) if g["p"] > 0 else None
        )
        intensity: list = []
        if s["brightness_contrast"]["p"] > 0:
            b = s["brightness_contrast"]
            db, dc = float(b["brightness"]), float(b["contrast"])
            intensity.append(K.RandomBrightness(brightness=(1.0 - db, 1.0 + db), p=b["p"]))
            intensity.append(K.RandomContrast(contrast=(max(0.0, 1.0 - dc), 1.0 + dc), p=b["p"]))
        intensity += _gamma_noise_blur(s)
        if s["dropout"]["p"] > 0:
            d = s["dropout"]
            for _ in range(int(d["holes"])):
                intensity.append(K.RandomErasing(scale=tuple(d["scale"]), ratio=tuple(d["ratio"]), value=0.0, p=d["p"]))
        self._intensity = intensity
        self._mixup = s["mixup"]

    def get_state(self) -> torch.Tensor | None:
        """The random state of a seeded augmentation (None when unseeded), for a resumable run."""
        return None if self._gen is None else self._gen.get_state()

    def set_state(self, state: torch.Tensor | None) -> None:
        """Continue from ``get_state()``'s state (ignored when either side is unseeded)."""
        if self._gen is not None and state is not None:
            self._gen.set_state(state)

    def __repr__(self) -> str:
        active = {k: v for k, v in self.spec.items() if v["p"] > 0}
        return f"Augmentation({active})"

    def __call__(
        self,
        image: torch.Tensor,
        masks: torch.Tensor,
        ignore: torch.Tensor | None = None,
        seed: int | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Augment ``image`` (N, k, H, W) and ``masks`` (N, C, H, W) together; returns float tensors.

        ``ignore`` (N,) or (N, C) bool, if given, is returned third: mixup ORs the flags of mixed pairs.
        """
        if image.dim() != 4 or masks.dim() != 4:
            raise ValueError(f"image {tuple(image.shape)} and masks {tuple(masks.shape)} must be (N, ch, H, W)")
        if image.shape[0] != masks.shape[0] or image.shape[2:] != masks.shape[2:]:
            raise ValueError(f"image {tuple(image.shape)} and masks {tuple(masks.shape)} differ in N, H or W")
        if not image.is_floating_point():
            raise ValueError(f"image must be a float tensor, got {image.dtype}")
        if seed is None and self._gen is not None:
            seed = int(torch.randint(0, 2**62, (1,), generator=self._gen))
        masks = masks.to(image.dtype)
        if seed is None:
            return self._run(image, masks, ignore)
        devices = [image.device] if image.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return self._run(image, masks, ignore)

    def _run(self, image: torch.Tensor, masks: torch.Tensor, ignore: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """Apply the steps under the current random state."""
        if self._geometric is not None:
            image, masks = self._geometric(image, masks)
        if self._grid is not None:
            chosen = torch.rand(image.shape[0]) < self._grid_p
            if chosen.any():
                binary = bool(((masks == 0) | (masks == 1)).all())
                k = image.shape[1]
                idx = chosen.nonzero().squeeze(1).to(image.device)
                warped = self._grid(torch.cat([image[idx], masks[idx]], dim=1))
                image, masks = image.clone(), masks.clone()
                image[idx] = warped[:, :k]
                masks[idx] = (warped[:, k:] > 0.5).to(masks.dtype) if binary else warped[:, k:]
        for step in self._intensity:
            image = step(image)
        if self._mixup["p"] > 0 and image.shape[0] > 1:
            image, masks, ignore = self._mix(image, masks, ignore)
        image = image.contiguous()
        masks = masks.contiguous()
        return (image, masks) if ignore is None else (image, masks, ignore)

    def _mix(
        self, image: torch.Tensor, masks: torch.Tensor, ignore: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Mixup: chosen samples become λ·x + (1−λ)·x[perm] for image and masks alike."""
        n = image.shape[0]
        alpha = float(self._mixup["alpha"])
        chosen = torch.rand(n) < float(self._mixup["p"])
        lam = torch.distributions.Beta(alpha, alpha).sample((n,))
        lam = torch.where(chosen, lam, torch.ones_like(lam)).to(image.device, image.dtype)
        perm = torch.randperm(n).to(image.device)
        lam4 = lam[:, None, None, None]
        image = lam4 * image + (1 - lam4) * image[perm]
        masks = lam4 * masks + (1 - lam4) * masks[perm]
        if ignore is not None:
            mixed = (lam < 1).to(ignore.device)
            ig = ignore.to(torch.bool)
            shape = (-1,) + (1,) * (ig.dim() - 1)
            ignore = ig | (ig[perm.to(ig.device)] & mixed.reshape(shape))
        return image, masks, ignore


def _gamma_noise_blur(s: dict[str, dict]) -> list:
    """The optional intensity steps gamma, Gaussian noise and Gaussian blur of a resolved spec (those on)."""
    steps: list = []
    if s["gamma"]["p"] > 0:
        steps.append(K.RandomGamma(gamma=tuple(float(g) for g in s["gamma"]["gamma"]), p=s["gamma"]["p"]))
    if s["noise"]["p"] > 0:
        steps.append(K.RandomGaussianNoise(mean=0.0, std=float(s["noise"]["std"]), p=s["noise"]["p"]))
    if s["blur"]["p"] > 0:
        sigma = tuple(float(v) for v in s["blur"]["sigma"])
        size = 2 * math.ceil(2 * sigma[1]) + 1  # odd, +-2 sigma of the widest
        steps.append(K.RandomGaussianBlur(kernel_size=(size, size), sigma=sigma, p=s["blur"]["p"]))
    return steps


def build_augmentation(spec: str | Mapping | None = None, seed: int | None = None) -> Augmentation:
    """Build the batch augmentation described by ``spec`` (see the module docstring)."""
    return Augmentation(spec, seed=seed)
