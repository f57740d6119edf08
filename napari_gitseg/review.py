"""The review workflow without Qt: edits, accept, revert, the uncertainty queue, predictions.

``ReviewSession`` keeps the per-class masks of one stack in memory, mirrors every change
to the ``LabelStore`` at once (every save is a new version) and enforces the rule that a
prediction never replaces a slice a clinician edited or reviewed. The napari widget only
forwards events here.
"""

from __future__ import annotations

import numpy as np

from napari_gitseg.classes import masks_to_labels, merge_label_edit
from napari_gitseg.io.stack import Stack


class ReviewSession:
    """One stack under review, backed by a LabelStore."""

    def __init__(self, store, stack: Stack):
        self.store = store
        self.stack = stack
        self.name = stack.name
        self.index = {sid: z for z, sid in enumerate(stack.slice_ids)}
        store.register_stack(
            stack.name, list(stack.slice_ids), tuple(stack.shape), tuple(stack.spacing), stack.source,
            tuple(stack.classes),
        )
        self.masks = np.zeros((len(stack.classes), *stack.shape), dtype=bool)
        self.reload()

    # ---- state -----------------------------------------------------------------------------
    def reload(self) -> None:
        """Load the latest saved version of every slice (session restore)."""
        records = self.store.latest_many(list(self.stack.slice_ids))
        for sid, rec in records.items():
            if rec is not None:
                self.masks[:, self.index[sid]] = rec.masks

    def labels(self) -> np.ndarray:
        """The one-label-per-pixel view of all slices (for the editable napari layer)."""
        return masks_to_labels(self.masks, tuple(self.stack.classes))

    def record(self, z: int):
        """Latest stored record of slice ``z`` (None if never saved)."""
        return self.store.latest(self.stack.slice_ids[z])

    def is_protected(self, z: int) -> bool:
        """True when slice ``z`` was edited or reviewed by a clinician (predictions skip it)."""
        rec = self.record(z)
        return bool(rec is not None and (rec.reviewed or rec.source == "clinician"))

    # ---- clinician actions -------------------------------------------------------------------
    def save_edit(self, z: int, before: np.ndarray, after: np.ndarray, user: str | None = None) -> int | None:
        """Save the edit of slice ``z`` (label views before/after); None when nothing changed.

        What is saved always shows exactly as ``after`` (the clinician's screen), even when the
        stored masks changed meanwhile (a prediction arrived while the view still showed older
        labels).
        """
        if np.array_equal(before, after) and np.array_equal(masks_to_labels(self.masks[:, z]), after):
            return None
        merged = merge_label_edit(self.masks[:, z], before, after)
        last = self.record(z)  # an edit keeps an accepted slice accepted
        version = self.store.save(self.stack.slice_ids[z], merged, source="clinician", user=user,
                                  reviewed=bool(last is not None and last.reviewed))
        self.masks[:, z] = merged
        return version

    def accept(self, z: int, before: np.ndarray | None = None, after: np.ndarray | None = None,
               user: str | None = None) -> int:
        """Save any pending edit of slice ``z`` and mark it reviewed; returns the new version."""
        if before is not None and after is not None:
            self.save_edit(z, before, after, user=user)
        sid = self.stack.slice_ids[z]
        if self.store.latest(sid) is None:  # accepting an empty slice is a real statement
            self.store.save(sid, self.masks[:, z], source="clinician", user=user)
        return self.store.set_reviewed(sid, True, user=user)

    def revert(self, z: int, version: int, user: str | None = None) -> int:
        """Make an older version of slice ``z`` the latest again (history is kept)."""
        sid = self.stack.slice_ids[z]
        new_version = self.store.revert(sid, version, user=user)
        self.masks[:, z] = self.store.latest(sid).masks
        return new_version

    def history(self, z: int) -> list:
        """All versions of slice ``z``, oldest first."""
        return self.store.history(self.stack.slice_ids[z])

    # ---- model output ------------------------------------------------------------------------
    def apply_prediction(self, masks: np.ndarray, confidence: np.ndarray | None, model_version: str | None,
                         source: str = "model") -> list[int]:
        """Store a prediction for every slice a clinician has not touched; returns the slices updated."""
        items = []
        for z, sid in enumerate(self.stack.slice_ids):
            if self.is_protected(z):
                continue
            conf = None if confidence is None else float(confidence[z])
            items.append({"slice_id": sid, "masks": masks[:, z], "source": source,
                          "model_version": model_version, "confidence": conf})
        saved = self.store.save_many(items)
        updated = []
        for item, version in zip(items, saved):
            if version is not None:
                z = self.index[item["slice_id"]]
                self.masks[:, z] = item["masks"]
                updated.append(z)
        return updated

    # ---- navigation --------------------------------------------------------------------------
    def queue(self) -> list[int]:
        """Unreviewed slices, least confident first (never-predicted ones last)."""
        return [self.index[sid] for sid in self.store.review_queue(self.name) if sid in self.index]

    def next_in_queue(self, current: int | None = None) -> int | None:
        """The first slice of the queue other than ``current``."""
        for z in self.queue():
            if z != current:
                return z
        return None

    def counts(self) -> dict:
        """Reviewed / total / clinician-labelled counts for the status line."""
        return self.store.counts(self.name)
