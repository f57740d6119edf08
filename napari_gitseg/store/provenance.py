"""Where a saved version came from (its ``source``), and the one rule that keeps clinician work.

A prediction never replaces a clinician label (or a reviewed slice), nor a slice interpolated or
propagated from clinician slices; the store applies ``refuses`` inside its write transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

SOURCES = ("clinician", "model", "pseudo", "imported", "interpolated", "propagated")
PREDICTED = ("model", "pseudo")  # never replace a protected slice
ASSISTED = ("interpolated", "propagated")  # drawn by a correction tool from clinician slices: kept from predictions
CLINICIAN_SOURCES = ("clinician", "imported")  # count as clinician labels (imported: a department's RT-STRUCT/SEG)


def protected(source: str, reviewed: bool) -> bool:
    """True for a clinician's version (or an imported one) and for a reviewed one: the training labels."""
    return source in CLINICIAN_SOURCES or reviewed


def refuses(new_source: str, last_source: str, last_reviewed: bool, keep: Sequence[str] = ()) -> bool:
    """True when a version by ``new_source`` may not replace the latest one (the one protection rule);
    ``keep``: sources the writer leaves in place as well."""
    if new_source in CLINICIAN_SOURCES:
        return False
    if protected(last_source, last_reviewed) or last_source in keep:
        return True
    return new_source in PREDICTED and last_source in ASSISTED
