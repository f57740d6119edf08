"""MR-like training images rendered around real organ masks (domain randomisation, as SynthSeg does).

The challenge's real masks (``training.real_masks``) have no images. A :class:`Scene` puts one
case-day's masks on the training grid and renders a phantom body around them
(``napari_gitseg.phantom.render_body_background``, fitted so the real organs lie inside the
abdominal wall). :func:`render_window` then draws a new look for every sample, so that the model
learns the real organs' shapes rather than one contrast:

1. **tissue contrast**: a random lookup curve gives every tissue a new intensity (T1-, T2-, any-weighted);
2. **organs**: a wall and random contents per organ (bowel fluid and folds, stool and air, stomach fluid);
3. **distractors**: unlabelled blobs, so that "any blob in the belly" is not an organ;
4. **acquisition**: partial volume, blur, lower resolution, bias field, intensity scale, Rician noise, gamma;
5. now and then the neighbours are replaced by the centre slice (isolated slices, as in exports).

Optional steps (:class:`RenderOptions`, off by default; ``TrainConfig.synthesis`` turns them on): bowel
and stomach split into walled cells, bSSFP's dark interface lines, one bright fat, drifting clutter.
Each step in detail: ``docs/training-notes.md``. The masks are never changed: the organs of the image
are exactly the given masks. Every draw comes from the ``numpy.random.Generator`` passed in, so a seed
gives the same image.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from napari_gitseg.classes import CLASSES
from napari_gitseg.phantom import TISSUE, render_body_background

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

    from napari_gitseg.predict.inference import letterbox_geometry

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


def build_scene(
    name: str, masks: np.ndarray, size: tuple[int, int] | None, seed: int, spacing_mm: float = 1.5
) -> Scene:
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
@dataclass(frozen=True)
class RenderOptions:
    """How :func:`render_window` draws a look; the defaults are the renderer of the bundled model.

    The ``p_*`` settings are shares of samples; at 0 (the default) a step draws nothing from the
    generator, so the defaults give the same images as before the step existed. ``TrainConfig.synthesis``
    sets them (``gitseg train --config``). Measured on stage 1 of the default model's command (README
    table; zero-shot mean Dice, 18 real UW-Madison slices / TotalSegmentator MR volume; defaults
    0.238 / 0.167, another seed 0.258 / 0.189): loops 0.172 / 0.267, loops + stomach cells
    0.222 / 0.210, India ink + sharper blur 0.206 / 0.205, bright fat 0.254 / 0.258 and with seed 1
    0.252 / 0.177 (level on the real slices; its MR gain did not repeat). None is a clear gain; the
    bundled model was trained with the defaults.
    """

    p_t2: float = 0.3  # tissue contrast kept close to the phantom's T2 levels
    p_isolated: float = 0.15  # neighbours replaced by the centre slice (isolated slices, as in exports)
    blur: tuple[float, float] = (0.3, 1.1)  # in-plane blur sigma in pixels, drawn per sample
    p_loops: float = 0.0  # bowel masks split into packed loops / haustra (walled cells)
    p_stomach_cells: float = 0.0  # the stomach split into cells too (rugal folds, food)
    p_ink: float = 0.0  # a dark line at tissue interfaces (balanced SSFP's India-ink artefact)
    p_bright_fat: float = 0.0  # both fats one bright tissue (T1, bSSFP, T2 FSE without fat saturation)
    p_clutter: float = 0.0  # many small unlabelled structures around the organs (mesenteric vessels, nodes)

    @classmethod
    def from_dict(cls, data: dict | None) -> RenderOptions:
        """Options from a JSON object; ValueError naming an unknown key or a value out of range."""
        data = dict(data or {})
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in known]
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} (known: {', '.join(known)})")
        if "blur" in data:
            blur = data["blur"]
            if not (
                isinstance(blur, (list, tuple))
                and len(blur) == 2
                and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in blur)
                and 0 <= blur[0] <= blur[1]
            ):
                raise ValueError(f"blur must be [low, high] sigmas with 0 <= low <= high, got {blur!r}")
            data["blur"] = (float(blur[0]), float(blur[1]))
        for key, value in data.items():
            if key != "blur" and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1
            ):
                raise ValueError(f"{key} must be a share between 0 and 1, got {value!r}")
        return cls(**{k: (v if k == "blur" else float(v)) for k, v in data.items()})

    def to_dict(self) -> dict:
        """JSON-ready (recorded in the bundle)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


DEFAULT_RENDER = RenderOptions()


