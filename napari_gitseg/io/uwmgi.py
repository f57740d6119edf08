"""UW-Madison GI Tract layout: ``[train/]caseN/caseN_dayM/scans/slice_NNNN_W_H_SX_SY.png``.

Accepted paths: one slice PNG, a ``scans/`` folder, a case-day folder, a case folder (one
stack per day) and a dataset root (folder of ``caseN`` folders, or one holding ``train/``
as on Kaggle). Slices are 16-bit greyscale PNGs (Pillow mode ``I;16``; 32-bit mode ``I``
PNGs holding 16-bit values are accepted too); y,x spacing comes from the file name and z
is ``SLICE_THICKNESS_MM``. Ground truth: a ``train.csv`` in the case-day folder or one of
its 4 ancestors is attached as masks (a slice is labelled when its id is in the CSV).

A float or NaN image cannot be stored in a PNG at all; such a file (for example a float
TIFF renamed ``.png``) is refused as "not a PNG".
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from napari_gitseg.classes import CLASSES
from napari_gitseg.io._util import atomic_output, check_size
from napari_gitseg.io.errors import GitsegInputError
from napari_gitseg.io.rle import rle_encode
from napari_gitseg.io.stack import Stack
from napari_gitseg.io.train_csv import (
    TrainTable,
    masks_for_stack,
    read_train_csv,
    write_train_table,
)
from napari_gitseg.io.uwmgi_names import (
    CASE_DAY_RE,
    CASE_RE,
    SLICE_THICKNESS_MM,
    SliceName,
    format_slice_filename,
    parse_slice_filename,
    parse_slice_id,
    slice_id,
)

TRAIN_CSV = "train.csv"
# how many folders above the case-day folder are searched for train.csv
CSV_SEARCH_LEVELS = 4
_SLICE_PREFIX_RE = re.compile(r"^slice_", re.IGNORECASE)


# ---------------------------------------------------------------- layout


def _visible_entries(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return [e for e in it if not e.name.startswith(".")]
    except OSError:
        return []


def _png_entries(folder: Path) -> list[Path]:
    return sorted(Path(e.path) for e in _visible_entries(folder) if e.name.lower().endswith(".png") and e.is_file())


def _has_slice_pngs(folder: Path) -> bool:
    return any(e.name.lower().endswith(".png") and _SLICE_PREFIX_RE.match(e.name) for e in _visible_entries(folder))


def _subdirs(folder: Path, pattern: re.Pattern[str]) -> list[Path]:
    """Sub-folders whose name matches ``pattern``, sorted by the numbers in the name."""
    found = []
    for e in _visible_entries(folder):
        match = pattern.match(e.name)
        if match and e.is_dir():
            found.append((tuple(int(g) for g in match.groups()), Path(e.path)))
    return [p for _, p in sorted(found)]


def layout_of(path: str | Path) -> str | None:
    """Which UW-Madison level ``path`` is: ``slice``, ``case_day``, ``case``, ``root`` or None."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() == ".png":
            try:
                parse_slice_filename(path.name)
            except ValueError:
                return None
            return "slice"
        return None
    if not path.is_dir():
        return None
    scans = _scans_folder(path)
    if _has_slice_pngs(scans) or CASE_DAY_RE.match(_case_day_of_scans(scans).name):
        return "case_day"
    if _subdirs(path, CASE_DAY_RE):
        return "case"
    if _subdirs(path, CASE_RE) or ((path / "train").is_dir() and _subdirs(path / "train", CASE_RE)):
        return "root"
    return None


def case_day_folders(path: str | Path) -> list[Path]:
    """Every case-day folder under ``path`` (itself for a case-day folder), in case and day order."""
    path = Path(path)
    layout = layout_of(path)
    if layout == "slice":
        return [_case_day_of_scans(path.parent)]
    if layout == "case_day":
        return [_case_day_of_scans(_scans_folder(path))]
    if layout == "case":
        return _subdirs(path, CASE_DAY_RE)
    if layout == "root":
        base = path if _subdirs(path, CASE_RE) else path / "train"
        return [day for case in _subdirs(base, CASE_RE) for day in _subdirs(case, CASE_DAY_RE)]
    return []


