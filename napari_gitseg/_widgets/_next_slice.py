"""The review queue's next slice, asked of the store thread ahead of time so Accept and Next jump at once.

Asked again whenever the slice on screen changes or the store changes under the dock (a prediction
stored, versions saved by others, a fill): an answer is used only for the slice it was asked from; one not
given yet is waited for (never asked twice: under a busy GUI each answer costs the store thread time).
"""

from __future__ import annotations

from concurrent.futures import Future


class NextSliceGuess:
    """The answer of ``session.next_in_queue(z)`` computed on the store thread before it is needed."""

    def __init__(self):
        self._z: int | None = None
        self._answer: Future | None = None

    def ask(self, io, session, z: int | None) -> None:
        """Queue ``session.next_in_queue(z)`` on ``io`` (the dock's store thread); the answer replaces the last,
        unless the last, from ``z`` too, has not run yet (then it will see the store as this call does)."""
        if session is None or z is None:
            self.forget()
            return
        if z == self._z and self._answer is not None and not self._answer.done():
            return  # still queued: it runs after every store job queued before this call (one thread, in order)
        self._z, self._answer = z, io.submit(session.next_in_queue, z)

    def forget(self) -> None:
        """Drop the answer (the review closed)."""
        self._z, self._answer = None, None

    def answer(self, z: int | None) -> Future | None:
        """The pending or given answer asked from slice ``z`` (None: not asked from ``z``)."""
        return self._answer if z is not None and self._z == z else None
