"""Real files from ../shared/data: a UW-Madison slice, two train.csv rows, TotalSegmentator volumes.

Skipped cleanly when the shared data folder is absent (a fresh clone has none).
"""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_gitseg.classes import CLASSES
from napari_gitseg.io import GitsegInputError, read_masks, read_stack, read_train_csv, rle_decode, write_masks
from napari_gitseg.io.nifti import TOTALSEG_CT_LABELS, TOTALSEG_MR_LABELS, read_nifti, read_nifti_labels

STOMACH = CLASSES.index("stomach")
UW_NAME = "slice_0065_266_266_1.50_1.50.png"


def _uw_case(tmp_path, data):
    scans = tmp_path / "case123" / "case123_day20" / "scans"
    scans.mkdir(parents=True)
    shutil.copy(data / "uwmgi-single-slice" / "slice_0001.png", scans / UW_NAME)
    return scans


def test_real_uw_slice_reads_as_16bit(tmp_path, io_shared_data):
    scans = _uw_case(tmp_path, io_shared_data)
    stack = read_stack(tmp_path / "case123")
    assert stack.shape == (1, 266, 266)
    assert stack.image.dtype == np.uint16
    assert int(stack.image.max()) == 125 and int(stack.image.min()) == 0
    assert stack.spacing == (3.0, 1.5, 1.5)
    assert stack.slice_ids == ["case123_day20_slice_0065"]
    assert read_stack(scans / UW_NAME).slice_ids == stack.slice_ids


def test_real_train_rows(io_shared_data):
    table = read_train_csv(io_shared_data / "uwmgi-rle-snippet" / "train_rows.csv")
    assert table["case123_day20_slice_0001"]["large_bowel"] == ""
    stomach = rle_decode(table["case123_day20_slice_0065"]["stomach"], (266, 266))
    rows, cols = np.nonzero(stomach)
    assert stomach.sum() == 156
    assert (rows.min(), rows.max()) == (105, 122)
    assert (cols.min(), cols.max()) == (159, 168)


def test_real_slice_with_real_train_csv(tmp_path, io_shared_data):
    scans = _uw_case(tmp_path, io_shared_data)
    shutil.copy(io_shared_data / "uwmgi-rle-snippet" / "train_rows.csv", tmp_path / "train.csv")
    # the CSV also labels slice 0001 of this case-day, which is not in the folder: a clear error
    with pytest.raises(GitsegInputError) as err:
        read_stack(tmp_path / "case123" / "case123_day20")
    assert "slice_0001" in str(err.value) and str(tmp_path / "train.csv") in str(err.value)
    # opening just the one slice file attaches its own ground truth
    stack = read_stack(scans / UW_NAME)
    assert stack.labelled.tolist() == [True]
    assert stack.masks[STOMACH, 0].sum() == 156
    assert not stack.masks[[0, 1]].any()


def _body(image: np.ndarray, threshold: float) -> np.ndarray:
    return np.stack([ndi.binary_fill_holes(plane) for plane in image > threshold])


@pytest.mark.parametrize(
    "image_name, seg_name, mapping, shape, threshold",
    [
        ("example_mr_sm", "example_seg_mr", TOTALSEG_MR_LABELS, (20, 91, 117), 40.0),
        ("example_ct_sm", "example_seg", TOTALSEG_CT_LABELS, (30, 101, 122), -500.0),
    ],
    ids=["mr", "ct"],
)
def test_totalsegmentator_volumes_and_labels(tmp_path, io_shared_data, image_name, seg_name, mapping, shape, threshold):
    folder = io_shared_data / "totalsegmentator-examples"
    stack = read_nifti(folder / f"{image_name}.nii.gz")
    assert stack.shape == shape
    assert stack.spacing == pytest.approx((3.0, 3.0, 3.0))
    labelled = read_nifti_labels(folder / f"{seg_name}.nii.gz", mapping, stack)
    masks = labelled.masks
    assert all(masks[c].sum() > 100 for c in range(len(CLASSES)))

    # aligned with the image: organ voxels lie inside the body, not in the air around it
    body = _body(stack.image, threshold)
    for c in range(len(CLASSES)):
        assert (masks[c] & body).sum() / masks[c].sum() > 0.99
    # oriented as documented (LPS, z inferior -> superior): the stomach sits to the patient's
    # left (larger x), anterior (smaller y) and above the small bowel (larger z)
    _, body_y, body_x = (axis.mean() for axis in np.nonzero(body))
    stomach_z, stomach_y, stomach_x = (axis.mean() for axis in np.nonzero(masks[STOMACH]))
    small_z = np.nonzero(masks[CLASSES.index("small_bowel")])[0].mean()
    assert stomach_x > body_x and stomach_y < body_y and stomach_z > small_z

    # written back, the masks match the original label file voxel for voxel
    out = write_masks(tmp_path / "masks.nii.gz", masks, labelled)
    saved = nib.load(str(out))
    original = nib.load(str(folder / f"{seg_name}.nii.gz"))
    np.testing.assert_allclose(saved.affine, original.affine, atol=1e-4)
    labels = np.asarray(original.dataobj)
    channels = np.asarray(saved.dataobj) > 0
    for c, name in enumerate(CLASSES):
        values = [v for v, cls in mapping.items() if cls == name]
        np.testing.assert_array_equal(channels[..., c], np.isin(labels, values))
    np.testing.assert_array_equal(read_masks(out, stack).masks, masks)
