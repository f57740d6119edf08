"""A torch dataset of synthetic 2.5D training samples rendered on the fly around real organ masks.

Item ``i`` of :class:`SyntheticDataset` is fully determined by ``(seed, i)``: which case-day, which
slice (``organ_share`` of them hold an organ), and the whole look (``training.synthesis``). With
``on_the_fly=True`` (training) the dataset is very long (``length``, default one million virtual
items) and the train loop must not cache it: every step sees new images. With ``on_the_fly=False``
(validation) it is a short fixed list that the loop may cache.

Scenes (a case-day's letterboxed masks + its phantom body) are built on first use and kept; items
have the keys the train loop reads (``image`` (k, H, W) normalised like the predictor does,
``masks`` (C, H, W), ``has_organ``, ``ignore``, ``weight``, ``name``, ``slice``, ``slice_id``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from napari_gitseg.classes import CLASSES
from napari_gitseg.model.normalize import normalize_stack
from napari_gitseg.model.windows import window_indices
from training.real_masks import RealMaskFolder
from training.synthesis import DEFAULT_RENDER, RenderOptions, Scene, build_scene, render_window


class SyntheticDataset(Dataset):
    """2.5D samples rendered from the real masks of ``names`` in ``source`` (see the module docstring)."""

    def __init__(
        self,
        source: RealMaskFolder,
        names: Sequence[str],
        k: int = 3,
        stride: int = 2,
        size: tuple[int, int] = (160, 160),
        seed: int = 0,
        length: int = 1_000_000,
        on_the_fly: bool = True,
        organ_share: float = 0.8,
        normalization: dict | None = None,
        render: RenderOptions = DEFAULT_RENDER,
    ):
        window_indices(1, k, stride)  # validates k and stride
        if not names:
            raise ValueError("a synthetic dataset needs at least one case-day")
        self.source, self.names = source, list(names)
        self.k, self.stride, self.size = int(k), int(stride), (int(size[0]), int(size[1]))
        self.seed, self.length, self.on_the_fly = int(seed), int(length), bool(on_the_fly)
        self.organ_share, self.normalization, self.render = float(organ_share), normalization, render
        self.classes = tuple(CLASSES)
        self._scenes: dict[str, Scene] = {}

    def __len__(self) -> int:
        return self.length

    def scene(self, name: str) -> Scene:
        """The scene of case-day ``name`` (built on first use)."""
        if name not in self._scenes:
            day = self.source.load(name)
            self._scenes[name] = build_scene(name, day.masks, self.size, self.seed, spacing_mm=day.spacing[1])
        return self._scenes[name]

    def pick(self, index: int) -> tuple[str, int, np.random.Generator]:
        """(case-day, slice, generator of the look) of item ``index``."""
        rng = np.random.default_rng([self.seed, int(index)])
        name = self.names[int(rng.integers(len(self.names)))]
        scene = self.scene(name)
        with_organ = scene.organ_slices
        if with_organ.size and rng.random() < self.organ_share:
            z = int(with_organ[rng.integers(with_organ.size)])
        else:
            z = int(rng.integers(scene.n_slices))
        return name, z, rng

    def __getitem__(self, index: int) -> dict:
        if not 0 <= int(index) < self.length:
            raise IndexError(index)
        name, z, rng = self.pick(index)
        scene = self.scene(name)
        zs = window_indices(scene.n_slices, self.k, self.stride)[z]
        image = normalize_stack(render_window(scene, list(zs), rng, self.render), self.normalization)
        masks = torch.from_numpy(scene.masks[:, z].astype(np.float32))
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            "masks": masks,
            "has_organ": (masks.amax(dim=(1, 2)) > 0.5).to(torch.float32),
            "ignore": torch.zeros(len(self.classes), dtype=torch.bool),
            "weight": torch.tensor(1.0),
            "provenance": "synthetic",
            "name": name,
            "slice": z,
            "slice_id": f"{name}_slice_{z + 1:04d}",
        }


class MixedDataset(Dataset):
    """On-the-fly mixture: item ``i`` is a phantom slice with probability ``share``, a slice of a real
    labelled scan with probability ``real_share`` (both drawn from ``(seed, i)``), else item ``i`` of
    ``synthetic``. The phantom keeps a model trained on real anatomy good on the bundled sample; the
    real scans show it real contrast, texture and neighbours."""

    on_the_fly = True

    def __init__(
        self,
        synthetic: SyntheticDataset,
        phantom: Dataset | None,
        share: float,
        seed: int = 0,
        real: Dataset | None = None,
        real_share: float = 0.0,
    ):
        for name, value, part in (("phantom", share, phantom), ("real", real_share, real)):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"the {name} share must be in [0, 1], got {value}")
            if float(value) > 0 and (part is None or len(part) == 0):
                raise ValueError(f"a {name} share of {value} needs a {name} dataset with items")
        if float(share) + float(real_share) > 1.0:
            raise ValueError(f"the phantom and real shares add up to more than 1 ({share} + {real_share})")
        self.synthetic, self.phantom, self.share, self.seed = synthetic, phantom, float(share), int(seed)
        self.real, self.real_share = real, float(real_share)
        self.names = [*synthetic.names, *getattr(phantom, "names", []), *getattr(real, "names", [])]

    def __len__(self) -> int:
        return len(self.synthetic)

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, int(index), 7])
        draw = rng.random()
        for part, lo, hi, kind in (
            (self.phantom, 0.0, self.share, "phantom"),
            (self.real, self.share, self.share + self.real_share, "real"),
        ):
            if lo <= draw < hi:
                item = dict(part[int(rng.integers(len(part)))])
                item["provenance"] = kind
                return item
        return self.synthetic[index]


def phantom_slices(
    size: tuple[int, int], k: int, stride: int, n_cases: int = 6, seed: int = 7, normalization: dict | None = None
) -> Dataset:
    """Every slice of ``n_cases`` phantom scans (144 x 266 x 266), letterboxed to ``size``."""
    from napari_gitseg.phantom import make_phantom_cases
    from training.datasets import SliceDataset

    stacks = make_phantom_cases(n_cases, seed)
    return SliceDataset(stacks, k=k, stride=stride, size=tuple(size), fit="resize", normalization=normalization)


def real_scan_slices(stacks, size: tuple[int, int], k: int, stride: int, normalization: dict | None = None) -> Dataset:
    """Every labelled slice of real scans (``training.real_images``), letterboxed to ``size``."""
    from training.datasets import SliceDataset

    return SliceDataset(list(stacks), k=k, stride=stride, size=tuple(size), fit="resize", normalization=normalization)


def synthetic_datasets(
    folder,
    size: tuple[int, int],
    k: int,
    stride: int,
    seed: int = 0,
    val_fraction: float = 0.15,
    val_items: int = 128,
    phantom_share: float = 0.0,
    normalization: dict | None = None,
    synthesis: dict | None = None,
    real_scans=(),
    real_share: float = 0.0,
) -> tuple[Dataset, SyntheticDataset, dict]:
    """(training, validation, description) datasets rendered around the real masks in ``folder``,
    split by patient; the description (recorded in the bundle) names the case-days of each side.
    With ``phantom_share`` > 0 that share of the training items are phantom slices, with
    ``real_share`` > 0 that share are slices of ``real_scans`` (labelled stacks of real images; the
    description lists their patients). ``synthesis``: the renderer's options
    (``training.synthesis.RenderOptions``; both sides use them)."""
    from training.real_images import labelled_slices, patients_of
    from training.real_masks import split_patients

    source = RealMaskFolder(folder)
    train_names, val_names = split_patients(source.names, val_fraction, seed)
    render = RenderOptions.from_dict(synthesis)
    common = {"k": k, "stride": stride, "size": tuple(size), "normalization": normalization, "render": render}
    train = SyntheticDataset(source, train_names, seed=seed, on_the_fly=True, **common)
    val = SyntheticDataset(source, val_names, seed=seed + 10_000, length=val_items, on_the_fly=False, **common)
    real_scans = list(real_scans)
    if real_share > 0 and not real_scans:
        raise ValueError(f"a real share of {real_share} needs real labelled scans")
    if phantom_share > 0 or real_share > 0:
        phantom = phantom_slices(size, k, stride, normalization=normalization) if phantom_share > 0 else None
        real = real_scan_slices(real_scans, size, k, stride, normalization) if real_share > 0 else None
        train = MixedDataset(train, phantom, phantom_share, seed, real=real, real_share=real_share)
    description = {
        "data": f"synthetic images rendered around the real masks of {folder}",
        "generator": "training.synthesis (domain randomisation around real masks, phantom body)",
        "render_options": render.to_dict(),
        "train_case_days": train_names,
        "val_case_days": val_names,
        "train_patients": sorted({n.split("_")[0] for n in train_names}),
        "val_patients": sorted({n.split("_")[0] for n in val_names}),
        "val_items": val_items,
        "phantom_share": phantom_share,
        "phantom": "gitseg phantom --cases 6 --seed 7 (144 slices, 266 px)" if phantom_share > 0 else None,
        "real_share": real_share,
        "real_image_patients": patients_of(real_scans) if real_share > 0 else [],
        "real_image_stacks": [s.name for s in real_scans] if real_share > 0 else [],
        "real_image_slices": labelled_slices(real_scans) if real_share > 0 else 0,
    }
    return train, val, description
