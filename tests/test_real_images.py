"""Real labelled scans as training data: per-slice normalisation, runs of true neighbours, leave-out,
the mixture with rendered and phantom samples, and the command line's refusals."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from napari_gitseg.io.errors import GitsegInputError
from napari_gitseg.io.uwmgi import write_uwmgi_dataset
from napari_gitseg.model.normalize import check_normalization, normalize_stack
from napari_gitseg.phantom import make_phantom_case
from training.config import TrainConfig
from training.real_images import contiguous_runs, patients_of, read_labelled_scans


def test_per_slice_normalisation_undoes_a_per_slice_scale():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1000, size=(1, 32, 32)).astype(np.float32)
    stack = np.concatenate([base, base * 0.25, base * 3.0])  # the same slice, each scaled on its own
    per_slice = normalize_stack(stack, {"method": "percentile", "low": 0.5, "high": 99.5, "per_slice": True})
    np.testing.assert_allclose(per_slice[1], per_slice[0], atol=1e-5)
    np.testing.assert_allclose(per_slice[2], per_slice[0], atol=1e-5)
    whole = normalize_stack(stack)
    assert np.abs(whole[1] - whole[0]).mean() > 0.1  # per stack, the dim slice stays dim
    assert per_slice.dtype == np.float32 and per_slice.min() >= 0 and per_slice.max() <= 1


@pytest.mark.parametrize("spec", [{"method": "zscore"}, {"low": 60, "high": 40}, {"per_slice": "yes"}, "percentile"])
def test_bad_normalisation_is_refused_before_training(spec):
    with pytest.raises(ValueError):
        check_normalization(spec)
    with pytest.raises(ValueError, match="normalization"):
        TrainConfig(normalization=spec)


@pytest.fixture
def scans(tmp_path) -> Path:
    """Two phantom patients in the UW-Madison layout; case1 lost slices 4-5 (two runs: 1-3 and 6-8)."""
    stacks = [make_phantom_case(seed, case=case, n_slices=8, size=(40, 40)) for seed, case in ((0, 1), (1, 2))]
    keep = [0, 1, 2, 5, 6, 7]
    first = stacks[0]
    stacks[0] = dataclasses.replace(
        first,
        image=first.image[keep],
        masks=first.masks[:, keep],
        labelled=first.labelled[keep],
        slice_ids=[first.slice_ids[z] for z in keep],
    )
    return write_uwmgi_dataset(tmp_path / "data", stacks)


def test_a_case_day_with_a_gap_becomes_runs_of_true_neighbours(scans):
    stacks = read_labelled_scans([scans])
    names = sorted(s.name for s in stacks)
    assert names == ["case1_day0_z0001", "case1_day0_z0006", "case2_day0"]
    run = next(s for s in stacks if s.name == "case1_day0_z0006")
    original = make_phantom_case(0, case=1, n_slices=8, size=(40, 40))
    assert run.meta["slice_numbers"] == [6, 7, 8] and run.image.shape[0] == 3
    np.testing.assert_array_equal(run.masks, original.masks[:, 5:8])
    assert patients_of(stacks) == ["case1", "case2"]
    whole = next(s for s in stacks if s.name == "case2_day0")
    assert contiguous_runs(whole) == [whole]


def test_leave_out_drops_a_patient_and_a_typo_is_an_error(scans):
    kept = read_labelled_scans([scans], exclude_patients=["case1"])
    assert patients_of(kept) == ["case2"]
    with pytest.raises(GitsegInputError, match="case3"):
        read_labelled_scans([scans], exclude_patients=["case3"])
    with pytest.raises(GitsegInputError, match="not a folder"):
        read_labelled_scans([scans / "nothing-here"])


def test_the_mixture_draws_real_slices_at_their_share(scans):
    from training.datasets import SliceDataset
    from training.synthetic_dataset import MixedDataset, real_scan_slices

    real = real_scan_slices(read_labelled_scans([scans]), (32, 32), k=3, stride=2)
    phantom = SliceDataset(
        [make_phantom_case(5, n_slices=4, size=(32, 32))], k=3, stride=2, size=(32, 32), fit="resize"
    )

    class Rendered(list):
        names = ["case9_day0"]

    synthetic = Rendered({"provenance": "synthetic", "name": "case9_day0"} for _ in range(200))
    mixed = MixedDataset(synthetic, phantom, 0.2, seed=3, real=real, real_share=0.5)
    kinds = [mixed[i]["provenance"] for i in range(200)]
    assert 70 <= kinds.count("real") <= 130 and 15 <= kinds.count("phantom") <= 65
    assert [mixed[i]["provenance"] for i in range(200)] == kinds  # drawn from (seed, i)
    reals = [mixed[i] for i in range(200) if kinds[i] == "real"]
    assert {r["name"] for r in reals} <= set(real.names) and reals[0]["image"].shape == (3, 32, 32)
    with pytest.raises(ValueError, match="more than 1"):
        MixedDataset(synthetic, phantom, 0.6, real=real, real_share=0.5)
    with pytest.raises(ValueError, match="real dataset"):
        MixedDataset(synthetic, phantom, 0.2, real=None, real_share=0.3)


def _train_args(**changes) -> argparse.Namespace:
    args = {
        "data": None,
        "real_masks": "masks",
        "real_images": None,
        "real_share": 0.0,
        "leave_out": None,
        "val": None,
        "val_items": 8,
        "phantom_share": 0.0,
    }
    args.update(changes)
    return argparse.Namespace(**args)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"real_masks": None, "data": "scans", "real_images": ["x"]}, "go with --real-masks"),
        ({"real_masks": None, "data": "scans", "leave_out": "case1"}, "go with --real-masks"),
        ({"real_share": 0.5}, "needs --real-images"),
    ],
)
def test_the_command_line_refuses_real_images_without_their_partners(changes, message):
    from training.commands import _training_data

    with pytest.raises(GitsegInputError, match=message):
        _training_data(_train_args(**changes), TrainConfig())
