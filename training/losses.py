"""Training losses: weighted sums of segmentation-models-pytorch losses in multilabel mode.

``build_loss(spec)`` returns a :class:`CombinedLoss`. ``spec`` is a dict of term weights plus optional
``<term>_<param>`` settings, e.g. ``{"bce": 0.5, "tversky": 0.5, "tversky_alpha": 0.7,
"tversky_beta": 0.3}``, or a string ``"0.5*bce + 0.5*tversky(alpha=0.7, beta=0.3)"``.

Terms (on logits ``(N, C, H, W)`` and targets in [0, 1] of the same shape): ``bce``, ``focal``,
``dice``, ``tversky`` (``alpha`` weighs false positives, ``beta`` false negatives), ``jaccard`` and
``lovasz`` (smp's classes), and ``cls``, the BCE of the classification head on "slice has organ"
(needs ``cls_logits``). The smp class and the settings of each term: ``docs/training-notes.md``.

``ignore`` (bool, True = no loss; per slice, per slice and class, or per pixel) and ``weight`` (per
sample; pseudo-labels < 1): the pixel-wise terms (bce, focal) and cls take both exactly (a batch of
half-weight samples gives half the loss); the set-level terms (dice, tversky, jaccard, lovasz) drop
ignored elements and samples of weight 0 through smp's ``ignore_index`` and treat other weights as 1.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

TERMS: tuple[str, ...] = ("bce", "focal", "dice", "tversky", "jaccard", "lovasz", "cls")
# settings each term accepts, with defaults
TERM_PARAMS: dict[str, dict[str, float | bool | None]] = {
    "bce": {"smooth": None},
    "focal": {"alpha": None, "gamma": 2.0},
    "dice": {"smooth": 0.0, "log": False},
    "tversky": {"alpha": 0.5, "beta": 0.5, "gamma": 1.0, "smooth": 0.0, "log": False},
    "jaccard": {"smooth": 0.0, "log": False},
    "lovasz": {"per_image": False},
    "cls": {},
}
PIXEL_TERMS = ("bce", "focal")
SET_TERMS = ("dice", "tversky", "jaccard", "lovasz")
DEFAULT_LOSS: dict = {"bce": 0.5, "tversky": 0.5, "tversky_alpha": 0.7, "tversky_beta": 0.3}
_IGNORE = -1  # target value that smp's ignore_index removes


def _parse_value(text: str) -> float | bool | None:
    """A setting's value from a loss string: number, true/false or none."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    return float(low)


def parse_loss_spec(spec: str | Mapping) -> tuple[dict[str, float], dict[str, dict]]:
    """Split a loss spec into ``({term: weight}, {term: {setting: value}})``; raises ValueError if bad."""
    weights: dict[str, float] = {}
    settings: dict[str, dict] = {}
    if isinstance(spec, str):
        text = spec.replace(" ", "")
        if not text:
            raise ValueError("empty loss specification")
        pattern = re.compile(r"^(?:(?P<w>[0-9.eE+-]+)\*)?(?P<name>[a-z_]+)(?:\((?P<args>[^)]*)\))?$")
        for part in re.split(r"\+(?![^(]*\))", text):
            m = pattern.match(part)
            if not m:
                raise ValueError(f"cannot read loss term {part!r} in {spec!r} (expected e.g. '0.5*bce')")
            name = m["name"]
            if name not in TERMS:
                raise ValueError(f"unknown loss term {name!r} in {spec!r}; known terms: {', '.join(TERMS)}")
            weights[name] = weights.get(name, 0.0) + (float(m["w"]) if m["w"] else 1.0)
            for arg in filter(None, (m["args"] or "").split(",")):
                if "=" not in arg:
                    raise ValueError(f"loss setting {arg!r} in {spec!r} must be name=value")
                key, value = arg.split("=", 1)
                settings.setdefault(name, {})[key] = _parse_value(value)
    elif isinstance(spec, Mapping):
        for key, value in spec.items():
            if key in TERMS:
                weights[key] = float(value)
                continue
            term, _, setting = key.partition("_")
            if term not in TERMS or not setting:
                raise ValueError(f"unknown loss key {key!r}; use a term ({', '.join(TERMS)}) or term_setting")
            settings.setdefault(term, {})[setting] = value
    else:
        raise ValueError(f"loss spec must be a string or a dict, got {type(spec).__name__}")
    for term, values in settings.items():
        unknown = set(values) - set(TERM_PARAMS[term])
        if unknown:
            known = ", ".join(TERM_PARAMS[term]) or "none"
            raise ValueError(f"unknown setting(s) {sorted(unknown)} for loss {term!r} (known: {known})")
    if any(w < 0 for w in weights.values()):
        raise ValueError(f"loss weights must be >= 0, got {weights}")
    weights = {k: w for k, w in weights.items() if w > 0}
    if not weights:
        raise ValueError(f"loss spec {spec!r} has no term with a positive weight")
    return weights, settings


