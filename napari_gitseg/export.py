"""Export the reviewed masks of a label store, with provenance in a side file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from napari_gitseg.io import GitsegInputError, atomic_output, format_of, stem_of, write_masks, write_scans_rle_csv
from napari_gitseg.io.stack import Stack
from napari_gitseg.project import Project

FORMATS = {"csv": ".csv", "tif": ".tif", "nii": ".nii.gz", "rtstruct": ".dcm", "seg": ".dcm"}
_EXPORT_FORMAT = {"csv": "csv", "tiff": "tif", "nifti": "nii"}  # io.format_of -> export format (DICOM: chosen)


def export_format_of(path: str | Path) -> str | None:
    """The export format (``csv``, ``tif``, ``nii``) ``path``'s extension names; None for ``.dcm`` (RT-STRUCT/SEG)."""
    return _EXPORT_FORMAT.get(format_of(path))


def provenance_path(out: Path) -> Path:
    """``reviewed.csv`` -> ``reviewed.provenance.json``."""
    name = stem_of(out) if format_of(out) is not None else out.name
    return out.with_name(name + ".provenance.json")


def _source_stack(project: Project, info: dict) -> Stack:
    """The images of a stored stack: re-read from its source, else the project's snapshot."""
    from napari_gitseg.io import detect_kind, read_stack
    from napari_gitseg.io.dicom.series import read_dicom

    source = info["source"] or ""
    kind = detect_kind(source) if source else None
    if kind is not None:
        stack = read_dicom(source) if kind == "dicom" else read_stack(source)
    elif project.snapshot_path(info["name"]).exists():
        stack = project.load_snapshot(info["name"])
    else:
        raise GitsegInputError(source or info["name"], "the images of this stack are gone; DICOM export needs them")
    if tuple(stack.shape) != tuple(info["shape"]):
        raise GitsegInputError(source, f"now holds shape {stack.shape}, the store has {tuple(info['shape'])}")
    return stack


def _export_dicom(
    project: Project, out: Path, fmt: str, results: list, with_images: bool, smooth_sigma: float
) -> tuple[list, list]:
    from napari_gitseg.io.dicom.export import write_dicom_labels

    written, targets = [], []
    for info, _ids, masks, prov in results:
        path = out if len(results) == 1 else out.parent / f"{info['name']}_{fmt}.dcm"
        written += write_dicom_labels(
            path, _source_stack(project, info), masks, fmt, with_images=with_images, smooth_sigma=smooth_sigma
        )
        targets.append((path, {info["name"]: prov}))
    return written, targets


def export_store(
    project: str | Path,
    out: str | Path,
    fmt: str = "csv",
    stack: str | None = None,
    reviewed_only: bool = True,
    with_images: bool = False,
    smooth_sigma: float = 0.0,
) -> list[Path]:
    """Write the store's masks: one CSV for all stacks, or one TIFF/NIfTI/RT-STRUCT/SEG per stack.

    RT-STRUCT and SEG cite the stack's DICOM series; ``with_images`` writes other stacks' images
    as a DICOM series first (see ``io.dicom.export``); ``smooth_sigma`` smooths RT-STRUCT contours
    (pixels, 0 = off). Returns the paths written.
    """
    if fmt not in FORMATS:
        raise GitsegInputError(out, f"unknown export format {fmt!r} (choose from {', '.join(FORMATS)})")
    store = Project(project).open_store(readonly=True)
    try:
        names = [stack] if stack else store.stacks()
        if not names:
            raise GitsegInputError(project, "the label store holds no stacks")
        out = Path(out)
        results = []
        for name in names:
            info = store.stack_info(name)
            ids, masks, prov = store.export_masks(name, reviewed_only=reviewed_only)
            results.append((info, ids, masks, prov))
    finally:
        store.close()
    written: list[Path] = []
    if fmt == "csv":
        scans = [(sids, masks) for _i, sids, masks, _p in results]  # each stack on its own grid
        written.append(Path(write_scans_rle_csv(out, scans)))
        provenance = {info["name"]: prov for info, _s, _m, prov in results}
        targets = [(out, provenance)]
    elif FORMATS[fmt] == ".dcm":
        written, targets = _export_dicom(Project(project), out, fmt, results, with_images, smooth_sigma)
    else:
        targets = []
        for info, ids, masks, prov in results:
            path = out if len(results) == 1 else out.parent / f"{info['name']}{FORMATS[fmt]}"
            like = Stack(
                image=np.zeros(info["shape"], np.uint8),
                spacing=info["spacing"],
                slice_ids=ids,
                source=info["source"] or info["name"],
                kind="store",
                classes=info["classes"],
            )
            written.append(Path(write_masks(path, masks, like)))
            targets.append((path, {info["name"]: prov}))
    for path, provenance in targets:
        side = provenance_path(Path(path))
        with atomic_output(side) as tmp:
            tmp.write_text(
                json.dumps(
                    {"store": str(Path(project).resolve()), "reviewed_only": reviewed_only, "stacks": provenance},
                    indent=1,
                )
            )
        written.append(side)
    return written
