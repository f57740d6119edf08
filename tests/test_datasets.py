"""SliceDataset (2.5D windows, ambiguous slices, weights, sizing) and case-grouped splits."""

import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import training.datasets as datasets_module
from napari_gitseg.io.errors import GitsegInputError
from napari_gitseg.io.stack import Stack
from napari_gitseg.model.normalize import normalize_stack
from napari_gitseg.model.windows import make_windows
from training.datasets import SliceDataset, ambiguous_slices, body_bbox
from training.splits import case_of, split_by_case


def _stack(name="case1_day0", z=8, h=40, w=48, seed=0, labelled=None):
    """Random 16-bit stack with a stomach disc on slices 2-5 and a small-bowel square on 0-3."""
    rng = np.random.default_rng(seed)
    image = rng.integers(100, 4000, size=(z, h, w)).astype(np.uint16)
    masks = np.zeros((3, z, h, w), bool)
    yy, xx = np.mgrid[:h, :w]
    masks[2, 2:6] = (yy - h // 2) ** 2 + (xx - w // 2) ** 2 < 64
    masks[1, 0:4, 5:12, 5:14] = True
    return Stack(
        image=image,
        spacing=(3.0, 1.5, 1.5),
        slice_ids=[f"{name}_slice_{i + 1:04d}" for i in range(z)],
        source=f"/data/{name}",
        kind="test",
        masks=masks,
        labelled=labelled,
    )


def test_items_are_normalised_25d_windows_of_labelled_slices():
    stack = _stack(labelled=np.array([1, 1, 1, 0, 1, 1, 1, 1], bool))
    ds = SliceDataset([stack], k=3, stride=2, size=None)
    assert len(ds) == 7 and [z for _, z in ds.samples] == [0, 1, 2, 4, 5, 6, 7]
    item = ds[3]
    assert item["slice"] == 4 and item["slice_id"] == "case1_day0_slice_0005" and item["name"] == "case1_day0"
    expected = make_windows(normalize_stack(stack.image), [4], 3, 2)[0]  # slices 2, 4, 6
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 40, 48)
    np.testing.assert_allclose(item["image"].numpy(), expected)
    np.testing.assert_array_equal(item["masks"].numpy(), stack.masks[:, 4].astype(np.float32))
    assert item["has_organ"].tolist() == [0.0, 0.0, 1.0]
    assert item["weight"].item() == 1.0 and item["provenance"] == ""
    assert not item["ignore"].any()
    assert ds.sample_ids[3] == "case1_day0_slice_0005"


def test_each_stack_is_normalised_once(monkeypatch):
    calls = []

    def counting(image, spec=None):
        calls.append(image.shape)
        return normalize_stack(image, spec)

    monkeypatch.setattr(datasets_module, "normalize_stack", counting)
    ds = SliceDataset([_stack("case1_day0"), _stack("case2_day0", seed=1)], size=(32, 32))
    for i in range(len(ds)):
        ds[i]
    for i in range(len(ds)):
        ds[i]
    assert len(calls) == 2


def test_ambiguous_slices_by_hand():
    masks = np.zeros((1, 8, 2, 2), bool)
    masks[0, 0:2, 0, 0] = True  # run leaving the stack at z=0: only z=1 (next slice empty) is an edge
    masks[0, 4:7, 0, 0] = True  # run 4..6: edges 4 and 6
    lab = np.ones(8, bool)
    assert np.flatnonzero(ambiguous_slices(masks, lab)[0]).tolist() == [1, 4, 6]
    lab[3] = False  # the slice below 4 has no ground truth: 4 is not a known edge
    assert np.flatnonzero(ambiguous_slices(masks, lab)[0]).tolist() == [1, 6]


def test_ignore_ambiguous_flags_first_and_last_annotated_slice_per_class():
    ds = SliceDataset([_stack()], size=(32, 32), ignore_ambiguous=True)
    ignore = {item["slice"]: item["ignore"].tolist() for item in (ds[i] for i in range(len(ds)))}
    # stomach runs 2..5 -> flagged on 2 and 5; small bowel runs 0..3 from the stack edge -> 3 only
    assert [z for z, f in ignore.items() if f[2]] == [2, 5]
    assert [z for z, f in ignore.items() if f[1]] == [3]
    assert not any(f[0] for f in ignore.values())
    assert not any(SliceDataset([_stack()], size=(32, 32))[2]["ignore"])


