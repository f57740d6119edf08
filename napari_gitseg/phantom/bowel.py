"""The hollow organs of ``CLASSES`` (stomach, large and small bowel) as signed distance fields of tubes:
painted into the image (walls, content, folds, air) with their exact masks."""

from __future__ import annotations

import numpy as np

from napari_gitseg.classes import CLASSES
from napari_gitseg.phantom.anatomy import Anatomy, Tube, Visit
from napari_gitseg.phantom.frame import Frame

_LB, _SB, _ST = CLASSES.index("large_bowel"), CLASSES.index("small_bowel"), CLASSES.index("stomach")


def _splat(fr: Frame, slab: slice, tubes: list[Tube], visit: Visit, margin: float, grow: float = 1.0):
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


def _warp(points: np.ndarray, visit: Visit) -> np.ndarray:
    """Smooth day-to-day displacement of bowel points (peristalsis, breathing)."""
    out = points.copy()
    for i, (k, phase, amp) in enumerate(visit.warp):
        out[:, i % 2] += amp * np.sin(points @ k + phase)
    return out


def render_hollow_organs(anatomy: Anatomy, visit: Visit, fr: Frame, img, tex, inner, keep_out):
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


def _paint_large_bowel(img_s, tex_s, idx, sd_lb, arc_lb, anatomy: Anatomy, px: float, wall) -> None:
    """Large bowel at ``idx``: thin wall, dark mottled content with air bubbles, haustral folds."""
    tis = anatomy.tissue
    d, t = sd_lb[idx], tex_s[idx]
    fold = (np.cos(2 * np.pi * arc_lb[idx] / anatomy.colon.period) < -0.8) & (d > -6.0 * px)
    vals = np.float32(tis["lb_content"]) * (1.0 + 0.35 * t)
    vals = np.where(t > 1.7, np.float32(tis["air"]), vals)
    vals = np.where(fold, np.float32(tis["lb_fold"]), vals)
    vals = np.where(d > -wall, np.float32(tis["lb_wall"]), vals)
    img_s[idx] = vals


def _paint_small_bowel(img_s, tex_s, idx, sd_sb, arc_sb, tid_sb, anatomy: Anatomy, px: float, wall) -> None:
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


def _paint_stomach(img_s, tex_s, idx, sd_st, anatomy: Anatomy, visit: Visit, fr: Frame, px: float) -> None:
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
