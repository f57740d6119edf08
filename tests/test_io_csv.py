"""The challenge's RLE CSV: reading with validation, decoding onto stacks, exact writing."""

from __future__ import annotations

import numpy as np
import pytest

from napari_gitseg.classes import CLASSES
from napari_gitseg.io import (
    GitsegInputError,
    Stack,
    masks_for_stack,
    read_train_csv,
    rle_decode,
    rle_encode,
    write_rle_csv,
)
from napari_gitseg.io.rle import RLEError
from napari_gitseg.io.train_csv import check_rle_syntax


def _csv(tmp_path, body: str, name="train.csv"):
    path = tmp_path / name
    path.write_text(body)
    return path


def _stack(ids, shape=(6, 5)):
    return Stack(np.zeros((len(ids), *shape), np.uint16), (3.0, 1.0, 1.0), list(ids), "mem", "test")


def test_rle_round_trip_and_challenge_convention():
    mask = np.zeros((3, 4), bool)
    mask[0, 1:3] = True  # flat pixels 1, 2 -> 1-based start 2
    mask[2, 3] = True  # flat pixel 11 -> start 12
    assert rle_encode(mask) == "2 2 12 1"
    np.testing.assert_array_equal(rle_decode("2 2 12 1", (3, 4)), mask)
    assert rle_encode(np.zeros((3, 4), bool)) == ""


def test_read_train_csv_gives_id_class_rle(tmp_path):
    path = _csv(
        tmp_path,
        "id,class,segmentation\n"
        "case1_day1_slice_0001,large_bowel,\n"
        "case1_day1_slice_0001,small_bowel,3 2\n"
        "case1_day1_slice_0001,stomach,1 1 5 2\n"
        "case1_day1_slice_0002,stomach,\n",
    )
    table = read_train_csv(path)
    assert table == {
        "case1_day1_slice_0001": {"large_bowel": "", "small_bowel": "3 2", "stomach": "1 1 5 2"},
        "case1_day1_slice_0002": {"stomach": ""},
    }
    assert table.line_of("case1_day1_slice_0001", "stomach") == 4


def test_submission_header_and_bom_are_accepted(tmp_path):
    path = tmp_path / "sub.csv"
    path.write_bytes("\ufeffid,class,predicted\r\ncase1_day1_slice_0001,stomach,1 2\r\n".encode())
    assert read_train_csv(path) == {"case1_day1_slice_0001": {"stomach": "1 2"}}


@pytest.mark.parametrize(
    "body, line, words",
    [
        ("", None, "empty"),
        ("image,label,rle\n", 1, "header"),
        ("id,class,segmentation\ncase1_day1_slice_0001,liver,1 2\n", 2, "liver"),
        ("id,class,segmentation\ncase1_day1_slice_0001,stomach,1 2 3\n", 2, "odd"),
        ("id,class,segmentation\ncase1_day1_slice_0001,stomach,a 2\n", 2, "integer"),
        ("id,class,segmentation\ncase1_day1_slice_0001,stomach,0 2\n", 2, "1-based"),
        ("id,class,segmentation\ncase1_day1_slice_0001,stomach,5 0\n", 2, "positive"),
        ("id,class,segmentation\nx,stomach,\ncase1_day1_slice_0001,stomach,5 3 6 1\n", 3, "overlap"),
        ("id,class,segmentation\ncase1_day1_slice_0001,stomach\n", 2, "3 fields"),
        ("id,class,segmentation\n,stomach,\n", 2, "empty id"),
        ("id,class,segmentation\na,stomach,\nb,stomach,\na,stomach,1 1\n", 4, "repeats line 2"),
    ],
    ids=["empty", "header", "class", "odd", "notint", "zero", "length", "overlap", "fields", "noid", "dup"],
)
def test_bad_csv_names_file_and_line(tmp_path, body, line, words):
    path = _csv(tmp_path, body)
    with pytest.raises(GitsegInputError) as err:
        read_train_csv(path)
    message = str(err.value)
    assert str(path) in message
    assert words in message
    if line is not None:
        assert f"line {line}" in message


