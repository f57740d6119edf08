"""Train/validation splits grouped by patient, so a patient's days never straddle the two sides.

Ids are slice ids (``case12_day3_slice_0040``), stack ids (``case12_day3``) or other stack names.
The group of an id is its ``caseN`` prefix when it has one (all days and slices of patient N);
otherwise the stack name, i.e. the part before ``_slice_`` (or the whole id), so a stack from a
TIFF or NIfTI file is its own group. Splits are deterministic for a seed and keep the input order
within each side.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

_CASE = re.compile(r"^(case\d+)(?:_|$)")


def case_of(identifier: str) -> str:
    """The group of an id: ``caseN`` for UW-Madison style ids, else the stack name."""
    identifier = str(identifier)
    m = _CASE.match(identifier)
    if m:
        return m.group(1)
    return identifier.split("_slice_")[0]


def _groups(ids: Sequence[str]) -> dict[str, list[int]]:
    """Positions of the ids of each group, in first-seen order."""
    groups: dict[str, list[int]] = {}
    for i, identifier in enumerate(ids):
        groups.setdefault(case_of(identifier), []).append(i)
    return groups


def _shuffled(groups: dict[str, list[int]], seed: int) -> list[str]:
    """Group names in a seed-determined order (independent of the input order)."""
    names = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(names))
    return [names[i] for i in order]


def split_by_case(ids: Iterable[str], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split ids into (train, validation) by case, with about ``val_fraction`` of the ids in validation.

    Whole groups are moved to validation in a seeded order until the share is closest to the target;
    each side gets at least one group. Raises ValueError with fewer than two groups.
    """
    ids = [str(i) for i in ids]
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    groups = _groups(ids)
    if len(groups) < 2:
        raise ValueError(
            f"cannot split {len(ids)} ids by case: they all belong to one case ({next(iter(groups), 'none')})"
        )
    order = _shuffled(groups, seed)
    target = float(val_fraction) * len(ids)
    best_n, best_err, count = 1, None, 0
    for n, name in enumerate(order[:-1], start=1):  # leave at least one group for training
        count += len(groups[name])
        err = abs(count - target)
        if best_err is None or err < best_err:
            best_n, best_err = n, err
    val_groups = set(order[:best_n])
    train = [i for i in ids if case_of(i) not in val_groups]
    val = [i for i in ids if case_of(i) in val_groups]
    return train, val
