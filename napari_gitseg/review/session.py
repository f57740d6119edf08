"""The review workflow without Qt: edits, accept, revert, the uncertainty queue, predictions.

``ReviewSession`` keeps the per-class masks of one stack in memory, with the store version
each slice shows (``versions``), and mirrors every change to the ``LabelStore`` at once (every
save is a new version). The rule that a prediction never replaces a slice a clinician edited
or reviewed lives in the store's write transaction only. Changes saved by other windows or by
the background trainer come in through ``sync``. The napari widget only forwards events here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from napari_gitseg.classes import masks_to_labels, merge_label_edit
from napari_gitseg.io.stack import Stack

#: model versions of the slices the correction tools relabel (shown in the dock's version list)
REFINED, LEARNED = "refine", "learned"


@dataclass
class FillResult:
    """What one Fill between did: the organ, the two corrected slices, the slices filled, how to undo it."""

    organ: str
    z0: int
    z1: int
    filled: list[int] = field(default_factory=list)
    undo: list[tuple[str, int, int]] = field(default_factory=list)  # (slice id, version before, version written)


@dataclass
class PropagateResult:
    """What one Propagate did: the organ, the slice it started from, the slices it reached, how to undo it."""

    organ: str
    z0: int
    propagated: list[int] = field(default_factory=list)
    undo: list[tuple[str, int, int]] = field(default_factory=list)  # as FillResult.undo


@dataclass
class LearnResult:
    """What one Learn from corrections did: the corrected slices it learned from, the slices relabelled,
    the held-out check (``napari_gitseg.review.adapt.CorrectorCheck``) and how to undo it."""

    corrected: int
    check: object
    relabelled: list[int] = field(default_factory=list)
    undo: list[tuple[str, int, int]] = field(default_factory=list)  # as FillResult.undo


class ReviewSession:
    """One stack under review, backed by a LabelStore."""

    def __init__(self, store, stack: Stack):
        self.store = store
        self.stack = stack
        self.name = stack.name
        self.index = {sid: z for z, sid in enumerate(stack.slice_ids)}
        store.register_stack(
            stack.name,
            list(stack.slice_ids),
            tuple(stack.shape),
            tuple(stack.spacing),
            stack.source,
            tuple(stack.classes),
        )
        self.masks = np.zeros((len(stack.classes), *stack.shape), dtype=bool)
        self.versions = np.zeros(len(stack.slice_ids), dtype=np.int64)  # store version in ``masks``; 0 = none
        self.reload()

    # ---- state -----------------------------------------------------------------------------
    def reload(self) -> None:
        """Load the latest saved version of every slice (session restore)."""
        self._load(list(self.stack.slice_ids))

    def _load(self, slice_ids: list[str]) -> list[int]:
        """Read the latest versions of ``slice_ids`` into memory; returns their z."""
        updated = []
        for sid, rec in self.store.latest_many(slice_ids).items():
            if rec is not None:
                z = self.index[sid]
                self.masks[:, z] = rec.masks
                self.versions[z] = rec.version
                updated.append(z)
        return sorted(updated)

    def sync(self) -> list[int]:
        """Take in versions saved by others (another window, the trainer's pseudo-labels); returns their z.

        One cheap query of version numbers; only slices whose latest version changed are read.
        """
        latest = self.store.latest_versions(self.name)
        changed = [sid for sid, v in latest.items() if sid in self.index and v != self.versions[self.index[sid]]]
        return self._load(changed) if changed else []

    def labels(self) -> np.ndarray:
        """The one-label-per-pixel view of all slices (for the editable napari layer)."""
        return masks_to_labels(self.masks, tuple(self.stack.classes))

    def labels_of(self, z: int) -> np.ndarray:
        """The one-label-per-pixel view of slice ``z``."""
        return masks_to_labels(self.masks[:, z], tuple(self.stack.classes))

    def record(self, z: int):
        """Latest stored record of slice ``z`` (None if never saved)."""
        return self.store.latest(self.stack.slice_ids[z])

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
        version = self.store.save(
            self.stack.slice_ids[z], merged, source="clinician", user=user, reviewed=None
        )  # an edit keeps an accepted slice accepted
        self.masks[:, z] = merged
        self.versions[z] = version
        return version

    def accept(
        self, z: int, before: np.ndarray | None = None, after: np.ndarray | None = None, user: str | None = None
    ) -> int:
        """Store exactly what the screen shows of slice ``z`` as its reviewed version; returns that version.

        ``before`` / ``after``: the slice's labels as last saved and as on screen now (None: the
        screen shows this session's masks). When the store holds the version the screen was made
        from, unchanged, it is marked reviewed; anything saved meanwhile by another window or the
        trainer is never flagged reviewed in the clinician's name (``LabelStore.accept``).
        Accepting an empty slice is a real statement: it is saved too.
        """
        current = self.masks[:, z]
        if after is None:
            merged = current.copy()
        else:
            merged = merge_label_edit(current, after if before is None else before, after)
        version = self.store.accept(self.stack.slice_ids[z], merged, int(self.versions[z]) or None, user=user)
        self.masks[:, z] = merged
        self.versions[z] = version
        return version

    def revert(self, z: int, version: int, user: str | None = None) -> int:
        """Make an older version of slice ``z`` the latest again (history is kept)."""
        sid = self.stack.slice_ids[z]
        new_version = self.store.revert(sid, version, user=user)
        self.masks[:, z] = self.store.latest(sid).masks
        self.versions[z] = new_version
        return new_version

    def history(self, z: int) -> list:
        """All versions of slice ``z``, oldest first."""
        return self.store.history(self.stack.slice_ids[z])

    # ---- model output ------------------------------------------------------------------------
    def apply_prediction(
        self, masks: np.ndarray, confidence: np.ndarray | None, model_version: str | None, source: str = "model"
    ) -> list[int]:
        """Store a prediction for every slice a clinician has not touched; returns the slices updated.

        The store decides, in its write transaction, which slices are protected. Pseudo-labels stay:
        they are what the next retraining round trains on besides the clinician's labels (a round that
        promotes a model stores them, then the Segment dock re-predicts with that same model).
        """
        items = [
            {
                "slice_id": sid,
                "masks": masks[:, z],
                "source": source,
                "model_version": model_version,
                "confidence": None if confidence is None else float(confidence[z]),
            }
            for z, sid in enumerate(self.stack.slice_ids)
        ]
        return self._store_many(items, keep=("pseudo",))

    def _store_many(self, items: list[dict], keep: tuple[str, ...] = ()) -> list[int]:
        """``save_many`` and mirror what was stored in memory; returns the z of the slices saved."""
        updated = []
        for item, version in zip(items, self.store.save_many(items, keep=keep)):
            if version is not None:
                z = self.index[item["slice_id"]]
                self.masks[:, z] = item["masks"]
                self.versions[z] = version
                updated.append(z)
        return updated

    # ---- faster correction -----------------------------------------------------------------------
    def corrected_partner(self, z: int) -> int | None:
        """The clinician-labelled slice to fill towards from ``z``: the nearest below, else the nearest above."""
        labelled = {self.index[sid] for sid in self.store.clinician_slices(self.name) if sid in self.index}
        below = [k for k in labelled if k < z]
        above = [k for k in labelled if k > z]
        return max(below) if below else (min(above) if above else None)

    def fill_between(self, z: int, organ: str, method: str = "auto", partner: int | None = None) -> FillResult:
        """Interpolate ``organ`` on the slices between slice ``z`` and ``partner`` (both clinician-labelled).

        ``partner`` defaults to ``corrected_partner(z)``. Only that organ changes, only on the slices
        strictly between; each is saved with provenance ``"interpolated"`` (not a clinician label
        until accepted). Clinician-labelled slices between are left alone (the store refuses them).
        """
        from napari_gitseg.review.interpolate import fill_between

        classes = tuple(self.stack.classes)
        if organ not in classes:
            raise ValueError(f"unknown organ {organ!r}; expected one of {classes}")
        labelled = set(self.store.clinician_slices(self.name))
        if self.stack.slice_ids[z] not in labelled:
            raise ValueError(f"slice {z} is not corrected yet: correct or accept it first, then fill between")
        partner = self.corrected_partner(z) if partner is None else int(partner)
        if partner is None or self.stack.slice_ids[partner] not in labelled:
            raise ValueError("fill between needs a second corrected slice of this stack; correct or accept one")
        z0, z1 = sorted((int(z), partner))
        c = classes.index(organ)
        organ_masks = fill_between(self.masks[c, z0], self.masks[c, z1], z1 - z0 - 1, method=method)
        items = []
        for k, zb in enumerate(range(z0 + 1, z1)):
            masks = self.masks[:, zb].copy()
            masks[c] = organ_masks[k]
            items.append(
                {
                    "slice_id": self.stack.slice_ids[zb],
                    "masks": masks,
                    "source": "interpolated",
                    "note": f"{organ} filled between z{z0} and z{z1}",
                }
            )
        filled, undo = self._store_undoable(items)
        return FillResult(organ, z0, z1, filled, undo)

    def _store_undoable(self, items: list[dict]) -> tuple[list[int], list[tuple[str, int, int]]]:
        """``_store_many`` that also returns the undo entries (slice id, version before, version written)."""
        before = {item["slice_id"]: int(self.versions[self.index[item["slice_id"]]]) for item in items}
        written = self._store_many(items)
        undo = [
            (self.stack.slice_ids[z], before[self.stack.slice_ids[z]], int(self.versions[z]))
            for z in written
            if before[self.stack.slice_ids[z]] > 0
        ]
        return written, undo

    def undo_fill(self, fill: FillResult | LearnResult | PropagateResult) -> list[int]:
        """Put back the versions a fill (or a Learn from corrections, a Propagate) replaced, on slices nobody
        changed since; returns their z."""
        note = {FillResult: "undo fill", LearnResult: "undo learn", PropagateResult: "undo propagate"}[type(fill)]
        done = self.store.restore_many(fill.undo, note=note)
        restored = [sid for (sid, _old, _new), v in zip(fill.undo, done) if v is not None]
        return self._load(restored) if restored else []

    def store_propagated(self, result: PropagateResult, z: int, organ_mask: np.ndarray) -> bool:
        """Save slice ``z`` with ``result.organ`` set to ``organ_mask`` (Y, X) on the whole slice (provenance
        ``"propagated"``; pixels of other organs under the mask become this organ); records it in ``result``.

        False when the store refuses the slice (a clinician labelled or accepted it): propagation stops there.
        """
        classes = tuple(self.stack.classes)
        c = classes.index(result.organ)
        organ_mask = np.asarray(organ_mask, dtype=bool)
        masks = self.masks[:, z].copy()
        masks[:, organ_mask] = False
        masks[c] = organ_mask
        written, undo = self._store_undoable(
            [
                {
                    "slice_id": self.stack.slice_ids[z],
                    "masks": masks,
                    "source": "propagated",
                    "note": f"{result.organ} propagated from z{result.z0}",
                }
            ]
        )
        result.propagated += written
        result.undo += undo
        return bool(written)

    def corrected_labels(self) -> dict[int, np.ndarray]:
        """{z: labels} of this stack's clinician-labelled slices (what Learn from corrections learns from)."""
        return {
            self.index[sid]: self.labels_of(self.index[sid])
            for sid in self.store.clinician_slices(self.name)
            if sid in self.index
        }

    def store_learned(
        self, labels_by_z: dict[int, np.ndarray], corrected: int, check, confidence: np.ndarray | None = None
    ) -> LearnResult:
        """Save the slices Learn from corrections relabelled, as model output (protected ones skipped).

        ``confidence``: the model's per-slice confidence (Z,), kept so that the review queue still
        offers the least confident slices first.
        """
        items = self._model_items(
            dict(sorted(labels_by_z.items())), LEARNED, f"learned from {corrected} corrected slice(s) of this scan"
        )
        for item, z in zip(items, sorted(labels_by_z)):
            item["confidence"] = None if confidence is None else float(confidence[z])
        written, undo = self._store_undoable(items)
        return LearnResult(corrected, check, written, undo)

    def store_refined(self, labels_by_z: dict[int, np.ndarray], centre: int) -> list[int]:
        """Save neighbour slices refined from the strokes on ``centre`` (as model output; protected ones skipped)."""
        return self._store_many(self._model_items(labels_by_z, REFINED, f"refined from the strokes on z{centre}"))

    def _model_items(self, labels_by_z: dict[int, np.ndarray], tool: str, note: str) -> list[dict]:
        """``save_many`` items of label views made by a review tool (``tool``: LEARNED, REFINED), as model output."""
        from napari_gitseg.classes import labels_to_masks

        classes = tuple(self.stack.classes)
        return [
            {
                "slice_id": self.stack.slice_ids[z],
                "masks": labels_to_masks(labels, classes),
                "source": "model",
                "model_version": tool,
                "note": note,
            }
            for z, labels in labels_by_z.items()
        ]

    # ---- navigation --------------------------------------------------------------------------
    def queue(self) -> list[int]:
        """Unreviewed slices, least confident first (never-predicted ones last)."""

        def has_organ(sid: str) -> bool:  # the latest masks are in memory: nothing to decompress
            z = self.index.get(sid)
            return z is not None and bool(self.masks[:, z].any())

        queue = self.store.review_queue(self.name, has_organ=has_organ)
        return [self.index[sid] for sid in queue if sid in self.index]

    def next_in_queue(self, current: int | None = None) -> int | None:
        """The first slice of the queue other than ``current``."""
        for z in self.queue():
            if z != current:
                return z
        return None

    def counts(self) -> dict:
        """Reviewed / total / clinician-labelled counts for the status line."""
        return self.store.counts(self.name)
