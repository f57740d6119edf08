"""Picture for the README: training samples rendered around real masks beside real UW-Madison slices.

Top row: ``training.synthesis`` samples (each a new random look) around real masks of
``../shared/data/uwmgi-train-masks``; bottom row: real scans of ``../shared/data/uwmgi-real-slices``
(patients the model never trains on). Second line of each row: the organ masks over the image
(stomach red, small bowel yellow, large bowel blue). Skips with a message without ../shared.

    .venv/bin/python benchmarks/make_synthesis_preview.py --out resources/synthesis_preview.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
COLOURS = {"large_bowel": (0.2, 0.45, 1.0), "small_bowel": (1.0, 0.9, 0.1), "stomach": (1.0, 0.15, 0.1)}


def overlay(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """RGB of a normalised slice with the organ masks blended in their fixed colours."""
    from napari_gitseg.classes import CLASSES

    rgb = np.repeat(np.clip(image, 0, 1)[..., None], 3, axis=-1)
    out = rgb.copy()
    for c, name in enumerate(CLASSES):
        out[masks[c]] = 0.45 * rgb[masks[c]] + 0.55 * np.array(COLOURS[name])
    return out


def synthetic_tiles(n: int, size: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` (image, masks) samples of the training generator, from ``n`` different case-days."""
    from training.real_masks import RealMaskFolder
    from training.synthetic_dataset import SyntheticDataset

    source = RealMaskFolder(DATA / "uwmgi-train-masks")
    names = source.names[:: max(1, len(source.names) // n)][:n]
    tiles = []
    for i, name in enumerate(names):
        ds = SyntheticDataset(source, [name], size=(size, size), seed=seed + i, length=10, organ_share=1.0)
        item = ds[0]
        tiles.append((item["image"][ds.k // 2].numpy(), item["masks"].numpy() > 0.5))
    return tiles


def real_tiles(n: int, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` real slices with their masks, letterboxed to ``size``."""
    import torch

    from napari_gitseg.io import read_stacks
    from napari_gitseg.model.normalize import normalize_stack
    from training.datasets import letterbox

    tiles = []
    for stack in read_stacks(DATA / "uwmgi-real-slices"):
        for z in range(stack.image.shape[0]):
            image = torch.from_numpy(normalize_stack(stack.image[z : z + 1]))
            masks = torch.from_numpy(stack.masks[:, z].astype(np.float32))
            image, masks = letterbox(image, masks, (size, size))
            tiles.append((image[0].numpy(), masks.numpy() > 0.5))
    return tiles[:: max(1, len(tiles) // n)][:n]


def main(argv: list[str] | None = None) -> int:
    """Write the preview PNG."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "resources" / "synthesis_preview.png"))
    parser.add_argument("--n", type=int, default=6)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)
    if not (DATA / "uwmgi-train-masks").is_dir() or not (DATA / "uwmgi-real-slices").is_dir():
        print("skipped: ../shared/data is not here")
        return 0
    import imageio.v2 as iio

    rows = []
    for tiles in (synthetic_tiles(args.n, args.size, args.seed), real_tiles(args.n, args.size)):
        plain = np.concatenate([np.repeat(t[0][..., None], 3, -1) for t in tiles], axis=1)
        marked = np.concatenate([overlay(*t) for t in tiles], axis=1)
        rows += [plain, marked, np.ones((6, plain.shape[1], 3))]
    picture = (np.clip(np.concatenate(rows[:-1], axis=0), 0, 1) * 255).astype(np.uint8)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(args.out, picture)
    print(f"wrote {args.out}: rows 1-2 synthetic samples around real masks, rows 3-4 real UW-Madison slices")
    return 0


if __name__ == "__main__":
    sys.exit(main())
