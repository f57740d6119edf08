"""The pure helpers of benchmarks/bench_real.py and benchmarks/real_data.py on tiny synthetic data
(the benchmarks themselves need ../shared)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_gitseg.io.stack import Stack

CLASSES = ("large_bowel", "small_bowel", "stomach")


@pytest.fixture
def bench(import_benchmark):
    return import_benchmark("bench_real")


@pytest.fixture
def real_data(import_benchmark):
    return import_benchmark("real_data")


def _slice(case: int, day: int, number: int) -> Stack:
    masks = np.zeros((3, 1, 8, 8), bool)
    masks[case % 3, 0, 2:5, 2:5] = True
    return Stack(
        image=np.full((1, 8, 8), number, np.uint16),
        spacing=(3.0, 1.5, 1.5),
        slice_ids=[f"case{case}_day{day}_slice_{number:04d}"],
        source="x",
        kind="uwmgi",
        masks=masks,
    )


def test_each_real_slice_gets_a_stack_name_of_its_own_and_keeps_its_patient(real_data):
    a, b = real_data.unique_name(_slice(101, 20, 78)), real_data.unique_name(_slice(101, 20, 110))
    assert a.name == "case101_day20_z0078" != b.name == "case101_day20_z0110"
    assert real_data.patient_of(a) == real_data.patient_of(b) == "case101"
    assert a.meta["original_slice_id"] == "case101_day20_slice_0078"
    assert np.array_equal(a.masks, _slice(101, 20, 78).masks)
    with pytest.raises(ValueError, match="single slice"):
        real_data.unique_name(
            Stack(image=np.zeros((2, 4, 4)), spacing=(1, 1, 1), slice_ids=["a", "b"], source="s", kind="tiff")
        )


def test_folds_leave_each_patient_out_once_and_choices_spread_over_patients(real_data):
    stacks = [
        real_data.unique_name(_slice(c, d, n))
        for c, d, n in [(11, 1, 5), (11, 1, 9), (11, 2, 3), (7, 0, 1), (7, 0, 2), (125, 4, 60)]
    ]
    folds = real_data.patient_folds(stacks)
    assert [p for p, _train, _test in folds] == ["case7", "case11", "case125"]
    for patient, train, test in folds:
        assert {real_data.patient_of(s) for s in test} == {patient}
        assert patient not in {real_data.patient_of(s) for s in train}
        assert len(train) + len(test) == len(stacks)
    chosen = real_data.choose_slices(stacks, 3, seed=0)
    assert sorted(real_data.patient_of(s) for s in chosen) == ["case11", "case125", "case7"]
    assert [s.name for s in real_data.choose_slices(stacks, 4, seed=3)] == [
        s.name for s in real_data.choose_slices(stacks, 4, seed=3)
    ]  # deterministic per seed
    assert len(real_data.choose_slices(stacks, 50)) == len(stacks)  # at most all


def test_scores_count_organ_rows_and_the_challenge_rows(bench):
    truth = np.zeros((3, 2, 8, 8), bool)
    truth[0, 0, :4] = True  # large bowel on slice 0 only
    truth[2, :, 4:] = True  # stomach on both slices
    perfect = bench.score_cases([(truth, truth, np.ones(2, bool))], CLASSES)
    assert perfect["mean Dice"] == pytest.approx(1.0) and perfect["challenge score"] == pytest.approx(1.0)
    nothing = bench.score_cases([(np.zeros_like(truth), truth, np.ones(2, bool))], CLASSES)
    assert nothing["mean Dice"] == 0.0 and nothing["Dice stomach"] == 0.0
    # small bowel is empty everywhere: no organ row; the challenge counts its 2 empty rows (and 1 of large bowel) as 1
    assert np.isnan(nothing["Dice small_bowel"])
    assert nothing["challenge Dice"] == pytest.approx(3 / 6)
    assert list(nothing) == [
        "Dice large_bowel",
        "Dice small_bowel",
        "Dice stomach",
        "mean Dice",
        "challenge Dice",
        "challenge score",
    ]


def test_the_table_pairs_old_and_new_with_their_ratio(bench):
    old = {"mean Dice": 0.05, "challenge score": 0.4}
    new = {"mean Dice": 0.55, "challenge score": 0.6}
    rows = bench.side_by_side(old, new)
    assert rows == {"mean Dice": (0.05, 0.55), "challenge score": (0.4, 0.6)}
    table = bench.format_table(rows, "zero-shot real slices").splitlines()
    assert table[0].split() == ["zero-shot", "real", "slices", "old", "new", "new/old"]
    assert table[2].split() == ["mean", "Dice", "0.0500", "0.5500", "11.00"]
    assert table[3].split()[-1] == "1.50"
    assert bench.ratio(0.0, 0.3) == float("inf") and np.isnan(bench.ratio(0.0, 0.0))
    with pytest.raises(ValueError, match="differ"):
        bench.side_by_side(old, {"mean Dice": 0.1})


def test_the_curve_is_written_as_a_png(bench, tmp_path):
    path = bench.plot_curve(
        {
            "old": {0: 0.04, 3: 0.2, 6: 0.3},
            "new": {0: 0.5, 3: 0.6, 6: 0.7},
            "new, candidate": {0: 0.5, 3: 0.65, 6: 0.72},
        },
        tmp_path / "curve.png",
        dashed=["new, candidate"],
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_totalsegmentator_labels_map_to_the_three_organs_in_the_uw_orientation(real_data, tmp_path):
    import nibabel as nib

    image = np.zeros((6, 5, 3), np.int16)  # x, y, z; identity affine: RAS+ (x to the right, y anterior, z superior)
    labels = np.zeros((6, 5, 3), np.uint8)
    labels[0, 0, 0] = 15  # colon at the patient's left, posterior, inferior corner
    labels[1, 0, 0], labels[2, 0, 0] = 13, 14  # small bowel and duodenum beside it
    labels[5, 4, 2] = 6  # stomach at right, anterior, superior
    labels[3, 3, 1] = 2  # another organ (kidney): no class
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "mr.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), tmp_path / "seg.nii.gz")
    stack = real_data.read_totalseg_mr(tmp_path / "mr.nii.gz", tmp_path / "seg.nii.gz")
    assert stack.shape == (3, 5, 6) and tuple(stack.classes) == CLASSES
    large, small, stomach = stack.masks
    assert large.sum() == 1 and small.sum() == 2 and stomach.sum() == 1
    # UW display (z, row, column): row 0 anterior, column 0 the patient's right (radiological), z inferior first
    assert large[0, 4, 5] and small[0, 4, 4] and small[0, 4, 3] and stomach[2, 0, 0]


def test_without_the_shared_data_the_benchmark_skips_cleanly(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "REAL_SLICES", tmp_path / "absent")
    assert bench.main(["--quick", "--out", str(tmp_path / "out")]) == 0
    assert "skipped" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_a_benchmark_project_saves_only_the_chosen_slices_as_clinician_labels(bench, tiny_bundle, tmp_path):
    from napari_gitseg.store import LabelStore

    masks = np.zeros((3, 5, 8, 8), bool)
    masks[0, :, 2:5, 2:5] = True
    stack = Stack(
        image=np.arange(5 * 64, dtype=np.uint16).reshape(5, 8, 8),
        spacing=(3.0, 1.5, 1.5),
        slice_ids=[f"case9_day1_slice_{z:04d}" for z in range(1, 6)],
        source="x",
        kind="uwmgi",
        masks=masks,
    )
    every = bench.make_project(tmp_path / "all", tiny_bundle, [stack])
    some = bench.make_project(tmp_path / "some", tiny_bundle, [stack], only={stack.name: [0, 3]})
    with LabelStore.open(every, create=False) as store:
        assert len(store.clinician_slices()) == 5
    with LabelStore.open(some, create=False) as store:
        assert sorted(store.clinician_slices()) == ["case9_day1_slice_0001", "case9_day1_slice_0004"]


def _bundle_json(path: Path, data: dict) -> Path:
    import json

    path.write_text(json.dumps({"training": {"data": data}}))
    return path


def test_a_patient_is_scored_only_by_a_bundle_that_never_saw_it(real_data, tmp_path):
    rendered = _bundle_json(tmp_path / "a.json", {"data": "synthetic images rendered around the real masks of x"})
    fold6 = _bundle_json(tmp_path / "b.json", {"real_image_patients": ["case16", "case102"]})
    shipped = _bundle_json(tmp_path / "c.json", {"real_image_patients": ["case6", "case16", "case102"]})
    unknown = _bundle_json(tmp_path / "d.json", {"data": "my scans"})
    assert real_data.real_patients_seen(rendered) == set()
    assert real_data.bundle_for(["case6"], [shipped, fold6]) == fold6
    assert real_data.bundle_for(["case16"], [shipped, fold6]) is None
    assert real_data.bundle_for(["case6", "case11"], [fold6]) == fold6
    with pytest.raises(SystemExit, match="does not record"):
        real_data.bundle_for(["case6"], [unknown])


def test_volume_dice_rows_pool_the_slices(bench):
    truth = np.zeros((3, 4, 8, 8), bool)
    truth[2, 1:3, 2:6, 2:6] = True
    pred = truth.copy()
    pred[2, 2] = False  # half the stomach's pixels missed
    rows = bench.score_volume(pred, truth, np.ones(4, bool), CLASSES)
    assert rows["3-D Dice stomach"] == pytest.approx(2 * 16 / (16 + 32))
    assert np.isnan(rows["3-D Dice large_bowel"]) and rows["mean 3-D Dice"] == pytest.approx(rows["3-D Dice stomach"])
    assert bench.mean_rows([{"a": 1.0, "b": np.nan}, {"a": 0.5, "b": 0.2}]) == {"a": 0.75, "b": pytest.approx(0.2)}


def test_the_loop_labels_the_slices_the_review_queue_offers_first(import_benchmark, tiny_bundle, tmp_path):
    bench_real_loop = import_benchmark("bench_real_loop")
    from napari_gitseg.store import LabelStore
    from training.config import preset

    masks = np.zeros((3, 6, 32, 32), bool)
    masks[2, 2:5, 8:20, 8:20] = True
    image = np.random.default_rng(0).integers(0, 1000, (6, 32, 32)).astype(np.uint16)
    stack = Stack(
        image=image,
        spacing=(3.0, 1.5, 1.5),
        slice_ids=[f"case9_day1_slice_{z:04d}" for z in range(1, 7)],
        source="x",
        kind="uwmgi",
        masks=masks,
    )
    project, queue = bench_real_loop.start_project(tmp_path / "p", tiny_bundle, stack, preset("quick", num_threads=1))
    with LabelStore.open(project, create=False) as store:
        conf = {sid: store.latest(sid).confidence for sid in stack.slice_ids}
        assert sorted(queue) == list(range(6)) and not store.clinician_slices()
    assert [conf[stack.slice_ids[z]] for z in queue] == sorted(conf.values())  # least confident first
    bench_real_loop.label_slices(project, stack, queue[:2])
    with LabelStore.open(project, create=False) as store:
        assert sorted(store.clinician_slices()) == sorted(stack.slice_ids[z] for z in queue[:2])
        assert np.array_equal(store.latest(stack.slice_ids[queue[0]]).masks, masks[:, queue[0]])
