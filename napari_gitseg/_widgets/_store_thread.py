"""The Review dock's background threads: one that owns the store's SQLite connection and runs its work in
order, and the hook that closes the review when the dock's Qt widget is destroyed."""

from __future__ import annotations

import weakref
from concurrent.futures import Future, ThreadPoolExecutor


class StoreThread:
    """A single worker thread that owns the SQLite connection and runs store work in order."""

    def __init__(self):
        self._pool: ThreadPoolExecutor | None = None

    def submit(self, fn, *args, **kwargs) -> Future:
        """Queue ``fn`` on the store thread (started on first use, again after ``close``). While Python exits
        (a viewer closed by the interpreter's exit, not by Quit) no thread can start: the queue is drained and
        ``fn`` runs here, so the last edit is still saved."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gitseg-store")
        try:
            return self._pool.submit(fn, *args, **kwargs)
        except RuntimeError:  # "cannot schedule new futures after interpreter shutdown"
            self.close()
            done: Future = Future()
            try:
                done.set_result(fn(*args, **kwargs))
            except Exception as err:  # noqa: BLE001  (reported through the future, as from the thread)
                done.set_exception(err)
            return done

    def close(self) -> None:
        """Finish every queued job, then stop the thread."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=False)
            self._pool = None


def close_on_destroy(widget) -> None:
    """Run ``widget.close_review()`` when its Qt widget is destroyed (dock closed, napari quit).

    The slot holds the dock weakly: a strong reference from its own Qt widget would make a
    cycle that Python's collector may clear before Qt emits ``destroyed``.
    """
    ref = weakref.ref(widget)

    def closed(*_args) -> None:
        dock = ref()
        if dock is not None:
            dock.close_review()

    widget.native.destroyed.connect(closed)
