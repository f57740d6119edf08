"""Real organ masks without images: the challenge's ``train.csv`` + ``slices.csv`` of whole case-days.

``../shared/data/uwmgi-train-masks`` holds the UW-Madison challenge's own masks of 232 whole,
contiguous case-days (73 patients) but no scans. They are the anatomy the synthetic training images
are rendered around (``training.synthesis``). This module reads them into :class:`CaseDayMasks`:
one case-day's masks ``(C, Z, H, W)`` on its native grid, with its pixel spacing.

Both files are checked against each other and every problem names the file and the row:
an id of ``slices.csv`` missing from ``train.csv`` (or the other way round), a grid that is not
positive or changes within a case-day, a file name that disagrees with the row, an RLE that runs
past its slice, and a case-day whose slice numbers have a gap (its 2.5D windows would join slices
that are not neighbours).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_gitseg.classes import CLASSES
from napari_gitseg.io.errors import GitsegInputError
from napari_gitseg.io.train_csv import TrainTable, decode_slice, read_train_csv
from napari_gitseg.io.uwmgi_names import parse_slice_filename, parse_slice_id

SLICES_HEADER = ("id", "width", "height", "pixel_spacing_x", "pixel_spacing_y", "file")


@dataclass(frozen=True)
class SliceRow:
    """One row of ``slices.csv``: a slice's grid, pixel spacing (mm) and original file name."""

    sid: str
    width: int
    height: int
    spacing_x: float
    spacing_y: float
    file: str
    line: int


@dataclass
class CaseDayMasks:
    """The real masks of one whole case-day: ``masks`` (C, Z, H, W) bool, slice 1 first."""

    name: str  # caseN_dayM
    masks: np.ndarray
    spacing: tuple[float, float]  # (row, column) pixel spacing in mm
    slice_ids: list[str]

    @property
    def patient(self) -> str:
        """``caseN``: the group that train/validation splits keep together."""
        return self.name.split("_")[0]


def read_slices_csv(path: str | Path) -> dict[str, list[SliceRow]]:
    """``slices.csv`` rows grouped by case-day (``caseN_dayM``), slices in number order.

    Raises ``GitsegInputError`` naming the file and line for a bad header, a malformed row, a grid
    that changes within a case-day, a file name that disagrees with its row, or a gap in the slice
    numbers of a case-day.
    """
    path = Path(path)
    groups: dict[str, list[SliceRow]] = {}
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            header = tuple(h.strip() for h in next(reader, ()))
            if header != SLICES_HEADER:
                raise GitsegInputError(path, f"line 1: header {','.join(header)!r} is not {','.join(SLICES_HEADER)!r}")
            for row in reader:
                if row:
                    item = _slice_row(path, row, reader.line_num)
                    groups.setdefault(item.sid.rsplit("_slice_", 1)[0], []).append(item)
    except OSError as err:
        raise GitsegInputError(path, f"cannot be read ({err.strerror or err})") from err
    except (UnicodeDecodeError, csv.Error) as err:
        raise GitsegInputError(path, f"is not a readable CSV text file ({err})") from err
    for name, rows in groups.items():
        rows.sort(key=lambda r: parse_slice_id(r.sid)[2])
        _check_case_day(path, name, rows)
    return groups


def _slice_row(path: Path, row: list[str], line: int) -> SliceRow:
    if len(row) != len(SLICES_HEADER):
        raise GitsegInputError(path, f"line {line}: expected {len(SLICES_HEADER)} fields, got {len(row)}")
    sid = row[0].strip()
    try:
        parse_slice_id(sid)
        item = SliceRow(sid, int(row[1]), int(row[2]), float(row[3]), float(row[4]), row[5].strip(), line)
    except ValueError as err:
        raise GitsegInputError(path, f"line {line}: {err}") from err
    if item.width <= 0 or item.height <= 0 or not (item.spacing_x > 0 and item.spacing_y > 0):
        raise GitsegInputError(
            path,
            f"line {line}: {sid} has grid {item.width}x{item.height} and spacing "
            f"{item.spacing_x}x{item.spacing_y}; both must be positive",
        )
    try:
        name = parse_slice_filename(Path(item.file).name)
    except ValueError as err:
        raise GitsegInputError(path, f"line {line}: {err}") from err
    if (name.width, name.height) != (item.width, item.height) or name.number != parse_slice_id(sid)[2]:
        raise GitsegInputError(
            path,
            f"line {line}: {sid} says {item.width}x{item.height} but its file "
            f"{item.file} says slice {name.number}, {name.width}x{name.height}",
        )
    return item