def test_crop_and_pad_to_the_training_size():
    stack = _stack(h=40, w=20)
    ds = SliceDataset([stack], size=(32, 32), k=1, stride=1)
    item = ds[3]
    assert item["image"].shape == (1, 32, 32) and item["masks"].shape == (3, 32, 32)
    full = normalize_stack(stack.image)[3]
    # rows centre-cropped 40 -> 32 (start 4), columns zero-padded 20 -> 32 (6 left, 6 right)
    np.testing.assert_allclose(item["image"][0, :, 6:26].numpy(), full[4:36])
    assert float(item["image"][0, :, :6].abs().sum()) == 0.0
    np.testing.assert_array_equal(item["masks"][:, :, 6:26].numpy(), stack.masks[:, 3, 4:36])


def test_resize_fit_keeps_aspect_and_masks_binary():
    stack = _stack(h=40, w=80)
    ds = SliceDataset([stack], size=(32, 32), fit="resize")
    item = ds[3]  # stomach disc present
    assert item["image"].shape == (3, 32, 32)
    assert set(torch.unique(item["masks"]).tolist()) <= {0.0, 1.0}
    # 40x80 scaled by 0.4 -> 16x32, padded 8 rows above and below
    assert float(item["image"][:, :8].abs().sum()) == 0.0 and float(item["image"][:, 24:].abs().sum()) == 0.0
    rows = np.flatnonzero(item["masks"][2].numpy().any(axis=1))
    assert 8 <= rows.min() and rows.max() < 24


def test_crop_to_body_uses_the_bright_region():
    z, h, w = 4, 64, 64
    image = np.zeros((z, h, w), np.float32)
    image[:, 20:40, 10:50] = 1000.0  # the "body"
    image[:, 0, 0] = 1000.0  # a bright speck outside it
    masks = np.zeros((3, z, h, w), bool)
    masks[0, :, 25:30, 20:30] = True
    rows, cols = body_bbox(normalize_stack(image), threshold=0.1, margin=2)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (18, 42, 8, 52)
    ds = SliceDataset.from_arrays(
        {"scan": image}, {"scan": masks}, {"scan": [1]}, crop_to_body=True, size=None, body_margin=2
    )
    item = ds[0]
    assert item["image"].shape == (3, 24, 44)
    assert item["masks"][0].sum().item() == 50  # the organ is inside the crop


def test_weights_and_provenance():
    stacks = [_stack("case1_day0"), _stack("case2_day0", seed=1)]
    ds = SliceDataset(
        stacks,
        size=(32, 32),
        provenance={"case1_day0": "pseudo", "case2_day0": {0: "clinician"}},
        provenance_weights={"pseudo": 0.5},
        weights={"case2_day0": {1: 0.25}},
    )
    by_key = {(ds[i]["name"], ds[i]["slice"]): ds[i] for i in range(len(ds))}
    assert by_key[("case1_day0", 3)]["weight"].item() == 0.5
    assert by_key[("case1_day0", 3)]["provenance"] == "pseudo"
    assert by_key[("case2_day0", 0)]["provenance"] == "clinician"
    assert by_key[("case2_day0", 0)]["weight"].item() == 1.0
    assert by_key[("case2_day0", 1)]["weight"].item() == 0.25
    with pytest.raises(ValueError, match="unknown stack"):
        SliceDataset(stacks, weights={"case9_day0": 0.5})


def test_from_arrays_uses_only_the_given_slices():
    image = np.random.default_rng(0).random((6, 16, 16)).astype(np.float32)
    masks = np.zeros((3, 6, 16, 16), bool)
    masks[0, 2, 4:8, 4:8] = True
    ds = SliceDataset.from_arrays(
        {"a": image}, {"a": masks}, {"a": [2, 4]}, provenance={"a": "clinician"}, size=(16, 16), k=5, stride=1
    )
    assert [item["slice"] for item in ds] == [2, 4]
    assert ds[0]["image"].shape == (5, 16, 16) and ds[0]["masks"][0].sum().item() == 16
    assert ds[0]["slice_id"] == "a_slice_0003" and ds[0]["provenance"] == "clinician"
    with pytest.raises(GitsegInputError, match="outside"):
        SliceDataset.from_arrays({"a": image}, {"a": masks}, {"a": [6]})
    with pytest.raises(GitsegInputError, match="masks shape"):
        SliceDataset.from_arrays({"a": image}, {"a": masks[:2]}, {"a": [1]})
    with pytest.raises(ValueError, match="no image"):
        SliceDataset.from_arrays({}, {"a": masks}, {"a": [1]})


def test_explicit_slice_subset_and_its_errors():
    stack = _stack(labelled=np.array([1, 1, 1, 1, 0, 1, 1, 1], bool))
    ds = SliceDataset([stack], slices=[("case1_day0", 5), (0, 1)], size=(32, 32))
    assert ds.samples == [(0, 5), (0, 1)]
    with pytest.raises(GitsegInputError, match="no ground truth"):
        SliceDataset([stack], slices={"case1_day0": [4]})
    with pytest.raises(GitsegInputError, match="outside"):
        SliceDataset([stack], slices={"case1_day0": [8]})
    with pytest.raises(ValueError, match="unknown stack"):
        SliceDataset([stack], slices={"case7_day0": [1]})


