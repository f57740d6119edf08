"""Several case-days of different grids in one folder: predict and export write each as its own scan."""

from __future__ import annotations

import numpy as np

from napari_gitseg.classes import CLASSES
from napari_gitseg.io import read_stacks, read_train_csv, write_scans_rle_csv
from napari_gitseg.io.train_csv import masks_for_stack


def test_scans_of_different_grids_share_one_csv_and_read_back_exactly(uw_case_day, tmp_path):
    root = tmp_path / "data"
    uw_case_day(case=1, day=1, numbers=(1, 2, 3), height=24, width=32, root=root)
    uw_case_day(case=2, day=4, numbers=(5, 6), height=40, width=36, root=root)
    stacks = read_stacks(root)
    assert sorted(s.shape[1:] for s in stacks) == [(24, 32), (40, 36)]  # the challenge's mixed grids
    rng = np.random.default_rng(1)
    masks = [rng.random((len(CLASSES), *s.shape)) > 0.7 for s in stacks]
    out = write_scans_rle_csv(tmp_path / "both.csv", [(s.slice_ids, m) for s, m in zip(stacks, masks, strict=True)])
    table = read_train_csv(out)
    for stack, written in zip(stacks, masks, strict=True):
        back, labelled = masks_for_stack(table, stack)
        assert labelled.all()
        np.testing.assert_array_equal(back.astype(bool), written)


def test_gitseg_predict_on_case_days_of_different_grids_writes_every_slice(uw_case_day, tmp_path):
    from napari_gitseg.cli import main

    root = tmp_path / "data"
    uw_case_day(case=1, day=1, numbers=(1, 2, 3), height=24, width=32, root=root)
    uw_case_day(case=2, day=4, numbers=(5, 6), height=40, width=36, root=root)
    out = tmp_path / "p.csv"
    assert main(["predict", str(root), "--out", str(out), "--device", "cpu"]) == 0
    table = read_train_csv(out)
    for stack in read_stacks(root):
        masks, labelled = masks_for_stack(table, stack)
        assert labelled.all() and masks.shape == (len(CLASSES), *stack.shape)


def test_bad_bundles_stores_and_csvs_are_one_line_naming_the_file_not_a_traceback(uw_case_day, tmp_path, capsys):
    from napari_gitseg.cli import main

    root = tmp_path / "data"
    uw_case_day(case=1, day=1, numbers=(1, 2), height=24, width=32, root=root)
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    (tmp_path / "broken.json").write_text("{ not json")
    (tmp_path / "empty").mkdir()
    (tmp_path / "odd.csv").write_text("id,class,segmentation\ncase1_day1_slice_0001,stomach,1 2 3\n")
    out = str(tmp_path / "p.csv")
    cases = [
        (["predict", str(root), "--model", str(tmp_path / "other.json"), "--out", out], "other.json"),
        (["predict", str(root), "--model", str(tmp_path / "broken.json"), "--out", out], "broken.json"),
        (["export", str(tmp_path / "empty"), "--format", "csv", "--out", str(tmp_path / "x.csv")], "empty"),
        (["eval", "--pred", str(tmp_path / "odd.csv"), "--truth", str(root)], "odd.csv"),
        (["predict", str(root), "--tta", "--out", out], "default.json"),  # the bundled model learnt sides
    ]
    for argv, name in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"gitseg {argv[0]}: error: ") and name in err and "\n" not in err, err
