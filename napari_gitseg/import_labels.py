"""Seed a label store with a department's planning contours (DICOM RT-STRUCT or SEG).

Each slice the file labels (``io.dicom.labels``: first to last contoured slice) is saved with
provenance ``imported`` and the file named in the note, so it counts as a clinician label and
predictions never replace it. Slices a clinician already edited, reviewed or imported are kept
as they are (a saved correction is never replaced by something the clinician did not see).
"""

from __future__ import annotations

from pathlib import Path

from napari_gitseg.io import GitsegInputError, read_stack


def import_labels(project: str | Path, path: str | Path, user: str | None = None) -> dict:
    """Save the organ labels of RT-STRUCT/SEG ``path`` (or a series folder holding one) into ``project``."""
    from napari_gitseg.project import Project

    stack = read_stack(path)
    source = stack.meta.get("masks_source")
    if stack.masks is None or not source:
        raise GitsegInputError(path, "holds no DICOM RT-STRUCT or SEG labels to import")
    target = Project(project)
    with target.open_store(user=user) as store:
        store.register_stack(stack.name, stack.slice_ids, stack.shape, stack.spacing, stack.source, stack.classes)
        protected = set(store.clinician_slices(stack.name))
        items = [
            {
                "slice_id": sid,
                "masks": stack.masks[:, z],
                "source": "imported",
                "note": f"imported from {Path(source).name} ({source})",
            }
            for z, sid in enumerate(stack.slice_ids)
            if stack.labelled[z] and sid not in protected
        ]
        store.save_many(items)
    target.save_snapshot(stack)
    kept = int(stack.labelled.sum()) - len(items)
    return {"stack": stack.name, "file": str(source), "imported": len(items), "kept_clinician": kept}
