"""The phantom's body without the organs of ``CLASSES``: body wall and fat, pelvis, spine, great vessels
and solid organs, painted into a clean T2 image (with its texture and the retroperitoneal keep-out)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from napari_gitseg.phantom.anatomy import Z_EXTENT, Anatomy, Blob, Visit
from napari_gitseg.phantom.frame import Frame, blob_field

_EMPTY_BOX = (slice(0, 0), slice(0, 0), slice(0, 0))


_EMPTY_INS = np.zeros((0, 0, 0), dtype=bool)


def _texture(fr: Frame, seed: int) -> np.ndarray:
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


@dataclass
class _Canvas:
    """The background image being painted, its texture and the retroperitoneal keep-out mask."""

    anatomy: Anatomy
    fr: Frame
    img: np.ndarray
    tex: np.ndarray
    keep_out: np.ndarray

    def blob(self, name_or_blob, grow: float = 0.0):
        """(box, inside) of a named blob of the anatomy or of a ``Blob`` in this frame."""
        b_ = self.anatomy.blobs[name_or_blob] if isinstance(name_or_blob, str) else name_or_blob
        res = blob_field(self.fr, b_, grow)
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


def _tube_blob(cu, cv, ru, rv, z0, z1, angle=0.0) -> Blob:
    """A straight elliptic tube from z0 to z1."""
    return Blob((cu, cv, (z0 + z1) / 2), (ru, rv, (z1 - z0) / 2 + 1e-6), angle=angle)


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
        psoas = Blob((side * 0.16, 0.27, Z_EXTENT * 0.42), (0.075, 0.07, Z_EXTENT * 0.3), drift=(side * -0.12, 0.08))
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
        sinus = Blob(
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


def render_background(anatomy: Anatomy, visit: Visit, fr: Frame):
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
