"""Arm (e) of ``bench_correction.py``: a simulated clinician with box prompts, propagation and the brush.

The clinician goes through a scan slice by slice (z ascending). On each slice:

1. **Propagation in**: organs carried from the slices before (LiteMedSAM, ``propagate.carry_step``)
   land on this slice; an organ whose propagation lowers the slice's Dice is undone (one stroke)
   and no longer carried.
2. **The largest error first**, as in the brush protocol of arms (a)-(d), each with the tool that fits it
   (one stroke each): an organ drawn where there is none, as a wrong piece, goes with the fill bucket (one
   erase box over ``ERASE_BOX_FROM`` or more of one organ's wrong pieces); a thick miss (half-width at least
   ``BOX_MIN_HALF_WIDTH`` px) of a badly drawn piece gets a box (kept only when the slice's Dice rises, else
   undone); everything else, and a piece whose box was undone, the brush. Until Dice 0.95 or 40 strokes.
3. **Propagate** (one stroke per organ) every organ that took a kept box on this slice.

Why these rules (measured, ``docs/correction-effort.md``): a box or a fill click on an error the brush
would fix in one stroke saves nothing, LiteMedSAM's mask of a thin or small piece needs brushing after
it, and errors taken out of the brush's largest-first order cost strokes the clinician would not spend.
Embeddings are cached on disk (``--embeddings DIR``, fp16, per stack and slice) so reruns cost only the
mask decoder; only slices a box or a propagation reaches are embedded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bench_correction import MAX_STROKES, TARGET_DICE, ArmResult, SliceResult, brush_over, largest_error, slice_dice

from napari_gitseg.review.boxes import apply_box, mask_box, piece_boxes
from napari_gitseg.review.medsam import BoxSegmenter, Embedding, resized_shape
from napari_gitseg.review.propagate import PropagationConfig, carry_step, set_organ

BOX_MARGIN = 2  # px a hand-drawn box exceeds the piece
MIN_PIECE = 12  # px: smaller true pieces get no box
PIECE_DICE = 0.6  # a piece drawn better than this (Dice in its box) is left to the brush
BOX_MIN_HALF_WIDTH = 7.0  # px: a thinner error (two brush widths of radius 3) is brushed, not boxed
WRONG_OVERLAP = 0.5  # a drawn piece less than this much on its organ is wrong: fill bucket / erase box
ERASE_BOX_FROM = 3  # wrong pieces of one organ from which one erase box clears them all


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


def _half_width(error: np.ndarray) -> float:
    """The largest distance from an error pixel to the nearest right one: half the error's widest width."""
    from scipy import ndimage

    return float(ndimage.distance_transform_edt(error).max()) if error.any() else 0.0


def wrong_pieces(labels: np.ndarray, truth: np.ndarray, value: int) -> list[np.ndarray]:
    """The pieces of organ ``value`` in the labels (8-connected) of which less than ``WRONG_OVERLAP`` lies on it."""
    from scipy import ndimage

    lab, n = ndimage.label(labels == value, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return []
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    right = np.bincount(lab[truth == value].ravel(), minlength=n + 1)
    return [lab == k for k in range(1, n + 1) if right[k] < WRONG_OVERLAP * sizes[k]]


def _piece_of(mask: np.ndarray, region: np.ndarray) -> np.ndarray:
    """The 8-connected piece of ``mask`` that overlaps ``region`` the most (empty when none does)."""
    from scipy import ndimage

    lab, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    hits = np.bincount(lab[region].ravel(), minlength=n + 1)
    hits[0] = 0
    return lab == int(hits.argmax()) if hits.any() else np.zeros(mask.shape, dtype=bool)


def erase_tool(labels, truth, region, res: BoxSliceResult):
    """The fill bucket (or, over ``ERASE_BOX_FROM`` wrong pieces or more, one erase box) when the error
    ``region`` (organ drawn on background) is a wrong piece; the new labels, or None when it is not one."""
    value = int(np.bincount(labels[region].ravel()).argmax())
    pieces = wrong_pieces(labels, truth, value)
    if not any((piece & region).any() for piece in pieces):
        return None
    labels = labels.copy()
    if len(pieces) >= ERASE_BOX_FROM:
        box = mask_box(np.any(pieces, axis=0))
        labels[box.slices][labels[box.slices] == value] = 0
        res.erase_boxes += 1
    else:
        labels[next(piece for piece in pieces if (piece & region).any())] = 0
        res.fills += 1
    return labels


def box_tool(labels, truth, region, value: int, z: int, embeddings, res: BoxSliceResult, tried: set):
    """A box around the true piece under the error ``region`` when the error is thick (half-width at least
    ``BOX_MIN_HALF_WIDTH``) and the piece badly drawn (Dice in its box below ``PIECE_DICE``), once per piece:
    the new labels when the box raised the slice's Dice, ``labels`` itself when it was undone, None when
    the error is not one for a box."""
    if _half_width(region) < BOX_MIN_HALF_WIDTH:
        return None
    boxes = piece_boxes(_piece_of(truth == value, region), margin=BOX_MARGIN, min_area=MIN_PIECE)
    if not boxes or (value, boxes[0]) in tried:
        return None
    box = boxes[0]
    tried.add((value, box))
    if _organ_dice(labels[box.slices] == value, truth[box.slices] == value) >= PIECE_DICE:
        return None
    trial = apply_box(labels, value, box, embeddings.segment(z, [box])[0][0])
    res.boxes += 1
    if slice_dice(trial, truth) > slice_dice(labels, truth):
        return trial
    res.boxes_undone += 1
    return labels


def correct_with_tools(labels, truth, z: int, embeddings, radius: int, res: BoxSliceResult) -> tuple:
    """Steps 2-4 as one loop in the brush protocol's order (the largest error first), each error with the
    tool that fits it: fill bucket / erase box, box, else brush. Returns (labels, organs that took a kept box)."""
    boxed, tried = set(), set()
    dice = slice_dice(labels, truth)
    while dice < TARGET_DICE and res.strokes < MAX_STROKES:
        region, value = largest_error(labels, truth)
        res.strokes += 1
        if value == 0:
            new = erase_tool(labels, truth, region, res)
        else:
            new = box_tool(labels, truth, region, value, z, embeddings, res, tried)
            boxed |= {value} if new is not None and new is not labels else set()
        if new is None:  # the brush
            stroke = brush_over(region, value, labels, truth, radius)
            new = labels.copy()
            new[stroke] = value
            res.painted_px += int(stroke.sum())
        labels = new
        dice = slice_dice(labels, truth)
    res.end_dice = dice
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
        labels = carry_in(pred[z], truth[z], z, chains, embeddings, config, res)
        res.start_dice = slice_dice(labels, truth[z])
        labels, boxed = correct_with_tools(labels, truth[z], z, embeddings, radius, res)
        for value in boxed:  # Shift+B: a box was the key, carry it on (one stroke per organ)
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
