"""Real labelled scans as training data, split into runs of true neighbours and grouped by patient.

A UW-Madison folder (``caseN/caseN_dayM/scans/*.png`` + ``train.csv``) may hold whole scans (every
slice: real 2.5D neighbours) or a few isolated slices of a case-day. The reader puts the slices of
a case-day in one stack whatever their numbers, so here each case-day is cut where its slice numbers
jump: every run of consecutive slices becomes a stack of its own (named ``caseN_dayM_zNNNN`` after
its first slice when the case-day is cut), so a 2.5D window never joins slices that are not
neighbours. Patients (``caseN``) are what leave-patient-out figures and bundle records name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from napari_gitseg.io.errors import GitsegInputError
from napari_gitseg.io.stack import Stack
from training.splits import case_of

__all__ = ["contiguous_runs", "labelled_slices", "patient_of", "patients_of", "read_labelled_scans"]


def patient_of(stack: Stack) -> str:
    """The patient (``caseN``, or the stack's name outside the UW-Madison naming) of ``stack``."""
    return case_of(stack.slice_ids[0])


def patients_of(stacks: Iterable[Stack]) -> list[str]:
    """The patients of ``stacks``, sorted by number (``case6`` before ``case16``)."""
    return sorted({patient_of(s) for s in stacks}, key=lambda p: (len(p), p))


def _run_name(sid: str) -> tuple[str, str]:
    prefix, sep, number = sid.rpartition("_slice_")
    return (prefix, number) if sep else (sid, "0000")


def contiguous_runs(stack: Stack) -> list[Stack]:
    """``stack`` cut at the gaps of its slice numbers (``meta['slice_numbers']``): one stack per run of
    consecutive slices; a stack without gaps comes back whole and unchanged."""
    numbers = list(stack.meta.get("slice_numbers") or range(1, stack.image.shape[0] + 1))
    cuts = [i for i in range(1, len(numbers)) if numbers[i] != numbers[i - 1] + 1]
    if not cuts:
        return [stack]
    runs = []
    for lo, hi in zip([0, *cuts], [*cuts, len(numbers)], strict=True):
        prefix, first = _run_name(stack.slice_ids[lo])
        ids = [f"{prefix}_z{first}_slice_{_run_name(s)[1]}" for s in stack.slice_ids[lo:hi]]
        runs.append(
            dataclasses.replace(
                stack,
                image=stack.image[lo:hi],
                slice_ids=ids,
                masks=None if stack.masks is None else stack.masks[:, lo:hi],
                labelled=None if stack.labelled is None else stack.labelled[lo:hi],
                meta={
                    **stack.meta,
                    "slice_numbers": numbers[lo:hi],
                    "original_slice_ids": list(stack.slice_ids[lo:hi]),
                },
            )
        )
    return runs


def read_labelled_scans(folders: Sequence[str | Path], exclude_patients: Iterable[str] = ()) -> list[Stack]:
    """Every labelled run of consecutive slices under ``folders`` (UW-Madison layout with ``train.csv``),
    without the patients in ``exclude_patients``. ``GitsegInputError`` naming the folder when it is
    missing or holds no labelled slice, or when an excluded patient is not in it (a typo would
    otherwise train on the patient it meant to hold out)."""
    from napari_gitseg.io.uwmgi import case_day_folders, read_case_day

    exclude = {str(p) for p in exclude_patients}
    stacks: list[Stack] = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise GitsegInputError(folder, "is not a folder of labelled scans (caseN/caseN_dayM/scans + train.csv)")
        found = [run for cd in case_day_folders(folder) for run in contiguous_runs(read_case_day(cd))]
        found = [s for s in found if s.masks is not None and s.labelled is not None and bool(s.labelled.any())]
        if not found:
            raise GitsegInputError(
                folder, "holds no labelled slice (is its train.csv beside or above the case folders?)"
            )
        stacks += found
    unknown = sorted(exclude - set(patients_of(stacks)))
    if unknown:
        raise GitsegInputError(
            folders[0] if len(folders) == 1 else None,
            f"patients to leave out {', '.join(unknown)} are not in "
            f"{', '.join(str(f) for f in folders)} (patients: {', '.join(patients_of(stacks))})",
        )
    return [s for s in stacks if patient_of(s) not in exclude]


def labelled_slices(stacks: Iterable[Stack]) -> int:
    """Number of labelled slices in ``stacks``."""
    return int(sum(np.count_nonzero(s.labelled) for s in stacks if s.labelled is not None))