def test_binary_and_missing_files_are_refused(tmp_path):
    binary = tmp_path / "train.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81 not text")
    with pytest.raises(GitsegInputError) as err:
        read_train_csv(binary)
    assert str(binary) in str(err.value)
    with pytest.raises(GitsegInputError) as err:
        read_train_csv(tmp_path / "missing.csv")
    assert "missing.csv" in str(err.value)


def test_check_rle_syntax_matches_rle_decode_on_a_large_grid():
    for rle in ["1 2", "1 2 4 1", "", "3 1 2 1", "1 2 2 1", "2 -1", "x y", "1"]:
        try:
            rle_decode(rle, (100, 100))
            decoded = True
        except RLEError:
            decoded = False
        try:
            check_rle_syntax(rle)
            checked = True
        except RLEError:
            checked = False
        assert decoded == checked, rle


def test_masks_for_stack_decodes_only_its_ids(tmp_path):
    stomach = np.zeros((6, 5), bool)
    stomach[1:3, 2:4] = True
    bowel = np.zeros((6, 5), bool)
    bowel[2:5, 0:3] = True
    path = _csv(
        tmp_path,
        "id,class,segmentation\n"
        f"v_slice_0002,stomach,{rle_encode(stomach)}\n"
        f"v_slice_0002,small_bowel,{rle_encode(bowel)}\n"
        "v_slice_0003,large_bowel,\n"
        "other_slice_0001,stomach,1 30\n",
    )
    stack = _stack(["v_slice_0001", "v_slice_0002", "v_slice_0003"])
    masks, labelled = masks_for_stack(read_train_csv(path), stack)
    assert masks.shape == (3, 3, 6, 5)
    np.testing.assert_array_equal(labelled, [False, True, True])
    np.testing.assert_array_equal(masks[CLASSES.index("stomach"), 1], stomach)
    np.testing.assert_array_equal(masks[CLASSES.index("small_bowel"), 1], bowel)
    assert masks.sum() == stomach.sum() + bowel.sum()


def test_masks_for_stack_names_file_and_line_when_runs_pass_the_image(tmp_path):
    path = _csv(tmp_path, "id,class,segmentation\nv_slice_0001,stomach,\nv_slice_0001,large_bowel,29 3\n")
    with pytest.raises(GitsegInputError) as err:
        masks_for_stack(read_train_csv(path), _stack(["v_slice_0001"]))
    assert str(path) in str(err.value) and "line 3" in str(err.value)


def test_write_rle_csv_is_the_exact_challenge_format(tmp_path):
    masks = np.zeros((3, 2, 3, 4), bool)
    masks[2, 0, 0, 1:3] = True
    masks[0, 1, 2, 3] = True
    masks[1, 1, 2, 3] = True  # overlapping with large bowel
    path = write_rle_csv(tmp_path / "out.csv", ["c1_slice_0001", "c1_slice_0002"], masks)
    assert path.read_text() == (
        "id,class,segmentation\n"
        "c1_slice_0001,large_bowel,\n"
        "c1_slice_0001,small_bowel,\n"
        "c1_slice_0001,stomach,2 2\n"
        "c1_slice_0002,large_bowel,12 1\n"
        "c1_slice_0002,small_bowel,12 1\n"
        "c1_slice_0002,stomach,\n"
    )
    back, labelled = masks_for_stack(read_train_csv(path), _stack(["c1_slice_0001", "c1_slice_0002"], (3, 4)))
    np.testing.assert_array_equal(back, masks)
    assert labelled.all()


def test_write_rle_csv_skips_unlabelled_and_writes_submission_header(tmp_path):
    masks = np.ones((3, 2, 2, 2), bool)
    path = write_rle_csv(tmp_path / "sub.csv", ["a", "b"], masks, labelled=np.array([False, True]), column="predicted")
    lines = path.read_text().splitlines()
    assert lines == ["id,class,predicted", "b,large_bowel,1 4", "b,small_bowel,1 4", "b,stomach,1 4"]


def test_write_rle_csv_refuses_mismatched_shapes(tmp_path):
    with pytest.raises(ValueError):
        write_rle_csv(tmp_path / "x.csv", ["a"], np.zeros((3, 2, 4, 4), bool))
    with pytest.raises(ValueError):
        write_rle_csv(tmp_path / "x.csv", ["a"], np.zeros((2, 1, 4, 4), bool))
    assert not (tmp_path / "x.csv").exists()
