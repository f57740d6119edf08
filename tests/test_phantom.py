"""The procedural phantom: determinism, shapes and ids, organ layout along z, overlaps,
contrast, coil shading, Rician noise, follow-up days and the UW-Madison dataset writer."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_gitseg.classes import CLASSES
from napari_gitseg.io.uwmgi_names import parse_slice_id
from napari_gitseg.phantom import make_phantom_case, make_phantom_cases, write_phantom_dataset

SMALL = {"n_slices": 16, "size": (96, 96)}
MEDIUM = {"n_slices": 24, "size": (128, 128)}
IN_PLANE = np.zeros((1, 3, 3), dtype=bool)
IN_PLANE[0] = True


@pytest.fixture(scope="module")
def full_case():
    """The default 144-slice, 266x266 case (the bundled sample)."""
    return make_phantom_case(seed=0)


@pytest.fixture(scope="module")
def medium_cases():
    """A few 24-slice 128x128 cases of different seeds."""
    return [make_phantom_case(seed, **MEDIUM) for seed in range(6)]


def body_mask(image: np.ndarray) -> np.ndarray:
    """The body per slice, found from the image alone: above the background level, holes filled."""
    corner = image[:, :6, :6].astype(float)
    threshold = corner.mean() + 6 * corner.std() + 1
    smooth = ndimage.gaussian_filter(image.astype(np.float32), (0, 1, 1))
    return np.stack([ndimage.binary_fill_holes(s) for s in smooth > threshold])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(1.0, float(a.sum() + b.sum()))


def test_same_arguments_give_identical_output():
    a = make_phantom_case(seed=5, case=2, day=1, **SMALL)
    b = make_phantom_case(seed=5, case=2, day=1, **SMALL)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.masks, b.masks)
    assert a.slice_ids == b.slice_ids and a.spacing == b.spacing


def test_other_seed_or_case_gives_other_scan():
    base = make_phantom_case(seed=5, case=2, **SMALL)
    for other in (make_phantom_case(seed=6, case=2, **SMALL), make_phantom_case(seed=5, case=3, **SMALL)):
        assert not np.array_equal(base.image, other.image)
        assert not np.array_equal(base.masks, other.masks)


def test_image_is_uint16_in_the_range_of_real_scans(medium_cases):
    maxima = []
    for stack in medium_cases:
        assert stack.image.dtype == np.uint16
        assert stack.image.shape == (24, 128, 128)
        assert stack.masks.dtype == bool and stack.masks.shape == (len(CLASSES), 24, 128, 128)
        assert stack.labelled.dtype == bool and stack.labelled.all()
        assert stack.kind == "phantom" and stack.source.startswith("phantom:seed=")
        maxima.append(int(stack.image.max()))
    # real UW slices peak around 100 (16-bit storage), TotalSegmentator MR around 800
    assert all(80 <= m <= 1300 for m in maxima), maxima
    assert max(maxima) > 1.5 * min(maxima), f"the intensity scale should vary per case: {maxima}"


def test_slice_ids_spacing_and_source():
    stack = make_phantom_case(seed=3, case=7, day=2, n_slices=12, size=(64, 80), spacing_mm=1.25)
    assert stack.image.shape == (12, 64, 80)
    assert stack.spacing == (3.0, 1.25, 1.25)
    assert stack.slice_ids[0] == "case7_day2_slice_0001"
    assert stack.slice_ids[-1] == "case7_day2_slice_0012"
    assert [parse_slice_id(s) for s in stack.slice_ids] == [(7, 2, k) for k in range(1, 13)]
    assert stack.name == "case7_day2"
    assert "seed=3" in stack.source


def test_each_organ_appears_in_some_slices_and_not_in_others(full_case, medium_cases):
    for stack in [full_case, *medium_cases, make_phantom_case(seed=1, **SMALL)]:
        present = stack.masks.any(axis=(2, 3))  # (C, Z)
        for c, name in enumerate(CLASSES):
            assert present[c].any(), f"{stack.source}: no {name} at all"
            assert not present[c].all(), f"{stack.source}: {name} in every slice"


def test_top_and_bottom_slices_hold_no_organ(full_case, medium_cases):
    for stack in [full_case, *medium_cases]:
        any_organ = stack.masks.any(axis=(0, 2, 3))
        n = len(any_organ)
        edge = int(np.floor(0.14 * n))
        assert not any_organ[: max(1, edge)].any(), f"{stack.source}: organ in the bottom slices"
        assert not any_organ[n - max(1, edge) :].any(), f"{stack.source}: organ in the top slices"
        assert any_organ.mean() >= 0.4, f"{stack.source}: organs in only {any_organ.mean():.0%} of slices"
    # the default case: the empty fraction at each end lies in about 15-25 %
    organ = np.flatnonzero(full_case.masks.any(axis=(0, 2, 3)))
    assert 0.13 <= organ[0] / 144 <= 0.27
    assert 0.13 <= (143 - organ[-1]) / 144 <= 0.27


def test_masks_overlap_somewhere(full_case, medium_cases):
    for stack in [full_case, *medium_cases]:
        overlap = stack.masks.sum(axis=0) > 1
        assert overlap.any(), f"{stack.source}: no pixel belongs to two organs"
        # overlaps are thin boundary bands, not whole organs
        assert overlap.sum() < 0.1 * stack.masks.any(axis=0).sum()


def test_masks_lie_inside_the_body(medium_cases):
    for stack in medium_cases:
        body = body_mask(stack.image)
        assert body.any()
        outside = stack.masks & ~body[None]
        assert not outside.any(), f"{stack.source}: {int(outside.sum())} mask pixels outside the body"


def test_organs_differ_from_their_surroundings(medium_cases):
    for stack in medium_cases:
        image = stack.image.astype(np.float32)
        any_organ = stack.masks.any(axis=0)
        for c, name in enumerate(CLASSES):
            mask = stack.masks[c]
            ring = ndimage.binary_dilation(mask, IN_PLANE, iterations=3) & ~any_organ
            inside, around = image[mask].mean(), image[ring].mean()
            assert abs(inside - around) / around > 0.1, f"{stack.source}: {name} {inside:.1f} vs {around:.1f}"


def test_bias_field_shades_the_body_unevenly(medium_cases):
    # the subcutaneous fat ring is one tissue all around; without coil shading its
    # brightness would be about equal in every direction (posterior sectors left out:
    # the fat there is thin and lies on the back muscles)
    ratios = []
    for stack in medium_cases:
        image = stack.image.astype(np.float32)
        body = body_mask(stack.image)
        ring = body & ~np.stack([ndimage.binary_erosion(b, iterations=6) for b in body])
        zz, yy, xx = np.nonzero(ring)
        values = image[ring]
        angle = np.degrees(np.arctan2(yy - yy.mean(), xx - xx.mean()))  # +90 = posterior
        levels = [
            np.percentile(values[(angle >= a) & (angle < a + 45)], 90)
            for a in range(-180, 180, 45)
            if not (45 <= a and a + 45 <= 135)
        ]
        ratios.append(max(levels) / min(levels))
    assert np.median(ratios) > 1.3, ratios
    # and the halves of the body differ on average for most cases
    halves = []
    for stack in medium_cases:
        body = body_mask(stack.image)
        _, yy, xx = np.nonzero(body)
        img = stack.image[body].astype(np.float32)
        lr = abs(img[xx < xx.mean()].mean() - img[xx >= xx.mean()].mean()) / img.mean()
        tb = abs(img[yy < yy.mean()].mean() - img[yy >= yy.mean()].mean()) / img.mean()
        halves.append(max(lr, tb))
    assert np.median(halves) > 0.05, halves


def test_background_noise_is_rician(medium_cases):
    for stack in medium_cases:
        body = body_mask(stack.image)
        far = ~np.stack([ndimage.binary_dilation(b, iterations=5) for b in body])
        background = stack.image[far].astype(np.float64)
        assert background.size > 1000
        # magnitude of complex Gaussian noise: positive mean, spread, long right tail
        assert background.mean() > 0.1
        assert background.std() > 0
        centred = background - background.mean()
        skew = (centred**3).mean() / (centred**2).mean() ** 1.5
        assert skew > 0.2, f"{stack.source}: background skewness {skew:.2f}"


def test_days_of_one_case_are_similar_but_not_identical():
    day0 = make_phantom_case(seed=2, case=2, day=0, **MEDIUM)
    day1 = make_phantom_case(seed=2, case=2, day=1, **MEDIUM)
    other = make_phantom_case(seed=2, case=3, day=0, **MEDIUM)
    assert not np.array_equal(day0.image, day1.image)
    assert not np.array_equal(day0.masks, day1.masks)
    for c, name in enumerate(CLASSES):
        same, different = dice(day0.masks[c], day1.masks[c]), dice(day0.masks[c], other.masks[c])
        assert same > 0.5, f"{name}: day-to-day Dice {same:.2f}"
        assert same > different, f"{name}: days {same:.2f} vs other case {different:.2f}"
    corr_days = np.corrcoef(day0.image.ravel(), day1.image.ravel())[0, 1]
    corr_cases = np.corrcoef(day0.image.ravel(), other.image.ravel())[0, 1]
    assert corr_days > corr_cases


def test_make_phantom_cases_numbers_cases_and_days():
    stacks = make_phantom_cases(2, seed=4, days_per_case=2, n_slices=6, size=(48, 48))
    assert [s.name for s in stacks] == ["case1_day0", "case1_day1", "case2_day0", "case2_day1"]
    assert np.array_equal(stacks[0].image, make_phantom_case(4, case=1, day=0, n_slices=6, size=(48, 48)).image)
    with pytest.raises(ValueError):
        make_phantom_cases(0, seed=4)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"seed": -1},
        {"seed": 1.5},
        {"seed": 0, "case": -2},
        {"seed": 0, "n_slices": 1},
        {"seed": 0, "size": (16, 96)},
        {"seed": 0, "spacing_mm": 0.0},
    ],
)
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        make_phantom_case(**kwargs)


def test_write_phantom_dataset_round_trips(tmp_path):
    root = write_phantom_dataset(tmp_path / "ds", n_cases=2, seed=9, n_slices=6, size=(48, 56))
    assert root == tmp_path / "ds"
    scans = root / "train" / "case1" / "case1_day0" / "scans"
    names = sorted(p.name for p in scans.glob("*.png"))
    assert names == [f"slice_{k:04d}_56_48_1.50_1.50.png" for k in range(1, 7)]
    assert (root / "train" / "case2" / "case2_day0" / "scans").is_dir()
    lines = (root / "train.csv").read_text().strip().splitlines()
    assert lines[0] == "id,class,segmentation"
    assert len(lines) == 1 + 2 * 6 * len(CLASSES)

    from napari_gitseg.io import read_stacks

    (stack,) = read_stacks(root / "train" / "case1")
    expected = make_phantom_case(9, case=1, n_slices=6, size=(48, 56))
    assert stack.slice_ids == expected.slice_ids
    assert np.array_equal(stack.image, expected.image)
    assert np.array_equal(stack.masks, expected.masks)
