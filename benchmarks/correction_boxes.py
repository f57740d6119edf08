"""Arm (e) of ``bench_correction.py``: a simulated clinician with box prompts, propagation and the brush.

The clinician goes through a scan slice by slice (z ascending). On each slice:

1. **Propagation in**: organs carried from the slices before (LiteMedSAM, ``propagate.carry_step``)
   land on this slice; an organ whose propagation lowers the slice's Dice is undone (one stroke)
   and no longer carried.
2. **Wrong pieces** of an organ are erased: one erase box over 3 or more, else a fill-bucket click each.
3. **Boxes**: each true piece that disagrees with the truth (Dice in its box below ``PIECE_DICE``) gets
   a box grown by ``BOX_MARGIN`` px, worst first; one stroke each, kept only when the slice's Dice rises.
4. **Brush** the rest with the protocol of arms (a)-(d) (``bench_correction.correct``, no Refine).
5. **Propagate** (one stroke per organ) every organ that took a kept box, or needed correcting after
   it was carried in; an organ carried in that needed nothing keeps being carried.

The policy's thresholds were chosen on one real volume and then run unchanged on the other cases;
every step in detail: ``docs/correction-effort.md``. Embeddings are cached on disk (``--embeddings
DIR``, fp16, per stack and slice) so reruns cost only the mask decoder; only slices a box or a
propagation reaches are embedded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bench_correction import ArmResult, SliceResult, correct, slice_dice

from napari_gitseg.classes import LABEL_VALUES
from napari_gitseg.review.boxes import apply_box, piece_boxes
from napari_gitseg.review.medsam import BoxSegmenter, Embedding, resized_shape
from napari_gitseg.review.propagate import PropagationConfig, carry_step, set_organ

BOX_MARGIN = 2
MIN_PIECE = 12
PIECE_DICE = 0.6
WRONG_OVERLAP = 0.5
ERASE_WRONG = True
ERASE_BOX_FROM = 3
REPROPAGATE_BELOW = 1.0


class DiskEmbeddings:
    """LiteMedSAM embeddings of one stack's slices, computed once and kept on disk (fp16) under ``folder``."""

    def __init__(self, segmenter: BoxSegmenter, image: np.ndarray, name: str, folder: Path | None):
        self.segmenter, self.image, self.name = segmenter, image, name
        import zlib

        tag = f"{name}_{zlib.crc32(np.ascontiguousarray(image).tobytes()):08x}"  # another image: another folder
        self.folder = None if folder is None else Path(folder) / tag
        self.computed = 0
        self._memory: dict[int, Embedding] = {}

    def __call__(self, z: int) -> Embedding:
        """The embedding of slice ``z``."""
        import torch

        if z in self._memory:
            return self._memory[z]
        shape = tuple(self.image.shape[1:])
        path = None if self.folder is None else self.folder / f"z{z:04d}.npy"
        if path is not None and path.is_file():
            emb = Embedding(torch.from_numpy(np.load(path).astype(np.float32)), shape, resized_shape(shape))
        else:
            emb = self.segmenter.embedding(self.image[z])
            self.computed += 1
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                np.save(path, emb.features.numpy().astype(np.float16))
        self._memory = {z: emb, **{k: v for k, v in list(self._memory.items())[-3:]}}
        return emb

    def segment(self, z: int, boxes):
        """(masks, scores) of ``boxes`` on slice ``z``: the ``segment`` callable of ``review.propagate``."""
        return self.segmenter.segment_scored(self(z), boxes)


@dataclass
class BoxSliceResult(SliceResult):
    """One slice of arm (e): ``SliceResult`` plus the boxes, fill clicks and propagations among its strokes."""

    boxes: int = 0
    boxes_undone: int = 0
    fills: int = 0
    erase_boxes: int = 0
    propagations: int = 0
    propagations_undone: int = 0


def _organ_dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def box_candidates(labels: np.ndarray, truth: np.ndarray) -> list[tuple[int, object]]:
    """(label value, box) around each true piece the labels get wrong, the largest error first."""
    found = []
    for value in LABEL_VALUES.values():
        for box in piece_boxes(truth == value, margin=BOX_MARGIN, min_area=MIN_PIECE):
            have, want = labels[box.slices] == value, truth[box.slices] == value
            if _organ_dice(have, want) < PIECE_DICE:
                found.append((int((have != want).sum()), value, box))
    return [(value, box) for _n, value, box in sorted(found, key=lambda t: -t[0])]


