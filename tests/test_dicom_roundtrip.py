"""DICOM RT-STRUCT and SEG: mask -> file -> mask round trips, each file checked by dciodvfy.

Phantom series are written as DICOM with an oblique orientation, a non-square grid, anisotropic
spacing and a slice order reversed on disk; the masks gain an organ with a hole and one-pixel
slivers. RT-STRUCT (polygons rasterised again) must keep Dice >= 0.99 per organ, SEG must be exact.
Real series shipped in installed wheels and TotalSegmentator's MR volume get the same round trip.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from napari_gitseg.classes import CLASSES
from napari_gitseg.io import GitsegInputError, read_stack
from napari_gitseg.io.dicom.contours import clean_mask
from napari_gitseg.io.dicom.export import images_folder, write_dicom_labels
from napari_gitseg.io.dicom.geometry import load_series
from napari_gitseg.io.dicom.names import TG263_NAMES, display_rgb
from napari_gitseg.io.dicom.series import read_dicom
from napari_gitseg.io.dicom.write import write_dicom_series
from napari_gitseg.phantom import make_phantom_case

ST, SB = CLASSES.index("stomach"), CLASSES.index("small_bowel")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def phantom_masks(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Phantom organ masks (C, Z, Y, X) for any grid: the middle slices of a phantom of that size."""
    z, h, w = shape
    case = make_phantom_case(seed, n_slices=2 * z + 4, size=(max(h, 32), max(w, 32)))
    start = (case.shape[0] - z) // 2
    return case.masks[:, start : start + z, :h, :w].copy()


