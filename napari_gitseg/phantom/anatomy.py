"""What is fixed for one phantom case (its anatomy) and what changes between its days (a visit).

Anatomy lives in normalised coordinates (``u`` patient right -> left, ``v`` anterior -> posterior,
``z`` feet -> head), so the same case fits any image size or slice count (``spacing_mm`` is metadata
only). Every random draw comes from generators seeded by ``(seed, case)`` (anatomy) and
``(seed, case, day)`` (a visit), so equal arguments give equal cases and the days of one case share
their anatomy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.interpolate import CubicSpline

# extent of the phantom along z in normalised units (144 slices x 3 mm / 200 mm)
Z_EXTENT = 2.16


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


def check_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


@dataclass
class Tube:
    """A sphere-swept tube: centre points (u, v, z), radii, arc length, content level, fold period."""

    points: np.ndarray  # (N, 3) u, v, z in normalised units
    radii: np.ndarray  # (N,)
    arc: np.ndarray  # (N,) arc length from the start
    content: float = 0.0  # relative T2 level of the lumen content
    period: float = 0.035  # spacing of the folds (haustra, valvulae conniventes) along the tube


@dataclass
class Blob:
    """A smooth ellipsoid-like organ: centre, radii, in-plane angle, drift along z, lobulation."""

    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    angle: float = 0.0
    drift: tuple[float, float] = (0.0, 0.0)  # du/dz, dv/dz
    lobes: tuple[tuple[int, float, float], ...] = ()  # (k, amplitude, phase)


@dataclass
class Anatomy:
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
    blobs: dict[str, Blob]
    liver_vessels: list[Blob]
    colon: Tube
    small_bowel: list[Tube]
    stomach: Tube
    disc_phase: float
    shift: tuple[float, float]
    angle: float
    max_intensity: float
    noise: float


@dataclass
class Visit:
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


def _spline_tube(rng: np.random.Generator, ctrl: list[tuple], z_of_s, jitter: float, step: float) -> Tube:
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
    return Tube(points=dense[:, :3], radii=np.maximum(dense[:, 3], 0.02), arc=arc)


def _bowel_loops(
    rng: np.random.Generator, center: np.ndarray, radii: np.ndarray, n_loops: int, radius: float
) -> list[Tube]:
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
        loops.append(Tube(points=pts, radii=radii_t, arc=arc, content=float(rng.uniform(0.62, 0.95))))
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


def _solid_organs(d: _Draws, z_of_s) -> dict[str, Blob]:
    """Liver, gallbladder, spleen, kidneys, lungs, heart, bladder and iliac bones of one case."""
    jit, rad, lobes, rng = d.jit, d.rad, d.lobes, d.rng
    return {
        "liver": Blob(
            (jit(-0.36), jit(0.03), float(z_of_s(rng.uniform(0.95, 1.02)))),
            (rad(0.37), rad(0.40), rad(0.44)),
            angle=jit(0.3, 0.1),
            drift=(0.12, 0.05),
            lobes=lobes(),
        ),
        "liver_left": Blob(
            (jit(-0.02), jit(-0.26), float(z_of_s(rng.uniform(0.97, 1.04)))),
            (rad(0.22), rad(0.10), rad(0.22)),
            angle=jit(-0.2, 0.1),
            lobes=lobes(2, 0.05),
        ),
        "gallbladder": Blob(
            (jit(-0.26), jit(-0.14), float(z_of_s(0.70))), (rad(0.06), rad(0.045), rad(0.12)), angle=jit(0.6, 0.2)
        ),
        "spleen": Blob(
            (jit(0.50), jit(0.30), float(z_of_s(rng.uniform(0.88, 0.95)))),
            (rad(0.11), rad(0.19), rad(0.28)),
            angle=jit(-0.6, 0.1),
            lobes=lobes(2, 0.05),
        ),
        "kidney_r": Blob(
            (jit(-0.29), jit(0.28), float(z_of_s(rng.uniform(0.46, 0.54)))),
            (rad(0.085), rad(0.125), rad(0.24)),
            angle=jit(-0.5, 0.1),
            drift=(-0.08, 0.0),
        ),
        "kidney_l": Blob(
            (jit(0.30), jit(0.28), float(z_of_s(rng.uniform(0.52, 0.60)))),
            (rad(0.085), rad(0.125), rad(0.24)),
            angle=jit(0.5, 0.1),
            drift=(0.08, 0.0),
        ),
        "lung_r": Blob((jit(-0.40), jit(0.16), Z_EXTENT * 1.12), (rad(0.30), rad(0.36), 0.5), angle=0.2),
        "lung_l": Blob((jit(0.42), jit(0.18), Z_EXTENT * 1.14), (rad(0.28), rad(0.34), 0.5), angle=-0.2),
        "heart": Blob((jit(0.08), jit(-0.12), Z_EXTENT * 1.18), (rad(0.30), rad(0.24), 0.42), angle=-0.4),
        "bladder": Blob(
            (jit(0.0), jit(-0.14), Z_EXTENT * 0.05), (rad(0.20), rad(0.15), rad(0.30)), lobes=lobes(2, 0.04)
        ),
        "iliac_r": Blob(
            (jit(-0.40), jit(0.24), Z_EXTENT * 0.22), (rad(0.055), rad(0.2), 0.30), angle=-0.7, drift=(0.25, 0.0)
        ),
        "iliac_l": Blob(
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


def _colon(rng: np.random.Generator, z_of_s) -> Tube:
    """The large bowel along ``_COLON_PATH``, with haustra (periodic radius changes)."""
    colon = _spline_tube(rng, _COLON_PATH, z_of_s, jitter=0.02, step=0.02)
    haustra = rng.uniform(0.10, 0.14)
    colon.radii = colon.radii * (1.0 + 0.13 * np.cos(2 * np.pi * colon.arc / haustra))
    colon.period = haustra
    return colon


def _small_bowel(d: _Draws, z_of_s, span: float) -> list[Tube]:
    """Duodenal C-loop, terminal ileum and tortuous jejunal/ileal loops."""
    duodenum = _spline_tube(d.rng, _DUODENUM_PATH, z_of_s, jitter=0.015, step=0.018)
    duodenum.content = float(d.rng.uniform(0.55, 0.85))
    ileum = _spline_tube(d.rng, _ILEUM_PATH, z_of_s, jitter=0.015, step=0.018)
    ileum.content = float(d.rng.uniform(0.6, 0.9))
    region_c = np.array([d.jit(0.0, 0.02), d.jit(-0.02, 0.02), float(z_of_s(0.33))])
    region_r = np.array([0.44, 0.29, span * 0.25]) * d.rng.uniform(0.93, 1.07, size=3)
    loops = _bowel_loops(d.rng, region_c, region_r, int(d.rng.integers(12, 17)), d.rad(0.054))
    return [duodenum, ileum, *loops]


def _liver_vessels(rng: np.random.Generator, liver: Blob) -> list[Blob]:
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
            Blob(center, (0.016, 0.016, rng.uniform(0.15, 0.35)), drift=(tilt * np.cos(ang), tilt * np.sin(ang)))
        )
    return vessels


def draw_anatomy(seed: int, case: int) -> Anatomy:
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
    return Anatomy(
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


def draw_visit(seed: int, case: int, day: int) -> Visit:
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
    return Visit(
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
