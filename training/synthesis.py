"""MR-like training images rendered around real organ masks (domain randomisation, as SynthSeg does).

The challenge's real masks (``training.real_masks``) have no images. A :class:`Scene` puts one
case-day's masks on the training grid and renders a phantom body around them
(``napari_gitseg.phantom.render_body_background``: skin, subcutaneous and visceral fat, muscle,
spine, vessels, liver, spleen, kidneys, lung bases; fitted so the real organs lie inside the
abdominal wall). :func:`render_window` then draws a new look for every sample:

1. **tissue contrast**: a random lookup curve over the phantom's T2 levels gives every tissue a new
   intensity (so T1-, T2- and any-weighted looks are all seen; with ``p_t2`` the curve stays close to
   T2);
2. **organs**: each real organ gets a wall (1-3 px at its border) and contents of random intensity:
   small bowel fluid per loop with feathery folds, large bowel mottled stool with air bubbles,
   stomach fluid with debris and (sometimes) an air-fluid level on its anterior side;
3. **distractors**: random unlabelled blobs (pancreas, duodenum, uterus, cysts...) so that "any blob
   in the belly" is not an organ;
4. **acquisition**: partial-volume mixing of the 3 mm neighbours, in-plane blur, a lower acquired
   resolution now and then, a smooth coil bias field, intensity scale, Rician noise, gamma;
5. now and then the neighbours are replaced by the centre slice (isolated slices, as in exports).

The masks are never changed: the organs of the image are exactly the given masks. Every draw comes
from the ``numpy.random.Generator`` passed in, so a seed gives the same image.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from napari_gitseg.classes import CLASSES
from napari_gitseg.phantom import render_body_background

_LB, _SB, _ST = CLASSES.index("large_bowel"), CLASSES.index("small_bowel"), CLASSES.index("stomach")


@dataclass
class Scene:
    """One case-day on the training grid: the body ``background`` (Z, H, W) float16 clean T2 levels
    and the real ``masks`` (C, Z, H, W) bool, both letterboxed to the same grid."""

    name: str
    background: np.ndarray
    masks: np.ndarray

    @property
    def n_slices(self) -> int:
        """Number of slices of the case-day."""
        return int(self.masks.shape[1])

    @functools.cached_property
    def organ_slices(self) -> np.ndarray:
        """Indices of the slices that hold an organ (computed once: samples draw from them)."""
        return np.flatnonzero(self.masks.any(axis=(0, 2, 3)))


def letterbox_masks(masks: np.ndarray, size: tuple[int, int] | None) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Masks (C, Z, H, W) scaled (nearest) to fit ``size`` keeping the aspect ratio and zero-padded, as
    the predictor letterboxes images; also (rows, cols, top, left) of the content inside the grid."""
    import torch
    import torch.nn.functional as F

    from napari_gitseg.predict.predictor import letterbox_geometry

    masks = np.asarray(masks, dtype=bool)
    h, w = masks.shape[-2:]
    if size is None:
        return masks, (h, w, 0, 0)
    nh, nw, top, left = letterbox_geometry(h, w, size)
    t = torch.from_numpy(masks.reshape(-1, 1, h, w).astype(np.uint8))
    if (nh, nw) != (h, w):
        t = F.interpolate(t, size=(nh, nw), mode="nearest-exact")
    out = np.zeros((masks.shape[0] * masks.shape[1], 1, *size), dtype=bool)
    out[:, :, top : top + nh, left : left + nw] = t.numpy().astype(bool)
    return out.reshape(*masks.shape[:2], *size), (nh, nw, top, left)


BODY_WIDTH_MM = (290.0, 370.0)  # left-right width of an adult abdomen, drawn per case-day


