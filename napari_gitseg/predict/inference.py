"""One batch of slices through the ensemble: 2.5D windows (letterboxed for models with an input size),
flip TTA, the empty-slice gate that skips decoders, members averaged, per-slice confidence."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from napari_gitseg.model.factory import ModelConfig, pad_to_divisor
from napari_gitseg.model.windows import window_indices
from napari_gitseg.predict.frozen import FrozenModel, decode_eager, encode_eager


@dataclass
class Member:
    """One model of the ensemble: the network, its config and normalisation, and how to run it."""

    model: torch.nn.Module
    config: ModelConfig
    normalization: dict
    version: str
    divisor: int
    split: bool  # encoder / decoder / heads reachable separately (smp's standard forward)
    frozen: FrozenModel | None = None  # frozen graphs (CPU; fp32, or bf16 when asked for); None = eager

    def forward(self, x: torch.Tensor):
        """The model's output for ``x`` (a tensor or a tuple)."""
        return self.model(x) if self.frozen is None else self.frozen.forward(x)

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(encoder features, classification logits); ``split`` members only."""
        return encode_eager(self.model, x) if self.frozen is None else self.frozen.encode(x)

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Segmentation logits from encoder features; ``split`` members only."""
        return decode_eager(self.model, features) if self.frozen is None else self.frozen.decode(features)


def splittable(model: torch.nn.Module) -> bool:
    """True when the encoder, decoder and heads of ``model`` run separately (smp's standard forward)."""
    from segmentation_models_pytorch.base import SegmentationModel

    return (
        isinstance(model, SegmentationModel)
        and type(model).forward is SegmentationModel.forward
        and getattr(model, "classification_head", None) is not None
    )


