"""The one background thread of the box tools: box jobs first, embeddings of the slices around in the gaps.

LiteMedSAM's image encoder takes seconds per slice on a CPU, its mask decoder a tenth of that, so
the Review dock asks for the embedding of the slice on screen and its neighbours as soon as the
clinician arrives there (``want``), and a box drawn later finds it cached. Embeddings are
computed one slice per job, the job resubmitting itself while a wanted slice is missing, so a box
drawn meanwhile waits for at most one embedding; a new ``want`` replaces the old wish list (the
slices the clinician left are no longer computed). No Qt here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from napari_gitseg.review.medsam import BoxSegmenter

__all__ = ["BoxWorker", "neighbourhood"]


def neighbourhood(z: int, n_slices: int, radius: int = 2) -> list[int]:
    """``z`` first, then its neighbours nearest first (``z+1, z-1, z+2, ...``), inside the stack."""
    out = [z] if 0 <= z < n_slices else []
    for d in range(1, radius + 1):
        out += [k for k in (z + d, z - d) if 0 <= k < n_slices]
    return out


class BoxWorker:
    """Runs LiteMedSAM work on one thread (started on first use) for a ``BoxSegmenter``."""

    def __init__(self, segmenter: BoxSegmenter | None = None):
        self.segmenter = segmenter if segmenter is not None else BoxSegmenter()
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._wanted: list[tuple[Hashable, np.ndarray]] = []
        self._fetching = False
        self.computed = 0  #: embeddings computed ahead (by ``want``)

    def submit(self, fn: Callable, *args, **kwargs) -> Future:
        """Queue ``fn`` on the worker thread (ahead of embeddings not yet started)."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gitseg-boxes")
            return self._pool.submit(fn, *args, **kwargs)

    def want(self, key_of: Callable[[int], Hashable], image: np.ndarray, zs: Sequence[int]) -> None:
        """Compute ahead the embeddings of slices ``zs`` of ``image`` (Z, Y, X), in that order, cached under
        ``key_of(z)``; replaces the previous wish list."""
        wanted = [(key_of(z), image[z]) for z in zs]
        with self._lock:
            self._wanted = wanted
            start = not self._fetching and any(k not in self.segmenter.cache for k, _ in wanted)
            if start:
                self._fetching = True
        if start:
            self.submit(self._fetch_one)

    def _fetch_one(self) -> None:
        with self._lock:
            todo = [(k, img) for k, img in self._wanted if k not in self.segmenter.cache]
            if not todo:
                self._fetching = False
                return
        key, img = todo[0]
        try:
            self.segmenter.embedding(img, key)
            self.computed += 1
        except Exception:  # noqa: BLE001  (the box job that needs it reports the error to the clinician)
            with self._lock:
                self._wanted, self._fetching = [], False
            return
        with self._lock:  # the next one, unless the worker was closed meanwhile
            if self._pool is None:
                self._fetching = False
            else:
                self._pool.submit(self._fetch_one)

    def close(self) -> None:
        """Forget the wish list, finish the running job, stop the thread (a later ``submit`` starts it again)."""
        with self._lock:
            self._wanted = []
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._fetching = False
