"""2.5D training samples: one item per ground-truth slice, with its neighbours as channels.

:class:`SliceDataset` takes ``Stack`` objects with masks (any source: readers, the phantom, the label
store through :meth:`SliceDataset.from_arrays`) and yields, for slice ``z`` of a stack:

* ``image`` (k, H, W) float32: the 2.5D window of ``z`` (``make_windows``, the model's ``k`` and
  ``stride``) from the stack normalised once with ``normalize_stack``, as the predictor does;
* ``masks`` (C, H, W) float32 and ``has_organ`` (C,) float32 (targets of a classification head);
* ``ignore`` (C,) bool: with ``ignore_ambiguous=True``, True for a class on the first and last
  annotated slice of each run of that organ along z (loss weight 0 there);
* ``weight`` float32: per-sample loss weight (``weights``, else ``provenance_weights``, else 1);
* ``provenance`` str, ``name`` (stack), ``slice`` (z index), ``slice_id``.

Size. Slices are brought to ``size`` (H, W) (``None`` keeps the native size), optionally after one
body crop per stack (``crop_to_body``). ``fit="crop"`` (default) pads with 0 or centre-crops, keeping
the pixel size; ``fit="resize"`` scales to fit, keeping the aspect ratio, and pads the rest.
Every detail: ``docs/training-notes.md``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch.utils.data import Dataset

from napari_gitseg.classes import CLASSES
from napari_gitseg.io.errors import GitsegInputError
from napari_gitseg.io.stack import Stack
from napari_gitseg.io.uwmgi_names import SLICE_THICKNESS_MM
from napari_gitseg.model.normalize import normalize_stack
from napari_gitseg.model.windows import make_windows, window_indices

FITS = ("crop", "resize")


def ambiguous_slices(masks: np.ndarray, labelled: np.ndarray | None = None) -> np.ndarray:
    """(C, Z) bool: the first and last annotated slice of every organ run along z (see module doc)."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 4:
        raise ValueError(f"masks must be (C, Z, Y, X), got shape {masks.shape}")
    n_z = masks.shape[1]
    lab = np.ones(n_z, dtype=bool) if labelled is None else np.asarray(labelled, dtype=bool)
    present = masks.any(axis=(2, 3)) & lab[None, :]  # (C, Z)
    known_empty = ~masks.any(axis=(2, 3)) & lab[None, :]
    before = np.zeros_like(present)
    after = np.zeros_like(present)
    before[:, 1:] = known_empty[:, :-1]  # the slice below is labelled and empty
    after[:, :-1] = known_empty[:, 1:]
    return present & (before | after)


def body_bbox(volume: np.ndarray, threshold: float = 0.1, margin: int = 8) -> tuple[slice, slice]:
    """(rows, cols) box of the body in a normalised (Z, Y, X) stack: largest component above threshold."""
    mean = np.asarray(volume, dtype=np.float32).mean(axis=0)
    fg = mean > threshold
    labels, n = ndimage.label(fg)
    h, w = mean.shape
    if n == 0:
        return slice(0, h), slice(0, w)
    sizes = ndimage.sum_labels(fg, labels, index=np.arange(1, n + 1))
    rows, cols = ndimage.find_objects((labels == 1 + int(np.argmax(sizes))).astype(np.int8))[0]
    return (
        slice(max(0, rows.start - margin), min(h, rows.stop + margin)),
        slice(max(0, cols.start - margin), min(w, cols.stop + margin)),
    )


def _pad_or_crop(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre-crop or zero-pad the last two axes of ``arr`` to ``size``."""
    out = arr
    for axis, target in zip((-2, -1), size):
        n = out.shape[axis]
        if n > target:
            start = (n - target) // 2
            out = np.take(out, np.arange(start, start + target), axis=axis)
        elif n < target:
            pad = [(0, 0)] * out.ndim
            pad[axis] = ((target - n) // 2, target - n - (target - n) // 2)
            out = np.pad(out, pad)
    return out


def letterbox(image: torch.Tensor, masks: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (ch, h, w) tensors to fit in ``size`` keeping the aspect ratio, then zero-pad to ``size``."""
    h, w = image.shape[-2:]
    scale = min(size[0] / h, size[1] / w)
    nh, nw = max(1, min(size[0], round(h * scale))), max(1, min(size[1], round(w * scale)))
    if (nh, nw) != (h, w):
        image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=scale < 1)[0]
        masks = F.interpolate(masks[None], size=(nh, nw), mode="nearest-exact")[0]
    top, left = (size[0] - nh) // 2, (size[1] - nw) // 2
    pad = (left, size[1] - nw - left, top, size[0] - nh - top)
    return F.pad(image, pad), F.pad(masks, pad)


