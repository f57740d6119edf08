"""Names in the UW-Madison layout: ``caseN/caseN_dayM/scans/slice_NNNN_W_H_SX_SY.png``."""

from __future__ import annotations

import re
from dataclasses import dataclass

SLICE_FILE_RE = re.compile(
    r"^slice_(?P<num>\d{4})_(?P<w>\d+)_(?P<h>\d+)_(?P<sx>\d+(?:\.\d+)?)_(?P<sy>\d+(?:\.\d+)?)\.png$"
)
CASE_DAY_RE = re.compile(r"^case(?P<case>\d+)_day(?P<day>\d+)$")
CASE_RE = re.compile(r"^case(?P<case>\d+)$")
SLICE_ID_RE = re.compile(r"^case(?P<case>\d+)_day(?P<day>\d+)_slice_(?P<num>\d{4})$")
# the challenge's slices are 3 mm thick; the file names carry only the in-plane spacing
SLICE_THICKNESS_MM = 3.0


@dataclass(frozen=True)
class SliceName:
    """The parts of a slice file name: number, width, height, pixel spacing (x, y) in mm."""

    number: int
    width: int
    height: int
    spacing_x: float
    spacing_y: float


def parse_slice_filename(name: str) -> SliceName:
    """Parse ``slice_0065_266_266_1.50_1.50.png``; raise ValueError naming the problem."""
    match = SLICE_FILE_RE.match(name)
    if not match:
        raise ValueError(
            f"file name {name!r} does not match 'slice_NNNN_W_H_SX_SY.png' "
            "(slice number, width, height, pixel spacing x and y in mm)"
        )
    w, h = int(match["w"]), int(match["h"])
    sx, sy = float(match["sx"]), float(match["sy"])
    if w <= 0 or h <= 0:
        raise ValueError(f"file name {name!r} gives a zero image size {w}x{h}")
    if sx <= 0 or sy <= 0:
        raise ValueError(f"file name {name!r} gives a non-positive pixel spacing {sx}x{sy}")
    return SliceName(int(match["num"]), w, h, sx, sy)


def format_slice_filename(number: int, width: int, height: int, spacing_x: float, spacing_y: float) -> str:
    """Inverse of ``parse_slice_filename``."""
    return f"slice_{number:04d}_{width}_{height}_{spacing_x:.2f}_{spacing_y:.2f}.png"


def slice_id(case: int, day: int, number: int) -> str:
    """The challenge's slice id, e.g. ``case123_day20_slice_0065``."""
    return f"case{case}_day{day}_slice_{number:04d}"


def parse_slice_id(sid: str) -> tuple[int, int, int]:
    """``case123_day20_slice_0065`` -> (123, 20, 65); ValueError otherwise."""
    match = SLICE_ID_RE.match(sid)
    if not match:
        raise ValueError(f"slice id {sid!r} does not match 'caseN_dayM_slice_NNNN'")
    return int(match["case"]), int(match["day"]), int(match["num"])
