"""A procedural abdominal T2 MRI phantom with exact organ masks.

It is the bundled sample data, the test data of the project and the data the default model
is trained on, so it imitates the UW-Madison GI Tract challenge scans: axial 16-bit slices
(3 mm apart), radiological orientation (patient's right on the image's left, anterior at
the top), bright fat, dark muscle, liver and spine, a stomach with an air-fluid level, tortuous
small-bowel loops, a large-bowel frame with mottled content, and masks of ``CLASSES`` that may
overlap at a few boundaries like the real ground truth. Slice 1 is the most inferior (pelvis); the
first and last ~15-22 % of slices hold no organ of ``CLASSES``.

The case's anatomy (``anatomy``) is drawn in normalised coordinates and mapped onto the image grid
(``frame``); the body (``body``) and the hollow organs (``bowel``) are painted, then blurred, shaded
and made noisy (``acquisition``). Equal arguments give bit-identical output. The full description:
``docs/package-notes.md``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_gitseg.classes import CLASSES
from napari_gitseg.io.stack import Stack
from napari_gitseg.io.uwmgi_names import SLICE_THICKNESS_MM, slice_id
from napari_gitseg.phantom.acquisition import acquire
from napari_gitseg.phantom.anatomy import TISSUE, Z_EXTENT, Anatomy, Visit, check_int, draw_anatomy, draw_visit
from napari_gitseg.phantom.body import render_background
from napari_gitseg.phantom.bowel import render_hollow_organs
from napari_gitseg.phantom.frame import Frame
from napari_gitseg.phantom.synthesis_background import render_body_background

__all__ = [
    "TISSUE",
    "Z_EXTENT",
    "make_phantom_case",
    "make_phantom_cases",
    "render_body_background",
    "write_phantom_dataset",
]


def make_phantom_case(
    seed: int,
    case: int = 1,
    day: int = 0,
    n_slices: int = 144,
    size: tuple[int, int] = (266, 266),
    spacing_mm: float = 1.5,
) -> Stack:
    """One phantom scan (uint16 image, exact per-class masks) of ``case`` on ``day``, seeded by ``seed``."""
    seed, case, day = check_int("seed", seed), check_int("case", case), check_int("day", day)
    n_slices = int(n_slices)
    if n_slices < 2:
        raise ValueError(f"n_slices must be at least 2, got {n_slices}")
    height, width = (int(size[0]), int(size[1]))
    if min(height, width) < 32:
        raise ValueError(f"size must be at least (32, 32) pixels, got {size}")
    if not np.isfinite(spacing_mm) or spacing_mm <= 0:
        raise ValueError(f"spacing_mm must be a positive number, got {spacing_mm}")

    anatomy = draw_anatomy(seed, case)
    visit = draw_visit(seed, case, day)
    frame = Frame.build(n_slices, height, width, anatomy, visit)
    image, masks, info = _render(anatomy, visit, frame, np.random.default_rng([seed, case, day, 2]))
    return Stack(
        image=image,
        spacing=(SLICE_THICKNESS_MM, float(spacing_mm), float(spacing_mm)),
        slice_ids=[slice_id(case, day, k + 1) for k in range(n_slices)],
        source=f"phantom:seed={seed},case={case},day={day}",
        kind="phantom",
        masks=masks,
        labelled=np.ones(n_slices, dtype=bool),
        classes=CLASSES,
        meta={"phantom": {"seed": seed, "case": case, "day": day, **info}},
    )


def make_phantom_cases(
    n_cases: int,
    seed: int,
    days_per_case: int = 1,
    n_slices: int = 144,
    size: tuple[int, int] = (266, 266),
) -> list[Stack]:
    """Phantom scans of cases 1..n_cases, each on days 0..days_per_case-1."""
    if int(n_cases) < 1 or int(days_per_case) < 1:
        raise ValueError(f"n_cases and days_per_case must be >= 1, got {n_cases} and {days_per_case}")
    return [
        make_phantom_case(seed, case=case, day=day, n_slices=n_slices, size=size)
        for case in range(1, int(n_cases) + 1)
        for day in range(int(days_per_case))
    ]


def write_phantom_dataset(
    root: str | Path,
    n_cases: int,
    seed: int,
    days_per_case: int = 1,
    n_slices: int = 144,
    size: tuple[int, int] = (266, 266),
) -> Path:
    """Write phantom cases in the UW-Madison layout (``train/caseN/...`` PNGs + ``train.csv``) under root."""
    from napari_gitseg.io.uwmgi import write_uwmgi_dataset

    stacks = make_phantom_cases(n_cases, seed, days_per_case=days_per_case, n_slices=n_slices, size=size)
    return Path(write_uwmgi_dataset(root, stacks))


def _render(anatomy: Anatomy, visit: Visit, fr: Frame, noise_rng: np.random.Generator):
    """Paint the clean T2 image and exact masks, then apply blur, coil shading, scale and noise."""
    img, tex, inner, keep_out = render_background(anatomy, visit, fr)
    masks, organ_slices = render_hollow_organs(anatomy, visit, fr, img, tex, inner, keep_out)
    del tex, inner, keep_out
    image, info = acquire(img, anatomy, visit, fr, noise_rng)
    return image, masks, {"organ_slices": organ_slices, **info}