def wrong_pieces(labels: np.ndarray, truth: np.ndarray, value: int) -> list[np.ndarray]:
    """The pieces of organ ``value`` in the labels (8-connected) of which less than ``WRONG_OVERLAP`` lies on it."""
    from scipy import ndimage

    lab, n = ndimage.label(labels == value, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return []
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    right = np.bincount(lab[truth == value].ravel(), minlength=n + 1)
    return [lab == k for k in range(1, n + 1) if right[k] < WRONG_OVERLAP * sizes[k]]


def erase_wrong(labels, truth, res: BoxSliceResult):
    """Step 2a, per organ: its wrong pieces erased; with ``ERASE_BOX_FROM`` of them or more by one erase box
    (Ctrl-drag: the organ cleared inside the box) over all of them, else by napari's fill bucket in
    background on each (one click each)."""
    from napari_gitseg.review.boxes import mask_box

    for value in LABEL_VALUES.values():
        pieces = wrong_pieces(labels, truth, value)
        if not pieces:
            continue
        labels = labels.copy()
        if len(pieces) >= ERASE_BOX_FROM:
            box = mask_box(np.any(pieces, axis=0))
            labels[box.slices][labels[box.slices] == value] = 0
            res.erase_boxes += 1
            res.strokes += 1
            continue
        for piece in pieces:
            labels[piece] = 0
        res.fills += len(pieces)
        res.strokes += len(pieces)
    return labels


def draw_boxes(labels, truth, z: int, embeddings: DiskEmbeddings, res: BoxSliceResult) -> tuple:
    """Step 2: boxes around wrong pieces, each kept when it raises the slice's Dice; (labels, organs boxed)."""
    boxed = set()
    dice = slice_dice(labels, truth)
    for value, box in box_candidates(labels, truth):
        mask = embeddings.segment(z, [box])[0][0]
        trial = apply_box(labels, value, box, mask)
        res.boxes += 1
        res.strokes += 1
        trial_dice = slice_dice(trial, truth)
        if trial_dice > dice:
            labels, dice = trial, trial_dice
            boxed.add(value)
        else:
            res.boxes_undone += 1
    return labels, boxed


def carry_in(start, truth, z: int, chains: dict, embeddings, config, res):
    """Step 1: the organs being carried, set on slice ``z``; chains that end or are undone are dropped."""
    labels = start
    for value in list(chains):
        organ, boxes = carry_step(chains[value], z, embeddings.segment, config)
        if not boxes:
            del chains[value]
            continue
        trial = set_organ(labels, value, organ)
        if slice_dice(trial, truth) < slice_dice(labels, truth):
            res.propagations_undone += 1
            res.strokes += 1
            del chains[value]
            continue
        labels, chains[value] = trial, organ
    return labels


@dataclass
class BoxArm(ArmResult):
    """Arm (e) over one or more stacks; ``embedded``: slices whose LiteMedSAM embedding was computed (not on disk)."""

    embedded: int = 0

    def row(self) -> dict:
        """``ArmResult.row`` (fills: fill-bucket clicks) plus the counts of boxes and propagations."""
        row = super().row()
        keys = ("boxes", "boxes_undone", "erase_boxes", "propagations", "propagations_undone")
        row.update({k: sum(getattr(s, k) for s in self.slices) for k in keys}, embedded=self.embedded)
        return row


def box_arm_stack(
    pred, truth, embeddings: DiskEmbeddings, radius: int, config: PropagationConfig = PropagationConfig()
) -> list[BoxSliceResult]:
    """Arm (e) on one contiguous stack: the clinician's steps 1-4 (module docstring) on every slice in z order."""
    chains: dict[int, np.ndarray] = {}
    out = []
    for z in range(len(pred)):
        res = BoxSliceResult()
        carried = set(chains)
        labels = carry_in(pred[z], truth[z], z, chains, embeddings, config, res)
        res.start_dice = slice_dice(labels, truth[z])
        start = labels
        if ERASE_WRONG:
            labels = erase_wrong(labels, truth[z], res)
        labels, boxed = draw_boxes(labels, truth[z], z, embeddings, res)
        brushed, labels = correct(labels, truth[z], radius, None)
        res.strokes += brushed.strokes
        res.painted_px += brushed.painted_px
        res.end_dice = brushed.end_dice
        touched = {v for v in carried & set(chains) if _organ_dice(start == v, labels == v) < REPROPAGATE_BELOW}
        for value in boxed | touched:
            if (labels == value).any():
                chains[value] = labels == value
                res.propagations += 1
                res.strokes += 1
        out.append(res)
    return out


def box_arm(
    stacks_pred_truth,
    segmenter: BoxSegmenter,
    radius: int,
    folder: Path | None,
    config: PropagationConfig = PropagationConfig(),
) -> BoxArm:
    """Arm (e) on several stacks, each on its own (propagation needs true neighbours): ``(stack, pred, truth)``."""
    t0 = time.perf_counter()
    arm = BoxArm()
    for stack, pred, truth in stacks_pred_truth:
        embeddings = DiskEmbeddings(segmenter, np.asarray(stack.image), stack.name, folder)
        arm.slices += box_arm_stack(pred, truth, embeddings, radius, config)
        arm.embedded += embeddings.computed
    arm.fills = sum(s.fills for s in arm.slices)
    arm.seconds = time.perf_counter() - t0
    return arm
