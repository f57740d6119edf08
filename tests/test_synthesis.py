"""Training images rendered around real masks: the real-mask reader and its refusals, the phantom body
around the organs, the per-sample look and the on-the-fly dataset."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from napari_gitseg.classes import CLASSES
from napari_gitseg.io.errors import GitsegInputError
from napari_gitseg.io.rle import rle_encode
from napari_gitseg.phantom import render_body_background
from napari_gitseg.phantom.anatomy import draw_anatomy
from training.config import TrainConfig
from training.real_masks import RealMaskFolder, read_case_days, split_patients
from training.synthesis import (
    _FAT_LEVELS,
    _LB,
    _SB,
    RenderOptions,
    _bright_fat,
    _clutter,
    _india_ink,
    _loop_cells,
    _organ_cells,
    _organ_looks,
    _paint_distractors,
    _paint_organs,
    build_scene,
    letterbox_masks,
    render_window,
)
from training.synthetic_dataset import SyntheticDataset, synthetic_datasets

REAL_MASKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "uwmgi-train-masks"


def _organ_masks(n_z: int, h: int, w: int, seed: int) -> np.ndarray:
    """Blob masks (C, Z, H, W): a stomach high up, bowel lower, a ring-shaped large bowel."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:h, 0:w]
    masks = np.zeros((len(CLASSES), n_z, h, w), dtype=bool)
    for z in range(n_z):
        cy, cx = h * 0.45 + rng.normal(0, 1), w * 0.5 + rng.normal(0, 1)
        r = np.hypot(rows - cy, cols - cx)
        if 2 <= z < n_z - 2:
            masks[CLASSES.index("large_bowel"), z] = (r > w * 0.22) & (r < w * 0.3)
            masks[CLASSES.index("small_bowel"), z] = np.hypot(rows - cy, cols - cx + w * 0.08) < w * 0.08
        if 1 <= z < n_z // 2:
            masks[CLASSES.index("stomach"), z] = np.hypot(rows - h * 0.4, cols - w * 0.62) < w * 0.07
    return masks


