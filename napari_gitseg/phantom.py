"""A procedural abdominal T2 MRI phantom with exact organ masks.

It is the bundled sample data, the test data of the project and the data the default model
is trained on, so it imitates the UW-Madison GI Tract challenge scans: axial 16-bit slices
(3 mm apart), radiological orientation (patient's right on the image's left, anterior at
the top), bright fat, dark muscle, liver and spine, a stomach with an air-fluid level, tortuous
small-bowel loops, a large-bowel frame with mottled content, and masks of ``CLASSES`` that may
overlap at a few boundaries like the real ground truth.

Geometry. Anatomy lives in normalised coordinates (``u`` patient right -> left, ``v`` anterior ->
posterior, ``z`` feet -> head), so the same case fits any image size or slice count (``spacing_mm``
is metadata only). Slice 1 is the most inferior (pelvis); the first and last ~15-22 % of slices
hold no organ of ``CLASSES``.

Rendering. Organs are smooth blobs and sphere-swept tubes (signed distance fields give masks, walls,
content, folds), then blur, a bias field, a per-case intensity scale and Rician noise. Every random
draw comes from generators seeded by ``(seed, case)`` (anatomy) and ``(seed, case, day)`` (follow-up
changes, noise), so equal arguments give bit-identical output and the days of one case share their
anatomy. The full description: ``docs/package-notes.md``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.interpolate import CubicSpline

from napari_gitseg.classes import CLASSES
from napari_gitseg.io.stack import Stack
from napari_gitseg.io.uwmgi_names import SLICE_THICKNESS_MM, slice_id

# extent of the phantom along z in normalised units (144 slices x 3 mm / 200 mm)
Z_EXTENT = 2.16
_LB, _SB, _ST = CLASSES.index("large_bowel"), CLASSES.index("small_bowel"), CLASSES.index("stomach")

# relative T2 intensities before bias, scale and noise (jittered per case); training.synthesis reads them too
TISSUE: dict[str, float] = {
    "sc_fat": 0.80,
    "muscle": 0.17,
    "visceral_fat": 0.44,
    "liver": 0.26,
    "liver_vessel": 0.10,
    "spleen": 0.40,
    "kidney": 0.60,
    "renal_sinus": 0.34,
    "gallbladder": 0.92,
    "bone_cortex": 0.06,
    "marrow": 0.38,
    "disc": 0.70,
    "csf": 0.95,
    "vessel": 0.05,
    "lung": 0.03,
    "heart": 0.14,
    "bladder": 0.95,
    "sb_wall": 0.26,
    "sb_fold": 0.36,
    "lb_wall": 0.24,
    "lb_content": 0.27,
    "lb_fold": 0.16,
    "st_wall": 0.27,
    "st_fluid": 0.88,
    "st_debris": 0.58,
    "air": 0.02,
}


# ----------------------------------------------------------------------------- public API


def make_phantom_case(
    seed: int,
    case: int = 1,
    day: int = 0,
    n_slices: int = 144,
    size: tuple[int, int] = (266, 266),
    spacing_mm: float = 1.5,
) -> Stack:
    """One phantom scan (uint16 image, exact per-class masks) of ``case`` on ``day``, seeded by ``seed``."""
    seed, case, day = _check_int("seed", seed), _check_int("case", case), _check_int("day", day)
    n_slices = int(n_slices)
    if n_slices < 2:
        raise ValueError(f"n_slices must be at least 2, got {n_slices}")
    height, width = (int(size[0]), int(size[1]))
    if min(height, width) < 32:
        raise ValueError(f"size must be at least (32, 32) pixels, got {size}")
    if not np.isfinite(spacing_mm) or spacing_mm <= 0:
        raise ValueError(f"spacing_mm must be a positive number, got {spacing_mm}")

    anatomy = _draw_anatomy(seed, case)
    visit = _draw_visit(seed, case, day)
    frame = _Frame.build(n_slices, height, width, anatomy, visit)
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


# ----------------------------------------------------------------------------- parameters


def _check_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


@dataclass
class _Tube:
    """A sphere-swept tube: centre points (u, v, z), radii, arc length, content level, fold period."""

    points: np.ndarray  # (N, 3) u, v, z in normalised units
    radii: np.ndarray  # (N,)
    arc: np.ndarray  # (N,) arc length from the start
    content: float = 0.0  # relative T2 level of the lumen content
    period: float = 0.035  # spacing of the folds (haustra, valvulae conniventes) along the tube


@dataclass
class _Blob:
    """A smooth ellipsoid-like organ: centre, radii, in-plane angle, drift along z, lobulation."""

    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    angle: float = 0.0
    drift: tuple[float, float] = (0.0, 0.0)  # du/dz, dv/dz
    lobes: tuple[tuple[int, float, float], ...] = ()  # (k, amplitude, phase)


@dataclass
class _Anatomy:
    """Everything fixed for a case: body, organs, bowel tubes, tissue contrast, scale."""

    z_lo: float
    z_hi: float
    size: float
    body_t: np.ndarray
    body_a: np.ndarray
    body_b: np.ndarray
    fat: float
    fat_anterior: float
    fat_lobes: tuple
    power: float
    posterior: float
    tissue: dict[str, float]
    blobs: dict[str, _Blob]
    liver_vessels: list[_Blob]
    colon: _Tube
    small_bowel: list[_Tube]
    stomach: _Tube
    disc_phase: float
    shift: tuple[float, float]
    angle: float
    max_intensity: float
    noise: float


@dataclass
class _Visit:
    """What changes between the days of one case."""

    shift: tuple[float, float]
    angle: float
    z_shift: float
    warp: list[tuple[np.ndarray, float, float]] = field(default_factory=list)
    stomach_scale: float = 1.0
    air_depth: float = 0.05
    bias: np.ndarray = field(default_factory=lambda: np.zeros(6))
    bias_z: float = 0.0
    intensity: float = 1.0
    tex_seed: int = 0


def _spline_tube(rng: np.random.Generator, ctrl: list[tuple], z_of_s, jitter: float, step: float) -> _Tube:
    """A smooth tube through jittered control points ``(u, v, s, r)``, sampled every ``step``."""
    c = np.asarray(ctrl, dtype=float)
    c[:, :2] += rng.normal(0.0, jitter, size=(len(c), 2))
    c[:, 2] = z_of_s(np.clip(c[:, 2] + rng.normal(0.0, jitter * 0.4, size=len(c)), 0.0, 1.0))
    c[:, 3] *= rng.uniform(0.9, 1.1)
    chord = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(c[:, :3], axis=0), axis=1))]
    spline = CubicSpline(chord, c, bc_type="natural")
    t = np.linspace(0.0, chord[-1], max(2, int(np.ceil(chord[-1] / step)) + 1))
    dense = spline(t)
    # arc length of the dense curve
    arc = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(dense[:, :3], axis=0), axis=1))]
    return _Tube(points=dense[:, :3], radii=np.maximum(dense[:, 3], 0.02), arc=arc)


def _bowel_loops(
    rng: np.random.Generator, center: np.ndarray, radii: np.ndarray, n_loops: int, radius: float
) -> list[_Tube]:
    """Tortuous small-bowel loops: persistent random walks inside an ellipsoid that avoid each other."""
    step = radius * 0.36
    placed = np.empty((0, 3))
    loops = []
    for _ in range(n_loops):
        p = center + radii * _unit_ball(rng) * 0.85
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        n_steps = int(rng.integers(45, 80))
        pts = np.empty((n_steps, 3))
        for i in range(n_steps):
            d = d + 0.3 * rng.normal(size=3) * (1.0, 1.0, 0.6)
            q = (p - center) / radii
            qq = float(q @ q)
            if qq > 0.7:
                inward = -(q / radii)
                d = d + 2.0 * (qq - 0.7) * inward / np.linalg.norm(inward)
            if len(placed):
                # push away from other loops (and from this loop's older part)
                diff = p - placed
                dist2 = np.einsum("ij,ij->i", diff, diff)
                near = dist2 < (2.6 * radius) ** 2
                if near.any():
                    push = (diff[near] / dist2[near, None]).sum(axis=0) * radius * 0.35
                    d = d + push
            d /= np.linalg.norm(d)
            p = p + step * d
            pts[i] = p
            if i >= 6:
                placed = np.vstack([placed, pts[i - 6]])
        placed = np.vstack([placed, pts[max(0, n_steps - 6) :]])
        pts = ndimage.gaussian_filter1d(pts, 1.5, axis=0, mode="nearest")
        arc = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))]
        radii_t = radius * (1.0 + 0.08 * np.sin(arc / 0.11 + rng.uniform(0, 2 * np.pi)))
        loops.append(_Tube(points=pts, radii=radii_t, arc=arc, content=float(rng.uniform(0.62, 0.95))))
    return loops


def _unit_ball(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v) * rng.uniform() ** (1 / 3)


class _Draws:
    """Random draws of one case's anatomy, in a fixed order (the phantom is deterministic per seed)."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def jit(self, x: float, sd: float = 0.025) -> float:
        """``x`` jittered by a normal draw."""
        return float(x + self.rng.normal(0.0, sd))

    def rad(self, x: float) -> float:
        """A radius ``x`` scaled by +-10 %."""
        return float(x * self.rng.uniform(0.9, 1.1))

    def lobes(self, n: int = 3, amp: float = 0.06) -> tuple:
        """``n`` random surface lobes (order, amplitude, phase)."""
        return tuple(
            (int(k), float(self.rng.uniform(0, amp)), float(self.rng.uniform(0, 2 * np.pi))) for k in range(2, 2 + n)
        )