def letterbox_geometry(h: int, w: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(rows, cols, top, left) of an h x w slice scaled to fit ``size`` keeping its aspect ratio, centred."""
    scale = min(size[0] / h, size[1] / w)
    nh, nw = max(1, min(size[0], round(h * scale))), max(1, min(size[1], round(w * scale)))
    return nh, nw, (size[0] - nh) // 2, (size[1] - nw) // 2


TORCH_DTYPES = {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32}


class BatchInference:
    """``Predictor``'s network pass over one batch (its members, flips, device, gate and threshold)."""

    def _prepare(self, member: Member, volume: np.ndarray, batch: np.ndarray) -> tuple[torch.Tensor, Callable]:
        """Network input (n * flips, k, H', W') and a function mapping its logits back to (n, C, h, w)."""
        # each slice the windows need is resized once (a slice is in up to k windows), then stacked
        idx = window_indices(volume.shape[0], member.config.k, member.config.stride)[np.asarray(batch)]
        needed, where = np.unique(idx, return_inverse=True)
        planes = torch.from_numpy(np.ascontiguousarray(volume[needed], dtype=np.float32))[:, None]
        planes = planes.to(self.device, non_blocking=True)
        h, w = planes.shape[-2:]
        size = member.config.input_size
        if size is not None:
            nh, nw, top, left = letterbox_geometry(h, w, size)
            planes = F.interpolate(planes, size=(nh, nw), mode="bilinear", align_corners=False, antialias=(nh < h))
            planes = F.pad(planes, (left, size[1] - nw - left, top, size[0] - nh - top))
        x = planes[:, 0][torch.from_numpy(where.reshape(idx.shape)).to(planes.device)]
        x, pads = pad_to_divisor(x, member.divisor)
        if len(self.flips) > 1:
            x = torch.cat([x if not dims else torch.flip(x, dims) for dims in self.flips])
        if self.channels_last and self.device.type in ("cpu", "cuda"):
            x = x.contiguous(memory_format=torch.channels_last)

        def restore(logits: torch.Tensor) -> torch.Tensor:
            top_, bottom_, left_, right_ = pads
            hh, ww = logits.shape[-2:]
            logits = logits[..., top_ : hh - bottom_, left_ : ww - right_]
            if size is not None:
                logits = logits[..., top : top + nh, left : left + nw]
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)  # in the model dtype
            return logits

        return x, restore

    def _unflip_mean(self, t: torch.Tensor, n: int) -> torch.Tensor:
        """Average the TTA copies stacked along the batch ((n * flips, ...) -> (n, ...)).

        Spatial maps (4-D) are flipped back first; per-slice vectors (gate logits, 2-D) are not.
        """
        acc = None
        for dims, part in zip(self.flips, t.split(n)):
            if dims and part.ndim == 4:
                part = torch.flip(part, dims)
            acc = part if acc is None else acc + part
        return acc if len(self.flips) == 1 else acc / len(self.flips)

    @torch.inference_mode()
    def _infer(self, volumes: list[np.ndarray], batch: np.ndarray) -> tuple[np.ndarray, ...]:
        """One batch: probabilities (C, n, h, w) in ``probs_dtype``, masks (C, n, h, w) before gating and
        post-processing, confidence (n,), gate probabilities (C, n) or None."""
        n = len(batch)
        autocast = (  # frozen members run their own precision (predict/frozen.py)
            torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None and any(m.frozen is None for m in self.members)
            else contextlib.nullcontext()
        )
        with autocast:
            # phase 1: inputs, encoders and gates (full forward for models without a usable gate)
            staged = []
            gates = []
            for member, volume in zip(self.members, volumes):
                x, restore = self._prepare(member, volume, batch)
                if self.use_gate and member.split:
                    features, cls = member.encode(x)
                    cls = cls.float()
                    gates.append(torch.sigmoid(self._unflip_mean(cls, n)))
                    staged.append((member, restore, features, None))
                else:
                    out = member.forward(x)
                    seg, cls = (out[0], out[1]) if isinstance(out, (tuple, list)) else (out, None)
                    if self.use_gate and member.config.cls_head and cls is not None:
                        gates.append(torch.sigmoid(self._unflip_mean(cls.float(), n)))
                    staged.append((member, restore, None, seg))
            gate = torch.stack(gates).mean(0) if gates else None  # (n, C)
            open_idx = None
            if gate is not None:
                open_idx = torch.nonzero(gate.max(dim=1).values >= self.gate_threshold).flatten()
            # phase 2: decoders (only for slices the gate lets through)
            acc = None
            for member, restore, features, seg in staged:
                if seg is None:
                    if open_idx is not None and len(open_idx) < n:
                        probs = torch.zeros((n, len(self.classes), *volumes[0].shape[1:]), device=self.device)
                        if len(open_idx):
                            sel = torch.cat([open_idx + i * n for i in range(len(self.flips))])
                            sub = [f[sel] for f in features]
                            logits = member.decode(sub)
                            p = torch.sigmoid(self._unflip_mean(restore(logits).float(), len(open_idx)))
                            probs[open_idx] = p
                    else:
                        logits = member.decode(features)
                        probs = torch.sigmoid(self._unflip_mean(restore(logits).float(), n))
                else:
                    probs = torch.sigmoid(self._unflip_mean(restore(seg).float(), n))
                acc = probs if acc is None else acc + probs
            if len(staged) > 1:
                acc = acc / len(staged)
        # thresholds, confidence and the dtype conversion stay in torch: numpy converts the tiny
        # probabilities of the background to float16 (subnormals) about ten times slower
        conf = _confidence(acc).cpu().numpy()
        by_class = acc.permute(1, 0, 2, 3)  # (C, n, h, w) view; each line below copies once
        masks = (by_class > self.threshold).contiguous().cpu().numpy()
        probs = by_class.to(TORCH_DTYPES[self.probs_dtype], memory_format=torch.contiguous_format).cpu().numpy()
        g = None if gate is None else gate.t().contiguous().cpu().numpy()
        return probs, masks, conf, g


def _confidence(p: torch.Tensor, candidate: float = 0.05) -> torch.Tensor:
    """Per-slice confidence (module docstring) of (n, C, h, w) float32 probabilities: (n,) float32 in [0, 1]."""
    region = (p >= candidate).any(dim=1)  # (n, h, w); organ candidates are few: work on them only
    where = region.nonzero()
    q = p.permute(0, 2, 3, 1)[region].clamp(1e-6, 1 - 1e-6)  # (m, C)
    worst = (-(q * torch.log2(q) + (1 - q) * torch.log2(1 - q))).amax(dim=1)
    total = torch.zeros(p.shape[0], dtype=p.dtype, device=p.device).index_add_(0, where[:, 0], worst)
    count = region.sum(dim=(1, 2))
    return torch.where(count > 0, 1 - total / count.clamp(min=1), torch.ones_like(total))