def build_scene(name: str, masks: np.ndarray, size: tuple[int, int] | None, seed: int,
                spacing_mm: float = 1.5) -> Scene:
    """The :class:`Scene` of a case-day's real ``masks`` (C, Z, H, W) with column spacing ``spacing_mm``:
    letterboxed to ``size`` with a phantom body (case drawn from ``seed`` and the name) of a real width
    in mm fitted around the organs."""
    grid, (nh, nw, top, left) = letterbox_masks(masks, size)
    n_z = grid.shape[1]
    rng = np.random.default_rng([seed, *name.encode()])
    case = int(rng.integers(1, 2**31 - 1))
    width = min(0.97, float(rng.uniform(*BODY_WIDTH_MM)) / (spacing_mm * masks.shape[-1]))
    content = grid[:, :, top : top + nh, left : left + nw].any(axis=0)
    body = render_body_background(seed, case, n_z, (nh, nw), organs=content, body_width=width)
    background = np.zeros((n_z, *grid.shape[-2:]), dtype=np.float16)
    background[:, top : top + nh, left : left + nw] = body
    return Scene(name=name, background=background, masks=grid)


# ------------------------------------------------------------------------------------------ render
def render_window(scene: Scene, zs: list[int], rng: np.random.Generator, p_t2: float = 0.3,
                  p_isolated: float = 0.15) -> np.ndarray:
    """A new MR-like look of the slices ``zs`` of ``scene``: float32 (len(zs), H, W), positive."""
    n_z = scene.n_slices
    zs = [int(np.clip(z, 0, n_z - 1)) for z in zs]
    need = sorted({int(np.clip(z + d, 0, n_z - 1)) for z in zs for d in (-1, 0, 1)})
    lut_x, lut_y = _tissue_curve(rng, p_t2)
    looks = _organ_looks(rng)
    blobs = _distractors(rng, scene)
    texture = _texture(rng, scene.background.shape[-2:])
    sharp = {}
    for z in need:
        img = np.interp(scene.background[z].astype(np.float32), lut_x, lut_y).astype(np.float32)
        _paint_distractors(img, blobs, scene.masks[:, z].any(axis=0), scene.background[z] > 0.02, texture)
        _paint_organs(img, scene.masks[:, z], looks, texture, rng)
        sharp[z] = img
    w = float(rng.uniform(0.0, 0.25))  # partial volume of the 3 mm neighbours
    out = np.stack([(1 - 2 * w) * sharp[z] + w * sharp[max(0, z - 1)] + w * sharp[min(n_z - 1, z + 1)]
                    for z in zs])
    out = _acquire(out, rng)
    if len(zs) > 1 and rng.random() < p_isolated:
        out[:] = out[len(zs) // 2]
    return out


def _tissue_curve(rng: np.random.Generator, p_t2: float) -> tuple[np.ndarray, np.ndarray]:
    """Knots of a random lookup curve from the phantom's T2 levels to new intensities in [0, 1]."""
    x = np.linspace(0.0, 1.2, 9)
    if rng.random() < p_t2:  # T2-like: the phantom's own contrast, jittered
        y = np.clip(x + rng.normal(0.0, 0.06, x.size), 0.0, None)
    else:
        y = rng.uniform(0.0, 1.0, x.size)
        y[0] = rng.uniform(0.0, 0.15)  # air outside the body stays dark
    return x, y.astype(np.float32)


@dataclass
class _OrganLook:
    content: float
    wall: float
    wall_px: float
    spread: float  # per-component variation of the content
    texture: float
    air: float
    air_level: float  # share of the stomach's height filled with air (0: none)


def _organ_looks(rng: np.random.Generator) -> list[_OrganLook]:
    looks = []
    for _ in CLASSES:
        looks.append(_OrganLook(
            content=float(rng.uniform(0.05, 1.0)),
            wall=float(rng.uniform(0.0, 0.7)),
            wall_px=float(rng.uniform(0.6, 2.5)),
            spread=float(rng.uniform(0.0, 0.35)),
            texture=float(rng.uniform(0.02, 0.25)),
            air=float(rng.uniform(0.0, 0.12)),
            air_level=float(rng.uniform(0.05, 0.35)) if rng.random() < 0.5 else 0.0,
        ))
    return looks


def _texture(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A unit-variance mix of fine and coarse smooth noise (H, W)."""
    noise = rng.standard_normal(shape).astype(np.float32)
    fine = ndimage.gaussian_filter(noise, 0.8)
    coarse = ndimage.gaussian_filter(noise, 2.5)
    tex = fine / (fine.std() + 1e-6) * 0.6 + coarse / (coarse.std() + 1e-6) * 0.8
    return tex / (tex.std() + 1e-6)


def _paint_organs(img: np.ndarray, masks: np.ndarray, looks: list[_OrganLook], tex: np.ndarray,
                  rng: np.random.Generator) -> None:
    """Paint walls and contents of the organs of one slice (large bowel, small bowel, stomach on top)."""
    for c in (_LB, _SB, _ST):
        mask = masks[c]
        if not mask.any():
            continue
        look = looks[c]
        depth = ndimage.distance_transform_edt(mask)
        comp, n = ndimage.label(mask)
        factor = 1.0 + look.spread * np.sin(np.arange(n + 1) * 2.399 + look.content * 10.0)
        value = look.content * factor[comp] * (1.0 + look.texture * tex)
        if c == _SB:  # feathery folds reaching in from the wall
            value = np.where((depth < 3.5) & (tex > 0.6), look.wall, value)
        elif c == _LB:  # mottled stool with air bubbles
            value = np.where(tex > 1.5, look.air, value)
        elif look.air_level > 0:  # stomach: air above a horizontal level (patient supine, anterior up)
            rows = np.nonzero(mask.any(axis=1))[0]
            level = rows[0] + look.air_level * (rows[-1] - rows[0] + 1)
            value = np.where((np.arange(mask.shape[0])[:, None] < level) & (depth > look.wall_px + 1), look.air, value)
        value = np.where(depth <= look.wall_px, look.wall * (1.0 + 0.1 * tex), value)
        img[mask] = value[mask]


def _distractors(rng: np.random.Generator, scene: Scene) -> list[tuple[np.ndarray, float]]:
    """Random unlabelled blobs of one sample: (inside (H, W) bool, intensity), the same on every slice."""
    h, w = scene.background.shape[-2:]
    n = int(rng.integers(0, 5))
    if n == 0:
        return []
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    blobs = []
    for _ in range(n):
        cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        ry, rx = rng.uniform(0.02, 0.08) * h, rng.uniform(0.02, 0.08) * w
        angle, value = rng.uniform(0, np.pi), float(rng.uniform(0.0, 1.0))
        ca, sa = np.cos(angle), np.sin(angle)
        a = (ca * (rows - cy) + sa * (cols - cx)) / rx
        b = (-sa * (rows - cy) + ca * (cols - cx)) / ry
        blobs.append((a * a + b * b < 1.0, value))
    return blobs


def _paint_distractors(img: np.ndarray, blobs: list[tuple[np.ndarray, float]], organs: np.ndarray,
                       body: np.ndarray, tex: np.ndarray) -> None:
    for ellipse, value in blobs:
        inside = ellipse & body & ~organs
        img[inside] = value * (1.0 + 0.1 * tex[inside])


def _acquire(out: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur, lower resolution, bias field, scale, Rician noise and gamma of a (n, H, W) window."""
    n, h, w = out.shape
    sigma = float(rng.uniform(0.3, 1.1))
    out = ndimage.gaussian_filter(out, (0, sigma, sigma))
    if rng.random() < 0.3:  # acquired at a lower resolution
        f = float(rng.uniform(1.3, 2.5))
        small = ndimage.zoom(out, (1, 1 / f, 1 / f), order=1)
        out = ndimage.zoom(small, (1, h / small.shape[1], w / small.shape[2]), order=1)[:, :h, :w]
    y, x = np.mgrid[-1 : 1 : h * 1j, -1 : 1 : w * 1j].astype(np.float32)
    c = rng.normal(0.0, 0.25, 6)
    bias = np.exp(c[0] * x + c[1] * y + c[2] * x * x + c[3] * y * y + c[4] * x * y + abs(c[5]) * (x * x + y * y))
    out = np.clip(out, 0.0, None) * bias[None]
    gamma = float(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))
    peak = float(out.max()) or 1.0
    out = (out / peak) ** gamma
    noise = float(rng.uniform(0.003, 0.05))
    out = np.hypot(out + rng.normal(0.0, noise, out.shape), rng.normal(0.0, noise, out.shape))
    return (out * float(np.exp(rng.uniform(np.log(100.0), np.log(1000.0))))).astype(np.float32)