def _make_term(name: str, opts: dict) -> nn.Module | None:
    """The smp module for one term (None for the cls term, computed directly)."""
    if name == "bce":
        return smp.losses.SoftBCEWithLogitsLoss(reduction="none", ignore_index=None, smooth_factor=opts["smooth"])
    if name == "focal":
        # binary mode with reduction="none" keeps the per-element loss; multilabel focal is the same
        # binary focal loss on every (class, pixel) element
        return smp.losses.FocalLoss("binary", alpha=opts["alpha"], gamma=opts["gamma"], reduction="none")
    if name == "dice":
        return smp.losses.DiceLoss(
            "multilabel", log_loss=bool(opts["log"]), smooth=opts["smooth"], ignore_index=_IGNORE
        )
    if name == "tversky":
        return smp.losses.TverskyLoss(
            "multilabel",
            log_loss=bool(opts["log"]),
            smooth=opts["smooth"],
            ignore_index=_IGNORE,
            alpha=opts["alpha"],
            beta=opts["beta"],
            gamma=opts["gamma"],
        )
    if name == "jaccard":
        return smp.losses.JaccardLoss(
            "multilabel", log_loss=bool(opts["log"]), smooth=opts["smooth"], ignore_index=_IGNORE
        )
    if name == "lovasz":
        return smp.losses.LovaszLoss("multilabel", per_image=bool(opts["per_image"]), ignore_index=_IGNORE)
    return None


def _expand(mask: torch.Tensor, ref: torch.Tensor, what: str) -> torch.Tensor:
    """Broadcast an (N,), (N, C), (N, 1|C, H, W) tensor to ``ref``'s (N, C, H, W) shape."""
    mask = torch.as_tensor(mask, device=ref.device)
    if mask.dim() == 1:
        mask = mask[:, None, None, None]
    elif mask.dim() == 2:
        mask = mask[:, :, None, None]
    if mask.dim() != 4 or mask.shape[0] != ref.shape[0]:
        raise ValueError(f"{what} of shape {tuple(mask.shape)} does not fit targets {tuple(ref.shape)}")
    try:
        return mask.expand_as(ref)
    except RuntimeError as exc:
        raise ValueError(f"{what} of shape {tuple(mask.shape)} does not fit targets {tuple(ref.shape)}") from exc


