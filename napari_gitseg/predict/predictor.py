"""Stack in, per-class probabilities and masks out: batched 2.5D inference, visible slice first.

``Predictor`` holds one model or an ensemble (bundles from disk or models in memory) on the
chosen device. ``iter_predict`` is a generator that yields a ``PredictionUpdate`` after every
batch (so a viewer can paint the overlay as it fills, the slice on screen first) and
returns the final ``Prediction``; ``predict`` runs it to the end. No Qt here.

What happens to a stack: checks (a constant image gives empty masks without running the network);
normalisation exactly as in training (``normalize_stack``); one body crop per stack
(``crop_to_body``), the result pasted back into the full frame; slices ordered outward from
``first_slice``; per batch and model, 2.5D windows through the network (frozen fp32 graphs on the
CPU, see ``predict/frozen.py``; autocast on CUDA), optional flip TTA, ensemble members averaged;
the empty-slice gate (``use_gate``) skips the decoder on slices below ``gate_threshold``; masks =
probability > ``threshold``, small components optionally removed (``min_component_px``).

``Prediction.confidence`` per slice (in [0, 1], higher = more confident) is one minus the mean
normalised binary entropy over the slice's organ candidate pixels: the review queue offers the least
confident slices first, the bootstrap takes the most confident as pseudo-labels.
Every step in detail: ``docs/package-notes.md``. The network pass is in ``predict/inference.py``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from napari_gitseg.cancel import Cancel, is_cancelled
from napari_gitseg.io.errors import GitsegInputError
from napari_gitseg.model.bundle import BundleError, ModelBundle, load_bundle
from napari_gitseg.model.device import pick_device, torch_threads
from napari_gitseg.model.factory import ModelConfig, input_divisor
from napari_gitseg.model.normalize import DEFAULT_NORMALIZATION, normalize_stack
from napari_gitseg.predict.frozen import FrozenModel
from napari_gitseg.predict.inference import TORCH_DTYPES, BatchInference, Member, splittable
from napari_gitseg.predict.postprocess import binary_entropy, body_box, remove_small_components
from napari_gitseg.predict.precision import cpu_bf16_enabled, cpu_has_native_bf16
from napari_gitseg.predict.prediction import Prediction, PredictionCancelled, PredictionUpdate

__all__ = [
    "Prediction",
    "PredictionCancelled",
    "PredictionUpdate",
    "Predictor",
    "cpu_bf16_enabled",
    "cpu_has_native_bf16",
    "slice_order",
]

Progress = Callable[[int, int], None] | None


def slice_order(n_slices: int, first_slice: int | None) -> np.ndarray:
    """Processing order: ``first_slice``, then alternately after and before it, moving outward."""
    if first_slice is None:
        return np.arange(n_slices)
    first = int(first_slice)
    if not 0 <= first < n_slices:
        raise ValueError(f"first_slice {first_slice} is outside the stack (0..{n_slices - 1})")
    order = [first]
    for d in range(1, n_slices):
        for z in (first + d, first - d):
            if 0 <= z < n_slices:
                order.append(z)
    return np.asarray(order, dtype=np.int64)


@dataclass
class _Outputs:
    """What a prediction fills batch by batch (aligned with the stack), and its records."""

    probs: np.ndarray  # (C, Z, Y, X) in probs_dtype
    masks: np.ndarray  # (C, Z, Y, X) bool
    confidence: np.ndarray  # (Z,)
    gate_pc: np.ndarray | None  # (C, Z) gate probabilities, None without a gate
    t_start: float
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class Predictor(BatchInference):
    """Runs one model or an ensemble on stacks; see the module docstring for every step."""

    def __init__(
        self,
        bundles: Sequence[ModelBundle | str | os.PathLike | torch.nn.Module | tuple] | ModelBundle | str | os.PathLike,
        device: str | torch.device | None = None,
        batch_size: int = 8,
        tta_flips: bool | str = False,
        use_gate: bool = True,
        gate_threshold: float = 0.5,
        crop_to_body: bool = True,
        threshold: float = 0.5,
        min_component_px: int = 0,
        amp: bool = True,
        cpu_bf16: bool | None = None,
        channels_last: bool = True,
        num_threads: int | None = None,
        first_batch_size: int = 1,
        probs_dtype: np.dtype | type = np.float16,
        freeze: bool | None = None,
    ):
        """Load the models: bundle paths / ``ModelBundle``s, or ``(model, ModelConfig | ModelBundle)`` pairs.

        ``tta_flips``: False, True (identity + horizontal flip) or ``"hv"`` (+ vertical flip); a bundle
        trained without such mirrored images is refused (``ModelBundle.flip_refusal``: BundleError).
        ``amp``: mixed precision on CUDA (bf16 where supported, else fp16); False keeps fp32 everywhere.
        ``cpu_bf16``: bf16 autocast on the CPU (with ``amp``); None = ``$GITSEG_CPU_BF16`` (off
        unless set to 1, see ``cpu_bf16_enabled``), so CPU results do not depend on the processor.
        ``first_batch_size``: size of the first batch when ``first_slice`` is given (small = the
        visible slice is ready sooner). ``probs_dtype``: dtype of ``Prediction.probs``.
        ``freeze``: run the models through frozen graphs (``predict/frozen.py``; CPU only, in the
        precision chosen above, about 2x faster there); None = for the models this Predictor loads from bundles,
        not for models handed over in memory (they may still be training); True = for all.
        """
        if isinstance(bundles, (str, os.PathLike, ModelBundle, torch.nn.Module, tuple)):
            bundles = [bundles]
        if not bundles:
            raise ValueError("Predictor needs at least one model")
        if int(batch_size) < 1 or int(first_batch_size) < 1:
            raise ValueError(f"batch sizes must be >= 1, got {batch_size} and {first_batch_size}")
        if tta_flips not in (False, True, "h", "hv"):
            raise ValueError(f"tta_flips must be False, True, 'h' or 'hv', got {tta_flips!r}")
        for name, value in (("threshold", threshold), ("gate_threshold", gate_threshold)):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        self.device = pick_device(device)
        self.batch_size = int(batch_size)
        self.first_batch_size = int(first_batch_size)
        self.flip_axes = {False: "", True: "h", "h": "h", "hv": "hv"}[tta_flips]  # what flip_refusal checks
        dims = {"h": (-1,), "v": (-2,)}  # the tensor dimension each flip reverses
        self.flips: list[tuple[int, ...]] = [(), *(dims[axis] for axis in self.flip_axes)]
        self.use_gate = bool(use_gate)
        self.gate_threshold = float(gate_threshold)
        self.crop_to_body = bool(crop_to_body)
        self.threshold = float(threshold)
        self.min_component_px = int(min_component_px)
        self.channels_last = bool(channels_last)
        self.num_threads = num_threads
        self.probs_dtype = np.dtype(probs_dtype)
        if self.probs_dtype not in TORCH_DTYPES:
            raise ValueError(f"probs_dtype must be float16 or float32, got {self.probs_dtype}")
        self.autocast_dtype: torch.dtype | None = None
        if amp and self.device.type == "cuda":
            self.autocast_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        elif amp and self.device.type == "cpu" and (cpu_bf16_enabled() if cpu_bf16 is None else cpu_bf16):
            self.autocast_dtype = torch.bfloat16
        self.members = [self._load_member(item, freeze) for item in bundles]
        self.classes = self.members[0].config.classes
        for m in self.members[1:]:
            if m.config.classes != self.classes:
                raise ValueError(
                    f"ensemble members disagree on classes: {m.version} has {m.config.classes}, "
                    f"{self.members[0].version} has {self.classes}"
                )

    # ---- set-up -------------------------------------------------------------------------------
    def _load_member(self, item, freeze: bool | None) -> Member:
        owned = not isinstance(item, tuple)
        if isinstance(item, (ModelBundle, str, os.PathLike)):
            model, bundle = load_bundle(item.json_path if isinstance(item, ModelBundle) else item, device="cpu")
            config, norm, version = bundle.config, bundle.normalization, bundle.name
            refusal = bundle.flip_refusal(self.flip_axes)
            if refusal:
                raise BundleError(bundle.json_path, refusal)
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], torch.nn.Module):
            model, meta = item
            if isinstance(meta, ModelBundle):
                config, norm, version = meta.config, meta.normalization, meta.name
            elif isinstance(meta, ModelConfig):
                config, norm, version = meta, dict(DEFAULT_NORMALIZATION), "in-memory"
            else:
                raise TypeError(f"expected (model, ModelConfig | ModelBundle), got (model, {type(meta).__name__})")
        else:
            raise TypeError(
                "a model must be a bundle path, a ModelBundle or a (model, ModelConfig) pair, "
                f"got {type(item).__name__}"
            )
        model = model.to(self.device).eval()
        if self.channels_last and self.device.type in ("cpu", "cuda"):
            model = model.to(memory_format=torch.channels_last)
        frozen = None
        if (owned if freeze is None else freeze) and self.device.type == "cpu":
            frozen = FrozenModel(model, dtype=self.autocast_dtype or torch.float32)
        return Member(model, config, dict(norm), version, input_divisor(model), splittable(model), frozen)

    @property
    def versions(self) -> list[str]:
        """Version labels of the models (bundle stems)."""
        return [m.version for m in self.members]

    # ---- public -------------------------------------------------------------------------------
    def predict(
        self,
        stack_or_image,
        first_slice: int | None = None,
        progress: Progress = None,
        cancel: Cancel = None,
    ) -> Prediction:
        """Segment a ``Stack`` or a (Z, Y, X) / (Y, X) array; ``progress(done, total)`` after each batch.

        A 2-D image is treated as a stack of one slice (the result keeps the Z axis of length 1).
        """
        gen = self.iter_predict(stack_or_image, first_slice=first_slice, cancel=cancel, progress=progress)
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                return stop.value

    def iter_predict(
        self,
        stack_or_image,
        first_slice: int | None = None,
        cancel: Cancel = None,
        progress: Progress = None,
    ) -> Generator[PredictionUpdate, None, Prediction]:
        """Yield a ``PredictionUpdate`` after each batch (``first_slice`` first); return the ``Prediction``.

        Raises ``PredictionCancelled`` between batches once ``cancel`` is set.
        """
        t_start = time.perf_counter()
        image, source = self._check_input(stack_or_image)
        order = slice_order(image.shape[0], first_slice)
        out = self._new_outputs(image.shape, t_start)
        if is_cancelled(cancel):
            raise PredictionCancelled("prediction cancelled before it started")
        if float(image.min()) == float(image.max()):
            yield self._constant_image(out, order, source, progress)
            return self._result(out, empty=True)
        crop, member_volumes = self._network_inputs(image, source, out.timings)
        box = crop if crop is not None else (0, image.shape[1], 0, image.shape[2])
        batches = self._batches(order, first_slice is not None)
        yield from self._predict_batches(out, member_volumes, box, batches, cancel, progress)
        return self._result(out, crop=crop)

    def _new_outputs(self, shape: tuple, t_start: float) -> _Outputs:
        """Empty outputs for a stack of ``shape`` (Z, Y, X): nothing found yet, every slice confident."""
        n_classes = len(self.classes)
        has_gate = self.use_gate and any(m.config.cls_head for m in self.members)
        return _Outputs(
            probs=np.zeros((n_classes, *shape), dtype=self.probs_dtype),
            masks=np.zeros((n_classes, *shape), dtype=bool),
            confidence=np.ones(shape[0], dtype=np.float32),
            gate_pc=np.zeros((n_classes, shape[0]), dtype=np.float32) if has_gate else None,
            t_start=t_start,
        )

    def _result(self, out: _Outputs, crop=None, empty: bool = False) -> Prediction:
        """The ``Prediction`` of the filled outputs (the total time is taken now)."""
        out.timings["total"] = time.perf_counter() - out.t_start
        return Prediction(
            probs=out.probs,
            masks=out.masks,
            confidence=out.confidence,
            gate=None if out.gate_pc is None else out.gate_pc.max(axis=0),
            gate_per_class=out.gate_pc,
            classes=self.classes,
            model_versions=self.versions,
            timings=out.timings,
            warnings=out.warnings,
            crop_box=crop,
            device=str(self.device),
            empty_input=empty,
        )

    @staticmethod
    def _constant_image(out: _Outputs, order: np.ndarray, source, progress: Progress) -> PredictionUpdate:
        """A constant image has nothing to segment: its one update (empty masks) with a warning."""
        n_slices = len(out.confidence)
        out.warnings.append(f"{source or 'image'}: the image is constant; nothing to segment (empty masks)")
        if out.gate_pc is not None:
            out.gate_pc[:] = 0.0
        out.timings["first_slice"] = time.perf_counter() - out.t_start
        if progress is not None:
            progress(n_slices, n_slices)
        return PredictionUpdate(n_slices, n_slices, order, out.probs[:, order], out.masks[:, order])

    def _network_inputs(self, image: np.ndarray, source, timings: dict) -> tuple:
        """(crop box or None, each member's normalised volume cut to it), timed as normalize and crop."""
        t0 = time.perf_counter()
        volumes = self._normalized(image, source)
        timings["normalize"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        crop = self._crop_box(volumes[0]) if self.crop_to_body else None
        timings["crop"] = time.perf_counter() - t0
        y0, y1, x0, x1 = crop if crop is not None else (0, image.shape[1], 0, image.shape[2])
        return crop, [v[:, y0:y1, x0:x1] for v in volumes]

    def _predict_batches(
        self, out: _Outputs, member_volumes: list, box: tuple, batches: list, cancel: Cancel, progress: Progress
    ) -> Generator[PredictionUpdate, None, None]:
        """Run the batches, fill ``out`` (pasted back at ``box`` of the full slice) and yield each update."""
        n_slices = len(out.confidence)
        timings = out.timings
        timings["network"] = 0.0
        timings["postprocess"] = 0.0
        done = 0
        with torch_threads(self.num_threads):
            for batch in batches:
                if is_cancelled(cancel):
                    raise PredictionCancelled(f"prediction cancelled after {done} of {n_slices} slices")
                t0 = time.perf_counter()
                p_batch, m_batch, conf, g_batch = self._infer(member_volumes, batch)
                timings["network"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                if g_batch is not None:
                    out.gate_pc[:, batch] = g_batch
                m_batch = self._gate_and_clean(m_batch, conf, g_batch)
                out.confidence[batch] = conf
                full_p, full_m = self._uncrop(p_batch, m_batch, out.masks.shape[2:], box)
                out.probs[:, batch], out.masks[:, batch] = full_p, full_m
                done += len(batch)
                timings["postprocess"] += time.perf_counter() - t0
                timings.setdefault("first_slice", time.perf_counter() - out.t_start)
                if progress is not None:
                    progress(done, n_slices)
                yield PredictionUpdate(done, n_slices, batch, full_p, full_m)

    # ---- internals ----------------------------------------------------------------------------
    def _uncrop(self, probs: np.ndarray, masks: np.ndarray, shape: tuple, box: tuple) -> tuple[np.ndarray, np.ndarray]:
        """A batch's (C, B, h, w) probabilities and masks put back at ``box`` (y0, y1, x0, x1) of the
        full slice ``shape``."""
        y0, y1, x0, x1 = box
        full_p = np.zeros((*probs.shape[:2], *shape), dtype=self.probs_dtype)
        full_m = np.zeros((*masks.shape[:2], *shape), dtype=bool)
        full_p[:, :, y0:y1, x0:x1] = probs
        full_m[:, :, y0:y1, x0:x1] = masks
        return full_p, full_m

    def _normalized(self, image: np.ndarray, source: str | None) -> list[np.ndarray]:
        """Each member's input volume, normalised as in its training (once per distinct spec)."""
        volumes: dict[str, np.ndarray] = {}
        for m in self.members:
            key = json.dumps(m.normalization, sort_keys=True)
            if key not in volumes:
                try:
                    volumes[key] = normalize_stack(image, m.normalization)
                except ValueError as err:
                    raise GitsegInputError(source, f"cannot normalise the image: {err}") from err
        return [volumes[json.dumps(m.normalization, sort_keys=True)] for m in self.members]

    def _batches(self, order: np.ndarray, visible_first: bool) -> list[np.ndarray]:
        """``order`` in batches; a smaller first batch (the visible slice) when ``visible_first``."""
        first = min(self.first_batch_size, self.batch_size) if visible_first else self.batch_size
        batches = [order[:first]] + [order[i : i + self.batch_size] for i in range(first, len(order), self.batch_size)]
        return [b for b in batches if len(b)]

    def _gate_and_clean(self, masks: np.ndarray, conf: np.ndarray, gate: np.ndarray | None) -> np.ndarray:
        """Masks of a batch with gated slices emptied (their confidence, in ``conf``, from the gate) and
        components smaller than ``min_component_px`` removed."""
        if gate is not None:
            closed = gate.max(axis=0) < self.gate_threshold
            masks[:, closed] = False
            conf[closed] = 1.0 - binary_entropy(gate.max(axis=0)[closed])
        if self.min_component_px > 1:
            masks = remove_small_components(masks, self.min_component_px)
        return masks

    @staticmethod
    def _check_input(stack_or_image) -> tuple[np.ndarray, str | None]:
        source = getattr(stack_or_image, "source", None)
        image = getattr(stack_or_image, "image", stack_or_image)
        try:
            image = np.asarray(image)
        except Exception as err:  # noqa: BLE001
            raise GitsegInputError(source, f"cannot read the image as an array ({err})") from err
        if image.dtype.kind not in "biuf":
            raise GitsegInputError(source, f"the image must be numeric, got dtype {image.dtype}")
        if image.ndim == 2:
            image = image[None]
        if image.ndim != 3:
            raise GitsegInputError(source, f"the image must be (Z, Y, X) or (Y, X), got shape {image.shape}")
        if image.shape[0] == 0:
            raise GitsegInputError(source, "the stack has no slices")
        if image.shape[1] == 0 or image.shape[2] == 0:
            raise GitsegInputError(source, f"the slices are empty (shape {image.shape})")
        if image.dtype.kind == "f" and not np.isfinite(image).all():
            raise GitsegInputError(source, "the image contains NaN or infinite values")
        if image.dtype.kind == "b":
            image = image.astype(np.uint8)
        return image, source

    def _crop_box(self, volume: np.ndarray) -> tuple[int, int, int, int] | None:
        """Body box widened to a multiple of the largest divisor inside the frame; None = full frame."""
        if any(m.config.input_size is not None for m in self.members):
            return None  # resized models see the whole frame, as in training
        box = body_box(volume)
        if box is None:
            return None
        h, w = volume.shape[1:]
        div = max(m.divisor for m in self.members)
        y0, y1 = _widen(box[0], box[1], h, div)
        x0, x1 = _widen(box[2], box[3], w, div)
        if (y1 - y0) * (x1 - x0) >= 0.9 * h * w:
            return None
        return y0, y1, x0, x1


def _widen(lo: int, hi: int, size: int, div: int) -> tuple[int, int]:
    """Grow [lo, hi) to a multiple of ``div`` (centred), shifted to stay inside [0, size) when it fits."""
    length = min(-(-(hi - lo) // div) * div, size)  # the whole axis (then padded) if the multiple is too long
    centre = (lo + hi) // 2
    start = max(0, min(centre - length // 2, size - length))
    return start, start + length
