"""How the organs are named and coded in DICOM objects (RT-STRUCT ROIs and SEG segments).

ROI names follow AAPM TG-263 (``Bowel_Large``, ``Bowel_Small``, ``Stomach``), the names planning
systems expect; SEG segments are coded with their SNOMED CT concepts (category "Organ").
Imported objects are matched to the organs by name, ignoring case, spaces, ``_`` and ``-``, with
the common synonyms below (a structure set's other ROIs, e.g. BODY or PTV, are not organs of ours).
"""

from __future__ import annotations

import re

from napari_gitseg.classes import COLORS

TG263_NAMES: dict[str, str] = {"large_bowel": "Bowel_Large", "small_bowel": "Bowel_Small", "stomach": "Stomach"}
SNOMED: dict[str, tuple[str, str]] = {  # SNOMED CT code value and meaning
    "large_bowel": ("14742008", "Large intestine"),
    "small_bowel": ("30315005", "Small intestine"),
    "stomach": ("69695003", "Stomach"),
}
_SYNONYMS: dict[str, tuple[str, ...]] = {
    "large_bowel": ("largebowel", "bowellarge", "largeintestine", "colon"),
    "small_bowel": ("smallbowel", "bowelsmall", "smallintestine"),
    "stomach": ("stomach", "ventriculus"),
}


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", str(name)).lower()


_LOOKUP = {_key(s): cls for cls, names in _SYNONYMS.items() for s in names}
_LOOKUP.update({_key(n): cls for cls, n in TG263_NAMES.items()})
_LOOKUP.update({_key(cls): cls for cls in TG263_NAMES})
_LOOKUP.update({_key(meaning): cls for cls, (_code, meaning) in SNOMED.items()})
_BY_CODE = {code: cls for cls, (code, _m) in SNOMED.items()}


def organ_of(name: str, code: str | None = None) -> str | None:
    """The organ class an ROI or segment named ``name`` (or coded ``code``) stands for, else None."""
    if code is not None and code in _BY_CODE:
        return _BY_CODE[code]
    return _LOOKUP.get(_key(name))


def display_rgb(cls: str) -> tuple[int, int, int]:
    """The organ's fixed colour as 0..255 integers (RT-STRUCT ``ROIDisplayColor``)."""
    r, g, b, _a = COLORS[cls]
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))
