"""The scanner's part: blur, coil shading, intensity scale and Rician noise of a clean phantom image."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from napari_gitseg.phantom.anatomy import Z_EXTENT, Anatomy, Visit
from napari_gitseg.phantom.frame import Frame


def acquire(img: np.ndarray, anatomy: Anatomy, visit: Visit, fr: Frame, noise_rng: np.random.Generator):
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