def write_mask_folder(folder: Path, case_days: dict[str, np.ndarray], spacing: float = 1.5) -> Path:
    """A real-masks folder (train.csv + slices.csv) holding ``case_days`` {caseN_dayM: masks}."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "train.csv", "w", newline="") as t, open(folder / "slices.csv", "w", newline="") as s:
        train, slices = csv.writer(t), csv.writer(s)
        train.writerow(["id", "class", "segmentation"])
        slices.writerow(["id", "width", "height", "pixel_spacing_x", "pixel_spacing_y", "file"])
        for name, masks in case_days.items():
            case = name.split("_")[0]
            h, w = masks.shape[-2:]
            for z in range(masks.shape[1]):
                sid = f"{name}_slice_{z + 1:04d}"
                slices.writerow(
                    [
                        sid,
                        w,
                        h,
                        f"{spacing:.2f}",
                        f"{spacing:.2f}",
                        f"{case}/{name}/scans/slice_{z + 1:04d}_{w}_{h}_{spacing:.2f}_{spacing:.2f}.png",
                    ]
                )
                for c, cls in enumerate(CLASSES):
                    train.writerow([sid, cls, rle_encode(masks[c, z]) if masks[c, z].any() else ""])
    return folder


@pytest.fixture(scope="module")
def mask_folder(tmp_path_factory) -> Path:
    days = {f"case{c}_day0": _organ_masks(12, 72, 80, c) for c in (1, 2, 3)}
    return write_mask_folder(tmp_path_factory.mktemp("masks"), days)


def test_real_mask_folder_round_trips_the_masks(mask_folder):
    days = read_case_days(mask_folder)
    assert [d.name for d in days] == ["case1_day0", "case2_day0", "case3_day0"]
    for d, seed in zip(days, (1, 2, 3)):
        np.testing.assert_array_equal(d.masks, _organ_masks(12, 72, 80, seed))
        assert d.spacing == (1.5, 1.5) and d.patient == d.name.split("_")[0]


def test_patient_split_keeps_days_of_a_patient_together():
    names = [f"case{c}_day{d}" for c in range(10) for d in range(3)]
    train, val = split_patients(names, 0.2, seed=0)
    assert val and train and not {n.split("_")[0] for n in train} & {n.split("_")[0] for n in val}


def _rewrite(folder: Path, name: str, edit) -> None:
    rows = list(csv.reader(open(folder / name, newline="")))
    rows = edit(rows)
    with open(folder / name, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)


@pytest.mark.parametrize(
    ("name", "edit", "message"),
    [
        ("slices.csv", lambda rows: [r for r in rows if r[0] != "case1_day0_slice_0005"], "gap in its slice numbers"),
        (
            "train.csv",
            lambda rows: [r for r in rows if not r[0].startswith("case2_day0_slice_0003")],
            "has no rows for case2_day0_slice_0003",
        ),
        (
            "slices.csv",
            lambda rows: [r[:1] + ["40"] + r[2:] if r[0] == "case1_day0_slice_0004" else r for r in rows],
            "its file",
        ),
        (
            "slices.csv",
            lambda rows: [r[:3] + ["1.60", "1.60"] + r[5:] if r[0] == "case1_day0_slice_0004" else r for r in rows],
            "changes its grid",
        ),
        ("train.csv", lambda rows: rows + [["case9_day0_slice_0001", "stomach", ""]], "is not listed in"),
        (
            "train.csv",
            lambda rows: [
                r[:2] + ["5759 10"] if r[0] == "case1_day0_slice_0002" and r[1] == "stomach" else r for r in rows
            ],
            "past the 72x80 image",
        ),
    ],
    ids=["gap", "missing-id", "wrong-grid", "changed-spacing", "extra-id", "rle-past-image"],
)
def test_disagreeing_csvs_are_refused_naming_the_file(tmp_path, name, edit, message):
    folder = write_mask_folder(tmp_path / "m", {f"case{c}_day0": _organ_masks(8, 72, 80, c) for c in (1, 2)})
    _rewrite(folder, name, edit)
    with pytest.raises(GitsegInputError) as err:
        read_case_days(folder)
    assert message in str(err.value)
    assert str(folder) in str(err.value)


def test_body_background_holds_every_tissue_and_runs_superior_first():
    img = render_body_background(3, 4, 24, (96, 112))
    tissue = draw_anatomy(3, 4).tissue
    assert img.shape == (24, 96, 112) and img.dtype == np.float32
    for name in (
        "sc_fat",
        "muscle",
        "visceral_fat",
        "liver",
        "spleen",
        "kidney",
        "marrow",
        "vessel",
        "csf",
        "lung",
        "heart",
        "bladder",
    ):
        near = np.abs(img - tissue[name]) <= 0.03 * tissue[name]
        assert near.sum() > 20, f"no {name} in the background"
    lung = np.abs(img - tissue["lung"]) < 0.03 * tissue["lung"]
    bladder = np.abs(img - tissue["bladder"]) < 0.03 * tissue["bladder"]
    # slice 1 is the most superior (lung bases), the last the most inferior (bladder), as in UW scans
    assert lung[:4].sum() > lung[-4:].sum() and bladder[-6:].sum() > bladder[:6].sum()


def test_body_is_fitted_around_the_organs():
    organs = _organ_masks(16, 96, 96, 0).any(axis=0)
    img = render_body_background(0, 1, 16, (96, 96), organs=organs)
    air = img < 0.01
    assert not (air & organs).any(), "an organ lies outside the body"


def test_scene_keeps_the_given_masks_exactly():
    masks = _organ_masks(10, 64, 64, 5)
    scene = build_scene("case5_day0", masks, None, seed=0)
    np.testing.assert_array_equal(scene.masks, masks)
    boxed, (nh, nw, top, left) = letterbox_masks(masks, (32, 48))
    assert boxed.shape == (3, 10, 32, 48) and (nh, nw) == (32, 32) and (top, left) == (0, 8)
    assert not boxed[..., :8].any() and not boxed[..., 40:].any()


def test_organs_are_painted_exactly_where_the_masks_are():
    masks = _organ_masks(4, 64, 64, 2)[:, 2]
    img = np.full((64, 64), -1.0, dtype=np.float32)
    _paint_organs(
        img, masks, _organ_looks(np.random.default_rng(0)), np.zeros((64, 64), np.float32), np.random.default_rng(0)
    )
    np.testing.assert_array_equal(img != -1.0, masks.any(axis=0))


def test_render_window_is_deterministic_per_seed_and_varies_between_seeds():
    scene = build_scene("case1_day0", _organ_masks(10, 64, 64, 1), None, seed=0)
    a = render_window(scene, [3, 5, 7], np.random.default_rng(11))
    b = render_window(scene, [3, 5, 7], np.random.default_rng(11))
    c = render_window(scene, [3, 5, 7], np.random.default_rng(12))
    assert a.shape == (3, 64, 64) and a.dtype == np.float32 and np.isfinite(a).all() and a.min() >= 0
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_bowel_loops_are_walled_cells_inside_the_bowel_masks_only():
    cells = _loop_cells(np.random.default_rng(3), (64, 64), 4.0)
    ids = cells.cells
    assert ids.min() >= 1 and len(np.unique(ids)) > 20  # every pixel in a cell, about one per disc of radius 4
    # an edge pixel is exactly one whose left or upper neighbour lies in another cell
    changes = np.zeros_like(cells.edge)
    changes[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    changes[1:, :] |= ids[1:, :] != ids[:-1, :]
    np.testing.assert_array_equal(cells.edge, changes)
    masks = _organ_masks(10, 64, 64, 1)[:, 3]  # all three organs
    looks = _organ_looks(np.random.default_rng(0))
    tex = np.zeros((64, 64), np.float32)
    plain, walled = np.full((64, 64), -1.0, np.float32), np.full((64, 64), -1.0, np.float32)
    _paint_organs(plain, masks, looks, tex, np.random.default_rng(0))
    _paint_organs(walled, masks, looks, tex, np.random.default_rng(0), {_SB: cells, _LB: cells})
    np.testing.assert_array_equal(walled != -1.0, masks.any(axis=0))  # still exactly the organs
    bowel = (masks[_SB] | masks[_LB]) & ~masks[CLASSES.index("stomach")]
    assert not np.array_equal(plain[bowel], walled[bowel])  # the loops change the bowel's look ...
    stomach = masks[CLASSES.index("stomach")]
    np.testing.assert_array_equal(plain[stomach], walled[stomach])  # ... and nothing else


def test_optional_steps_at_zero_draw_nothing_and_each_one_changes_the_look():
    scene = build_scene("case1_day0", _organ_masks(10, 64, 64, 1), None, seed=0)
    default = render_window(scene, [3, 5, 7], np.random.default_rng(11))
    zeros = RenderOptions(p_loops=0.0, p_stomach_cells=0.0, p_ink=0.0, p_bright_fat=0.0, p_clutter=0.0)
    np.testing.assert_array_equal(default, render_window(scene, [3, 5, 7], np.random.default_rng(11), zeros))
    assert _organ_cells(np.random.default_rng(0), (64, 64), zeros) == {}
    for option in ("p_loops", "p_stomach_cells", "p_ink", "p_bright_fat", "p_clutter"):
        look = render_window(scene, [3, 5, 7], np.random.default_rng(11), RenderOptions(**{option: 1.0}))
        assert look.shape == default.shape and np.isfinite(look).all() and look.min() >= 0
        assert not np.allclose(look, default), option
    cells = _organ_cells(np.random.default_rng(0), (64, 64), RenderOptions(p_loops=1.0, p_stomach_cells=1.0))
    assert sorted(cells) == sorted(range(len(CLASSES)))


def test_clutter_lies_near_the_organs_outside_them_and_drifts_from_slice_to_slice():
    scene = build_scene("case1_day0", _organ_masks(10, 64, 64, 1), None, seed=0)
    zs = [3, 4, 5, 6, 7]
    clutter = _clutter(np.random.default_rng(5), scene, zs)
    assert sorted(clutter) == zs and len(clutter[5]) >= 15  # every structure is on the centre slice
    near = ndimage.binary_dilation(scene.masks[:, 5].any(axis=0), iterations=64 // 12)
    assert all(near[np.nonzero(inside)].any() for inside, _value in clutter[5])
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(clutter[4], clutter[5]))  # they move along z
    img = np.full((64, 64), -1.0, np.float32)
    organs = scene.masks[:, 5].any(axis=0)
    _paint_distractors(img, clutter[5], organs, scene.background[5] > 0.02, np.zeros((64, 64), np.float32))
    assert (img[organs] == -1.0).all() and (img[~organs] != -1.0).any()  # the organs stay exactly the masks


def test_india_ink_darkens_exactly_the_interfaces():
    background = np.full((32, 32), 0.3, np.float32)
    background[:, 16:] = 0.8  # two tissues meet between columns 15 and 16
    organ = np.zeros((32, 32), bool)
    organ[5:10, 3:8] = True
    img = np.ones((32, 32), np.float32)
    _india_ink(img, background, [organ], 0.25)
    dark = img < 1.0
    border = organ & ~np.pad(
        organ[1:-1, 1:-1] & organ[:-2, 1:-1] & organ[2:, 1:-1] & organ[1:-1, :-2] & organ[1:-1, 2:], 1
    )
    expected = border.copy()
    expected[:, 16] = True  # the step, marked on the pixel right of it
    np.testing.assert_array_equal(dark, expected)
    assert np.allclose(img[dark], 0.25)


def test_bright_fat_maps_both_fats_and_their_texture_to_one_bright_value():
    x = np.linspace(0.0, 1.2, 9)
    y = np.random.default_rng(1).uniform(0.0, 1.0, 9).astype(np.float32)
    knots, values = _bright_fat(x, y, np.random.default_rng(2))
    assert np.all(np.diff(knots) > 0)
    fats = np.interp(np.r_[[f + d for f in _FAT_LEVELS for d in (-0.04, -0.02, 0.0, 0.03)]], knots, values)
    assert np.allclose(fats, fats[0]) and 0.6 <= fats[0] <= 1.0
    far = np.array([0.0, 0.15, 1.05, 1.2])  # tissues far from fat keep their random intensity
    np.testing.assert_allclose(np.interp(far, knots, values), np.interp(far, x, y))


def test_render_options_are_checked_and_travel_from_the_config(mask_folder):
    with pytest.raises(ValueError, match="unknown option.*'p_inc'"):
        RenderOptions.from_dict({"p_inc": 0.5})
    with pytest.raises(ValueError, match="p_ink must be a share between 0 and 1"):
        RenderOptions.from_dict({"p_ink": 1.5})
    with pytest.raises(ValueError, match="blur must be"):
        RenderOptions.from_dict({"blur": [1.0, 0.2]})
    with pytest.raises(ValueError, match="x.json: synthesis: p_loops must be"):
        TrainConfig.from_dict({"synthesis": {"p_loops": True}}, source="x.json")
    config = TrainConfig.from_dict({"synthesis": {"p_ink": 0.5, "blur": [0.0, 0.8]}})
    train, val, description = synthetic_datasets(mask_folder, (64, 64), 3, 2, synthesis=config.synthesis)
    assert train.render == val.render == RenderOptions(p_ink=0.5, blur=(0.0, 0.8))
    assert description["render_options"]["p_ink"] == 0.5 and description["render_options"]["blur"] == [0.0, 0.8]
    assert synthetic_datasets(mask_folder, (64, 64), 3, 2)[0].render == RenderOptions()


def test_looks_differ_in_tissue_contrast_between_samples():
    scene = build_scene("case1_day0", _organ_masks(10, 64, 64, 1), None, seed=0)
    organ = scene.masks[:, 5].any(axis=0)
    body = (scene.background[5] > 0.05) & ~organ  # the body around the organs
    ratios = []
    for seed in range(24):
        img = render_window(scene, [5], np.random.default_rng(seed), RenderOptions(p_isolated=0.0))[0]
        ratios.append(img[organ].mean() / max(img[body].mean(), 1e-6))
    # organs are sometimes brighter and sometimes darker than their surroundings
    assert min(ratios) < 0.8 and max(ratios) > 1.05, ratios


def test_dataset_items_are_deterministic_and_aligned(mask_folder):
    source = RealMaskFolder(mask_folder)
    ds = SyntheticDataset(source, ["case1_day0", "case2_day0"], k=3, stride=2, size=(48, 48), seed=4, length=50)
    a, b = ds[7], ds[7]
    assert a["image"].shape == (3, 48, 48) and a["masks"].shape == (3, 48, 48)
    assert float(a["image"].min()) >= 0.0 and float(a["image"].max()) <= 1.0
    assert (a["image"] == b["image"]).all() and a["name"] == b["name"] and a["slice"] == b["slice"]
    scene = ds.scene(a["name"])
    np.testing.assert_array_equal(a["masks"].numpy().astype(bool), scene.masks[:, a["slice"]])
    assert ds.on_the_fly and len(ds) == 50
    with pytest.raises(IndexError):
        ds[50]
    other = SyntheticDataset(source, ["case1_day0", "case2_day0"], k=3, stride=2, size=(48, 48), seed=5, length=50)
    assert any(not np.array_equal(ds[i]["image"], other[i]["image"]) for i in range(3))


def test_synthetic_datasets_split_by_patient_and_describe_it(mask_folder):
    train, val, desc = synthetic_datasets(mask_folder, (48, 48), k=3, stride=2, seed=0, val_fraction=0.34, val_items=6)
    assert train.on_the_fly and not val.on_the_fly and len(val) == 6
    assert set(desc["train_case_days"]).isdisjoint(desc["val_case_days"])
    assert set(desc["train_patients"]).isdisjoint(desc["val_patients"])
    assert val[0]["name"] in desc["val_case_days"]


@pytest.mark.skipif(not REAL_MASKS.is_dir(), reason="../shared/data/uwmgi-train-masks is not here")
def test_real_case_day_renders_around_its_real_masks():
    source = RealMaskFolder(REAL_MASKS)
    with open(REAL_MASKS / "slices.csv", newline="") as handle:  # every case-day the folder lists, whatever its size
        listed = {row["id"].rsplit("_slice_", 1)[0] for row in csv.DictReader(handle)}
    assert source.names == sorted(listed) and len(listed) > 1
    day = source.load(source.names[0])
    scene = build_scene(day.name, day.masks, (96, 96), seed=0)
    z = int(np.flatnonzero(scene.masks.any(axis=(0, 2, 3)))[5])
    img = render_window(scene, [z - 2, z, z + 2], np.random.default_rng(0))
    organ = scene.masks[:, z].any(axis=0)
    assert img.shape == (3, 96, 96) and organ.any()
    assert not (scene.background[z][organ] < 0.01).any(), "a real organ lies outside the rendered body"


def test_mixed_dataset_draws_the_phantom_share_deterministically(mask_folder):
    from napari_gitseg.phantom import make_phantom_case
    from training.datasets import SliceDataset
    from training.synthetic_dataset import MixedDataset

    source = RealMaskFolder(mask_folder)
    synthetic = SyntheticDataset(source, ["case1_day0"], size=(48, 48), seed=0, length=40)
    phantom = SliceDataset(
        [make_phantom_case(0, n_slices=6, size=(48, 48))], k=3, stride=2, size=(48, 48), fit="resize"
    )
    mixed = MixedDataset(synthetic, phantom, share=0.5, seed=1)
    kinds = [mixed[i]["provenance"] for i in range(40)]
    assert 8 <= kinds.count("phantom") <= 32 and kinds.count("synthetic") == 40 - kinds.count("phantom")
    assert [mixed[i]["provenance"] for i in range(40)] == kinds and mixed.on_the_fly and len(mixed) == 40
    assert all(MixedDataset(synthetic, phantom, share=0.0)[i]["provenance"] == "synthetic" for i in range(5))
    with pytest.raises(ValueError, match="share"):
        MixedDataset(synthetic, phantom, share=1.5)
