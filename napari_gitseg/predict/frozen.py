"""Frozen inference graphs of a model on the CPU (fp32, or bf16 where asked for): faster than eager.

``torch.jit.trace`` + ``torch.jit.freeze`` fold BatchNorm into the convolutions and pre-pack
the weights for oneDNN once instead of on every call. Measured on the
default model (EfficientNet-Lite0 Unet, 160 px, 2 AVX2 cores, batches of 8): 31 ms per slice
eager, 27 ms eager channels-last, 13 ms frozen; ``torch.compile`` reaches 12 ms but needs a C++
compiler and 43 s to compile, so it is not used.

In bf16 (the ``GITSEG_CPU_BF16=1`` opt-in, worth it on CPUs with AMX / AVX512-BF16) the graphs
are traced from a bf16 copy of the model whose BatchNorms were first folded into the convolutions
in fp32 (folding in bf16 doubles the rounding error); inputs are cast to bf16 on the way in and the
logits come out in fp32. Measured with ``bench_predict`` on a 2-core Xeon with AMX (144 slices):
0.74 s in bf16 graphs, 0.90 s eager bf16 autocast, 0.87 s fp32 graphs (the default), Dice within
0.0003 of each other; the encoder alone 0.23 s bf16 vs 0.33 s fp32 graphs, and the ReLU6 clamps,
which the graphs do not fuse into the convolutions, take a fifth of the bf16 time.

A graph is traced per input shape (channels, height, width); the batch size stays free (conv
nets have no batch-dependent control flow). Each new graph is checked once against the eager
model on the batch it was traced with; a model that cannot be traced, whose trace warns that it
depends on tensor values (Python control flow), or whose graph disagrees runs eagerly from then
on (``FrozenModel.eager_reason`` says why). ``torch.jit`` is deprecated upstream: where it is
gone or fails, this module falls back to eager PyTorch, never to a different answer.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from copy import deepcopy

import torch
from torch.nn.utils.fusion import fuse_conv_bn_weights

__all__ = ["FrozenModel", "decode_eager", "encode_eager", "fold_batchnorms"]

_KINDS = ("forward", "encode", "decode")  # the entry points, by index (the modules' order)
_MAX_GRAPHS = 4  # input shapes kept per model (a scan's crop size; resized models have one)
# torch.jit.trace / freeze announce their deprecation on every call; where torch.jit is gone, the
# eager fallback of the module docstring takes over
_JIT_DEPRECATED = r"`torch\.jit\.\w+` is deprecated"
# ... and dropped for the whole process: any thread's catch_warnings (napari's GUI thread has its own) may
# restore the filters while a trace runs, and the notice then reached napari as a warning toast
warnings.filterwarnings("ignore", message=_JIT_DEPRECATED, category=FutureWarning)
# one trace at a time: warnings.catch_warnings swaps the process's filters and record list, so two threads
# tracing at once (a warm-up beside a prediction) could take each other's TracerWarnings and restore
# each other's filters
_TRACING = threading.Lock()
_TOLERANCE = 1e-3  # max |frozen - eager| on the logits: BN folding changes them by ~2e-5
# bf16 graphs against the fp32 model, mean |difference| relative to the output's mean magnitude:
# 8 significant bits through ~60 layers move the default model's features by 0.3-3.5 % and its
# logits by 0.2-2 % (eager bf16 autocast: 0.3-2 %); a wrong graph (a layer lost or repeated)
# moves them by about their own size (100 %)
_BF16_MEAN_TOLERANCE = 0.1


def encode_eager(model: torch.nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(encoder features, classification logits) of an smp model with a classification head."""
    features = model.encoder(x)
    return features, model.classification_head(features[-1])


def decode_eager(model: torch.nn.Module, features) -> torch.Tensor:
    """Segmentation logits of an smp model from its encoder features (decoder + segmentation head)."""
    return model.segmentation_head(model.decoder(list(features)))


class _Encode(torch.nn.Module):
    """smp encoder + classification head as one traceable module: (features..., class logits)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features, cls = encode_eager(self.model, x)
        return (*features, cls)


class _Decode(torch.nn.Module):
    """smp decoder + segmentation head as one traceable module: features -> logits."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, features: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return decode_eager(self.model, features)


def fold_batchnorms(model: torch.nn.Module, example: torch.Tensor) -> int:
    """Fold every BatchNorm2d that directly takes a Conv2d's output into that convolution, in place.

    The pairs are found by running ``model(example)`` once (a BatchNorm whose input is the very
    tensor the convolution just returned); each folded BatchNorm is left as the identity. Returns
    how many were folded. For eval-mode models only (running statistics).
    """
    calls: list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor]] = []
    kinds = (torch.nn.Conv2d, torch.nn.BatchNorm2d)
    hooks = [
        m.register_forward_hook(lambda mod, args, out: calls.append((mod, args[0], out)))
        for m in model.modules()
        if isinstance(m, kinds)
    ]
    try:
        with torch.inference_mode():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    folded = 0
    for (conv, _, conv_out), (bn, bn_in, _) in zip(calls, calls[1:]):
        if (
            isinstance(conv, torch.nn.Conv2d)
            and isinstance(bn, torch.nn.BatchNorm2d)
            and bn_in is conv_out
            and bn.affine
            and bn.track_running_stats
        ):
            _fold_pair(conv, bn)
            folded += 1
    return folded


@torch.no_grad()
def _fold_pair(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d) -> None:
    conv.weight, conv.bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    bn.weight.fill_(1.0)
    bn.bias.zero_()
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0 - bn.eps)  # sqrt(var + eps) == 1: the identity


