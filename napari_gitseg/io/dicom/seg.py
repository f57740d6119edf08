"""Per-organ masks as a DICOM Segmentation (SEG) object, written and read with highdicom.

One BINARY segment per organ (label and SNOMED CT code from ``names``, colour as
CIELab); highdicom writes the frames in source-image order with the per-frame references
(source SOP Instance, plane position) and dimension index the standard requires, and omits
empty frames. Overlapping organs survive (each segment has its own frames). Reading refuses, with
the file named, another Frame of Reference or series than the open one and segments that are
not organs of ours.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_gitseg.io.dicom.common import MANUFACTURER, save_atomic, software_version
from napari_gitseg.io.dicom.geometry import SeriesGeometry
from napari_gitseg.io.dicom.names import SNOMED, TG263_NAMES, display_rgb, organ_of
from napari_gitseg.io.errors import GitsegInputError


def _descriptions(classes: tuple[str, ...], algorithm: str) -> list:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    ident = hd.AlgorithmIdentificationSequence(
        name=MANUFACTURER, version=software_version(), family=codes.cid7162.ArtificialIntelligence
    )
    out = []
    for number, cls in enumerate(classes, start=1):
        code, meaning = SNOMED[cls]
        rgb = np.asarray(display_rgb(cls), np.uint8)
        out.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=TG263_NAMES.get(cls, cls),
                segmented_property_category=codes.SCT.Organ,
                segmented_property_type=hd.sr.CodedConcept(code, "SCT", meaning),
                algorithm_type=algorithm,
                algorithm_identification=None if algorithm == "MANUAL" else ident,
                display_color=hd.color.CIELabColor.from_rgb(*rgb),
            )
        )
    return out


def build_seg(
    geometry: SeriesGeometry,
    masks: np.ndarray,
    classes: tuple[str, ...],
    *,
    algorithm: str = "SEMIAUTOMATIC",
    label: str = "gitseg organs",
):
    """The SEG dataset of per-class masks ``(C, Z, Y, X)`` on ``geometry``'s series."""
    import highdicom as hd
    from pydicom.uid import generate_uid

    masks = np.asarray(masks, bool)
    if masks.shape != (len(classes), *geometry.shape):
        raise ValueError(f"masks shape {masks.shape} != {(len(classes), *geometry.shape)}")
    return hd.seg.Segmentation(
        source_images=geometry.headers,
        pixel_array=np.moveaxis(masks, 0, -1).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_descriptions(tuple(classes), algorithm),
        series_instance_uid=generate_uid(),
        series_number=902,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MANUFACTURER,
        software_versions=software_version(),
        device_serial_number="0",
        content_label="ORGANS",
        content_description=label,
        series_description=label,
        omit_empty_frames=bool(masks.any()),
    )


def write_seg(
    path: str | Path, geometry: SeriesGeometry, masks: np.ndarray, classes: tuple[str, ...], **options
) -> Path:
    """Write the SEG of ``masks`` on ``geometry``'s series to ``path`` (atomically)."""
    return save_atomic(build_seg(geometry, masks, classes, **options), path)


def read_seg_masks(
    path: str | Path, ds, geometry: SeriesGeometry, classes: tuple[str, ...]
) -> tuple[np.ndarray, list[str]]:
    """(masks (C, Z, Y, X) bool, notes) of SEG dataset ``ds`` on ``geometry``'s series."""
    import highdicom as hd

    path = Path(path)
    try:
        seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
    except Exception as err:  # noqa: BLE001  (a damaged object makes highdicom raise almost anything)
        raise GitsegInputError(path, f"is not a readable DICOM SEG ({type(err).__name__}: {err})") from err
    geometry.check_cited(
        path,
        {str(s.get("SeriesInstanceUID", "")) for s in seg.get("ReferencedSeriesSequence", [])},
        {str(seg.get("FrameOfReferenceUID", ""))},
    )
    numbers, targets = [], []
    for number in seg.get_segment_numbers():
        desc = seg.get_segment_description(number)
        cls = organ_of(desc.segment_label, getattr(desc.segmented_property_type, "value", None))
        if cls is None or cls not in classes:
            raise GitsegInputError(
                path,
                f"segment {number} {desc.segment_label!r} is not one of the organs "
                f"{', '.join(TG263_NAMES[c] for c in classes if c in TG263_NAMES)}",
            )
        numbers.append(number)
        targets.append(classes.index(cls))
    try:
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=list(geometry.sop_instance_uids),
            segment_numbers=numbers,
            assert_missing_frames_are_empty=True,
        )
    except Exception as err:  # noqa: BLE001
        raise GitsegInputError(path, f"frames cannot be placed on {geometry.source} ({err})") from err
    masks = np.zeros((len(classes), *geometry.shape), bool)
    for i, c in enumerate(targets):
        masks[c] |= pixels[..., i] > 0
    return masks, []