class CombinedLoss(nn.Module):
    """Weighted sum of loss terms with per-sample weights and an ignore mask (see module docstring)."""

    def __init__(self, weights: Mapping[str, float], settings: Mapping[str, Mapping] | None = None) -> None:
        super().__init__()
        settings = settings or {}
        self.weights = {k: float(v) for k, v in weights.items()}
        self.settings = {t: {**TERM_PARAMS[t], **dict(settings.get(t, {}))} for t in self.weights}
        self.terms = nn.ModuleDict({t: m for t in self.weights if (m := _make_term(t, self.settings[t])) is not None})

    @property
    def needs_cls(self) -> bool:
        """True when the loss has a classification-head term."""
        return "cls" in self.weights

    def spec(self) -> dict:
        """The dict spec that rebuilds this loss (for checkpoints and logs)."""
        out: dict = dict(self.weights)
        for term, opts in self.settings.items():
            for key, value in opts.items():
                if value != TERM_PARAMS[term][key]:
                    out[f"{term}_{key}"] = value
        return out

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        ignore: torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
        cls_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Total loss of ``logits``/``target`` (N, C, H, W); optional ``ignore``, ``weight`` (N,), ``cls_logits``."""
        return self.forward_terms(logits, target, ignore, weight, cls_logits)[0]

    def forward_terms(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        ignore: torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
        cls_logits: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss and the unweighted value of each term (floats, for logging)."""
        if logits.shape != target.shape or logits.dim() != 4:
            raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must both be (N, C, H, W)")
        target = target.to(logits.dtype)
        keep = torch.ones_like(target, dtype=torch.bool)
        if ignore is not None:
            keep = ~_expand(ignore.to(torch.bool), target, "ignore")
        w = torch.ones(target.shape[0], device=logits.device, dtype=logits.dtype)
        if weight is not None:
            w = torch.as_tensor(weight, device=logits.device, dtype=logits.dtype).reshape(-1)
            if w.shape[0] != target.shape[0]:
                raise ValueError(f"weight has {w.shape[0]} entries for a batch of {target.shape[0]}")
            if (w < 0).any():
                raise ValueError("sample weights must be >= 0")
        pixel_w = keep.to(logits.dtype) * w[:, None, None, None]
        set_keep = keep & (w > 0)[:, None, None, None]
        n_keep = keep.sum().clamp_min(1)

        total = logits.sum() * 0.0  # keeps the graph when every sample is ignored
        values: dict[str, float] = {}
        for term, tw in self.weights.items():
            if term in PIXEL_TERMS:
                per_elem = self.terms[term](logits, target) if term == "bce" else self._focal(logits, target)
                value = (per_elem * pixel_w).sum() / n_keep
            elif term in SET_TERMS:
                if not set_keep.any():
                    value = logits.sum() * 0.0
                else:
                    masked = torch.where(set_keep, target, torch.full_like(target, _IGNORE))
                    value = self.terms[term](logits, masked)
            else:  # cls
                value = self._cls(cls_logits, target, keep, w)
            values[term] = float(value.detach())
            total = total + tw * value
        return total, values

    def _focal(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-element focal loss, shaped like ``logits``."""
        return self.terms["focal"](logits.reshape(-1), target.reshape(-1)).reshape(logits.shape)

    @staticmethod
    def _cls(
        cls_logits: torch.Tensor | None, target: torch.Tensor, keep: torch.Tensor, w: torch.Tensor
    ) -> torch.Tensor:
        """Weighted BCE of the classification head against "the slice shows the organ"."""
        if cls_logits is None:
            raise ValueError("the loss has a 'cls' term but no cls_logits were given (model without cls head?)")
        if cls_logits.shape != target.shape[:2]:
            raise ValueError(f"cls_logits {tuple(cls_logits.shape)} must be (N, C) = {tuple(target.shape[:2])}")
        has_organ = (target.amax(dim=(2, 3)) > 0.5).to(cls_logits.dtype)
        keep_nc = keep.any(dim=(2, 3)).to(cls_logits.dtype) * w[:, None]
        per = F.binary_cross_entropy_with_logits(cls_logits, has_organ, reduction="none")
        return (per * keep_nc).sum() / keep.any(dim=(2, 3)).sum().clamp_min(1)


def build_loss(spec: str | Mapping | None = None) -> CombinedLoss:
    """Build the combined loss from a dict or string spec (None: ``DEFAULT_LOSS``)."""
    weights, settings = parse_loss_spec(DEFAULT_LOSS if spec is None else spec)
    return CombinedLoss(weights, settings)
