"""Backgrounds for ``training.synthesis``: a phantom body without the organs of ``CLASSES``, fitted
around real organ masks."""

from __future__ import annotations

import dataclasses

import numpy as np

from napari_gitseg.phantom.anatomy import Z_EXTENT, Anatomy, Visit, check_int, draw_anatomy, draw_visit
from napari_gitseg.phantom.body import render_background
from napari_gitseg.phantom.frame import Frame


def render_body_background(
    seed: int,
    case: int,
    n_slices: int,
    size: tuple[int, int],
    organs: np.ndarray | None = None,
    body_width: float | None = None,
) -> np.ndarray:
    """Clean T2 intensities (float32 (Z, H, W), about 0..1, no blur, bias or noise) of a phantom body
    without the organs of ``CLASSES``: skin, subcutaneous and visceral fat, muscle, spine, vessels,
    liver, spleen, kidneys, bladder, lung bases and heart, where the hollow organs would be visceral fat.

    Slices run as in the UW-Madison scans (slice 1 the most superior, unlike ``make_phantom_case``).
    The body spans ``body_width`` of the image width (default: 75-95 %, drawn from the seed).
    ``organs`` (Z, H, W) bool, optional: real organ masks
    on the same grid; the body is then moved and grown so that they lie inside the abdominal wall,
    and its organ region along z is stretched onto the slices that hold them.
    """
    seed, case = check_int("seed", seed), check_int("case", case)
    height, width, n = int(size[0]), int(size[1]), int(n_slices)
    anatomy = draw_anatomy(seed, case)
    visit = draw_visit(seed, case, 0)
    fill = np.random.default_rng([seed, case, 9]).uniform(0.75, 0.95) if body_width is None else body_width
    anatomy.size = float(fill * width / (float(anatomy.body_a.mean()) * min(height, width)))
    z = Z_EXTENT * (1.0 - np.arange(n) / max(1, n - 1))  # superior first
    organs = None if organs is None else np.asarray(organs, dtype=bool)
    if organs is not None and organs.any():
        _fit_body_around(anatomy, visit, organs.any(axis=0))
        present = np.flatnonzero(organs.any(axis=(1, 2)))
        r0, r1 = int(present[0]), int(present[-1])
        z = anatomy.z_hi - (np.arange(n) - r0) / max(1, r1 - r0) * (anatomy.z_hi - anatomy.z_lo)
    # rendered on every other slice and interpolated between (the body changes slowly along z)
    coarse = np.unique(np.r_[np.arange(0, n, 2), n - 1])
    frame = Frame.build(max(2, len(coarse)), height, width, anatomy, visit)
    frame = dataclasses.replace(frame, n=len(coarse), z=z[coarse][::-1].copy())  # the frame's z ascends
    img = render_background(anatomy, visit, frame)[0][::-1]
    upper = np.clip(np.searchsorted(coarse, np.arange(n)), 1, len(coarse) - 1) if n > 1 else np.zeros(1, int)
    lower = upper - 1 if n > 1 else upper
    span = np.maximum(coarse[upper] - coarse[lower], 1)
    t = ((np.arange(n) - coarse[lower]) / span).astype(np.float32)[:, None, None]
    return (1.0 - t) * img[lower] + t * img[upper]


def _fit_body_around(anatomy: Anatomy, visit: Visit, footprint: np.ndarray) -> None:
    """Centre the body on the organs left-right and grow it until they lie well inside its wall."""
    h, w = footprint.shape
    rows, cols = np.nonzero(footprint)
    if rows.size > 4000:
        pick = np.linspace(0, rows.size - 1, 4000).astype(int)
        rows, cols = rows[pick], cols[pick]
    c, s = np.cos(anatomy.angle + visit.angle), np.sin(anatomy.angle + visit.angle)
    a_min, b_min = float(anatomy.body_a.min()), float(anatomy.body_b.min())
    p = anatomy.power
    for grow in np.arange(1.0, 1.8, 0.05):
        scale = min(h, w) / 2.0 * anatomy.size * grow
        xs, ys = (cols - (w - 1) / 2.0) / scale, (rows - (h - 1) / 2.0) / scale
        u, v = c * xs + s * ys, -s * xs + c * ys
        su = float(np.clip((u.min() + u.max()) / 2.0, -0.15, 0.15)) - visit.shift[0]
        u = u - su - visit.shift[0]
        v = v - anatomy.shift[1] - visit.shift[1]
        level = np.abs(u) ** p / a_min**p + np.abs(np.where(v > 0, v / anatomy.posterior, v)) ** p / b_min**p
        if float(level.max()) < 0.6:
            break
    anatomy.size *= float(grow)
    anatomy.shift = (su, anatomy.shift[1])
