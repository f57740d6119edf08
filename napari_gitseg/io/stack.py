"""The one in-memory type every reader returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from napari_gitseg.classes import CLASSES


@dataclass
class Stack:
    """An MRI slice stack with optional per-class ground-truth masks.

    ``image``: (Z, Y, X) array, integer or float, as read (no normalisation).
    ``spacing``: (z, y, x) voxel size in mm.
    ``slice_ids``: one id per z, e.g. ``case123_day20_slice_0001``.
    ``source``: the file or folder it was read from.
    ``kind``: reader that produced it (``uwmgi``, ``tiff``, ``nifti``, ``dicom``).
    ``masks``: optional (C, Z, Y, X) bool masks in the order of ``classes``.
    ``labelled``: optional (Z,) bool, True where ground truth exists for the slice
    (a slice with ground truth may still have empty masks).
    """

    image: np.ndarray
    spacing: tuple[float, float, float]
    slice_ids: list[str]
    source: str
    kind: str
    masks: np.ndarray | None = None
    labelled: np.ndarray | None = None
    classes: tuple[str, ...] = CLASSES
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.image.ndim != 3:
            raise ValueError(f"{self.source}: Stack image must be (z, y, x), got shape {self.image.shape}")
        if len(self.slice_ids) != self.image.shape[0]:
            raise ValueError(f"{self.source}: {len(self.slice_ids)} slice ids for {self.image.shape[0]} slices")
        if len(self.spacing) != 3:
            raise ValueError(f"{self.source}: spacing must be (z, y, x), got {self.spacing}")
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        if self.masks is not None:
            expected = (len(self.classes), *self.image.shape)
            if self.masks.shape != expected:
                raise ValueError(f"{self.source}: masks shape {self.masks.shape} != {expected}")
            self.masks = self.masks.astype(bool, copy=False)
            if self.labelled is None:
                self.labelled = np.ones(self.image.shape[0], dtype=bool)

    @property
    def name(self) -> str:
        """Short display name: the case-day prefix of the slice ids, or the file stem."""
        first = self.slice_ids[0] if self.slice_ids else ""
        if "_slice_" in first:
            return first.split("_slice_")[0]
        from pathlib import Path

        return Path(self.source).name.split(".")[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(Z, Y, X)."""
        return tuple(self.image.shape)  # type: ignore[return-value]
