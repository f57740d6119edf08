"""Draw resources/phantom_preview.png: six slices of one phantom case with organ contours.

Usage: ``python benchmarks/make_phantom_preview.py [--seed 0] [--out resources/phantom_preview.png]
[--compare /tmp/phantom_vs_real.png]``. ``--compare`` also writes a second image with a real
UW-Madison slice beside phantom slices (from ../shared/data when present; never shipped).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from napari_gitseg.classes import CLASSES, COLORS  # noqa: E402
from napari_gitseg.phantom import make_phantom_case  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REAL_SLICE = ROOT.parent / "shared" / "data" / "uwmgi-single-slice" / "slice_0001.png"


def _show(ax, image: np.ndarray, masks: np.ndarray | None, title: str, vmax: float, crop=None) -> None:
    """One grey slice (optionally cropped) with the organ outlines in the fixed class colours."""
    if crop is not None:
        image = image[crop]
        masks = None if masks is None else masks[(slice(None), *crop)]
    ax.imshow(image, cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
    if masks is not None:
        for c, name in enumerate(CLASSES):
            if masks[c].any():
                ax.contour(masks[c].astype(float), levels=[0.5], colors=[COLORS[name][:3]], linewidths=1.0)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def preview(seed: int, out: Path, case: int = 1) -> Path:
    """Write the 2x3 grid of slices (inferior to superior) of one 144-slice case."""
    stack = make_phantom_case(seed, case=case)
    vmax = float(np.percentile(stack.image, 99.7))
    zs = np.array([0.30, 0.40, 0.50, 0.62, 0.72, 0.80]) * (stack.image.shape[0] - 1)
    # crop to the body (rows and columns brighter than the background in any slice)
    body = stack.image.max(axis=0) > 0.15 * vmax
    rows, cols = np.flatnonzero(body.any(axis=1)), np.flatnonzero(body.any(axis=0))
    crop = (slice(max(0, rows[0] - 4), rows[-1] + 5), slice(max(0, cols[0] - 4), cols[-1] + 5))
    fig, axes = plt.subplots(2, 3, figsize=(10.5, 6.2), dpi=80)
    for ax, z in zip(axes.ravel(), zs, strict=True):
        k = int(round(z))
        _show(ax, stack.image[k], stack.masks[:, k], stack.slice_ids[k], vmax, crop)
    handles = [Line2D([0], [0], color=COLORS[n][:3], lw=2, label=n.replace("_", " ")) for n in CLASSES]
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False, fontsize=9)
    fig.suptitle(f"napari-gitseg phantom (seed {seed}): axial T2-like slices, feet to head", fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 0.96))
    out.parent.mkdir(parents=True, exist_ok=True)
    _save_small(fig, out)
    return out


def _save_small(fig, out: Path) -> None:
    """Save as a 256-colour PNG (a grey image with a few contour colours loses nothing visible)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    buffer.seek(0)
    Image.open(buffer).convert("RGB").quantize(256).save(out, optimize=True)


def compare(seed: int, out: Path) -> Path | None:
    """Write a real UW-Madison slice beside three phantom slices (for checking only)."""
    if not REAL_SLICE.is_file():
        return None
    import imageio.v3 as iio

    real = iio.imread(REAL_SLICE)
    stack = make_phantom_case(seed)
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4), dpi=72)
    _show(axes[0], real, None, f"real UW slice (max {real.max()})", float(np.percentile(real, 99.7)))
    vmax = float(np.percentile(stack.image, 99.7))
    for ax, frac in zip(axes[1:], (0.35, 0.6, 0.85), strict=True):
        k = int(frac * (stack.image.shape[0] - 1))
        _show(ax, stack.image[k], None, f"phantom {stack.slice_ids[k]} (max {stack.image.max()})", vmax)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "resources" / "phantom_preview.png")
    parser.add_argument("--compare", type=Path, default=None)
    args = parser.parse_args()
    path = preview(args.seed, args.out)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")
    if args.compare is not None:
        written = compare(args.seed, args.compare)
        print(f"wrote {written}" if written else f"no real slice at {REAL_SLICE}; comparison skipped")


if __name__ == "__main__":
    main()