def render_window(
    scene: Scene, zs: list[int], rng: np.random.Generator, options: RenderOptions = DEFAULT_RENDER
) -> np.ndarray:
    """A new MR-like look of the slices ``zs`` of ``scene``: float32 (len(zs), H, W), positive."""
    n_z = scene.n_slices
    zs = [int(np.clip(z, 0, n_z - 1)) for z in zs]
    need = sorted({int(np.clip(z + d, 0, n_z - 1)) for z in zs for d in (-1, 0, 1)})
    lut_x, lut_y = _tissue_curve(rng, options.p_t2)
    if options.p_bright_fat > 0 and rng.random() < options.p_bright_fat:
        lut_x, lut_y = _bright_fat(lut_x, lut_y, rng)
    looks = _organ_looks(rng)
    blobs = _distractors(rng, scene)
    clutter = _clutter(rng, scene, need) if options.p_clutter > 0 and rng.random() < options.p_clutter else {}
    texture = _texture(rng, scene.background.shape[-2:])
    loops = _organ_cells(rng, scene.background.shape[-2:], options)
    ink = float(rng.uniform(0.0, 0.4)) if options.p_ink > 0 and rng.random() < options.p_ink else None
    sharp = {}
    for z in need:
        img = np.interp(scene.background[z].astype(np.float32), lut_x, lut_y).astype(np.float32)
        organs = scene.masks[:, z].any(axis=0)
        _paint_distractors(img, blobs, organs, scene.background[z] > 0.02, texture)
        if z in clutter:
            _paint_distractors(img, clutter[z], organs, scene.background[z] > 0.02, texture)
        _paint_organs(img, scene.masks[:, z], looks, texture, rng, loops)
        if ink is not None:
            _india_ink(img, scene.background[z], [*scene.masks[:, z], *(e & ~organs for e, _v in blobs)], ink)
        sharp[z] = img
    w = float(rng.uniform(0.0, 0.25))  # partial volume of the 3 mm neighbours
    out = np.stack([(1 - 2 * w) * sharp[z] + w * sharp[max(0, z - 1)] + w * sharp[min(n_z - 1, z + 1)] for z in zs])
    out = _acquire(out, rng, options.blur)
    if len(zs) > 1 and rng.random() < options.p_isolated:
        out[:] = out[len(zs) // 2]
    return out


def _india_ink(img: np.ndarray, background: np.ndarray, masks: list, darkness: float) -> None:
    """Darken (times ``darkness``) a 1-px line where the tissue changes: the background's level steps and
    the borders of ``masks`` (organs, distractors), as fat-water interfaces cancel in balanced SSFP (the
    UW-Madison MR-Linac scans)."""
    step = _steps(background.astype(np.float32), 0.08)
    inside = background > 0.02
    for mask in masks:
        step |= mask & inside & ~ndimage.binary_erosion(mask)
    img[step] *= darkness


_FAT_LEVELS = (TISSUE["visceral_fat"], TISSUE["sc_fat"])  # the phantom's fat levels (each jittered +-10 % per case)


def _bright_fat(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The lookup curve with both fats mapped to one bright value: fat is one tissue, and the mesenteric
    fat between bowel loops looks like the subcutaneous fat in most abdominal sequences."""
    bright = float(rng.uniform(0.6, 1.0))
    fat = np.array(_FAT_LEVELS, dtype=np.float32)
    flat = (fat[:, None] + np.array([-0.04, 0.0, 0.04], dtype=np.float32)).ravel()  # the fats' texture stays fat
    keep = x[np.abs(x[:, None] - fat[None]).min(axis=1) > 0.07]
    knots = np.sort(np.r_[keep, flat])
    values = np.interp(knots, x, y).astype(np.float32)
    values[np.isin(knots, flat)] = bright
    return knots, values


def _steps(values: np.ndarray, tol: float = 0.0) -> np.ndarray:
    """Pixels whose left or upper neighbour differs from them by more than ``tol`` (H, W) bool."""
    step = np.zeros(values.shape, bool)
    step[:, 1:] |= np.abs(values[:, 1:] - values[:, :-1]) > tol
    step[1:, :] |= np.abs(values[1:, :] - values[:-1, :]) > tol
    return step


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
        looks.append(
            _OrganLook(
                content=float(rng.uniform(0.05, 1.0)),
                wall=float(rng.uniform(0.0, 0.7)),
                wall_px=float(rng.uniform(0.6, 2.5)),
                spread=float(rng.uniform(0.0, 0.35)),
                texture=float(rng.uniform(0.02, 0.25)),
                air=float(rng.uniform(0.0, 0.12)),
                air_level=float(rng.uniform(0.05, 0.35)) if rng.random() < 0.5 else 0.0,
            )
        )
    return looks


def _texture(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A unit-variance mix of fine and coarse smooth noise (H, W)."""
    noise = rng.standard_normal(shape).astype(np.float32)
    fine = ndimage.gaussian_filter(noise, 0.8)
    coarse = ndimage.gaussian_filter(noise, 2.5)
    tex = fine / (fine.std() + 1e-6) * 0.6 + coarse / (coarse.std() + 1e-6) * 0.8
    return tex / (tex.std() + 1e-6)


@dataclass
class _Loops:
    """Packed cells over the whole frame (a Voronoi partition): which cell each pixel is in, the pixels
    next to another cell, and each cell's content offset (unit normal)."""

    cells: np.ndarray
    edge: np.ndarray
    offset: np.ndarray
    spread: float


_LOOP_RADIUS = {
    _SB: (2.5, 6.0),
    _LB: (4.0, 9.0),
    _ST: (4.0, 10.0),
}  # cell radius in training-grid pixels (160 px: ~2.5 mm each)


def _loop_cells(rng: np.random.Generator, shape: tuple[int, int], radius: float) -> _Loops:
    """Voronoi cells of random seeds, about one per disc of ``radius`` pixels."""
    h, w = shape
    n = max(1, int(h * w / (np.pi * radius * radius)))
    ids = np.zeros(shape, np.int32)
    ids[rng.integers(0, h, n), rng.integers(0, w, n)] = np.arange(1, n + 1)
    _dist, (iy, ix) = ndimage.distance_transform_edt(ids == 0, return_indices=True)
    cells = ids[iy, ix]
    return _Loops(cells, _steps(cells), rng.standard_normal(n + 1).astype(np.float32), float(rng.uniform(0.1, 0.6)))


def _organ_cells(rng: np.random.Generator, shape: tuple[int, int], options: RenderOptions) -> dict[int, _Loops]:
    """Per organ, the cells of one sample (shared by its slices): each bowel with ``p_loops``, the stomach
    with ``p_stomach_cells``; nothing is drawn for an option at 0."""
    shares = {_SB: options.p_loops, _LB: options.p_loops, _ST: options.p_stomach_cells}
    return {
        c: _loop_cells(rng, shape, float(rng.uniform(*radius)))
        for c, radius in _LOOP_RADIUS.items()
        if shares[c] > 0 and rng.random() < shares[c]
    }


def _paint_organs(
    img: np.ndarray,
    masks: np.ndarray,
    looks: list[_OrganLook],
    tex: np.ndarray,
    rng: np.random.Generator,
    loops: dict[int, _Loops] | None = None,
) -> None:
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
        cells = (loops or {}).get(c)
        if cells is not None:  # packed loops / haustra: a content per cell, thin walls between cells
            value = np.clip(value * (1.0 + cells.spread * cells.offset[cells.cells]), 0.0, None)
            value = np.where(cells.edge, look.wall * (1.0 + 0.1 * tex), value)
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


def _clutter(rng: np.random.Generator, scene: Scene, zs: list[int]) -> dict[int, list[tuple[np.ndarray, float]]]:
    """Many small unlabelled structures near the organs of one sample (mesenteric vessels, lymph nodes,
    unlabelled loops cut across): per slice of ``zs``, (inside (H, W) bool, intensity). Each one lives
    on a few neighbouring slices and drifts from slice to slice, as real structures cross the 3 mm
    slices (unlike the distractors, which stay put and so could be told apart by the 2.5D input)."""
    h, w = scene.background.shape[-2:]
    centre = zs[len(zs) // 2]
    near = ndimage.binary_dilation(scene.masks[:, centre].any(axis=0), iterations=max(2, h // 12))
    near &= scene.background[centre] > 0.02
    ys, xs = np.nonzero(near)
    if ys.size == 0:
        return {}
    n = int(rng.integers(15, 60))
    pick = rng.integers(0, ys.size, n)
    dark = rng.random() < 0.5  # vessels dark (flow voids, bSSFP edges) or bright (fluid, contrast) in this look
    values = rng.uniform(0.0, 0.2, n) if dark else rng.uniform(0.6, 1.0, n)
    radius = rng.uniform(0.006, 0.022, (n, 2)) * h
    drift = rng.normal(0.0, 0.006 * h, (n, 2))
    span = rng.integers(0, 3, n)
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    out: dict[int, list[tuple[np.ndarray, float]]] = {}
    for z in zs:
        dz = z - centre
        live = np.flatnonzero(np.abs(dz) <= span)
        out[z] = [
            (
                ((rows - ys[pick[i]] - dz * drift[i, 0]) / radius[i, 0]) ** 2
                + ((cols - xs[pick[i]] - dz * drift[i, 1]) / radius[i, 1]) ** 2
                < 1.0,
                float(values[i]),
            )
            for i in live
        ]
    return out


def _paint_distractors(
    img: np.ndarray, blobs: list[tuple[np.ndarray, float]], organs: np.ndarray, body: np.ndarray, tex: np.ndarray
) -> None:
    for ellipse, value in blobs:
        inside = ellipse & body & ~organs
        img[inside] = value * (1.0 + 0.1 * tex[inside])


def _acquire(out: np.ndarray, rng: np.random.Generator, blur: tuple[float, float]) -> np.ndarray:
    """Blur, lower resolution, bias field, scale, Rician noise and gamma of a (n, H, W) window."""
    n, h, w = out.shape
    sigma = float(rng.uniform(*blur))
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
