"""The challenge's run-length CSV (``train.csv`` and submissions): ``id,class,segmentation``.

One row per slice and class, classes ``large_bowel``, ``small_bowel``, ``stomach``; the
segmentation is the RLE of :mod:`napari_gitseg.io.rle` (empty for no mask). A submission
file names its third column ``predicted``; both names are read. Written with the ``csv``
module only (no pandas), atomically.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from napari_gitseg.classes import CLASSES
from napari_gitseg.io._util import atomic_output
from napari_gitseg.io.errors import GitsegInputError
from napari_gitseg.io.rle import RLEError, parse_rle, rle_decode, rle_encode
from napari_gitseg.io.stack import Stack

HEADER: tuple[str, str, str] = ("id", "class", "segmentation")
SUBMISSION_HEADER: tuple[str, str, str] = ("id", "class", "predicted")


class TrainTable(dict):
    """``id -> class -> rle`` as read from a file; remembers the file and each row's line number."""

    def __init__(self, path: str | Path | None = None):
        super().__init__()
        self.path: str | None = None if path is None else str(path)
        self.lines: dict[tuple[str, str], int] = {}
        self._by_prefix: dict[str, list[str]] | None = None

    def line_of(self, sid: str, cls: str) -> int | None:
        """Line number of the row for ``sid`` and ``cls`` (None when unknown)."""
        return self.lines.get((sid, cls))

    def ids_with_prefix(self, prefix: str) -> list[str]:
        """Ids of the form ``{prefix}_slice_NNNN`` (e.g. every slice of one case-day)."""
        if self._by_prefix is None:
            index: dict[str, list[str]] = {}
            for sid in self:
                head, sep, _ = sid.rpartition("_slice_")
                if sep:
                    index.setdefault(head, []).append(sid)
            self._by_prefix = index
        return list(self._by_prefix.get(prefix, []))


def check_rle_syntax(rle: str) -> None:
    """Check an RLE string without knowing the image size; raise ``RLEError`` when malformed."""
    parse_rle(rle)


def read_train_csv(path: str | Path) -> TrainTable:
    """Read ``id,class,segmentation`` rows into ``id -> class -> rle``, validating every row."""
    path = Path(path)
    if not path.is_file():
        raise GitsegInputError(path, "does not exist or is not a file")
    table = TrainTable(path)
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise GitsegInputError(path, "is empty; expected the header 'id,class,segmentation'")
            names = tuple(h.strip() for h in header)
            if names not in (HEADER, SUBMISSION_HEADER):
                raise GitsegInputError(path, f"line 1: header {','.join(names)!r} is not 'id,class,segmentation'")
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                line = reader.line_num
                if len(row) != 3:
                    raise GitsegInputError(
                        path, f"line {line}: expected 3 fields (id,class,segmentation), got {len(row)}"
                    )
                sid, cls, rle = row[0].strip(), row[1].strip(), row[2].strip()
                if not sid:
                    raise GitsegInputError(path, f"line {line}: empty id")
                if cls not in CLASSES:
                    raise GitsegInputError(path, f"line {line}: class {cls!r} is not one of {', '.join(CLASSES)}")
                if (sid, cls) in table.lines:
                    raise GitsegInputError(path, f"line {line}: {sid} {cls} repeats line {table.lines[(sid, cls)]}")
                try:
                    check_rle_syntax(rle)
                except RLEError as err:
                    raise GitsegInputError(path, f"line {line}: {sid} {cls}: {err}") from err
                table.setdefault(sid, {})[cls] = rle
                table.lines[(sid, cls)] = line
    except GitsegInputError:
        raise
    except (UnicodeDecodeError, csv.Error) as err:
        raise GitsegInputError(path, f"is not a readable CSV text file ({err})") from err
    except OSError as err:
        raise GitsegInputError(path, f"cannot be read ({err})") from err
    return table