def _scans_folder(case_day: Path) -> Path:
    if case_day.name == "scans":
        return case_day
    if (case_day / "scans").is_dir():
        return case_day / "scans"
    return case_day


def _case_day_of_scans(scans: Path) -> Path:
    return scans.parent if scans.name == "scans" else scans


# ---------------------------------------------------------------- PNG slices


def png_pixels(path: str | Path, image) -> np.ndarray:
    """Pixels of an opened Pillow image as uint16, refusing anything but 16-bit greyscale."""
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(image).astype(np.uint16, copy=False)
    if mode == "I":
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise GitsegInputError(
                path, f"32-bit PNG values {values.min()}..{values.max()} do not fit 16-bit greyscale"
            )
        return values.astype(np.uint16)
    if mode in ("1", "L", "P", "LA", "La", "PA"):
        raise GitsegInputError(path, f"is an 8-bit image (mode {mode}); UW-Madison scans are 16-bit greyscale PNGs")
    if mode.startswith(("RGB", "CMYK", "YCbCr", "HSV", "LAB")):
        raise GitsegInputError(path, f"is a colour image (mode {mode}); expected 16-bit greyscale")
    if mode == "F":
        raise GitsegInputError(path, "holds floating-point pixels; expected 16-bit greyscale integers")
    raise GitsegInputError(path, f"has the unsupported pixel mode {mode}; expected 16-bit greyscale")


def read_slice_png(path: str | Path, name: SliceName | None = None) -> np.ndarray:
    """Read one slice PNG as a (H, W) uint16 array, checking its size against its file name."""
    from PIL import Image

    path = Path(path)
    if name is None:
        try:
            name = parse_slice_filename(path.name)
        except ValueError as err:
            raise GitsegInputError(path, str(err)) from err
    check_size(path, (name.height, name.width), 2)
    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                raise GitsegInputError(path, f"is not a PNG file (it reads as {image.format})")
            if image.size != (name.width, name.height):
                raise GitsegInputError(
                    path,
                    f"image is {image.size[0]}x{image.size[1]} (width x height) "
                    f"but its name says {name.width}x{name.height}",
                )
            pixels = png_pixels(path, image)
    except GitsegInputError:
        raise
    except Exception as err:  # Pillow raises many types for damaged files
        raise GitsegInputError(path, f"is not a readable PNG image ({type(err).__name__}: {err})") from err
    if pixels.shape != (name.height, name.width):
        raise GitsegInputError(path, f"decoded to shape {pixels.shape}, expected {(name.height, name.width)}")
    return pixels


# ---------------------------------------------------------------- reading


def find_train_csv(case_day: str | Path, levels: int = CSV_SEARCH_LEVELS) -> Path | None:
    """The nearest ``train.csv`` in ``case_day`` or up to ``levels`` folders above it."""
    folder = Path(case_day).resolve()
    for candidate in [folder, *list(folder.parents)[:levels]]:
        csv_path = candidate / TRAIN_CSV
        if csv_path.is_file():
            return csv_path
    return None


