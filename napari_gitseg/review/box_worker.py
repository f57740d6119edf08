"""The box tools' two background threads: box jobs on one, embeddings of the slices around on the other.

LiteMedSAM's image encoder takes seconds per slice on a CPU, its mask decoder a tenth of that, so
the Review dock asks for the embedding of the slice on screen and its neighbours as soon as the
clinician arrives there (``want``), and a box drawn later finds it cached. The embeddings are
computed ahead on their own thread, one slice per job, and that thread pauses inside the encoder
(between its sub-blocks, ``BoxSegmenter.set_pause_point``) while a box job is pending: a box on a
cached slice does not wait behind a neighbour's embedding. While the clinician drags a box (``hold``)
the thread ahead already pauses, so its sub-block in progress is done by the time the box is let go
and the mask decoder has both cores. A box job that needs the very slice being embedded ahead waits
for it instead of computing it twice (and a hold for that slice does not pause it). A new ``want`` replaces the old
wish list (the slices the clinician left are no longer computed). No Qt here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from napari_gitseg.review.medsam import BoxSegmenter, Embedding

__all__ = ["BoxWorker", "neighbourhood"]


def neighbourhood(z: int, n_slices: int, radius: int = 2) -> list[int]:
    """``z`` first, then its neighbours nearest first (``z+1, z-1, z+2, ...``), inside the stack."""
    out = [z] if 0 <= z < n_slices else []
    for d in range(1, radius + 1):
        out += [k for k in (z + d, z - d) if 0 <= k < n_slices]
    return out


class BoxWorker:
    """Runs LiteMedSAM work for a ``BoxSegmenter``: box jobs (``submit``) before embeddings computed ahead
    (``want``); each kind on its own thread, started on first use."""

    def __init__(self, segmenter: BoxSegmenter | None = None):
        self.segmenter = segmenter if segmenter is not None else BoxSegmenter()
        self._pool: ThreadPoolExecutor | None = None  # box jobs
        self._ahead: ThreadPoolExecutor | None = None  # embeddings computed ahead
        self._lock = threading.Lock()
        self._wanted: list[tuple[Hashable, np.ndarray]] = []
        self._fetching = False
        self._in_flight: tuple[Hashable, threading.Event] | None = None  # the slice embedded ahead right now
        self._pending = 0  # box jobs queued or running
        self._waiting = 0  # box jobs waiting for the embedding computed ahead
        self._held: Hashable | None = None  # a box being dragged on this slice (``hold``)
        self._go = threading.Event()  # set: the thread ahead may run
        self._go.set()
        self._ahead_thread: int | None = None
        self._pausable = False
        self.computed = 0  #: embeddings computed ahead (by ``want``)

    def submit(self, fn: Callable, *args, **kwargs) -> Future:
        """Run ``fn`` on the box thread; embeddings computed ahead pause until it is done."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gitseg-boxes")
            self._pending += 1
            self._gate()
            fut = self._pool.submit(fn, *args, **kwargs)
        fut.add_done_callback(self._job_done)
        return fut

    def _job_done(self, _fut: Future) -> None:
        with self._lock:
            self._pending -= 1
            self._gate()

    def hold(self, key: Hashable) -> None:
        """A box is being dragged on slice ``key``: embeddings ahead of other slices pause from now until
        ``release`` (the box job that follows keeps them paused until it is done)."""
        with self._lock:
            self._held = key
            self._gate()

    def release(self) -> None:
        """The drag is over (its box submitted, or dropped); embeddings ahead may go on. Idempotent."""
        with self._lock:
            self._held = None
            self._gate()

    def _gate(self) -> None:  # under self._lock
        held = self._held is not None and (self._in_flight is None or self._in_flight[0] != self._held)
        if self._waiting > 0 or (self._pending == 0 and not held):
            self._go.set()
        else:
            self._go.clear()

    def _pause(self) -> None:
        """The encoder's pause point: on the thread ahead, wait while a box job needs the cores."""
        if threading.get_ident() == self._ahead_thread:
            self._go.wait()

    def embedding(self, image: np.ndarray, key: Hashable) -> Embedding:
        """For a box job: slice ``image``'s embedding, from the cache, from the thread ahead when it is
        computing this very slice (waiting for it), or computed here."""
        with self._lock:
            flight = self._in_flight if self._in_flight is not None and self._in_flight[0] == key else None
            if flight is not None:
                self._waiting += 1
                self._gate()
        if flight is not None:
            try:
                flight[1].wait()
            finally:
                with self._lock:
                    self._waiting -= 1
                    self._gate()
        return self.segmenter.embedding(image, key)

    def want(self, key_of: Callable[[int], Hashable], image: np.ndarray, zs: Sequence[int]) -> None:
        """Compute ahead the embeddings of slices ``zs`` of ``image`` (Z, Y, X), in that order, cached under
        ``key_of(z)``; replaces the previous wish list."""
        wanted = [(key_of(z), image[z]) for z in zs]
        with self._lock:
            self._wanted = wanted
            start = not self._fetching and any(k not in self.segmenter.cache for k, _ in wanted)
            if start:
                self._fetching = True
                if self._ahead is None:
                    self._ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gitseg-embeddings")
                self._ahead.submit(self._fetch_one)

    def _fetch_one(self) -> None:
        self._ahead_thread = threading.get_ident()
        with self._lock:
            todo = [(k, img) for k, img in self._wanted if k not in self.segmenter.cache]
            if not todo:
                self._fetching = False
                return
            key, img = todo[0]
            self._in_flight = (key, threading.Event())
            self._gate()  # a hold pauses other slices, not the one held
        try:
            if not self._pausable and hasattr(self.segmenter, "set_pause_point"):
                self._pausable = True
                self.segmenter.set_pause_point(self._pause)
            self._go.wait()  # a box job queued meanwhile goes first
            self.segmenter.embedding(img, key)
            self.computed += 1
        except Exception:  # noqa: BLE001  (the box job that needs it reports the error to the clinician)
            with self._lock:
                self._wanted, self._fetching = [], False
            return
        finally:
            with self._lock:
                flight, self._in_flight = self._in_flight, None
                self._gate()
            flight[1].set()
        with self._lock:  # the next one, unless the worker was closed meanwhile
            if self._ahead is None:
                self._fetching = False
            else:
                self._ahead.submit(self._fetch_one)

    def close(self) -> None:
        """Forget the wish list, finish the running jobs, stop the threads (a later use starts them again)."""
        with self._lock:
            self._wanted, self._held = [], None
            pool, self._pool = self._pool, None
            ahead, self._ahead = self._ahead, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        self._go.set()
        if ahead is not None:
            ahead.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._fetching = False