def _solid_organs(d: _Draws, z_of_s) -> dict[str, _Blob]:
    """Liver, gallbladder, spleen, kidneys, lungs, heart, bladder and iliac bones of one case."""
    jit, rad, lobes, rng = d.jit, d.rad, d.lobes, d.rng
    return {
        "liver": _Blob(
            (jit(-0.36), jit(0.03), float(z_of_s(rng.uniform(0.95, 1.02)))),
            (rad(0.37), rad(0.40), rad(0.44)),
            angle=jit(0.3, 0.1),
            drift=(0.12, 0.05),
            lobes=lobes(),
        ),
        "liver_left": _Blob(
            (jit(-0.02), jit(-0.26), float(z_of_s(rng.uniform(0.97, 1.04)))),
            (rad(0.22), rad(0.10), rad(0.22)),
            angle=jit(-0.2, 0.1),
            lobes=lobes(2, 0.05),
        ),
        "gallbladder": _Blob(
            (jit(-0.26), jit(-0.14), float(z_of_s(0.70))), (rad(0.06), rad(0.045), rad(0.12)), angle=jit(0.6, 0.2)
        ),
        "spleen": _Blob(
            (jit(0.50), jit(0.30), float(z_of_s(rng.uniform(0.88, 0.95)))),
            (rad(0.11), rad(0.19), rad(0.28)),
            angle=jit(-0.6, 0.1),
            lobes=lobes(2, 0.05),
        ),
        "kidney_r": _Blob(
            (jit(-0.29), jit(0.28), float(z_of_s(rng.uniform(0.46, 0.54)))),
            (rad(0.085), rad(0.125), rad(0.24)),
            angle=jit(-0.5, 0.1),
            drift=(-0.08, 0.0),
        ),
        "kidney_l": _Blob(
            (jit(0.30), jit(0.28), float(z_of_s(rng.uniform(0.52, 0.60)))),
            (rad(0.085), rad(0.125), rad(0.24)),
            angle=jit(0.5, 0.1),
            drift=(0.08, 0.0),
        ),
        "lung_r": _Blob((jit(-0.40), jit(0.16), Z_EXTENT * 1.12), (rad(0.30), rad(0.36), 0.5), angle=0.2),
        "lung_l": _Blob((jit(0.42), jit(0.18), Z_EXTENT * 1.14), (rad(0.28), rad(0.34), 0.5), angle=-0.2),
        "heart": _Blob((jit(0.08), jit(-0.12), Z_EXTENT * 1.18), (rad(0.30), rad(0.24), 0.42), angle=-0.4),
        "bladder": _Blob(
            (jit(0.0), jit(-0.14), Z_EXTENT * 0.05), (rad(0.20), rad(0.15), rad(0.30)), lobes=lobes(2, 0.04)
        ),
        "iliac_r": _Blob(
            (jit(-0.40), jit(0.24), Z_EXTENT * 0.22), (rad(0.055), rad(0.2), 0.30), angle=-0.7, drift=(0.25, 0.0)
        ),
        "iliac_l": _Blob(
            (jit(0.40), jit(0.24), Z_EXTENT * 0.22), (rad(0.055), rad(0.2), 0.30), angle=0.7, drift=(-0.25, 0.0)
        ),
    }