def with_hole_and_slivers(masks: np.ndarray) -> np.ndarray:
    """Add a stomach ring (an organ with a hole) and one-pixel-wide slivers, straight and diagonal."""
    masks = masks.copy()
    _c, z, h, w = masks.shape
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - h // 3, xx - w * 2 // 3)
    masks[ST, z // 2] &= ~(r <= min(h, w) * 0.2)  # room for the ring
    masks[ST, z // 2] |= (r <= min(h, w) * 0.15) & (r > min(h, w) * 0.06)
    masks[SB, z // 2 + 1, 4, 5 : w // 2] = True
    for i in range(min(h, w) // 3):
        masks[SB, z // 2 - 1, 6 + i, 6 + i] = True
    return masks


def oblique_affine(spacing=(0.8, 1.3, 4.0), degrees=25.0) -> np.ndarray:
    axis = np.array([1.0, 1.0, 0.3]) / np.linalg.norm([1.0, 1.0, 0.3])
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    t = np.radians(degrees)
    rot = np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k
    affine = np.eye(4)
    affine[:3, :3] = rot * np.asarray(spacing)
    affine[:3, 3] = (-40.0, 20.0, 100.0)
    return affine


def reverse_on_disk(folder: Path) -> None:
    """Rename the files and renumber the instances so the disk order runs against the slice order."""
    files = sorted(folder.iterdir())
    for i, path in enumerate(files):
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = len(files) - i
        ds.save_as(folder / f"R{len(files) - i:03d}.dcm")
        path.unlink()


def round_trip(tmp_path: Path, stack, masks: np.ndarray, dciodvfy) -> dict:
    """Export RT-STRUCT and SEG of ``masks`` on ``stack``'s series, validate, read back; Dice per organ."""
    figures = {}
    for fmt in ("rtstruct", "seg"):
        out = tmp_path / f"{fmt}.dcm"
        written = write_dicom_labels(out, stack, masks, fmt)
        assert written == [out]
        dciodvfy(out)
        back = read_stack(out)
        assert back.meta["masks_source"] == str(out) and back.shape == stack.shape
        np.testing.assert_array_equal(back.image, stack.image)
        figures[fmt] = {c: round(dice(masks[i], back.masks[i]), 4) for i, c in enumerate(CLASSES)}
        if fmt == "seg":
            np.testing.assert_array_equal(back.masks, masks)
        else:  # the documented contract: specks below MIN_COMPONENT_PIXELS are dropped, then polygons are exact
            cleaned = [np.stack([clean_mask(m) for m in masks[i]]) for i in range(len(CLASSES))]
            assert min(dice(cleaned[i], back.masks[i]) for i in range(len(CLASSES))) >= 0.99, figures
        check_references(out, stack)
    return figures


def check_references(path: Path, stack) -> None:
    """Same Frame of Reference and series as the images; every RT contour within the image extent."""
    geometry = load_series(stack)
    ds = pydicom.dcmread(path)
    assert ds.FrameOfReferenceUID == geometry.frame_of_reference_uid
    if ds.Modality == "SEG":
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == geometry.series_instance_uid
        return
    assert [r.ROIName for r in ds.StructureSetROISequence] == [TG263_NAMES[c] for c in CLASSES]
    assert [tuple(int(v) for v in r.ROIDisplayColor) for r in ds.ROIContourSequence] == [
        display_rgb(c) for c in CLASSES
    ]
    ref = ds.ReferencedFrameOfReferenceSequence[0]
    assert ref.FrameOfReferenceUID == geometry.frame_of_reference_uid
    series = ref.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == geometry.series_instance_uid
    assert [i.ReferencedSOPInstanceUID for i in series.ContourImageSequence] == list(geometry.sop_instance_uids)
    _z, h, w = geometry.shape
    for roi in ds.ROIContourSequence:
        for contour in roi.get("ContourSequence", []):
            points = np.asarray(contour.ContourData, float).reshape(-1, 3)
            z = geometry.slice_of(points)
            assert z is not None
            assert contour.ContourImageSequence[0].ReferencedSOPInstanceUID == geometry.sop_instance_uids[z]
            rows, cols = geometry.to_pixels(z, points)
            assert rows.min() >= -0.5 and cols.min() >= -0.5 and rows.max() <= h - 0.5 and cols.max() <= w - 0.5
            assert contour.NumberOfContourPoints >= 4 and contour.ContourGeometricType == "CLOSED_PLANAR"


GRIDS = {
    "axial_anisotropic": dict(affine=np.diag([0.8, 1.3, 4.0, 1.0]), reverse=False),
    "oblique_anisotropic": dict(affine=oblique_affine(), reverse=False),
    "oblique_reversed_on_disk": dict(affine=oblique_affine(degrees=-40.0), reverse=True),
}


@pytest.mark.parametrize("grid", list(GRIDS))
def test_phantom_round_trip(tmp_path, grid, dciodvfy):
    phantom = make_phantom_case(3, n_slices=12, size=(64, 88))  # non-square grid
    masks = with_hole_and_slivers(phantom.masks)
    files = write_dicom_series(tmp_path / "series", phantom, affine=GRIDS[grid]["affine"])
    dciodvfy(files[0])
    if GRIDS[grid]["reverse"]:
        reverse_on_disk(tmp_path / "series")
    stack = read_dicom(tmp_path / "series")
    np.testing.assert_array_equal(stack.image, phantom.image)  # same z order as written
    assert stack.spacing == pytest.approx((4.0, 1.3, 0.8), abs=1e-6)
    figures = round_trip(tmp_path, stack, masks, dciodvfy)
    print(f"\nDice {grid}: {figures}")
    assert min(figures["rtstruct"].values()) >= 0.99  # against the masks as drawn, specks included
    back = read_stack(tmp_path / "rtstruct.dcm").masks
    z, (h, w) = masks.shape[1] // 2, masks.shape[2:]
    ring = (slice(h // 3 - 2, h // 3 + 3), slice(w * 2 // 3 - 2, w * 2 // 3 + 3))
    assert masks[ST, z][h // 3, w * 2 // 3 + 7] and back[ST, z][h // 3, w * 2 // 3 + 7]
    assert not masks[ST, z][ring].any() and not back[ST, z][ring].any(), "the hole of the ring is kept"
    np.testing.assert_array_equal(back[SB, z + 1, 4], masks[SB, z + 1, 4])  # straight sliver
    assert back[SB, z - 1][masks[SB, z - 1]].all()  # diagonal sliver


def test_non_dicom_stack_needs_with_images(tmp_path, dciodvfy):
    phantom = make_phantom_case(1, n_slices=8, size=(48, 64))
    out = tmp_path / "out" / "organs.dcm"
    with pytest.raises(GitsegInputError, match="--with-images") as err:
        write_dicom_labels(out, phantom, phantom.masks, "rtstruct")
    assert phantom.source in str(err.value) and not out.exists() and not images_folder(out).exists()
    written = write_dicom_labels(out, phantom, phantom.masks, "rtstruct", with_images=True)
    assert written[-1] == out and all(p.parent == images_folder(out) for p in written[:-1])
    for path in (written[0], out):
        dciodvfy(path)
    image = pydicom.dcmread(written[0])
    assert list(image.ImageType[:2]) == ["DERIVED", "SECONDARY"] and "napari-gitseg" in image.DerivationDescription
    assert [float(v) for v in image.PixelSpacing] == pytest.approx(phantom.spacing[1:])
    back = read_stack(out)
    np.testing.assert_array_equal(back.image, phantom.image)
    assert back.spacing == pytest.approx(phantom.spacing)
    assert min(dice(phantom.masks[i], back.masks[i]) for i in range(3)) >= 0.99


def _copy_series(files: list[Path], folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i, f in enumerate(files):
        shutil.copy(f, folder / f"IM{i}.dcm")
    return folder


@pytest.mark.filterwarnings('ignore:The string "dft patient name":UserWarning')  # pydicom's own example data
def test_real_series_from_installed_wheels(tmp_path, dciodvfy):
    import nibabel as nib
    from pydicom.data import get_testdata_file

    nicom = Path(nib.__file__).parent / "nicom" / "tests" / "data"
    cases = {
        "pydicom_MR_small": [Path(get_testdata_file("MR_small.dcm"))],
        "nibabel_nicom_0_1": [nicom / "0.dcm", nicom / "1.dcm"],
    }
    for name, files in cases.items():
        if not all(f.is_file() for f in files):
            pytest.skip(f"{files} not shipped with this install")
        folder = _copy_series(files, tmp_path / name / "series")
        stack = read_dicom(folder)
        masks = phantom_masks(stack.shape)
        assert masks.any()
        figures = round_trip(tmp_path / name, stack, masks, dciodvfy)
        print(f"\nDice {name} {stack.shape}: {figures}")


def test_totalsegmentator_mr_volume_as_dicom(tmp_path, io_shared_data, dciodvfy):
    path = io_shared_data / "totalsegmentator-examples" / "example_mr_sm.nii.gz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    volume = read_stack(path)
    masks = phantom_masks(volume.shape)
    out = tmp_path / "mr" / "organs.dcm"
    written = write_dicom_labels(out, volume, masks, "rtstruct", with_images=True)
    dciodvfy(written[0])
    stack = read_dicom(images_folder(out))
    np.testing.assert_array_equal(stack.image, volume.image)
    assert stack.spacing == pytest.approx(volume.spacing, abs=1e-4)
    figures = round_trip(tmp_path / "mr", stack, masks, dciodvfy)
    print(f"\nDice totalsegmentator_mr {stack.shape}: {figures}")


def test_smoothing_is_optional_and_stays_close(tmp_path):
    from napari_gitseg.io.dicom.contours import mask_to_polygons, polygons_to_mask

    phantom = make_phantom_case(1, n_slices=8, size=(64, 64))
    mask = phantom.masks[0][np.argmax(phantom.masks[0].sum(axis=(1, 2)))]
    exact = mask_to_polygons(mask)
    smooth = mask_to_polygons(mask, smooth_sigma=1.0)
    assert all(np.allclose(p * 4, np.round(p * 4)) for p in exact)  # pixel edges, quarter-pixel corner cuts
    assert not all(np.allclose(p * 4, np.round(p * 4)) for p in smooth)
    np.testing.assert_array_equal(polygons_to_mask(exact, mask.shape), clean_mask(mask))
    assert dice(polygons_to_mask(smooth, mask.shape), mask) > 0.9


def test_a_series_folder_with_unplaceable_labels_still_opens(tmp_path):
    phantom = make_phantom_case(1, n_slices=6, size=(48, 48))
    write_dicom_series(tmp_path / "a", phantom)
    write_dicom_series(tmp_path / "b", phantom)
    write_dicom_labels(tmp_path / "b" / "RS.dcm", read_dicom(tmp_path / "a"), phantom.masks, "rtstruct")
    stack = read_stack(tmp_path / "b")  # the RT-STRUCT beside series b cites series a
    assert stack.masks is None and "labels not read" in stack.meta["note"] and "not open" in stack.meta["note"]
    np.testing.assert_array_equal(stack.image, phantom.image)


def test_contours_sit_on_the_pixel_edges_in_patient_space(tmp_path):
    """Placement checked against the image file's own header, not against our inverse mapping."""
    phantom = make_phantom_case(1, n_slices=5, size=(40, 48))
    write_dicom_series(tmp_path / "series", phantom, affine=oblique_affine())
    stack = read_dicom(tmp_path / "series")
    masks = np.zeros_like(phantom.masks)
    masks[ST, 2, 10:13, 20:25] = True  # rows 10-12, columns 20-24
    out = tmp_path / "rs.dcm"
    write_dicom_labels(out, stack, masks, "rtstruct")
    contour = pydicom.dcmread(out).ROIContourSequence[ST].ContourSequence[0]
    assert len(pydicom.dcmread(out).ROIContourSequence[ST].ContourSequence) == 1
    uid = contour.ContourImageSequence[0].ReferencedSOPInstanceUID
    image = next(ds for ds in map(pydicom.dcmread, sorted((tmp_path / "series").iterdir())) if ds.SOPInstanceUID == uid)
    ipp = np.asarray(image.ImagePositionPatient, float)
    row_dir, col_dir = (
        np.asarray(image.ImageOrientationPatient[:3], float),
        np.asarray(image.ImageOrientationPatient[3:], float),
    )
    dy, dx = (float(v) for v in image.PixelSpacing)
    points = np.asarray(contour.ContourData, float).reshape(-1, 3) - ipp
    cols, rows = points @ row_dir / dx, points @ col_dir / dy
    assert np.abs(points @ np.cross(row_dir, col_dir)).max() < 1e-3  # on the image's plane
    assert rows.min() == pytest.approx(9.5, abs=1e-3) and rows.max() == pytest.approx(12.5, abs=1e-3)
    assert cols.min() == pytest.approx(19.5, abs=1e-3) and cols.max() == pytest.approx(24.5, abs=1e-3)
    area = 0.5 * abs(np.dot(cols, np.roll(rows, 1)) - np.dot(rows, np.roll(cols, 1)))
    assert area == pytest.approx(15 - 4 / 32, abs=1e-3)  # 15 pixels less four quarter-pixel corner cuts