def _cast(inputs, dtype: torch.dtype):
    """A tensor or a tuple of tensors in ``dtype``."""
    if isinstance(inputs, torch.Tensor):
        return inputs.to(dtype)
    return tuple(t.to(dtype) for t in inputs)


def _as_tuple(out) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


class FrozenModel:
    """An eval-mode model's forward, encoder and decoder through frozen graphs (eager as fallback)."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype = torch.float32):
        """Wrap ``model`` (eval mode, on the CPU, fp32); graphs are built on first use of each shape.

        ``dtype``: float32, or bfloat16 (graphs of a bf16 copy with BatchNorm folded in fp32;
        logits returned in fp32, features stay bf16; the eager fallback runs under bf16 autocast).
        """
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"frozen graphs run in float32 or bfloat16, not {dtype}")
        self.model = model
        self.dtype = dtype
        self._modules = (model, _Encode(model), _Decode(model))  # eager, fp32: the reference (see _KINDS)
        # what graphs are traced from: the model itself, or (bf16) its folded copy made on first use
        self._traced = self._modules if dtype == torch.float32 else None
        self.eager_reason: str | None = None if hasattr(torch.jit, "freeze") else "torch.jit.freeze is missing"
        self._graphs: dict[str, OrderedDict] = {kind: OrderedDict() for kind in _KINDS}

    # ---- the three entry points ----------------------------------------------------------------
    def forward(self, x: torch.Tensor):
        """``model(x)`` (a tensor or a tuple, as the model returns it; logits in fp32)."""
        self._prepare_traced(x)
        return self._run(0, x, x)

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(encoder features, classification logits) of an smp model with a classification head."""
        self._prepare_traced(x)
        out = self._run(1, x, x)
        return list(out[:-1]), out[-1]

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Segmentation logits from encoder features (the decoder and the segmentation head)."""
        feats = tuple(features)
        return self._run(2, feats, feats[-1])

    # ---- graphs --------------------------------------------------------------------------------
    def _prepare_traced(self, example: torch.Tensor) -> None:
        """The bf16 copy graphs are traced from, folded on the network input ``example`` (once)."""
        if self._traced is not None:
            return
        copy = deepcopy(self.model)
        fold_batchnorms(copy, example.float())
        copy = copy.to(self.dtype)
        self._traced = (copy, _Encode(copy), _Decode(copy))

    def _eager(self, which: int, inputs):
        module = self._modules[which]
        if self.dtype == torch.float32:
            return module(inputs)
        with torch.autocast("cpu", dtype=self.dtype):
            return self._logits_fp32(which, module(inputs))

    def _logits_fp32(self, which: int, out):
        """Logits (forward, decode, the encoder's class logits) in fp32; the features stay as they are."""
        if which == 2 or (which == 0 and isinstance(out, torch.Tensor)):
            return out.float()
        if which == 0:
            return tuple(t.float() for t in out)
        return (*out[:-1], out[-1].float())

    def _run(self, which: int, inputs, shaped: torch.Tensor):
        if self.eager_reason is not None:
            return self._eager(which, inputs)
        key = (tuple(shaped.shape[1:]), shaped.is_contiguous(memory_format=torch.channels_last))
        cache = self._graphs[_KINDS[which]]
        graph = cache.get(key)
        if graph is None:
            graph = self._build(which, inputs)
            if graph is None:
                return self._eager(which, inputs)
            cache[key] = graph
            while len(cache) > _MAX_GRAPHS:
                cache.popitem(last=False)
        cache.move_to_end(key)
        return self._logits_fp32(which, graph(_cast(inputs, self.dtype)))

    def _build(self, which: int, inputs):
        """Trace and freeze the module on ``inputs`` and check it against the eager fp32 model; None
        (and eager from now on) when that fails."""
        module = self._traced[which]
        cast = _cast(inputs, self.dtype)
        try:
            with _TRACING, warnings.catch_warnings(record=True) as caught:
                # every TracerWarning recorded (not shown); only those: a blanket "always" here was what
                # let torch.jit's deprecation notice through when the GUI thread's own catch_warnings
                # swapped the filter list between this line and the next (catch_warnings is not
                # thread-safe), and napari showed it as a toast
                warnings.simplefilter("always", torch.jit.TracerWarning)
                warnings.filterwarnings("ignore", message=_JIT_DEPRECATED, category=FutureWarning)
                graph = torch.jit.freeze(torch.jit.trace(module.eval(), (cast,), check_trace=False))
                got = _as_tuple(graph(cast))
            want = _as_tuple(self._modules[which](_cast(inputs, torch.float32)))
        except Exception as err:  # noqa: BLE001 - any tracing failure means: stay eager
            self.eager_reason = f"tracing failed ({type(err).__name__}: {str(err)[:200]})"
            return None
        tracer = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
        if tracer:  # Python control flow on tensor values: the graph would hold one branch only
            self.eager_reason = f"the trace depends on tensor values ({str(tracer[0].message)[:200]})"
            return None
        if len(got) != len(want) or not all(self._agrees(g, w) for g, w in zip(got, want)):
            self.eager_reason = "the frozen graph disagreed with the eager model"
            return None
        return graph

    def _agrees(self, got: torch.Tensor, want: torch.Tensor) -> bool:
        if got.shape != want.shape:
            return False
        diff = (got.float() - want.float()).abs()
        if self.dtype == torch.float32:
            return float(diff.max()) <= _TOLERANCE
        return float(diff.mean()) <= _BF16_MEAN_TOLERANCE * max(1.0, float(want.float().abs().mean()))