# large bowel: rectum -> sigmoid -> descending -> splenic flexure -> transverse -> hepatic flexure ->
# ascending -> caecum; (u, v, s, radius)
_COLON_PATH = [
    (0.00, 0.08, 0.00, 0.070),
    (0.02, 0.08, 0.08, 0.075),
    (-0.06, 0.02, 0.14, 0.075),
    (0.08, -0.06, 0.19, 0.075),
    (0.30, -0.04, 0.16, 0.075),
    (0.46, 0.10, 0.22, 0.080),
    (0.56, 0.14, 0.36, 0.085),
    (0.58, 0.14, 0.55, 0.085),
    (0.57, 0.10, 0.74, 0.090),
    (0.52, -0.04, 0.84, 0.095),
    (0.42, -0.20, 0.74, 0.095),
    (0.22, -0.36, 0.58, 0.100),
    (-0.08, -0.38, 0.53, 0.100),
    (-0.34, -0.30, 0.60, 0.100),
    (-0.52, -0.10, 0.66, 0.100),
    (-0.57, 0.04, 0.52, 0.100),
    (-0.55, 0.05, 0.32, 0.105),
    (-0.50, 0.00, 0.16, 0.115),
    (-0.44, -0.05, 0.08, 0.105),
]
_DUODENUM_PATH = [
    (-0.10, -0.20, 0.66, 0.055),
    (-0.20, -0.06, 0.60, 0.055),
    (-0.22, 0.06, 0.50, 0.055),
    (-0.10, 0.12, 0.43, 0.050),
    (0.06, 0.10, 0.44, 0.050),
    (0.14, 0.02, 0.49, 0.052),
]
_ILEUM_PATH = [(-0.12, 0.0, 0.24, 0.055), (-0.28, 0.02, 0.20, 0.055), (-0.40, -0.02, 0.17, 0.055)]
_STOMACH_PATH = [
    (0.34, 0.12, 0.91, 0.12),
    (0.35, 0.04, 0.88, 0.15),
    (0.30, -0.10, 0.84, 0.14),
    (0.22, -0.20, 0.76, 0.12),
    (0.06, -0.27, 0.70, 0.09),
    (-0.08, -0.22, 0.67, 0.07),
]


def _colon(rng: np.random.Generator, z_of_s) -> _Tube:
    """The large bowel along ``_COLON_PATH``, with haustra (periodic radius changes)."""
    colon = _spline_tube(rng, _COLON_PATH, z_of_s, jitter=0.02, step=0.02)
    haustra = rng.uniform(0.10, 0.14)
    colon.radii = colon.radii * (1.0 + 0.13 * np.cos(2 * np.pi * colon.arc / haustra))
    colon.period = haustra
    return colon


def _small_bowel(d: _Draws, z_of_s, span: float) -> list[_Tube]:
    """Duodenal C-loop, terminal ileum and tortuous jejunal/ileal loops."""
    duodenum = _spline_tube(d.rng, _DUODENUM_PATH, z_of_s, jitter=0.015, step=0.018)
    duodenum.content = float(d.rng.uniform(0.55, 0.85))
    ileum = _spline_tube(d.rng, _ILEUM_PATH, z_of_s, jitter=0.015, step=0.018)
    ileum.content = float(d.rng.uniform(0.6, 0.9))
    region_c = np.array([d.jit(0.0, 0.02), d.jit(-0.02, 0.02), float(z_of_s(0.33))])
    region_r = np.array([0.44, 0.29, span * 0.25]) * d.rng.uniform(0.93, 1.07, size=3)
    loops = _bowel_loops(d.rng, region_c, region_r, int(d.rng.integers(12, 17)), d.rad(0.054))
    return [duodenum, ileum, *loops]


def _liver_vessels(rng: np.random.Generator, liver: _Blob) -> list[_Blob]:
    """4-7 tilted vessels inside the liver."""
    vessels = []
    for _ in range(int(rng.integers(4, 8))):
        ang, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0.05, 0.25)
        tilt = rng.uniform(0.2, 0.6)
        center = (
            liver.center[0] + dist * np.cos(ang),
            liver.center[1] + dist * np.sin(ang),
            liver.center[2] - rng.uniform(0, 0.2),
        )
        vessels.append(
            _Blob(center, (0.016, 0.016, rng.uniform(0.15, 0.35)), drift=(tilt * np.cos(ang), tilt * np.sin(ang)))
        )
    return vessels


