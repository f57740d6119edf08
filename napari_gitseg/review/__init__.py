"""Clinician review without Qt: the review session, Refine, Fill between, Learn from corrections,
the effort log and the box tools (LiteMedSAM boxes, Propagate).

``session`` (``ReviewSession``: edits, accept, revert, the uncertainty queue), ``refine``,
``interpolate`` (Fill between), ``adapt`` (Learn from corrections), ``effort``, ``boxes``,
``medsam``, ``propagate`` and ``box_worker``. The Review dock (``napari_gitseg._widgets.review``)
is their Qt face. The names below are imported lazily (PEP 562), so importing this package
does not pull in torch.
"""

from __future__ import annotations

from napari_gitseg._lazy import lazy_getattr

_EXPORTS = {
    "FillResult": "session",
    "LearnResult": "session",
    "PropagateResult": "session",
    "ReviewSession": "session",
    "refine_labels": "refine",
    "fill_between": "interpolate",
    "learn_from_corrections": "adapt",
    "EffortLog": "effort",
    "Box": "boxes",
    "BoxSegmenter": "medsam",
    "carry": "propagate",
    "BoxWorker": "box_worker",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
