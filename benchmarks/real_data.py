"""The real data of the real-scan benchmarks: where it lies in ``../shared/data``, how it is read, and which
fold bundle may score which patient (leave-patient-out). Used by ``bench_real``, ``bench_real_loop`` and
``bench_correction``; the data itself is described in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
REAL_SLICES = DATA / "uwmgi-real-slices"
REAL_VOLUMES = DATA / "uwmgi-real-volumes"
TOTALSEG = DATA / "totalsegmentator-examples"
TOTALSEG_MR = (TOTALSEG / "example_mr_sm.nii.gz", TOTALSEG / "example_seg_mr.nii.gz")  # image, labels


def unique_name(stack):
    """``stack`` (one slice) with its slice id renamed ``<case-day>_z<NNNN>_slice_<NNNN>``: a stack name of its own.

    Stacks are named after their case-day, and the real slices of one case-day are read as
    separate stacks (they are not neighbours), so each needs a name of its own in a label store.
    """
    import dataclasses

    if stack.image.shape[0] != 1:
        raise ValueError(f"{stack.source}: expected a single slice, got {stack.image.shape[0]}")
    sid = stack.slice_ids[0]
    prefix, sep, number = sid.rpartition("_slice_")
    if not sep:
        prefix, number = sid, "0000"
    return dataclasses.replace(
        stack, slice_ids=[f"{prefix}_z{number}_slice_{number}"], meta={**stack.meta, "original_slice_id": sid}
    )


def read_real_slices(root: Path = REAL_SLICES) -> list:
    """The labelled real slices under ``root`` (challenge layout + train.csv), one stack per slice."""
    from napari_gitseg.io.uwmgi import case_day_folders, read_case_day

    stacks = []
    for case_day in case_day_folders(root):
        for png in sorted((case_day / "scans").glob("slice_*.png")):
            stacks.append(unique_name(read_case_day(case_day, only=[png])))
    return [s for s in stacks if s.masks is not None and bool(s.labelled.any())]


def patient_of(stack) -> str:
    """The patient (``caseN``) a stack belongs to."""
    from training.splits import case_of

    return case_of(stack.slice_ids[0])


def patient_folds(stacks: Sequence) -> list[tuple[str, list, list]]:
    """Leave-one-patient-out: (held-out patient, training stacks, test stacks) per patient, sorted."""
    patients = sorted({patient_of(s) for s in stacks}, key=lambda p: (len(p), p))
    return [(p, [s for s in stacks if patient_of(s) != p], [s for s in stacks if patient_of(s) == p]) for p in patients]


def choose_slices(stacks: Sequence, n: int, seed: int = 0) -> list:
    """``n`` stacks (at most all) spread over the patients: one per patient in turn, each patient's order shuffled."""
    import numpy as np

    n = min(n, len(stacks))  # a fold whose other patients hold fewer slices uses them all
    rng = np.random.default_rng(seed)
    by_patient: dict[str, list] = {}
    for s in stacks:
        by_patient.setdefault(patient_of(s), []).append(s)
    queues = [[group[i] for i in rng.permutation(len(group))] for _p, group in sorted(by_patient.items())]
    chosen = []
    while len(chosen) < n:
        for queue in queues:
            if queue and len(chosen) < n:
                chosen.append(queue.pop(0))
    return chosen


def read_real_volumes(root: Path = REAL_VOLUMES) -> list:
    """The real scans under ``root`` (challenge layout + train.csv), one stack per run of consecutive slices."""
    from training.real_images import read_labelled_scans

    return read_labelled_scans([root])


def real_patients_seen(bundle: Path) -> set[str]:
    """The real patients whose images trained ``bundle`` (its JSON's ``training.data.real_image_patients``).

    A bundle trained only on images rendered around masks saw none; a bundle that records neither is
    refused (SystemExit naming it): a leave-patient-out figure needs to know."""
    doc = json.loads(Path(bundle).read_text())
    data = (doc.get("training") or {}).get("data") or {}
    if "real_image_patients" in data:
        return set(data["real_image_patients"])
    if str(data.get("data", "")).startswith("synthetic images rendered"):
        return set()
    raise SystemExit(
        f"bench_real: {bundle} does not record which real patients it learnt from "
        "(training.data.real_image_patients): cannot tell whether a figure is leave-patient-out"
    )


def bundle_for(patients: Sequence[str], candidates: Sequence[Path]) -> Path | None:
    """The first of ``candidates`` that saw none of ``patients`` (None when every one saw some)."""
    for bundle in candidates:
        if not real_patients_seen(bundle) & set(patients):
            return bundle
    return None


def fold_bundles(paths: Sequence[str]) -> list[Path]:
    """Bundle JSONs given as files or folders (``FOLDER/*/default.json`` and ``FOLDER/*.json``), sorted."""
    found: list[Path] = []
    for text in paths:
        path = Path(text)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(path.glob("*/default.json")) + sorted(path.glob("*.json"))
        else:
            raise SystemExit(f"bench_real: --folds {path} is neither a bundle JSON nor a folder")
    return found


def read_totalseg_mr(image: Path, labels: Path):
    """The TotalSegmentator MR volume with its labels mapped to the plugin's classes (UW orientation)."""
    from napari_gitseg.io import TOTALSEG_MR_LABELS, read_nifti_labels
    from napari_gitseg.io.nifti import read_nifti

    return read_nifti_labels(labels, TOTALSEG_MR_LABELS, read_nifti(image))


def read_data() -> dict:
    """The real data of the benchmark: volumes, isolated slices, and the MR volume (None when absent)."""
    image, labels = TOTALSEG_MR
    return {
        "volumes": read_real_volumes() if REAL_VOLUMES.is_dir() else [],
        "slices": read_real_slices(),
        "mr": read_totalseg_mr(image, labels) if image.is_file() and labels.is_file() else None,
    }