def read_case_day(
    path: str | Path,
    *,
    only: Sequence[Path] | None = None,
    tables: dict[Path, TrainTable] | None = None,
    attach_labels: bool = True,
) -> Stack:
    """Read one case-day (its folder, its ``scans/`` folder, or ``only`` some of its slice files)."""
    path = Path(path)
    scans = _scans_folder(path)
    case_day = _case_day_of_scans(scans)
    files = list(only) if only is not None else _png_entries(scans)
    if not files:
        raise GitsegInputError(scans, "holds no slice PNG files (expected slice_NNNN_W_H_SX_SY.png, 16-bit greyscale)")
    named: dict[int, tuple[Path, SliceName]] = {}
    for file in files:
        try:
            name = parse_slice_filename(file.name)
        except ValueError as err:
            raise GitsegInputError(file, str(err)) from err
        if name.number in named:
            raise GitsegInputError(file, f"repeats slice number {name.number:04d} of {named[name.number][0].name}")
        named[name.number] = (file, name)
    numbers = sorted(named)
    first_file, first = named[numbers[0]]
    for number in numbers[1:]:
        file, name = named[number]
        if (name.width, name.height) != (first.width, first.height):
            raise GitsegInputError(
                file,
                f"is {name.width}x{name.height} but {first_file.name} in the same case-day is "
                f"{first.width}x{first.height}; all slices of a case-day must have one size",
            )
        if (name.spacing_x, name.spacing_y) != (first.spacing_x, first.spacing_y):
            raise GitsegInputError(
                file,
                f"has pixel spacing {name.spacing_x}x{name.spacing_y} mm but {first_file.name} has "
                f"{first.spacing_x}x{first.spacing_y} mm",
            )
    image = np.empty((len(numbers), first.height, first.width), dtype=np.uint16)
    for z, number in enumerate(numbers):
        file, name = named[number]
        image[z] = read_slice_png(file, name)

    match = CASE_DAY_RE.match(case_day.name)
    meta: dict = {"slice_numbers": numbers, "folder": str(case_day)}
    if match:
        case, day = int(match["case"]), int(match["day"])
        ids = [slice_id(case, day, n) for n in numbers]
        meta.update(case=case, day=day)
    else:
        ids = [f"{case_day.name}_slice_{n:04d}" for n in numbers]
        meta["note"] = f"folder name {case_day.name!r} is not caseN_dayM; slice ids use it as is"
    gaps = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
    if gaps and only is None:
        meta["missing_slice_numbers"] = gaps
    stack = Stack(
        image=image,
        spacing=(SLICE_THICKNESS_MM, first.spacing_y, first.spacing_x),
        slice_ids=ids,
        source=str(case_day if only is None else files[0]),
        kind="uwmgi",
        meta=meta,
    )
    if attach_labels:
        _attach_train_csv(stack, case_day, scans, tables if tables is not None else {}, check_missing=only is None)
    return stack


# the last train.csv read, keyed by path, inode, size and modification time (the Kaggle file
# has 115k rows and takes about a second to parse; opening case-days one by one reuses it)
_LAST_TABLE: dict[tuple[Path, int, int, int], TrainTable] = {}


def _cached_table(csv_path: Path) -> TrainTable:
    info = csv_path.stat()
    key = (csv_path, info.st_ino, info.st_size, info.st_mtime_ns)
    if key not in _LAST_TABLE:
        table = read_train_csv(csv_path)
        _LAST_TABLE.clear()
        _LAST_TABLE[key] = table
    return _LAST_TABLE[key]


def _attach_train_csv(
    stack: Stack, case_day: Path, scans: Path, tables: dict[Path, TrainTable], check_missing: bool
) -> None:
    csv_path = find_train_csv(case_day)
    if csv_path is None:
        return
    if csv_path not in tables:
        tables[csv_path] = _cached_table(csv_path)
    table = tables[csv_path]
    stack.meta["train_csv"] = str(csv_path)
    prefix = stack.name
    known = table.ids_with_prefix(prefix)
    if check_missing and known:
        present = set(stack.slice_ids)
        missing = sorted(sid for sid in known if sid not in present)
        if missing:
            sid = missing[0]
            line = min(table.line_of(sid, cls) or 0 for cls in table[sid])
            try:
                number = f"{parse_slice_id(sid)[2]:04d}"
            except ValueError:
                number = sid.rpartition("_slice_")[2]
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise GitsegInputError(
                csv_path,
                f"line {line}: {sid} has ground truth but {scans} has no slice_{number}_*.png{more}",
            )
    if not known:
        return
    masks, labelled = masks_for_stack(table, stack)
    stack.masks = masks
    stack.labelled = labelled