def test_bad_stacks_are_named_in_errors():
    bare = _stack()
    bare.masks = None
    with pytest.raises(GitsegInputError, match="/data/case1_day0.*no ground-truth masks"):
        SliceDataset([bare])
    with pytest.raises(GitsegInputError, match="share the name"):
        SliceDataset([_stack(), _stack(seed=3)])
    with pytest.raises(ValueError, match="odd"):
        SliceDataset([_stack()], k=2)
    with pytest.raises(ValueError, match="fit"):
        SliceDataset([_stack()], fit="stretch")


def test_dataloader_batches_items():
    ds = SliceDataset([_stack(), _stack("case2_day1", seed=2)], size=(32, 32), ignore_ambiguous=True)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5, shuffle=False)))
    assert batch["image"].shape == (5, 3, 32, 32) and batch["masks"].shape == (5, 3, 32, 32)
    assert batch["ignore"].shape == (5, 3) and batch["ignore"].dtype == torch.bool
    assert batch["weight"].shape == (5,) and len(batch["slice_id"]) == 5


def test_phantom_case_feeds_the_dataset():
    phantom = pytest.importorskip("napari_gitseg.phantom")
    stack = phantom.make_phantom_case(0, n_slices=16, size=(96, 96))
    ds = SliceDataset([stack], size=None, crop_to_body=True, ignore_ambiguous=True)
    assert len(ds) == 16
    items = [ds[i] for i in range(len(ds))]
    assert all(0.0 <= float(it["image"].min()) and float(it["image"].max()) <= 1.0 for it in items)
    present = sum(float(it["has_organ"].sum()) for it in items)
    assert present == float(stack.masks.any(axis=(2, 3)).sum())  # the body crop kept every organ


# ---------------------------------------------------------------------------------------------
# splits


def test_case_of():
    assert case_of("case12_day3_slice_0040") == "case12"
    assert case_of("case12_day3") == "case12"
    assert case_of("case12") == "case12"
    assert case_of("scan_a_slice_0003") == "scan_a"
    assert case_of("patient7.nii") == "patient7.nii"
    assert case_of("caseX_day1") == "caseX_day1"


_ids = st.lists(
    st.tuples(st.integers(1, 12), st.integers(0, 4), st.integers(1, 20)), min_size=1, max_size=80, unique=True
).map(lambda t: [f"case{c}_day{d}_slice_{s:04d}" for c, d, s in t])


@settings(max_examples=40, deadline=None)
@given(ids=_ids, fraction=st.floats(0.1, 0.5), seed=st.integers(0, 2**16))
def test_split_by_case_never_straddles(ids, fraction, seed):
    if len({case_of(i) for i in ids}) < 2:
        with pytest.raises(ValueError, match="one case"):
            split_by_case(ids, fraction, seed)
        return
    train, val = split_by_case(ids, fraction, seed)
    assert sorted(train + val) == sorted(ids)
    assert {case_of(i) for i in train}.isdisjoint({case_of(i) for i in val})
    assert train and val
    assert [i for i in ids if i in set(train)] == train  # input order kept
    assert split_by_case(ids, fraction, seed) == (train, val)
    _, val_reversed = split_by_case(ids[::-1], fraction, seed)
    assert set(val_reversed) == set(val)  # the groups chosen do not depend on the input order


def test_split_fraction_is_roughly_right_and_seeded():
    ids = [f"case{c}_day{d}_slice_{s:04d}" for c in range(1, 41) for d in range(2) for s in range(10)]
    train, val = split_by_case(ids, 0.2, seed=1)
    assert abs(len(val) / len(ids) - 0.2) <= 0.03
    assert split_by_case(ids, 0.2, seed=1) == (train, val)
    assert split_by_case(ids, 0.2, seed=2) != (train, val)
    days = {re.match(r"(case\d+_day\d+)", i).group(1) for i in val}
    assert {d.split("_")[0] for d in days}.isdisjoint({case_of(i) for i in train})
    with pytest.raises(ValueError, match="between 0 and 1"):
        split_by_case(ids, 1.0)


def test_non_uw_stacks_group_by_their_own_name():
    ids = ["liverA_slice_0001", "liverA_slice_0002", "liverB_slice_0001", "case3_day1", "case3_day2"]
    train, val = split_by_case(ids, 0.4, seed=0)
    groups_train = {case_of(i) for i in train}
    assert groups_train.isdisjoint({case_of(i) for i in val})
    assert {"liverA", "liverB", "case3"} == groups_train | {case_of(i) for i in val}