def _draw_anatomy(seed: int, case: int) -> _Anatomy:
    """The anatomy of one case (shared by all its days)."""
    rng = np.random.default_rng([seed, case, 1])
    d = _Draws(rng)
    m0, m1 = rng.uniform(0.15, 0.22, size=2)
    z_lo, z_hi = Z_EXTENT * m0, Z_EXTENT * (1.0 - m1)
    span = z_hi - z_lo

    def z_of_s(s):
        return z_lo + np.asarray(s) * span

    size = rng.uniform(0.92, 1.04)
    body_t = np.array([0.0, 0.15, 0.35, 0.55, 0.75, 0.9, 1.0]) * Z_EXTENT
    body_a = np.array([0.84, 0.82, 0.78, 0.77, 0.80, 0.81, 0.80]) * rng.uniform(0.96, 1.04, size=7)
    body_b = np.array([0.56, 0.56, 0.58, 0.60, 0.60, 0.58, 0.58]) * rng.uniform(0.95, 1.05, size=7)
    tissue = {k: v * float(rng.uniform(0.9, 1.1)) for k, v in TISSUE.items()}
    blobs = _solid_organs(d, z_of_s)
    colon = _colon(rng, z_of_s)
    small_bowel = _small_bowel(d, z_of_s, span)
    stomach = _spline_tube(rng, _STOMACH_PATH, z_of_s, jitter=0.02, step=0.02)
    liver_vessels = _liver_vessels(rng, blobs["liver"])
    return _Anatomy(
        z_lo=z_lo,
        z_hi=z_hi,
        size=size,
        body_t=body_t,
        body_a=body_a,
        body_b=body_b,
        fat=float(rng.uniform(0.035, 0.09)),
        fat_anterior=float(rng.uniform(0.0, 0.7)),
        fat_lobes=d.lobes(2, 0.15),
        power=float(rng.uniform(2.0, 2.4)),
        posterior=float(rng.uniform(0.86, 0.95)),
        tissue=tissue,
        blobs=blobs,
        liver_vessels=liver_vessels,
        colon=colon,
        small_bowel=small_bowel,
        stomach=stomach,
        disc_phase=float(rng.uniform(0, 1)),
        shift=(d.jit(0.0, 0.03), d.jit(0.0, 0.03)),
        angle=d.jit(0.0, 0.06),
        max_intensity=float(np.exp(rng.uniform(np.log(100.0), np.log(1000.0)))),
        noise=float(rng.uniform(0.004, 0.012)),
    )


def _draw_visit(seed: int, case: int, day: int) -> _Visit:
    """The follow-up differences of one day: position, bowel motion, filling, bias, noise."""
    rng = np.random.default_rng([seed, case, day, 3])
    warp = [
        (rng.normal(size=3) * 4.0, float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0.008, 0.016))) for _ in range(3)
    ]
    bias = rng.normal(0.0, 1.0, size=6) * np.array([0.15, 0.15, 0.12, 0.12, 0.15, 0.0])
    bias[5] = rng.uniform(0.2, 0.7)  # surface coils: brighter periphery, darker centre
    # a guaranteed linear shading component of strength 0.3..0.65 in a random direction
    phi = rng.uniform(0, 2 * np.pi)
    bias[:2] += rng.uniform(0.3, 0.65) * np.array([np.cos(phi), np.sin(phi)])
    bias[:2] *= max(1.0, 0.3 / float(np.linalg.norm(bias[:2])))
    return _Visit(
        shift=tuple(rng.normal(0.0, 0.015, size=2)),
        angle=float(rng.normal(0.0, 0.025)),
        z_shift=float(np.clip(rng.normal(0.0, 0.015), -0.03, 0.03)),
        warp=warp,
        stomach_scale=float(rng.uniform(0.9, 1.1)),
        air_depth=float(rng.uniform(0.04, 0.12)),
        bias=bias,
        bias_z=float(rng.normal(0.0, 0.1)),
        intensity=float(rng.uniform(0.9, 1.1)),
        tex_seed=int(rng.integers(0, 2**31)),
    )


# ----------------------------------------------------------------------------- geometry