def iter_uwmgi(path: str | Path) -> Iterator[Stack]:
    """Yield one stack per case-day under ``path`` (one at a time, to keep memory low)."""
    path = Path(path)
    layout = layout_of(path)
    if layout is None:
        if path.is_dir():
            raise GitsegInputError(
                path,
                "holds no UW-Madison data (expected caseN/caseN_dayM/scans/slice_NNNN_W_H_SX_SY.png)",
            )
        if not path.exists():
            raise GitsegInputError(path, "does not exist")
        try:
            parse_slice_filename(path.name)
        except ValueError as err:
            raise GitsegInputError(path, str(err)) from err
        raise GitsegInputError(path, "is not a UW-Madison slice PNG")
    tables: dict[Path, TrainTable] = {}
    if layout == "slice":
        yield read_case_day(path.parent, only=[path], tables=tables)
        return
    folders = case_day_folders(path)
    if not folders:
        raise GitsegInputError(path, "holds no caseN_dayM folders")
    for folder in folders:
        yield read_case_day(folder, tables=tables)


# ---------------------------------------------------------------- writing


def _uint16_image(stack: Stack) -> np.ndarray:
    image = np.asarray(stack.image)
    if image.dtype.kind == "f":
        if not np.isfinite(image).all() or not np.array_equal(image, np.round(image)):
            raise ValueError(f"{stack.source}: image has non-integer values; the PNG layout stores uint16")
    elif image.dtype.kind not in "uib":
        raise ValueError(f"{stack.source}: image dtype {image.dtype} cannot be stored as uint16")
    if image.size and (image.min() < 0 or image.max() > 65535):
        raise ValueError(f"{stack.source}: image values {image.min()}..{image.max()} do not fit uint16")
    return image.astype(np.uint16)


def write_uwmgi_dataset(root: str | Path, stacks: list[Stack]) -> Path:
    """Write stacks as ``root/train/caseN/caseN_dayM/scans/slice_*.png`` plus ``root/train.csv``; return root.

    Slice ids (``caseN_dayM_slice_NNNN``) give the file names; every file is written
    atomically. Labelled slices of stacks with masks get 3 rows each in ``train.csv`` (an
    existing ``train.csv`` keeps its rows for other case-days). Slice PNGs of a rewritten
    case-day that are not part of the new stack are removed. The z spacing is not stored
    (the layout fixes it at ``SLICE_THICKNESS_MM``).
    """
    from PIL import Image

    root = Path(root)
    written_days: set[str] = set()
    new_rows: dict[str, dict[str, str]] = {}
    for stack in stacks:
        image = _uint16_image(stack)
        _, height, width = image.shape
        by_folder: dict[Path, set[str]] = {}
        for z, sid in enumerate(stack.slice_ids):
            try:
                case, day, number = parse_slice_id(sid)
            except ValueError as err:
                raise ValueError(f"{stack.source}: {err}; cannot place it in the UW-Madison layout") from err
            scans = root / "train" / f"case{case}" / f"case{case}_day{day}" / "scans"
            scans.mkdir(parents=True, exist_ok=True)
            name = format_slice_filename(number, width, height, stack.spacing[2], stack.spacing[1])
            with atomic_output(scans / name, fsync=False) as tmp:
                Image.fromarray(np.ascontiguousarray(image[z])).save(tmp, format="PNG")
            by_folder.setdefault(scans, set()).add(name)
            written_days.add(f"case{case}_day{day}")
            if stack.masks is not None and (stack.labelled is None or stack.labelled[z]):
                new_rows[sid] = {
                    cls: rle_encode(stack.masks[stack.classes.index(cls), z]) if cls in stack.classes else ""
                    for cls in CLASSES
                }
        for scans, names in by_folder.items():
            for old in _png_entries(scans):
                if old.name not in names and _SLICE_PREFIX_RE.match(old.name):
                    old.unlink()

    csv_path = root / TRAIN_CSV
    table: dict[str, dict[str, str]] = {}
    if csv_path.is_file():
        table = {
            sid: row
            for sid, row in read_train_csv(csv_path).items()
            if sid.rpartition("_slice_")[0] not in written_days
        }
    table.update(new_rows)

    def _order(sid: str) -> tuple:
        try:
            return (0, *parse_slice_id(sid), "")
        except ValueError:
            return (1, 0, 0, 0, sid)

    write_train_table(csv_path, table, sorted(table, key=_order))
    return root
