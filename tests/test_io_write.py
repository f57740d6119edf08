"""Mask writers: write -> read round trips with overlapping organs, label images, atomic writes."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import tifffile

from napari_gitseg.classes import CLASSES, LABEL_VALUES, masks_to_labels
from napari_gitseg.io import GitsegInputError, Stack, read_masks, read_stack, write_masks
from napari_gitseg.io.nifti import read_nifti
from napari_gitseg.io.tiff import read_tiff, write_tiff

SUFFIXES = [".csv", ".tif", ".tiff", ".nii", ".nii.gz"]


def _stack(shape=(4, 10, 12), seed=0, spacing=(3.0, 1.5, 1.25)) -> Stack:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 1000, size=shape, dtype=np.uint16)
    ids = [f"case3_day7_slice_{z + 1:04d}" for z in range(shape[0])]
    return Stack(image, spacing, ids, "mem", "test")


def _overlapping_masks(shape, seed=1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    masks = rng.random((len(CLASSES), *shape)) > 0.6
    masks[:, 0, 2:5, 3:7] = True  # all three organs on the same pixels
    masks[:, -1] = False  # an empty slice
    return masks


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_masks_round_trip_with_overlaps(tmp_path, suffix):
    stack = _stack()
    masks = _overlapping_masks(stack.shape)
    path = write_masks(tmp_path / f"masks{suffix}", masks, stack)
    assert path == tmp_path / f"masks{suffix}" and path.is_file()
    back = read_masks(path, stack)
    np.testing.assert_array_equal(back.masks, masks)
    assert back.labelled.all()
    np.testing.assert_array_equal(back.image, stack.image)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


@pytest.mark.parametrize("suffix", [".tif", ".nii.gz"])
def test_label_images_round_trip(tmp_path, suffix):
    stack = _stack()
    masks = _overlapping_masks(stack.shape)
    path = write_masks(tmp_path / f"labels{suffix}", masks, stack, as_labels=True)
    back = read_masks(path, stack)
    labels = masks_to_labels(masks)
    for c, name in enumerate(CLASSES):
        np.testing.assert_array_equal(back.masks[c], labels == LABEL_VALUES[name])


def test_csv_keeps_only_labelled_slices(tmp_path):
    stack = _stack()
    stack.labelled = np.array([True, False, True, False])
    masks = _overlapping_masks(stack.shape)
    back = read_masks(write_masks(tmp_path / "gt.csv", masks, stack), stack)
    np.testing.assert_array_equal(back.labelled, stack.labelled)
    np.testing.assert_array_equal(back.masks[:, [0, 2]], masks[:, [0, 2]])
    assert not back.masks[:, [1, 3]].any()


def test_label_image_input_is_accepted(tmp_path):
    stack = _stack()
    labels = masks_to_labels(_overlapping_masks(stack.shape))
    back = read_masks(write_masks(tmp_path / "m.csv", labels, stack), stack)
    np.testing.assert_array_equal(masks_to_labels(back.masks), labels)


def test_unknown_extension_and_wrong_shapes_are_refused(tmp_path):
    stack = _stack()
    masks = _overlapping_masks(stack.shape)
    for name in ("masks.png", "masks.npy", "masks"):
        with pytest.raises(GitsegInputError) as err:
            write_masks(tmp_path / name, masks, stack)
        assert name in str(err.value)
    with pytest.raises(ValueError):
        write_masks(tmp_path / "m.tif", masks[:, :2], stack)
    with pytest.raises(ValueError):
        write_masks(tmp_path / "m.nii", masks[:2], stack)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_failed_write_leaves_the_old_file_intact(tmp_path, suffix, monkeypatch):
    stack = _stack()
    path = write_masks(tmp_path / f"m{suffix}", _overlapping_masks(stack.shape, seed=2), stack)
    before = path.read_bytes()

    def explode(*args, **kwargs):
        raise OSError("disk full")

    import napari_gitseg.io._util as util

    monkeypatch.setattr(util.os, "replace", explode)
    with pytest.raises(OSError, match="disk full"):
        write_masks(path, _overlapping_masks(stack.shape, seed=3), stack)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_nifti_masks_overlay_the_source_volume(tmp_path):
    data = np.random.default_rng(0).integers(0, 500, size=(6, 5, 4)).astype(np.int16)
    affine = np.array([[3.0, 0, 0, -10], [0, 3.0, 0, 20], [0, 0, 2.0, 5], [0, 0, 0, 1]])  # RAS
    source = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(source))
    stack = read_nifti(source)
    masks = np.zeros((3, *stack.shape), bool)
    bright = stack.image > 400
    masks[CLASSES.index("stomach")] = bright
    out = write_masks(tmp_path / "masks.nii.gz", masks, stack)
    saved = nib.load(str(out))
    assert saved.shape == (6, 5, 4, 3)
    np.testing.assert_allclose(saved.affine, affine)
    # in the source's own voxel order, the stomach channel is exactly the bright voxels
    np.testing.assert_array_equal(np.asarray(saved.dataobj)[..., CLASSES.index("stomach")] > 0, data > 400)


def test_nifti_from_a_png_stack_gets_an_affine_from_spacing(tmp_path):
    stack = _stack(spacing=(3.0, 1.5, 1.25))
    out = write_masks(tmp_path / "m.nii", _overlapping_masks(stack.shape), stack, as_labels=True)
    saved = nib.load(str(out))
    assert saved.header.get_zooms()[:3] == pytest.approx((1.25, 1.5, 3.0))
    assert nib.aff2axcodes(saved.affine) == ("L", "P", "S")


def test_tiff_masks_keep_spacing_and_are_refused_as_images(tmp_path):
    stack = _stack(spacing=(2.5, 0.75, 0.5))
    path = write_masks(tmp_path / "m.tif", _overlapping_masks(stack.shape), stack)
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].axes == "ZCYX"
        assert tif.imagej_metadata["spacing"] == pytest.approx(2.5)
    with pytest.raises(GitsegInputError) as err:
        read_tiff(path)
    assert "mask" in str(err.value)
    labels = write_tiff(tmp_path / "l.tif", masks_to_labels(_overlapping_masks(stack.shape)), stack.spacing)
    assert read_tiff(labels).spacing == pytest.approx((2.5, 0.75, 0.5))


def test_mask_files_on_the_wrong_grid_are_refused(tmp_path):
    stack = _stack()
    other = _stack(shape=(4, 10, 11))
    for suffix in (".tif", ".nii.gz"):
        path = write_masks(tmp_path / f"m{suffix}", _overlapping_masks(other.shape), other)
        with pytest.raises(GitsegInputError) as err:
            read_masks(path, stack)
        assert str(path) in str(err.value)


def test_tiff_labels_out_of_range_are_refused(tmp_path):
    stack = _stack()
    path = tmp_path / "l.tif"
    tifffile.imwrite(path, np.full(stack.shape, 9, np.uint8), photometric="minisblack")
    with pytest.raises(GitsegInputError) as err:
        read_masks(path, stack)
    assert str(path) in str(err.value) and "label values" in str(err.value)


def test_write_then_read_stack_from_tiff_image(tmp_path):
    # write_tiff is for masks and labels; an 8-bit label stack is still a readable image stack
    labels = np.random.default_rng(0).integers(0, 4, size=(3, 8, 9)).astype(np.uint8)
    path = write_tiff(tmp_path / "lab.tif", labels, (3.0, 1.0, 1.0))
    np.testing.assert_array_equal(read_stack(path).image, labels)


def test_one_extension_table_for_readers_writers_and_export(tmp_path):
    from napari_gitseg.export import export_format_of, provenance_path
    from napari_gitseg.io import format_of

    names = {
        "a.csv": "csv",
        "A.TIF": "tiff",
        "a.tiff": "tiff",
        "a.nii": "nifti",
        "a.NII.GZ": "nifti",
        "slice.png": "png",
        "a.csv.gz": None,
        "a.tar.gz": None,
        "a.gz": None,
        "a": None,
        "a.json": None,
    }
    assert {name: format_of(tmp_path / name) for name in names} == names
    # any .gz used to count as NIfTI for the Review dock's export
    assert [export_format_of(n) for n in ("r.csv", "r.tiff", "r.nii.gz", "r.csv.gz")] == ["csv", "tif", "nii", None]
    assert provenance_path(tmp_path / "r.nii.gz").name == "r.provenance.json"
    assert provenance_path(tmp_path / "r.v2.TIF").name == "r.v2.provenance.json"
    with pytest.raises(GitsegInputError, match=r"\.gz"):
        write_masks(tmp_path / "masks.csv.gz", np.zeros((3, 4, 10, 12), bool), _stack())