@dataclass
class _Frame:
    """Image grid <-> anatomy coordinates for one scan."""

    n: int
    h: int
    w: int
    scale: float  # pixels per normalised unit
    cx: float
    cy: float
    cos: float
    sin: float
    su: float
    sv: float
    z: np.ndarray  # (n,) anatomy z of each slice
    u: np.ndarray  # (h, w) anatomy u of each pixel
    v: np.ndarray  # (h, w)
    x: np.ndarray  # (h, w) scanner-frame normalised coordinates (for the bias field)
    y: np.ndarray

    @classmethod
    def build(cls, n: int, h: int, w: int, anatomy: _Anatomy, visit: _Visit) -> _Frame:
        scale = min(h, w) / 2.0 * anatomy.size
        cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
        ang = anatomy.angle + visit.angle
        su, sv = anatomy.shift[0] + visit.shift[0], anatomy.shift[1] + visit.shift[1]
        rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
        xs, ys = (cols - cx) / scale, (rows - cy) / scale
        c, s = float(np.cos(ang)), float(np.sin(ang))
        u = (c * xs + s * ys - su).astype(np.float32)
        v = (-s * xs + c * ys - sv).astype(np.float32)
        z = np.arange(n) * (Z_EXTENT / (n - 1)) + visit.z_shift
        half = min(h, w) / 2.0
        return cls(n, h, w, scale, cx, cy, c, s, su, sv, z, u, v, (cols - cx) / half, (rows - cy) / half)

    def to_pixels(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, col) of anatomy points."""
        uu, vv = u + self.su, v + self.sv
        col = self.cx + self.scale * (self.cos * uu - self.sin * vv)
        row = self.cy + self.scale * (self.sin * uu + self.cos * vv)
        return row, col

    def z_range(self, lo: float, hi: float) -> tuple[int, int]:
        """Slice index range [k0, k1) whose z lies in (lo, hi)."""
        return int(np.searchsorted(self.z, lo, "right")), int(np.searchsorted(self.z, hi, "left"))


def _blob_field(fr: _Frame, b: _Blob, grow: float = 0.0):
    """Slices, box and (nz, h, w) inside-test of a blob (radii grown by ``grow``), or None if absent."""
    (cu, cv, cz), (ru, rv, rz) = b.center, b.radii
    ru, rv, rz = ru + grow, rv + grow, rz + grow
    k0, k1 = fr.z_range(cz - rz, cz + rz)
    if k1 <= k0:
        return None
    dz = fr.z[k0:k1] - cz
    f2 = np.clip(1.0 - (dz / rz) ** 2, 0.0, None).astype(np.float32)
    cus, cvs = cu + b.drift[0] * dz, cv + b.drift[1] * dz
    lobe_amp = sum(a for _, a, _ in b.lobes)
    reach = max(ru, rv) * (1.0 + lobe_amp)
    rows, cols = fr.to_pixels(
        np.r_[cus.min() - reach, cus.max() + reach, cus.min() - reach, cus.max() + reach],
        np.r_[cvs.min() - reach, cvs.max() + reach, cvs.max() + reach, cvs.min() - reach],
    )
    y0, y1 = max(0, int(rows.min()) - 2), min(fr.h, int(np.ceil(rows.max())) + 3)
    x0, x1 = max(0, int(cols.min()) - 2), min(fr.w, int(np.ceil(cols.max())) + 3)
    if y1 <= y0 or x1 <= x0:
        return None
    u, v = fr.u[y0:y1, x0:x1], fr.v[y0:y1, x0:x1]
    du = u[None] - cus.astype(np.float32)[:, None, None]
    dv = v[None] - cvs.astype(np.float32)[:, None, None]
    ca, sa = np.float32(np.cos(b.angle)), np.float32(np.sin(b.angle))
    a = (ca * du + sa * dv) / np.float32(ru)
    c = (-sa * du + ca * dv) / np.float32(rv)
    q = a * a + c * c
    if b.lobes:
        theta = np.arctan2(c, a)
        mod = np.ones_like(q)
        for k, amp, ph in b.lobes:
            mod += np.float32(amp) * np.cos(k * theta + ph)
        q /= mod * mod
    return (slice(k0, k1), slice(y0, y1), slice(x0, x1)), q < f2[:, None, None]


# ----------------------------------------------------------------------------- rendering

_EMPTY_BOX = (slice(0, 0), slice(0, 0), slice(0, 0))
_EMPTY_INS = np.zeros((0, 0, 0), dtype=bool)


def _texture(fr: _Frame, seed: int) -> np.ndarray:
    """A unit-variance smooth random texture volume (Z, H, W), coherent along z."""
    rng = np.random.default_rng([seed, 7])
    pad = 16
    tile = rng.standard_normal((fr.h + 2 * pad, fr.w + 2 * pad)).astype(np.float32)
    fine = ndimage.gaussian_filter(tile, 1.0)
    coarse = ndimage.gaussian_filter(tile, 3.5)
    tile = fine / fine.std() * 0.6 + coarse / coarse.std() * 0.8
    tile /= tile.std()
    steps = rng.integers(-1, 2, size=(fr.n, 2))
    offs = np.clip(pad + np.cumsum(steps, axis=0), 0, 2 * pad)
    out = np.empty((fr.n, fr.h, fr.w), dtype=np.float32)
    for k, (oy, ox) in enumerate(offs):
        out[k] = tile[oy : oy + fr.h, ox : ox + fr.w]
    return out


def _splat(fr: _Frame, slab: slice, tubes: list[_Tube], visit: _Visit, margin: float, grow: float = 1.0):
    """Signed distance (px) to a union of tubes over the slices ``slab``, with arc length and tube
    index of the nearest centre point."""
    zpx = (fr.z[slab] * fr.scale).astype(np.float32)
    shape = (len(zpx), fr.h, fr.w)
    sd = np.full(shape, np.inf, dtype=np.float32)
    arc = np.zeros(shape, dtype=np.float32)
    tid = np.zeros(shape, dtype=np.int16)
    for t_index, tube in enumerate(tubes):
        pts = _warp(tube.points, visit)
        rows, cols = fr.to_pixels(pts[:, 0], pts[:, 1])
        zs = pts[:, 2] * fr.scale
        radii = tube.radii * grow * fr.scale
        for row, col, zc, r, a in zip(rows, cols, zs, radii, tube.arc, strict=True):
            reach = r + margin
            k0 = int(np.searchsorted(zpx, zc - reach, "left"))
            k1 = int(np.searchsorted(zpx, zc + reach, "right"))
            y0, y1 = max(0, int(row - reach)), min(fr.h, int(row + reach) + 2)
            x0, x1 = max(0, int(col - reach)), min(fr.w, int(col + reach) + 2)
            if k1 <= k0 or y1 <= y0 or x1 <= x0:
                continue
            dz2 = (zpx[k0:k1] - np.float32(zc)) ** 2
            dy2 = (np.arange(y0, y1, dtype=np.float32) - np.float32(row)) ** 2
            dx2 = (np.arange(x0, x1, dtype=np.float32) - np.float32(col)) ** 2
            d = np.sqrt(dz2[:, None, None] + dy2[None, :, None] + dx2[None, None, :]) - np.float32(r)
            view = sd[k0:k1, y0:y1, x0:x1]
            better = d < view
            view[better] = d[better]
            arc[k0:k1, y0:y1, x0:x1][better] = a
            tid[k0:k1, y0:y1, x0:x1][better] = t_index
    return sd, arc, tid


def _warp(points: np.ndarray, visit: _Visit) -> np.ndarray:
    """Smooth day-to-day displacement of bowel points (peristalsis, breathing)."""
    out = points.copy()
    for i, (k, phase, amp) in enumerate(visit.warp):
        out[:, i % 2] += amp * np.sin(points @ k + phase)
    return out


def _render(anatomy: _Anatomy, visit: _Visit, fr: _Frame, noise_rng: np.random.Generator):
    """Paint the clean T2 image and exact masks, then apply blur, coil shading, scale and noise."""
    img, tex, inner, keep_out = _render_background(anatomy, visit, fr)
    masks, organ_slices = _render_hollow_organs(anatomy, visit, fr, img, tex, inner, keep_out)
    del tex, inner, keep_out
    image, info = _acquire(img, anatomy, visit, fr, noise_rng)
    return image, masks, {"organ_slices": organ_slices, **info}


@dataclass
class _Canvas:
    """The background image being painted, its texture and the retroperitoneal keep-out mask."""

    anatomy: _Anatomy
    fr: _Frame
    img: np.ndarray
    tex: np.ndarray
    keep_out: np.ndarray

    def blob(self, name_or_blob, grow: float = 0.0):
        """(box, inside) of a named blob of the anatomy or of a ``_Blob`` in this frame."""
        b_ = self.anatomy.blobs[name_or_blob] if isinstance(name_or_blob, str) else name_or_blob
        res = _blob_field(self.fr, b_, grow)
        return (_EMPTY_BOX, _EMPTY_INS) if res is None else res

    def paint(self, box, inside, value, amp=0.0, where=None, keep_out: bool = False) -> None:
        """Set ``value`` (textured by ``amp``) inside ``box`` where ``inside`` (and ``where``) hold;
        ``keep_out``: the region is retroperitoneal (no bowel there)."""
        if keep_out:
            self.keep_out[box] |= inside
        if where is not None:
            inside = inside & where[box]
        view = self.img[box]
        if amp:
            view[inside] = np.float32(value) * (1.0 + np.float32(amp) * self.tex[box][inside])
        else:
            view[inside] = np.float32(value)


def _tube_blob(cu, cv, ru, rv, z0, z1, angle=0.0) -> _Blob:
    """A straight elliptic tube from z0 to z1."""
    return _Blob((cu, cv, (z0 + z1) / 2), (ru, rv, (z1 - z0) / 2 + 1e-6), angle=angle)


def _paint_body_wall(c: _Canvas) -> tuple[np.ndarray, np.ndarray]:
    """Subcutaneous fat, abdominal wall muscle and visceral fat; returns (inside the body, inside the wall)."""
    anatomy, fr, tis, tex, img = c.anatomy, c.fr, c.anatomy.tissue, c.tex, c.img
    a = np.interp(fr.z, anatomy.body_t, anatomy.body_a).astype(np.float32)
    b = np.interp(fr.z, anatomy.body_t, anatomy.body_b).astype(np.float32)
    p = np.float32(anatomy.power)
    au = np.abs(fr.u) ** p
    av = np.abs(np.where(fr.v > 0, fr.v / np.float32(anatomy.posterior), fr.v)) ** p
    level = au[None] / (a**p)[:, None, None] + av[None] / (b**p)[:, None, None]
    outer = level < 1.0
    # depth below the skin (normalised units, exact on the antero-posterior axis)
    depth = np.power(level, np.float32(1.0 / p), out=level)
    depth -= np.float32(1.0)
    depth *= -b[:, None, None]
    u, v = fr.u, fr.v
    phi = np.arctan2(v, u)
    g = 1.0 + anatomy.fat_anterior * np.clip(-v / 0.6, 0, 1) - 0.35 * np.clip(v / 0.6, 0, 1)
    for k, amp, ph in anatomy.fat_lobes:
        g += amp * np.cos(k * phi + ph)
    fat2d = (anatomy.fat * np.clip(g, 0.3, None)).astype(np.float32)
    rectus = np.where(v < 0, 0.022 * np.exp(-(((np.abs(u) - 0.1) / 0.07) ** 2)), 0.0)
    wall2d = (fat2d + 0.02 + 0.014 * np.abs(u) / 0.8 + rectus).astype(np.float32)
    inner = depth >= wall2d[None]
    img[outer] = tis["sc_fat"] * (1.0 + 0.05 * tex[outer])
    img[outer & (depth >= fat2d[None]) & ~inner] = tis["muscle"]
    img[inner] = tis["visceral_fat"] * (1.0 + 0.07 * tex[inner])
    return outer, inner


def _paint_pelvis(c: _Canvas, inner: np.ndarray) -> None:
    """Iliac bones (cortex and marrow), bladder and psoas muscles."""
    tis = c.anatomy.tissue
    for name in ("iliac_r", "iliac_l"):
        c.paint(*c.blob(name, 0.015), tis["bone_cortex"], where=inner, keep_out=True)
        c.paint(*c.blob(name), tis["marrow"], amp=0.15, where=inner)
    c.paint(*c.blob("bladder"), tis["bladder"], amp=0.02, where=inner, keep_out=True)
    for side in (-1, 1):
        psoas = _Blob((side * 0.16, 0.27, Z_EXTENT * 0.42), (0.075, 0.07, Z_EXTENT * 0.3), drift=(side * -0.12, 0.08))
        c.paint(*c.blob(psoas), tis["muscle"], amp=0.08, where=inner, keep_out=True)


def _paint_spine(c: _Canvas, outer: np.ndarray) -> None:
    """Paraspinal muscles, posterior elements, canal, vertebral body with discs."""
    tis, fr = c.anatomy.tissue, c.fr
    z_all = (-1.0, Z_EXTENT + 1.0)
    for side in (-1, 1):
        c.paint(
            *c.blob(_tube_blob(side * 0.13, 0.44, 0.11, 0.07, *z_all, angle=side * 0.35)),
            tis["muscle"],
            amp=0.08,
            where=outer,
            keep_out=True,
        )
        c.paint(
            *c.blob(_tube_blob(side * 0.05, 0.40, 0.022, 0.055, *z_all, angle=side * 0.6)),
            tis["bone_cortex"] * 2,
            amp=0.2,
            where=outer,
        )
    c.paint(*c.blob(_tube_blob(0.0, 0.49, 0.018, 0.07, *z_all)), tis["bone_cortex"] * 2, amp=0.2, where=outer)
    c.paint(*c.blob(_tube_blob(0.0, 0.385, 0.04, 0.032, *z_all)), tis["csf"], where=outer)
    c.paint(*c.blob(_tube_blob(0.0, 0.275, 0.098, 0.086, *z_all)), tis["bone_cortex"], where=outer, keep_out=True)
    box, ins = c.blob(_tube_blob(0.0, 0.275, 0.083, 0.071, *z_all))
    disc = ((fr.z / 0.16 + c.anatomy.disc_phase) % 1.0) < 0.22
    marrow = np.where(disc, tis["disc"], tis["marrow"]).astype(np.float32)
    vals = np.broadcast_to(marrow[box[0], None, None], ins.shape)
    c.img[box][ins] = vals[ins] * (1.0 + 0.1 * c.tex[box][ins])


def _paint_great_vessels(c: _Canvas, inner: np.ndarray) -> None:
    """Aorta (bifurcating low) and inferior vena cava."""
    vessel = c.anatomy.tissue["vessel"]
    c.paint(
        *c.blob(_tube_blob(0.05, 0.17, 0.045, 0.045, Z_EXTENT * 0.33, Z_EXTENT + 1.0)),
        vessel,
        where=inner,
        keep_out=True,
    )
    c.paint(
        *c.blob(_tube_blob(-0.11, 0.16, 0.055, 0.038, Z_EXTENT * 0.33, Z_EXTENT + 1.0)),
        vessel,
        where=inner,
        keep_out=True,
    )
    for side in (-1, 1):
        c.paint(
            *c.blob(_tube_blob(side * 0.13, 0.15, 0.03, 0.03, -1.0, Z_EXTENT * 0.33)),
            vessel,
            where=inner,
            keep_out=True,
        )


def _paint_solid_organs(c: _Canvas, inner: np.ndarray) -> None:
    """Kidneys with renal sinus, liver with hepatic veins, gallbladder, spleen, lung bases and heart."""
    tis, blobs = c.anatomy.tissue, c.anatomy.blobs
    for name in ("kidney_r", "kidney_l"):
        c.paint(*c.blob(name), tis["kidney"], amp=0.1, where=inner, keep_out=True)
        kb = blobs[name]
        medial = -np.sign(kb.center[0]) * kb.radii[0] * 0.45
        sinus = _Blob(
            (kb.center[0] + medial, kb.center[1] - 0.01, kb.center[2]),
            (kb.radii[0] * 0.5, kb.radii[1] * 0.4, kb.radii[2] * 0.55),
            kb.angle,
            kb.drift,
        )
        c.paint(*c.blob(sinus), tis["renal_sinus"], amp=0.1, where=inner)
    for name in ("liver", "liver_left"):
        c.paint(*c.blob(name), tis["liver"], amp=0.06, where=inner)
    for vessel in c.anatomy.liver_vessels:  # hepatic veins: thin dark tubes inside the liver only
        box, ins = c.blob(vessel)
        liver_here = np.abs(c.img[box] - tis["liver"]) < tis["liver"] * 0.3
        c.paint(box, ins & liver_here, tis["liver_vessel"], where=inner)
    c.paint(*c.blob("gallbladder"), tis["gallbladder"], amp=0.02, where=inner)
    c.paint(*c.blob("spleen"), tis["spleen"], amp=0.06, where=inner)
    for name in ("lung_r", "lung_l"):  # chest: lung bases and heart above the diaphragm
        c.paint(*c.blob(name), tis["lung"], amp=0.3, where=inner)
    c.paint(*c.blob("heart"), tis["heart"], amp=0.1, where=inner)


def _render_background(anatomy: _Anatomy, visit: _Visit, fr: _Frame):
    """The clean T2 image of everything but the organs of ``CLASSES``: body wall, fat, bones, vessels,
    solid organs; also the texture, the inside of the abdominal wall and the retroperitoneal keep-out."""
    shape = (fr.n, fr.h, fr.w)
    c = _Canvas(
        anatomy, fr, np.zeros(shape, dtype=np.float32), _texture(fr, visit.tex_seed), np.zeros(shape, dtype=bool)
    )
    outer, inner = _paint_body_wall(c)
    _paint_pelvis(c, inner)
    _paint_spine(c, outer)
    _paint_great_vessels(c, inner)
    _paint_solid_organs(c, inner)
    return c.img, c.tex, inner, c.keep_out


def _render_hollow_organs(anatomy: _Anatomy, visit: _Visit, fr: _Frame, img, tex, inner, keep_out):
    """Paint stomach, large and small bowel into ``img``; their exact masks and organ slice range."""
    shape = img.shape
    # hollow organs: signed distance fields in pixels
    px = fr.scale / 133.0  # pixels per pixel of the reference 266-pixel grid
    margin = max(2.0, 3.0 * px)
    # only the slices of the organ region can hold an organ of CLASSES
    k_lo, k_hi = fr.z_range(anatomy.z_lo, anatomy.z_hi)
    k_hi = max(k_lo, k_hi)
    slab = slice(k_lo, k_hi)
    allowed = inner[slab] & ~keep_out[slab]
    del keep_out
    img_s, tex_s = img[slab], tex[slab]

    def distance_field(tubes, grow=1.0):
        sd, arc, tid = _splat(fr, slab, tubes, visit, margin, grow)
        sd[~allowed] = np.inf
        return sd, arc, tid

    sd_st, _, _ = distance_field([anatomy.stomach], visit.stomach_scale)
    sd_lb, arc_lb, _ = distance_field([anatomy.colon])
    sd_sb, arc_sb, tid_sb = distance_field(anatomy.small_bowel)
    # organs displace each other: stomach over large bowel over small bowel
    sd_lb_c = np.maximum(sd_lb, -sd_st)
    sd_sb_c = np.maximum(np.maximum(sd_sb, -sd_st), -sd_lb_c)
    in_st, in_lb, in_sb = sd_st < 0, sd_lb_c < 0, sd_sb_c < 0

    wall = np.float32(1.6 * px)
    _paint_large_bowel(img_s, tex_s, np.nonzero(in_lb), sd_lb, arc_lb, anatomy, px, wall)
    _paint_small_bowel(img_s, tex_s, np.nonzero(in_sb), sd_sb, arc_sb, tid_sb, anatomy, px, wall)
    del arc_lb, arc_sb, tid_sb
    _paint_stomach(img_s, tex_s, np.nonzero(in_st), sd_st, anatomy, visit, fr, px)

    # ground truth: exact masks, with a thin annotator overlap at some touching boundaries
    band = np.float32(1.5 * px)
    gate = tex_s > 0.5
    masks = np.zeros((len(CLASSES), *shape), dtype=bool)
    masks[_ST, slab] = in_st | ((sd_st < band) & (in_lb | in_sb) & gate)
    masks[_LB, slab] = in_lb | ((sd_lb < band) & in_sb & gate)
    masks[_SB, slab] = in_sb | ((sd_sb < band) & (in_lb | in_st) & gate)
    masks[:, slab] &= allowed[None]
    return masks, (int(k_lo), int(k_hi))


def _paint_large_bowel(img_s, tex_s, idx, sd_lb, arc_lb, anatomy: _Anatomy, px: float, wall) -> None:
    """Large bowel at ``idx``: thin wall, dark mottled content with air bubbles, haustral folds."""
    tis = anatomy.tissue
    d, t = sd_lb[idx], tex_s[idx]
    fold = (np.cos(2 * np.pi * arc_lb[idx] / anatomy.colon.period) < -0.8) & (d > -6.0 * px)
    vals = np.float32(tis["lb_content"]) * (1.0 + 0.35 * t)
    vals = np.where(t > 1.7, np.float32(tis["air"]), vals)
    vals = np.where(fold, np.float32(tis["lb_fold"]), vals)
    vals = np.where(d > -wall, np.float32(tis["lb_wall"]), vals)
    img_s[idx] = vals


def _paint_small_bowel(img_s, tex_s, idx, sd_sb, arc_sb, tid_sb, anatomy: _Anatomy, px: float, wall) -> None:
    """Small bowel at ``idx``: bright fluid (per loop), feathery folds, darker wall (also where loops touch)."""
    tis = anatomy.tissue
    d, t = sd_sb[idx], tex_s[idx]
    content = np.array([tb.content for tb in anatomy.small_bowel], dtype=np.float32)
    vals = content[tid_sb[idx]] * (1.0 + 0.1 * t)
    period = np.array([tb.period for tb in anatomy.small_bowel], dtype=np.float32)[tid_sb[idx]]
    fold = (np.cos(2 * np.pi * arc_sb[idx] / period) > 0.55) & (d > -3.5 * px)
    vals = np.where(fold, np.float32(tis["sb_fold"]), vals)
    # walls where two loops touch (their union has no boundary of its own)
    seam = np.zeros(img_s.shape, dtype=bool)
    for axis in (1, 2):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        differ = tid_sb[tuple(lo)] != tid_sb[tuple(hi)]
        seam[tuple(lo)] |= differ
        seam[tuple(hi)] |= differ
    img_s[idx] = np.where((d > -wall) | seam[idx], np.float32(tis["sb_wall"]), vals)


def _paint_stomach(img_s, tex_s, idx, sd_st, anatomy: _Anatomy, visit: _Visit, fr: _Frame, px: float) -> None:
    """Stomach at ``idx``: thick wall, fluid with debris, air above a horizontal air-fluid level."""
    if not idx[0].size:
        return
    tis = anatomy.tissue
    d, t = sd_st[idx], tex_s[idx]
    vals = np.where(t > 1.0, np.float32(tis["st_debris"]), np.float32(tis["st_fluid"]) * (1.0 + 0.03 * t))
    top = idx[1].min()
    air_row = top + visit.air_depth * fr.scale
    vals = np.where((idx[1] < air_row) & (d < -3.0 * px), np.float32(tis["air"]), vals)
    vals = np.where(d > -2.6 * px, np.float32(tis["st_wall"]) * (1.0 + 0.1 * t), vals)
    img_s[idx] = vals


def _acquire(img: np.ndarray, anatomy: _Anatomy, visit: _Visit, fr: _Frame, noise_rng: np.random.Generator):
    """Blur, coil shading, scale and Rician noise of the clean image (in place): uint16 image, info."""
    shape = img.shape
    # acquisition: blur, coil shading, scale, Rician noise (in chunks of slices to save memory)
    ndimage.gaussian_filter1d(img, 0.7, axis=1, output=img, truncate=3.0)
    ndimage.gaussian_filter1d(img, 0.7, axis=2, output=img, truncate=3.0)
    c = visit.bias
    x, y = fr.x, fr.y
    bias2d = np.exp(c[0] * x + c[1] * y + c[2] * x * x + c[3] * y * y + c[4] * x * y + c[5] * (x * x + y * y))
    bias_z = np.exp(visit.bias_z * (fr.z / Z_EXTENT - 0.5)).astype(np.float32)
    img *= bias2d.astype(np.float32)[None]
    img *= bias_z[:, None, None]
    peak = float(img.max()) or 1.0
    top = anatomy.max_intensity * visit.intensity
    img *= np.float32(top / peak)
    sigma = np.float32(anatomy.noise * top)
    image = np.empty(shape, dtype=np.uint16)
    for k0 in range(0, fr.n, 16):
        chunk = img[k0 : k0 + 16]
        real = noise_rng.standard_normal(chunk.shape, dtype=np.float32)
        imag = noise_rng.standard_normal(chunk.shape, dtype=np.float32)
        chunk += real * sigma
        np.hypot(chunk, imag * sigma, out=chunk)
        np.rint(chunk, out=chunk)
        image[k0 : k0 + 16] = np.clip(chunk, 0, 65535)
    info = {
        "max_intensity": round(top, 2),
        "noise_sigma": round(float(sigma), 3),
        "bias": [round(float(v), 4) for v in c],
    }
    return image, info


# ----------------------------------------------------------------------------- backgrounds for synthesis


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
    seed, case = _check_int("seed", seed), _check_int("case", case)
    height, width, n = int(size[0]), int(size[1]), int(n_slices)
    anatomy = _draw_anatomy(seed, case)
    visit = _draw_visit(seed, case, 0)
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
    frame = _Frame.build(max(2, len(coarse)), height, width, anatomy, visit)
    frame = dataclasses.replace(frame, n=len(coarse), z=z[coarse][::-1].copy())  # the frame's z ascends
    img = _render_background(anatomy, visit, frame)[0][::-1]
    upper = np.clip(np.searchsorted(coarse, np.arange(n)), 1, len(coarse) - 1) if n > 1 else np.zeros(1, int)
    lower = upper - 1 if n > 1 else upper
    span = np.maximum(coarse[upper] - coarse[lower], 1)
    t = ((np.arange(n) - coarse[lower]) / span).astype(np.float32)[:, None, None]
    return (1.0 - t) * img[lower] + t * img[upper]


def _fit_body_around(anatomy: _Anatomy, visit: _Visit, footprint: np.ndarray) -> None:
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