def _check_case_day(path: Path, name: str, rows: list[SliceRow]) -> None:
    numbers = [parse_slice_id(r.sid)[2] for r in rows]
    expected = list(range(numbers[0], numbers[0] + len(numbers)))
    if numbers != expected:
        missing = sorted(set(expected) - set(numbers))
        gap = missing[0] if missing else numbers[-1]
        raise GitsegInputError(
            path,
            f"case-day {name} has a gap in its slice numbers (slice {gap:04d} is "
            f"missing between {numbers[0]:04d} and {numbers[-1]:04d})",
        )

    def grid(r: SliceRow) -> tuple:
        return r.height, r.width, r.spacing_y, r.spacing_x

    odd = next((r for r in rows if grid(r) != grid(rows[0])), None)
    if odd is not None:
        raise GitsegInputError(path, f"line {odd.line}: case-day {name} changes its grid within the stack")


def decode_case_day(table: TrainTable, name: str, rows: list[SliceRow], slices_path: str | Path) -> CaseDayMasks:
    """Decode the masks of one case-day; ``GitsegInputError`` naming the file and row when a slice of
    ``slices.csv`` has no rows in ``train.csv`` or an RLE runs past its slice."""
    height, width = rows[0].height, rows[0].width
    masks = np.zeros((len(CLASSES), len(rows), height, width), dtype=bool)
    for z, row in enumerate(rows):
        if row.sid not in table:
            raise GitsegInputError(
                table.path, f"has no rows for {row.sid}, which {slices_path} lists on line {row.line}"
            )
        masks[:, z] = decode_slice(table, row.sid, (height, width), CLASSES, f" in {slices_path}")
    return CaseDayMasks(name, masks, (rows[0].spacing_y, rows[0].spacing_x), [r.sid for r in rows])


class RealMaskFolder:
    """A folder of real masks (``train.csv`` + ``slices.csv``), checked once, decoded per case-day on
    demand (all 232 case-days decoded at once would take ~7 GB)."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        self.folder = folder
        self.slices_path, self.train_path = folder / "slices.csv", folder / "train.csv"
        for p in (self.slices_path, self.train_path):
            if not p.is_file():
                raise GitsegInputError(p, "is missing: a real-masks folder needs train.csv and slices.csv")
        self.groups = read_slices_csv(self.slices_path)
        self.table = read_train_csv(self.train_path)
        listed = {r.sid for rows in self.groups.values() for r in rows}
        extra = next((sid for sid in self.table if sid not in listed), None)
        if extra is not None:
            line = min(self.table.lines[(extra, c)] for c in self.table[extra])
            raise GitsegInputError(self.train_path, f"line {line}: {extra} is not listed in {self.slices_path}")

    @property
    def names(self) -> list[str]:
        """Case-day names (``caseN_dayM``), sorted."""
        return sorted(self.groups)

    def load(self, name: str) -> CaseDayMasks:
        """The decoded masks of case-day ``name``."""
        if name not in self.groups:
            raise GitsegInputError(self.slices_path, f"has no case-day {name!r}")
        return decode_case_day(self.table, name, self.groups[name], self.slices_path)


def read_case_days(folder: str | Path, names: Iterable[str] | None = None) -> list[CaseDayMasks]:
    """Every case-day of ``folder`` (``train.csv`` + ``slices.csv``), or only ``names``, in name order.

    Ids of ``train.csv`` that ``slices.csv`` does not list are an error (the two files disagree).
    """
    source = RealMaskFolder(folder)
    return [source.load(n) for n in (source.names if names is None else list(names))]


def split_patients(names: Iterable[str], val_fraction: float = 0.15, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, validation) case-day names, whole patients on one side (``training.splits``)."""
    from training.splits import split_by_case

    return split_by_case(sorted(names), val_fraction, seed)
