"""DICOM in and out: image series, RT-STRUCT and SEG labels on the series they cite.

``series`` reads an image series as a ``Stack``; ``labels`` opens RT-STRUCT/SEG files as organ
masks (``rt_read``, ``seg``) on the series they reference; ``export`` writes masks as RT-STRUCT
(``rt``, polygons from ``contours``) or SEG (``seg``), with the images as a derived MR series
(``write``) when the stack has none. ``geometry`` (slice positions, UIDs), ``names`` (TG-263 ROI
names, SNOMED codes) and ``common`` (what every written object shares) serve them all.
The names below are imported lazily (PEP 562), so importing this package loads no DICOM library.
"""

from __future__ import annotations

from napari_gitseg._lazy import lazy_getattr

_EXPORTS = {
    "looks_like_dicom": "series",
    "read_dicom": "series",
    "masks_from_file": "labels",
    "read_dicom_with_labels": "labels",
    "write_dicom_labels": "export",
    "write_dicom_series": "write",
    "load_series": "geometry",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
