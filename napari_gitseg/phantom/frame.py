"""The image grid of one scan against the anatomy's coordinates, and which pixels lie inside a blob."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_gitseg.phantom.anatomy import Z_EXTENT, Anatomy, Blob, Visit


@dataclass
class Frame:
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
    def build(cls, n: int, h: int, w: int, anatomy: Anatomy, visit: Visit) -> Frame:
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


def blob_field(fr: Frame, b: Blob, grow: float = 0.0):
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
