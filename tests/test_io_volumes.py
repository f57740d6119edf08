"""TIFF, NIfTI and DICOM readers, format detection and the info summary."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile

from napari_gitseg.classes import CLASSES
from napari_gitseg.io import (
    GitsegInputError,
    Stack,
    detect_kind,
    read_nifti_labels,
    read_stack,
    read_stacks,
    stack_info,
)
from napari_gitseg.io.dicom.series import read_dicom
from napari_gitseg.io.nifti import TOTALSEG_CT_LABELS, TOTALSEG_MR_LABELS, read_nifti
from napari_gitseg.io.tiff import read_tiff


def _names(err: pytest.ExceptionInfo, path) -> None:
    assert isinstance(err.value, GitsegInputError)
    assert str(path) in str(err.value)


def _volume(shape=(5, 12, 16), seed=0, dtype=np.uint16):
    return np.random.default_rng(seed).integers(0, 1000, size=shape).astype(dtype)


# ------------------------------------------------------------------ TIFF


def test_imagej_tiff_gives_slices_and_spacing(tmp_path):
    volume = _volume()
    path = tmp_path / "scan.tif"
    tifffile.imwrite(
        path,
        volume,
        imagej=True,
        resolution=(1 / 0.8, 1 / 0.6),
        metadata={"spacing": 2.5, "unit": "mm", "axes": "ZYX"},
    )
    stack = read_stack(path)
    assert stack.kind == "tiff"
    np.testing.assert_array_equal(stack.image, volume)
    assert stack.spacing == pytest.approx((2.5, 0.6, 0.8))
    assert stack.slice_ids[0] == "scan_slice_0001" and stack.name == "scan"


def test_imagej_micron_units_are_converted_to_mm(tmp_path):
    path = tmp_path / "um.tif"
    tifffile.imwrite(
        path,
        _volume(),
        imagej=True,
        resolution=(1 / 500, 1 / 400),
        metadata={"spacing": 3000, "unit": "micron"},
    )
    stack = read_tiff(path)
    assert stack.shape == (5, 12, 16)  # tifffile marks these pages as channels: read as slices
    assert stack.spacing == pytest.approx((3.0, 0.4, 0.5))


def test_ome_tiff_spacing(tmp_path):
    path = tmp_path / "scan.ome.tif"
    tifffile.imwrite(
        path,
        _volume(),
        ome=True,
        metadata={
            "axes": "ZYX",
            "PhysicalSizeX": 0.7,
            "PhysicalSizeXUnit": "mm",
            "PhysicalSizeY": 0.9,
            "PhysicalSizeYUnit": "mm",
            "PhysicalSizeZ": 4.0,
            "PhysicalSizeZUnit": "mm",
        },
    )
    assert read_tiff(path).spacing == pytest.approx((4.0, 0.9, 0.7))


def test_plain_tiff_without_metadata_has_unit_spacing_and_a_note(tmp_path):
    path = tmp_path / "plain.tiff"
    tifffile.imwrite(path, _volume())
    stack = read_tiff(path)
    assert stack.spacing == (1.0, 1.0, 1.0)
    assert "spacing" in stack.meta["note"]
    assert stack.shape == (5, 12, 16)


def test_2d_tiff_is_one_slice(tmp_path):
    path = tmp_path / "one.tif"
    image = _volume((12, 16), dtype=np.float32)
    tifffile.imwrite(path, image)
    stack = read_tiff(path)
    assert stack.shape == (1, 12, 16)
    np.testing.assert_array_equal(stack.image[0], image)


@pytest.mark.parametrize(
    "data, kwargs, word",
    [
        (np.zeros((12, 16, 3), np.uint8), {"photometric": "rgb"}, "RGB"),
        (np.zeros((2, 5, 12, 16), np.uint16), {}, "4-D"),
        (np.zeros((4, 2, 12, 16), np.uint16), {"imagej": True, "metadata": {"axes": "ZCYX"}}, "channels"),
        (np.full((2, 12, 16), np.nan, np.float32), {}, "NaN"),
        (np.zeros((2, 12, 16), np.complex64), {}, "complex"),
        # tifffile's default for 3 or 4 planes is planar RGB: the message says how to save slices instead
        (np.zeros((3, 12, 16), np.uint16), {"photometric": "rgb", "planarconfig": "separate"}, "minisblack"),
    ],
    ids=["rgb", "4d", "channels", "nan", "complex", "three-slices-as-planar-rgb"],
)
def test_bad_tiffs_are_refused(tmp_path, data, kwargs, word):
    path = tmp_path / "bad.tif"
    tifffile.imwrite(path, data, **kwargs)
    with pytest.raises(GitsegInputError) as err:
        read_tiff(path)
    _names(err, path)
    assert word.lower() in str(err.value).lower()


def test_truncated_tiff_is_refused(tmp_path):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, _volume())
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(GitsegInputError) as err:
        read_tiff(path)
    _names(err, path)


# ------------------------------------------------------------------ NIfTI


def _nifti(path, data, affine):
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def test_nifti_is_reoriented_to_axial_lps(tmp_path):
    # array axes (x, y, z) with a distinct value per voxel; RAS affine with 2 x 3 x 4 mm voxels
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    ras = np.diag([2.0, 3.0, 4.0, 1.0])
    stack = read_nifti(_nifti(tmp_path / "ras.nii.gz", data, ras))
    assert stack.shape == (6, 5, 4)
    assert stack.spacing == (4.0, 3.0, 2.0)
    # LPS: x and y flipped relative to RAS, z kept (inferior -> superior)
    np.testing.assert_array_equal(stack.image, data[::-1, ::-1, :].transpose(2, 1, 0))
    # the same anatomy stored LPS-first reads to the same stack
    lps_data = data[::-1, ::-1, :]
    lps = np.diag([-2.0, -3.0, 4.0, 1.0])
    lps[:3, 3] = [2.0 * 3, 3.0 * 4, 0]
    again = read_nifti(_nifti(tmp_path / "lps.nii", lps_data, lps))
    np.testing.assert_array_equal(again.image, stack.image)
    assert again.meta["lps_affine"] == pytest.approx(stack.meta["lps_affine"])


def test_nifti_slices_are_along_superior_inferior_even_when_stored_sagittal(tmp_path):
    # voxel axes stored as (S, A, R): the third stored axis is left-right
    data = np.zeros((6, 5, 4), np.uint8)
    data[5, :, :] = 7  # most superior plane
    affine = np.array([[0, 0, 1.5, 0], [0, 2.0, 0, 0], [3.0, 0, 0, 0], [0, 0, 0, 1]])
    stack = read_nifti(_nifti(tmp_path / "sag.nii.gz", data, affine))
    assert stack.shape == (6, 5, 4)
    assert stack.spacing == (3.0, 2.0, 1.5)
    assert (stack.image[-1] == 7).all() and not stack.image[:-1].any()


def test_single_volume_4d_nifti_is_accepted(tmp_path):
    data = _volume((4, 5, 6, 1), dtype=np.float32)
    stack = read_nifti(_nifti(tmp_path / "one.nii.gz", data, np.eye(4)))
    assert stack.shape == (6, 5, 4)


@pytest.mark.parametrize(
    "shape, word",
    [((4, 5), "2-D"), ((4, 5, 6, 2), "2 volumes"), ((4, 5, 6, 1, 2), "5-D")],
    ids=["2d", "4d", "5d"],
)
def test_nifti_of_wrong_dimension_is_refused(tmp_path, shape, word):
    path = _nifti(tmp_path / "bad.nii.gz", np.zeros(shape, np.int16), np.eye(4))
    with pytest.raises(GitsegInputError) as err:
        read_nifti(path)
    _names(err, path)
    assert word in str(err.value)


def test_nifti_with_nan_or_truncated_data_is_refused(tmp_path):
    path = _nifti(tmp_path / "nan.nii", np.full((3, 3, 3), np.nan, np.float32), np.eye(4))
    with pytest.raises(GitsegInputError) as err:
        read_nifti(path)
    _names(err, path)
    cut = tmp_path / "cut.nii"
    cut.write_bytes(_nifti(tmp_path / "full.nii", _volume((8, 8, 8)), np.eye(4)).read_bytes()[:700])
    with pytest.raises(GitsegInputError) as err:
        read_nifti(cut)
    _names(err, cut)
    assert "truncated" in str(err.value)


def test_label_nifti_maps_values_to_classes_and_checks_the_grid(tmp_path):
    image = read_nifti(_nifti(tmp_path / "img.nii.gz", _volume((4, 5, 6), dtype=np.int16), np.diag([3, 3, 3, 1.0])))
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[0, 0, 0] = 6  # stomach
    labels[1, 1, 1] = 18  # small bowel
    labels[2, 2, 2] = 19  # duodenum -> small bowel
    labels[3, 3, 3] = 20  # colon -> large bowel
    labels[3, 4, 5] = 5  # another organ -> nothing
    seg = _nifti(tmp_path / "seg.nii.gz", labels, np.diag([3, 3, 3, 1.0]))
    with_masks = read_nifti_labels(seg, TOTALSEG_CT_LABELS, image)
    assert with_masks.masks.sum(axis=(1, 2, 3)).tolist() == [1, 2, 1]  # large, small, stomach
    assert with_masks.masks[CLASSES.index("stomach"), 0, 4, 3]  # RAS (x0, y0, z0) -> z0, last y, last x
    assert TOTALSEG_MR_LABELS[15] == "large_bowel" and TOTALSEG_MR_LABELS[14] == "small_bowel"
    shifted = _nifti(tmp_path / "shift.nii.gz", labels, np.diag([3, 3, 3.3, 1.0]))
    with pytest.raises(GitsegInputError) as err:
        read_nifti_labels(shifted, TOTALSEG_CT_LABELS, image)
    _names(err, shifted)
    small = _nifti(tmp_path / "small.nii.gz", labels[:3], np.diag([3, 3, 3, 1.0]))
    with pytest.raises(GitsegInputError) as err:
        read_nifti_labels(small, TOTALSEG_CT_LABELS, image)
    _names(err, small)


def test_not_a_nifti_is_refused(tmp_path):
    path = tmp_path / "fake.nii.gz"
    path.write_bytes(b"plain text, not gzip")
    with pytest.raises(GitsegInputError) as err:
        read_nifti(path)
    _names(err, path)


# ------------------------------------------------------------------ DICOM


def test_dicom_series_sorted_by_position_with_spacing(tmp_path, dicom_series):
    folder, volume = dicom_series(tmp_path / "series", n=5, gap=2.5, pixel_spacing=(0.8, 0.9))
    (folder / "README.txt").write_text("not dicom")
    stack = read_stack(folder)
    assert stack.kind == "dicom"
    np.testing.assert_array_equal(stack.image, volume)
    assert stack.spacing == pytest.approx((2.5, 0.8, 0.9))
    assert "skipped 1" in stack.meta["note"]


def test_dicom_oblique_series_sorted_along_the_normal(tmp_path, dicom_series):
    c, s = np.cos(0.3), np.sin(0.3)
    folder, volume = dicom_series(tmp_path / "obl", n=4, gap=3.0, orientation=(1, 0, 0, 0, c, s))
    stack = read_dicom(folder)
    np.testing.assert_array_equal(stack.image, volume)
    assert stack.spacing[0] == pytest.approx(3.0, abs=1e-3)


def test_dicom_rescale_is_applied(tmp_path, dicom_series):
    folder, volume = dicom_series(tmp_path / "ct", n=3, rescale=(1, -1024))
    stack = read_dicom(folder)
    assert stack.image.dtype.kind == "i"
    np.testing.assert_array_equal(stack.image, volume.astype(np.int32) - 1024)
    folder, volume = dicom_series(tmp_path / "pet", n=3, rescale=(0.5, 0.25))
    np.testing.assert_allclose(read_dicom(folder).image, volume * 0.5 + 0.25, rtol=1e-6)


def test_dicom_mixed_series_sizes_and_orientations_are_refused(tmp_path, dicom_series):
    two = tmp_path / "two"
    dicom_series(two, n=2, names=["a1", "a2"])
    dicom_series(two, n=2, names=["b1", "b2"], seed=1)
    with pytest.raises(GitsegInputError) as err:
        read_dicom(two)
    _names(err, two)
    assert "2 DICOM series" in str(err.value) and "a1" in str(err.value) and "b1" in str(err.value)

    sizes = tmp_path / "sizes"
    dicom_series(sizes, n=2, series_uid="1.2.3.4", names=["s1", "s2"])
    dicom_series(sizes, n=1, rows=10, series_uid="1.2.3.4", names=["s3"], gap=7)
    with pytest.raises(GitsegInputError) as err:
        read_dicom(sizes)
    assert "s3" in str(err.value) and "sizes" in str(err.value)

    turned = tmp_path / "turned"
    dicom_series(turned, n=2, series_uid="1.2.3.5", names=["t1", "t2"])
    dicom_series(turned, n=1, series_uid="1.2.3.5", names=["t3"], orientation=(0, 1, 0, 0, 0, -1))
    with pytest.raises(GitsegInputError) as err:
        read_dicom(turned)
    assert "t3" in str(err.value) and "orientation" in str(err.value)


def test_dicom_duplicate_positions_are_refused(tmp_path, dicom_series):
    folder = tmp_path / "echoes"
    dicom_series(folder, n=2, series_uid="1.2.3.6", names=["e1", "e2"])
    dicom_series(folder, n=1, series_uid="1.2.3.6", names=["e3"], seed=3)
    with pytest.raises(GitsegInputError) as err:
        read_dicom(folder)
    assert "same slice position" in str(err.value)


def test_pydicom_and_nibabel_test_files(tmp_path):
    from pydicom.data import get_testdata_file

    mr = read_stack(get_testdata_file("MR_small.dcm"))
    assert mr.shape == (1, 64, 64)
    assert mr.spacing[1:] == pytest.approx((0.3125, 0.3125))
    ct = read_dicom(get_testdata_file("CT_small.dcm"))
    assert ct.image.min() == 128 - 1024  # RescaleIntercept -1024 applied
    truncated = Path(get_testdata_file("MR_truncated.dcm"))
    with pytest.raises(GitsegInputError) as err:
        read_dicom(truncated)
    _names(err, truncated)
    nicom = Path(nib.__file__).parent / "nicom" / "tests" / "data"
    if not (nicom / "0.dcm").is_file():
        pytest.skip("nibabel DICOM test data not installed")
    series = tmp_path / "siemens"
    series.mkdir()
    shutil.copy(nicom / "1.dcm", series / "IM0001")  # no extension, copied out of order
    shutil.copy(nicom / "0.dcm", series / "IM0002")
    stack = read_stack(series)
    assert stack.shape == (2, 256, 256)
    assert stack.spacing == pytest.approx((3.0, 1.796875, 1.796875), abs=1e-3)
    assert stack.meta["files"] == ["IM0002", "IM0001"]  # inferior slice first


def test_non_dicom_file_is_refused(tmp_path):
    path = tmp_path / "x.dcm"
    path.write_bytes(b"\0" * 200)
    with pytest.raises(GitsegInputError) as err:
        read_dicom(path)
    _names(err, path)


# ------------------------------------------------------------------ detection, dispatch, info


def test_detect_kind(tmp_path, uw_case_day, dicom_series):
    case_day = uw_case_day(case=1, day=2)
    assert detect_kind(case_day) == "uwmgi"
    assert detect_kind(case_day.parent) == "uwmgi"
    assert detect_kind(next((case_day / "scans").glob("*.png"))) == "uwmgi"
    tifffile.imwrite(tmp_path / "a.TIF", _volume())
    assert detect_kind(tmp_path / "a.TIF") == "tiff"
    assert detect_kind(_nifti(tmp_path / "v.nii.gz", _volume((3, 3, 3)), np.eye(4))) == "nifti"
    folder, _ = dicom_series(tmp_path / "dcm", names=["x1", "x2", "x3", "x4"])
    assert detect_kind(folder) == "dicom"
    assert detect_kind(folder / "x1") == "dicom"
    (tmp_path / "notes.txt").write_text("hello")
    assert detect_kind(tmp_path / "notes.txt") is None
    (tmp_path / "photo.png").write_bytes(b"\x89PNG")
    assert detect_kind(tmp_path / "photo.png") is None
    (tmp_path / "empty").mkdir()
    assert detect_kind(tmp_path / "empty") is None
    assert detect_kind(tmp_path / "absent") is None


def test_read_stacks_refuses_what_it_cannot_read(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "photo.png").write_bytes(b"\x89PNG")
    (tmp_path / "empty").mkdir()
    for name, word in [
        ("notes.txt", "format"),
        ("photo.png", "slice_NNNN"),
        ("empty", "nothing"),
        ("absent", "exist"),
    ]:
        with pytest.raises(GitsegInputError) as err:
            read_stacks(tmp_path / name)
        _names(err, tmp_path / name)
        assert word in str(err.value)


def test_stack_info_is_json_ready_and_counts_labelled_slices(tmp_path, uw_case_day):
    folder = uw_case_day(case=4, day=1, numbers=(1, 2, 3))
    mask = np.zeros((24, 32), bool)
    mask[2:4, 2:4] = True
    from napari_gitseg.io import rle_encode

    (tmp_path / "train.csv").write_text(
        "id,class,segmentation\n"
        f"case4_day1_slice_0001,stomach,{rle_encode(mask)}\n"
        f"case4_day1_slice_0002,stomach,{rle_encode(mask)}\n"
        f"case4_day1_slice_0002,small_bowel,{rle_encode(mask)}\n"
        "case4_day1_slice_0003,large_bowel,\n"
    )
    info = stack_info(folder)
    json.dumps(info)
    assert info["kind"] == "uwmgi" and info["n_stacks"] == 1
    one = info["stacks"][0]
    expected_max = int(read_stack(folder).image.max())
    assert one["shape"] == [3, 24, 32] and one["dtype"] == "uint16" and one["max"] == expected_max
    assert one["spacing_mm"] == [3.0, 1.25, 1.5]
    assert one["n_labelled_slices"] == 3
    assert one["class_slices"] == {"large_bowel": 0, "small_bowel": 1, "stomach": 2}


def test_stack_info_without_labels(tmp_path):
    path = _nifti(tmp_path / "v.nii.gz", _volume((3, 4, 5), dtype=np.int16), np.eye(4))
    info = stack_info(path)
    assert info["kind"] == "nifti"
    assert "class_slices" not in info["stacks"][0]
    assert info["stacks"][0]["shape"] == [5, 4, 3]


def test_stack_rejects_inconsistent_fields():
    with pytest.raises(ValueError):
        Stack(np.zeros((2, 3, 3)), (1, 1, 1), ["a"], "mem", "x")


def test_nifti_with_a_degenerate_affine_is_refused(tmp_path):
    path = _nifti(tmp_path / "flat.nii", np.zeros((3, 4, 5), np.int16), np.diag([3.0, 3.0, 3.0, 1.0]))
    header = nib.load(str(path)).header
    assert header["sform_code"] > 0
    data = bytearray(path.read_bytes())
    data[280:296] = np.array([np.nan, 0, 0, 0], "<f4").tobytes()  # srow_x
    data[296:312] = np.zeros(4, "<f4").tobytes()  # srow_y
    data[252:256] = np.array([0, 1], "<i2").tobytes()  # qform_code 0, sform_code 1
    path.write_bytes(bytes(data))
    with pytest.raises(GitsegInputError) as err:
        read_nifti(path)
    _names(err, path)
    assert "orientation" in str(err.value)


def test_dicom_with_an_unknown_value_representation_is_refused(tmp_path):
    from pydicom.data import get_testdata_file

    data = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    tag = b"\x20\x00\x0e\x00UI"  # SeriesInstanceUID, explicit VR
    assert tag in data
    path = tmp_path / "odd.dcm"
    path.write_bytes(data.replace(tag, b"\x20\x00\x0e\x00UG"))
    with pytest.raises(GitsegInputError) as err:
        read_dicom(path)
    _names(err, path)
