"""Test stand-ins for the box tools: a disk phantom and a segmenter that thresholds it like a model would."""

from __future__ import annotations

import dataclasses

import numpy as np

from napari_gitseg.io.stack import Stack
from napari_gitseg.review.medsam import Embedding, EmbeddingCache, resized_shape


def disk_stack(n: int = 9, size: int = 64, radii=(0, 6, 9, 12, 14, 12, 9, 6, 0), name: str = "case7_day1") -> Stack:
    """A stack whose slice z shows a bright disk of radius ``radii[z]`` (the stomach in its masks), noise elsewhere."""
    yy, xx = np.mgrid[:size, :size]
    image = np.random.default_rng(0).normal(100, 5, (n, size, size))
    masks = np.zeros((3, n, size, size), dtype=bool)
    for z, r in enumerate(radii[:n]):
        disk = (yy - size // 2) ** 2 + (xx - size // 2 - z) ** 2 < r * r
        image[z][disk] += 400
        masks[2, z] = disk
    ids = [f"{name}_slice_{z + 1:04d}" for z in range(n)]
    return Stack(image.astype(np.float32), (3.0, 1.5, 1.5), ids, "memory", "tiff", masks=masks)


class FakeSegmenter:
    """``medsam.BoxSegmenter``'s methods: the 'embedding' is the slice, a box's mask its pixels above 300."""

    def __init__(self):
        self.cache = EmbeddingCache()
        self.embedded: list = []

    def embedding(self, image, key=None) -> Embedding:
        import torch

        if key is not None and self.cache.get(key) is not None:
            return self.cache.get(key)
        self.embedded.append(key)
        image = np.asarray(image, dtype=np.float32)
        emb = Embedding(torch.from_numpy(image.copy()), image.shape, resized_shape(image.shape))
        if key is not None:
            self.cache.put(key, emb)
        return emb

    def segment_scored(self, embedding, boxes):
        image = embedding.features.numpy()
        out = np.zeros((len(boxes), *image.shape), dtype=bool)
        for i, b in enumerate(boxes):
            out[i][b.slices] = image[b.slices] > 300
        return out, np.full(len(boxes), 0.9, dtype=np.float32)

    def segment(self, embedding, boxes):
        return self.segment_scored(embedding, boxes)[0]


def with_name(stack: Stack, name: str) -> Stack:
    """``stack`` with slice ids of another case-day."""
    return dataclasses.replace(stack, slice_ids=[f"{name}_slice_{z + 1:04d}" for z in range(len(stack.slice_ids))])