def _per_slice(value, z: int, default):
    """A per-stack setting that is one value or a {z: value} mapping."""
    if isinstance(value, Mapping):
        return value.get(z, value.get(str(z), default))
    return value


class SliceDataset(Dataset):
    """Torch dataset of 2.5D windows of ground-truth slices (see the module docstring)."""

    def __init__(
        self,
        stacks: Sequence[Stack],
        k: int = 3,
        stride: int = 2,
        slices: Mapping[str, Iterable[int]] | Iterable[tuple[str | int, int]] | None = None,
        size: tuple[int, int] | int | None = (256, 256),
        fit: str = "crop",
        crop_to_body: bool = False,
        ignore_ambiguous: bool = False,
        normalization: dict | None = None,
        weights: Mapping[str, float | Mapping[int, float]] | None = None,
        provenance: Mapping[str, str | Mapping[int, str]] | None = None,
        provenance_weights: Mapping[str, float] | None = None,
        classes: Sequence[str] = CLASSES,
        body_threshold: float = 0.1,
        body_margin: int = 8,
    ) -> None:
        window_indices(1, k, stride)  # validates k and stride
        if fit not in FITS:
            raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
        if isinstance(size, int):
            size = (size, size)
        if size is not None:
            size = (int(size[0]), int(size[1]))
            if min(size) < 1:
                raise ValueError(f"size must be positive, got {size}")
        self.k, self.stride, self.size, self.fit = int(k), int(stride), size, fit
        self.classes = tuple(classes)
        self.ignore_ambiguous = bool(ignore_ambiguous)
        self.crop_to_body = bool(crop_to_body)
        self.normalization = normalization
        self._weights = dict(weights or {})
        self._provenance = dict(provenance or {})
        self._provenance_weights = dict(provenance_weights or {})

        self.names: list[str] = []
        self._images: list[np.ndarray] = []  # normalised float32 (Z, Y, X), cropped to the body box
        self._masks: list[np.ndarray] = []  # bool (C, Z, Y, X), same crop
        self._ambiguous: list[np.ndarray] = []  # bool (C, Z)
        self._slice_ids: list[list[str]] = []
        self.boxes: list[tuple[slice, slice]] = []
        self._labelled: list[np.ndarray] = []  # (Z,) bool
        for stack in stacks:
            self._add_stack(stack, body_threshold, body_margin)
        for key in list(self._weights) + list(self._provenance):
            if key not in self.names:
                raise ValueError(f"weights/provenance given for unknown stack {key!r} (stacks: {self.names})")
        self.samples: list[tuple[int, int]] = self._select(slices, stacks)

    # ----------------------------------------------------------------------------------------------
    def _add_stack(self, stack: Stack, threshold: float, margin: int) -> None:
        """Validate, normalise and cache one stack."""
        name = stack.name
        if stack.masks is None:
            raise GitsegInputError(stack.source, f"stack {name} has no ground-truth masks to train on")
        if tuple(stack.classes) != self.classes:
            raise GitsegInputError(stack.source, f"stack {name} has classes {stack.classes}, expected {self.classes}")
        if name in self.names:
            raise GitsegInputError(stack.source, f"two stacks share the name {name!r}")
        try:
            volume = normalize_stack(stack.image, self.normalization)
        except ValueError as exc:
            raise GitsegInputError(stack.source, f"cannot normalise stack {name}: {exc}") from exc
        masks = np.asarray(stack.masks, dtype=bool)
        labelled = np.ones(volume.shape[0], bool) if stack.labelled is None else np.asarray(stack.labelled, bool)
        box = body_bbox(volume, threshold, margin) if self.crop_to_body else (slice(None), slice(None))
        self.names.append(name)
        self._images.append(np.ascontiguousarray(volume[:, box[0], box[1]]))
        self._masks.append(np.ascontiguousarray(masks[:, :, box[0], box[1]]))
        self._ambiguous.append(ambiguous_slices(masks, labelled))
        self._slice_ids.append(list(stack.slice_ids))
        self.boxes.append(box)
        self._labelled.append(labelled)

    def _select(self, slices, stacks: Sequence[Stack]) -> list[tuple[int, int]]:
        """The (stack index, z) samples: every labelled slice, or the requested ones."""
        index = {n: i for i, n in enumerate(self.names)}
        if slices is None:
            return [(i, int(z)) for i, lab in enumerate(self._labelled) for z in np.flatnonzero(lab)]
        pairs = [(name, z) for name, zs in slices.items() for z in zs] if isinstance(slices, Mapping) else list(slices)
        out = []
        for name, z in pairs:
            if isinstance(name, (int, np.integer)) and 0 <= int(name) < len(self.names):
                name = self.names[int(name)]  # a stack index
            if name not in index:
                raise ValueError(f"slice {z} requested from unknown stack {name!r} (stacks: {self.names})")
            i = index[name]
            z = int(z)
            n_z = self._images[i].shape[0]
            if not 0 <= z < n_z:
                raise GitsegInputError(stacks[i].source, f"slice index {z} is outside stack {name} (0..{n_z - 1})")
            if not self._labelled[i][z]:
                raise GitsegInputError(stacks[i].source, f"slice {z} of stack {name} has no ground truth")
            out.append((i, z))
        return out

    # ----------------------------------------------------------------------------------------------
    @classmethod
    def from_arrays(
        cls,
        images: Mapping[str, np.ndarray],
        masks: Mapping[str, np.ndarray],
        slices: Mapping[str, Iterable[int]],
        weights: Mapping[str, float | Mapping[int, float]] | None = None,
        provenance: Mapping[str, str | Mapping[int, str]] | None = None,
        spacing: Mapping[str, tuple[float, float, float]] | None = None,
        **kwargs,
    ) -> SliceDataset:
        """Dataset from plain arrays: ``images`` {name: (Z, Y, X)}, ``masks`` {name: (C, Z, Y, X)},
        ``slices`` {name: z indices with ground truth}; other keywords as for the constructor."""
        classes = tuple(kwargs.get("classes", CLASSES))
        stacks = []
        for name, zs in slices.items():
            if name not in images or name not in masks:
                raise ValueError(f"stack {name!r} has slices but no image or no masks")
            image = np.asarray(images[name])
            m = np.asarray(masks[name])
            if image.ndim != 3:
                raise GitsegInputError(name, f"image must be (Z, Y, X), got shape {image.shape}")
            if m.shape != (len(classes), *image.shape):
                raise GitsegInputError(name, f"masks shape {m.shape} != {(len(classes), *image.shape)}")
            labelled = np.zeros(image.shape[0], dtype=bool)
            zs = [int(z) for z in zs]
            if any(not 0 <= z < image.shape[0] for z in zs):
                raise GitsegInputError(name, f"slice indices {zs} outside 0..{image.shape[0] - 1}")
            labelled[zs] = True
            sp = (spacing or {}).get(name, (SLICE_THICKNESS_MM, 1.0, 1.0))
            stacks.append(
                Stack(
                    image=image,
                    spacing=sp,
                    slice_ids=[f"{name}_slice_{z + 1:04d}" for z in range(image.shape[0])],
                    source=name,
                    kind="arrays",
                    masks=m.astype(bool, copy=False),
                    labelled=labelled,
                    classes=classes,
                )
            )
        return cls(stacks, weights=weights, provenance=provenance, **kwargs)

    # ----------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.samples)

    @property
    def sample_ids(self) -> list[str]:
        """Slice id of every sample, in order."""
        return [self._slice_ids[i][z] for i, z in self.samples]

    def provenance_of(self, index: int) -> str:
        """Who labelled sample ``index`` (``""`` when not given)."""
        i, z = self.samples[index]
        return str(_per_slice(self._provenance.get(self.names[i], ""), z, ""))

    def weight_of(self, index: int) -> float:
        """Loss weight of sample ``index``."""
        i, z = self.samples[index]
        name = self.names[i]
        default = float(self._provenance_weights.get(self.provenance_of(index), 1.0))
        if name in self._weights:
            return float(_per_slice(self._weights[name], z, default))
        return default

    def __getitem__(self, index: int) -> dict:
        i, z = self.samples[index]
        window = make_windows(self._images[i], [z], self.k, self.stride)[0]  # (k, Y, X)
        masks = self._masks[i][:, z]  # (C, Y, X)
        if self.size is not None and self.fit == "crop":
            window, masks = _pad_or_crop(window, self.size), _pad_or_crop(masks, self.size)
        image_t = torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32))
        masks_t = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32))
        if self.size is not None and self.fit == "resize":
            image_t, masks_t = letterbox(image_t, masks_t, self.size)
        ignore = self._ambiguous[i][:, z] if self.ignore_ambiguous else np.zeros(len(self.classes), bool)
        return {
            "image": image_t,
            "masks": masks_t,
            "has_organ": (masks_t.amax(dim=(1, 2)) > 0.5).to(torch.float32),
            "ignore": torch.from_numpy(ignore.copy()),
            "weight": torch.tensor(self.weight_of(index), dtype=torch.float32),
            "provenance": self.provenance_of(index),
            "name": self.names[i],
            "slice": z,
            "slice_id": self._slice_ids[i][z],
        }