def decode_slice(
    table: dict[str, dict[str, str]], sid: str, shape: tuple[int, int], classes: Sequence[str], context: str = ""
) -> np.ndarray:
    """The masks ``(C, Y, X)`` bool of slice ``sid`` (classes without a row are empty);
    ``GitsegInputError`` naming the table's file and line when an RLE does not fit ``shape``."""
    height, width = shape
    masks = np.zeros((len(classes), height, width), dtype=bool)
    entry = table.get(sid, {})
    for c, cls in enumerate(classes):
        rle = entry.get(cls, "")
        if not rle:
            continue
        try:
            masks[c] = rle_decode(rle, (height, width))
        except RLEError as err:
            line = table.line_of(sid, cls) if isinstance(table, TrainTable) else None
            where = f"line {line}: " if line else ""
            raise GitsegInputError(
                getattr(table, "path", None), f"{where}{sid} {cls}: {err} (slice is {height}x{width}{context})"
            ) from err
    return masks


def masks_for_stack(table: dict[str, dict[str, str]], stack: Stack) -> tuple[np.ndarray, np.ndarray]:
    """Decode the table's rows for ``stack``: masks ``(C, Z, Y, X)`` bool and labelled ``(Z,)`` bool.

    A slice is labelled when its id is in the table; classes missing for a labelled id are empty.
    """
    n_z, height, width = stack.shape
    masks = np.zeros((len(stack.classes), n_z, height, width), dtype=bool)
    labelled = np.zeros(n_z, dtype=bool)
    for z, sid in enumerate(stack.slice_ids):
        if sid in table:
            labelled[z] = True
            masks[:, z] = decode_slice(table, sid, (height, width), stack.classes, f", from {stack.source}")
    return masks, labelled


def _write_rows(path: Path, rows: Iterable[tuple[str, str, str]], column: str) -> Path:
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(("id", "class", column))
            writer.writerows(rows)
    return path


def write_rle_csv(
    path: str | Path,
    slice_ids: Sequence[str],
    masks: np.ndarray,
    *,
    labelled: np.ndarray | None = None,
    classes: tuple[str, ...] = CLASSES,
    column: str = "segmentation",
) -> Path:
    """Write masks ``(C, Z, Y, X)`` as ``id,class,segmentation`` rows (3 per slice), atomically.

    Only slices with ``labelled`` True are written (all when None); ``column="predicted"``
    gives the challenge's submission header.
    """
    return _write_rows(Path(path), _rle_rows(slice_ids, masks, labelled, classes), column)


def write_scans_rle_csv(
    path: str | Path,
    scans: Sequence[tuple[Sequence[str], np.ndarray]],
    *,
    classes: tuple[str, ...] = CLASSES,
    column: str = "segmentation",
) -> Path:
    """Write several scans' ``(slice ids, masks (C, Z, Y, X))`` into one CSV; each scan keeps its own grid.

    The challenge's train folder mixes grids (case-days of 266, 310 and 360 px), so scans are never stacked.
    """
    rows = [row for ids, masks in scans for row in _rle_rows(ids, masks, None, classes)]
    return _write_rows(Path(path), rows, column)


def _rle_rows(slice_ids, masks, labelled, classes) -> list[tuple[str, str, str]]:
    """The ``(id, class, rle)`` rows of one scan, its shapes checked first."""
    masks = np.asarray(masks)
    if masks.ndim != 4 or masks.shape[0] != len(classes):
        raise ValueError(f"masks must be (C={len(classes)}, Z, Y, X), got shape {masks.shape}")
    if masks.shape[1] != len(slice_ids):
        raise ValueError(f"{len(slice_ids)} slice ids for {masks.shape[1]} mask slices")
    if labelled is not None and len(labelled) != len(slice_ids):
        raise ValueError(f"labelled has {len(labelled)} entries for {len(slice_ids)} slices")
    return [
        (sid, cls, rle_encode(masks[c, z]))
        for z, sid in enumerate(slice_ids)
        if labelled is None or labelled[z]
        for c, cls in enumerate(classes)
    ]


def write_train_table(path: str | Path, table: dict[str, dict[str, str]], order: Sequence[str]) -> Path:
    """Write a whole ``id -> class -> rle`` table in the given id order (3 rows per id), atomically."""
    rows = [(sid, cls, table[sid].get(cls, "")) for sid in order for cls in CLASSES]
    return _write_rows(Path(path), rows, "segmentation")
