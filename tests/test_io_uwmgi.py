"""UW-Madison case folders: layouts, train.csv ground truth, bad input, and the dataset writer."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from napari_gitseg.classes import CLASSES
from napari_gitseg.io import GitsegInputError, Stack, read_stack, read_stacks, rle_encode, write_uwmgi_dataset
from napari_gitseg.io.uwmgi import find_train_csv, iter_uwmgi, layout_of, png_pixels, read_slice_png

GOOD_NAME = "slice_0001_32_24_1.50_1.25.png"  # width 32, height 24


def _scans(case_day):
    return case_day / "scans"


def _assert_names(err: pytest.ExceptionInfo, path) -> None:
    assert isinstance(err.value, GitsegInputError)
    assert str(path) in str(err.value)


# ------------------------------------------------------------------ layouts


def test_case_day_folder_reads_sorted_slices_with_spacing(uw_case_day):
    folder = uw_case_day(case=7, day=3, numbers=(10, 2, 5))
    stack = read_stack(folder)
    assert stack.kind == "uwmgi"
    assert stack.slice_ids == ["case7_day3_slice_0002", "case7_day3_slice_0005", "case7_day3_slice_0010"]
    assert stack.shape == (3, 24, 32)
    assert stack.image.dtype == np.uint16
    assert stack.spacing == (3.0, 1.25, 1.5)  # z, y (from SY), x (from SX)
    for z, n in enumerate((2, 5, 10)):
        on_disk = np.asarray(Image.open(next(_scans(folder).glob(f"slice_{n:04d}_*.png"))))
        np.testing.assert_array_equal(stack.image[z], on_disk)
    assert stack.masks is None
    assert stack.meta["missing_slice_numbers"] == [3, 4, 6, 7, 8, 9]


def test_scans_folder_and_single_slice_are_accepted(uw_case_day):
    folder = uw_case_day(case=2, day=4)
    from_scans = read_stack(_scans(folder))
    from_folder = read_stack(folder)
    np.testing.assert_array_equal(from_scans.image, from_folder.image)
    assert from_scans.slice_ids == from_folder.slice_ids
    one_file = sorted(_scans(folder).glob("slice_0003_*.png"))[0]
    single = read_stack(one_file)
    assert single.slice_ids == ["case2_day4_slice_0003"]
    np.testing.assert_array_equal(single.image[0], from_folder.image[2])


def test_case_folder_and_dataset_root_give_one_stack_per_day(uw_case_day, tmp_path):
    root = tmp_path / "kaggle"
    uw_case_day(case=12, day=2, root=root / "train", numbers=(1, 2))
    uw_case_day(case=12, day=10, root=root / "train", numbers=(1, 2, 3))
    uw_case_day(case=3, day=1, root=root / "train", numbers=(1,), height=20, width=20)
    case_stacks = read_stacks(root / "train" / "case12")
    assert [s.name for s in case_stacks] == ["case12_day2", "case12_day10"]  # numeric day order
    assert [s.shape[0] for s in case_stacks] == [2, 3]
    for path in (root, root / "train"):
        assert [s.name for s in read_stacks(path)] == ["case3_day1", "case12_day2", "case12_day10"]
    with pytest.raises(GitsegInputError) as err:
        read_stack(root)
    assert "3 stacks" in str(err.value)
    assert layout_of(root) == "root"
    assert layout_of(root / "train" / "case12") == "case"


# ------------------------------------------------------------------ train.csv ground truth


def _write_csv(path, rows):
    path.write_text("id,class,segmentation\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))


def test_train_csv_in_an_ancestor_is_attached(uw_case_day, tmp_path):
    folder = uw_case_day(case=5, day=1, root=tmp_path / "train", numbers=(1, 2, 3))
    stomach = np.zeros((24, 32), bool)
    stomach[3:6, 10:14] = True
    bowel = np.zeros((24, 32), bool)
    bowel[4:9, 12:20] = True  # overlaps the stomach
    rows = [
        ("case5_day1_slice_0001", "large_bowel", ""),
        ("case5_day1_slice_0001", "small_bowel", ""),
        ("case5_day1_slice_0001", "stomach", ""),
        ("case5_day1_slice_0002", "large_bowel", rle_encode(bowel)),
        ("case5_day1_slice_0002", "small_bowel", ""),
        ("case5_day1_slice_0002", "stomach", rle_encode(stomach)),
        ("case99_day1_slice_0001", "stomach", "1 3"),  # another case: not an error
    ]
    _write_csv(tmp_path / "train.csv", rows)
    assert find_train_csv(folder) == (tmp_path / "train.csv").resolve()
    stack = read_stack(folder)
    np.testing.assert_array_equal(stack.labelled, [True, True, False])
    np.testing.assert_array_equal(stack.masks[CLASSES.index("stomach"), 1], stomach)
    np.testing.assert_array_equal(stack.masks[CLASSES.index("large_bowel"), 1], bowel)
    assert not stack.masks[:, 0].any() and not stack.masks[:, 2].any()


def test_train_csv_id_with_missing_slice_file_is_an_error(uw_case_day, tmp_path):
    folder = uw_case_day(case=5, day=1, root=tmp_path, numbers=(1, 2))
    _write_csv(tmp_path / "train.csv", [("case5_day1_slice_0007", "stomach", "")])
    with pytest.raises(GitsegInputError) as err:
        read_stack(folder)
    _assert_names(err, tmp_path / "train.csv")
    assert "slice_0007" in str(err.value) and "line 2" in str(err.value)


def test_train_csv_rle_past_the_image_names_csv_and_line(uw_case_day, tmp_path):
    folder = uw_case_day(case=5, day=1, root=tmp_path, numbers=(1,))
    _write_csv(tmp_path / "train.csv", [("case5_day1_slice_0001", "stomach", f"{24 * 32} 2")])
    with pytest.raises(GitsegInputError) as err:
        read_stack(folder)
    _assert_names(err, tmp_path / "train.csv")
    assert "line 2" in str(err.value)


def test_train_csv_search_stops_after_four_levels(uw_case_day, tmp_path):
    folder = uw_case_day(case=1, day=1, root=tmp_path / "a" / "b" / "c")
    # case-day folder is tmp/a/b/c/case1/case1_day1: 4 levels up is tmp/a
    _write_csv(tmp_path / "train.csv", [("case1_day1_slice_0001", "stomach", "1 2")])
    assert find_train_csv(folder) is None
    assert read_stack(folder).masks is None
    _write_csv(tmp_path / "a" / "train.csv", [("case1_day1_slice_0001", "stomach", "1 2")])
    assert read_stack(folder).masks[CLASSES.index("stomach"), 0].sum() == 2


# ------------------------------------------------------------------ bad input


@pytest.fixture
def one_slice(uw_case_day):
    folder = uw_case_day(numbers=(1,))
    return folder, next(_scans(folder).glob("*.png"))


def test_truncated_png_is_refused(one_slice):
    folder, file = one_slice
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(GitsegInputError) as err:
        read_stack(folder)
    _assert_names(err, file)


def test_non_png_file_is_refused(one_slice):
    folder, file = one_slice
    file.write_bytes(b"this is not an image at all")
    with pytest.raises(GitsegInputError) as err:
        read_stack(folder)
    _assert_names(err, file)


def test_a_png_without_the_challenge_name_is_refused_saying_how_to_fix_it(one_slice, tmp_path):
    """A renamed slice (say slice_0001.png, as a PNG exported by another tool) has no pixel spacing."""
    _folder, file = one_slice
    renamed = tmp_path / "slice_0001.png"
    renamed.write_bytes(file.read_bytes())
    with pytest.raises(GitsegInputError) as err:
        read_stack(renamed)
    _assert_names(err, renamed)
    assert "slice_NNNN_W_H_SX_SY.png" in str(err.value) and "TIFF, NIfTI or DICOM" in str(err.value)


def test_other_image_format_with_png_name_is_refused(one_slice):
    folder, file = one_slice
    Image.fromarray(np.zeros((24, 32), np.uint16)).save(file, format="TIFF")
    with pytest.raises(GitsegInputError) as err:
        read_stack(folder)
    _assert_names(err, file)
    assert "not a PNG" in str(err.value)


def test_float_nan_image_disguised_as_png_is_refused(one_slice):
    folder, file = one_slice
    pixels = np.full((24, 32), np.nan, np.float32)
    Image.fromarray(pixels).save(file, format="TIFF")  # PNG cannot hold floats at all
    with pytest.raises(GitsegInputError) as err:
        read_stack(folder)
    _assert_names(err, file)


@pytest.mark.parametrize(
    "pixels, word",
    [
        (np.zeros((24, 32), np.uint8), "8-bit"),
        (np.zeros((24, 32, 3), np.uint8), "colour"),
        (np.zeros((24, 32, 4), np.uint8), "colour"),
        (np.zeros((24, 32), bool), "8-bit"),
    ],
    ids=["8bit", "rgb", "rgba", "1bit"],
)
def test_wrong_pixel_type_is_refused(one_slice, pixels, word):
    folder, file = one_slice
    Image.fromarray(pixels).save(file)
    with pytest.raises(GitsegInputError) as err:
        read_stack(folder)
    _assert_names(err, file)
    assert word in str(err.value)


def test_palette_png_is_refused(one_slice):
    folder, file = one_slice
    Image.fromarray(np.zeros((24, 32), np.uint8)).convert("P").save(file)
    with pytest.raises(GitsegInputError) as err:
        read_stack(folder)
    _assert_names(err, file)


def test_int32_mode_pixels_are_accepted_when_16bit_and_refused_otherwise(tmp_path):
    values = np.arange(24 * 32, dtype=np.int32).reshape(24, 32) * 80
    np.testing.assert_array_equal(png_pixels(tmp_path, Image.fromarray(values)), values.astype(np.uint16))
    with pytest.raises(GitsegInputError) as err:
        png_pixels(tmp_path / "x.png", Image.fromarray(values * 100))
    _assert_names(err, tmp_path / "x.png")


def test_real_size_must_match_the_name(one_slice):
    folder, file = one_slice
    Image.fromarray(np.zeros((32, 24), np.uint16)).save(file)  # transposed size
    with pytest.raises(GitsegInputError) as err:
        read_stack(folder)
    _assert_names(err, file)
    assert "24x32" in str(err.value)


def test_slices_of_different_sizes_are_refused(uw_case_day):
    folder = uw_case_day(numbers=(1, 2))
    odd = _scans(folder) / "slice_0003_20_20_1.50_1.25.png"
    Image.fromarray(np.zeros((20, 20), np.uint16)).save(odd)
    with pytest.raises(GitsegInputError) as err:
        read_stack(folder)
    _assert_names(err, odd)


def test_unparsable_file_name_is_refused(uw_case_day):
    folder = uw_case_day(numbers=(1,))
    bad = _scans(folder) / "slice_1.png"
    Image.fromarray(np.zeros((24, 32), np.uint16)).save(bad)
    with pytest.raises(GitsegInputError) as err:
        read_stack(folder)
    _assert_names(err, bad)


def test_duplicate_slice_numbers_are_refused(uw_case_day):
    folder = uw_case_day(numbers=(1, 2))
    twin = _scans(folder) / "slice_0002_32_24_1.5_1.25.png"
    Image.fromarray(np.zeros((24, 32), np.uint16)).save(twin)
    with pytest.raises(GitsegInputError) as err:
        read_stack(folder)
    assert "0002" in str(err.value)
    assert "slice_0002_32_24" in str(err.value)


def test_empty_folders_are_refused(tmp_path):
    empty = tmp_path / "case1" / "case1_day1" / "scans"
    empty.mkdir(parents=True)
    for path in (empty, empty.parent):
        with pytest.raises(GitsegInputError) as err:
            list(iter_uwmgi(path))
        _assert_names(err, empty)
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    with pytest.raises(GitsegInputError) as err:
        list(iter_uwmgi(nothing))
    _assert_names(err, nothing)
    with pytest.raises(GitsegInputError):
        read_stacks(nothing)


def test_hidden_and_non_png_files_are_ignored(uw_case_day):
    folder = uw_case_day(numbers=(1, 2))
    (_scans(folder) / ".DS_Store").write_bytes(b"\0\1junk")
    (_scans(folder) / "notes.txt").write_text("hello")
    (_scans(folder) / ".slice_0009_32_24_1.50_1.25.png.tmp.png").write_bytes(b"half")
    assert read_stack(folder).shape[0] == 2


def test_read_slice_png_checks_the_name(tmp_path):
    bad = tmp_path / "scan.png"
    Image.fromarray(np.zeros((4, 4), np.uint16)).save(bad)
    with pytest.raises(GitsegInputError) as err:
        read_slice_png(bad)
    _assert_names(err, bad)


# ------------------------------------------------------------------ writer


def _stack(case, day, numbers, shape=(24, 32), seed=0, labelled=None):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 65535, size=(len(numbers), *shape), dtype=np.uint16)
    masks = rng.random((3, len(numbers), *shape)) > 0.7  # organs overlap freely
    ids = [f"case{case}_day{day}_slice_{n:04d}" for n in numbers]
    return Stack(
        image=image,
        spacing=(3.0, 1.25, 1.5),
        slice_ids=ids,
        source="memory",
        kind="phantom",
        masks=masks,
        labelled=labelled,
    )


def test_write_uwmgi_dataset_round_trips_exactly(tmp_path):
    a = _stack(2, 1, (1, 2, 3), seed=1, labelled=np.array([True, False, True]))
    b = _stack(10, 5, (4, 5), shape=(20, 18), seed=2)
    root = write_uwmgi_dataset(tmp_path / "ds", [a, b])
    assert root == tmp_path / "ds"
    assert (root / "train" / "case2" / "case2_day1" / "scans" / "slice_0001_32_24_1.50_1.25.png").is_file()
    lines = (root / "train.csv").read_text().splitlines()
    assert lines[0] == "id,class,segmentation"
    assert len(lines) == 1 + 3 * (2 + 2)  # labelled slices only, 3 rows each
    assert [line.split(",")[1] for line in lines[1:4]] == list(CLASSES)
    back = {s.name: s for s in read_stacks(root)}
    for original in (a, b):
        got = back[original.name]
        np.testing.assert_array_equal(got.image, original.image)
        assert got.slice_ids == original.slice_ids
        assert got.spacing == original.spacing
        labelled = original.labelled if original.labelled is not None else np.ones(len(original.slice_ids), bool)
        np.testing.assert_array_equal(got.labelled, labelled)
        np.testing.assert_array_equal(got.masks[:, labelled], original.masks[:, labelled])
    assert not [p for p in root.rglob(".*")]  # no temporary files left behind


def test_write_uwmgi_dataset_rewrites_a_case_day_and_keeps_others(tmp_path):
    root = tmp_path / "ds"
    write_uwmgi_dataset(root, [_stack(1, 1, (1, 2, 3), seed=1), _stack(2, 1, (1,), seed=2)])
    smaller = _stack(1, 1, (1, 2), shape=(16, 16), seed=3)
    write_uwmgi_dataset(root, [smaller])
    stacks = {s.name: s for s in read_stacks(root)}
    assert stacks["case1_day1"].shape == (2, 16, 16)  # old slices removed, no stale csv rows
    np.testing.assert_array_equal(stacks["case1_day1"].masks, smaller.masks)
    assert stacks["case2_day1"].labelled.all()  # the other case-day kept its rows


def test_write_uwmgi_dataset_refuses_what_it_cannot_store(tmp_path):
    bad_ids = Stack(np.zeros((1, 4, 4), np.uint16), (3, 1, 1), ["volume_slice_0001"], "mem", "x")
    with pytest.raises(ValueError, match="caseN_dayM"):
        write_uwmgi_dataset(tmp_path, [bad_ids])
    floats = Stack(np.full((1, 4, 4), 0.5), (3, 1, 1), ["case1_day1_slice_0001"], "mem", "x")
    with pytest.raises(ValueError, match="non-integer"):
        write_uwmgi_dataset(tmp_path, [floats])
    negative = Stack(np.full((1, 4, 4), -1, np.int32), (3, 1, 1), ["case1_day1_slice_0001"], "mem", "x")
    with pytest.raises(ValueError, match="uint16"):
        write_uwmgi_dataset(tmp_path, [negative])


def test_written_files_have_normal_permissions(tmp_path):
    root = write_uwmgi_dataset(tmp_path / "ds", [_stack(1, 1, (1,))])
    reference = tmp_path / "plain.txt"
    reference.write_text("x")  # created the ordinary way, under the same umask
    assert os.stat(root / "train.csv").st_mode & 0o777 == os.stat(reference).st_mode & 0o777


def test_a_folder_named_scans_without_slices_is_not_taken_for_uw_data(tmp_path):
    scans = tmp_path / "patient" / "scans"
    scans.mkdir(parents=True)
    (scans / "IM0001").write_bytes(b"\0" * 10)
    assert layout_of(scans) is None
    assert layout_of(scans.parent) is None
