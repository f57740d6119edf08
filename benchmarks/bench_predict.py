"""Inference speed: the naive Kaggle-notebook loop against the ``Predictor``, with an ablation table.

Run:  .venv/bin/python benchmarks/bench_predict.py            (about 10 minutes on 2 CPU cores,
                                                                plus 5 to train the fallback model once)
      .venv/bin/python benchmarks/bench_predict.py --quick    (48 slices, one repeat, no extras)
      options: --model BUNDLE.json, --compile (add torch.compile), --site DIR (where onnxruntime
      and onnx were ``pip install --target``-ed; ONNX Runtime is tried when importable)

Data: one phantom scan (``make_phantom_case``, 144 slices of 266 x 266) with exact masks. Model:
``--model``, else ``resources/models/default.json``, else a small Unet trained once on other phantom
scans in a child process and cached in the temp folder (the output says which).

(a) naive: ``model.eval()``, ``torch.no_grad()``, eager fp32, batches of 8 in slice order, full frame.
(b) the Predictor, step by step (each line adds one thing to the line above it), then bf16 on the
    CPU (``GITSEG_CPU_BF16=1``) and alternatives (batch size, threads, TTA, ONNX Runtime, compile).

Variants are interleaved and repeated; the table shows the fastest repeat. Dice is the challenge's;
"visible" is the latency until the slice on screen (the middle one) has its masks; peak RSS comes
from a fresh child process. The full method, results and what was tried and not kept:
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GOALS = "goals on 2 CPU cores: ratio >= 3x, Dice within 0.005 of naive, visible slice < 0.5 s, peak RSS < 2 GB"


# ---- data ---------------------------------------------------------------------------------------
def make_case(seed: int, n_slices: int, size: tuple[int, int], case: int = 1):
    """(image (Z, Y, X), masks (C, Z, Y, X), description) from the phantom, or synthetic blobs without it."""
    try:
        from napari_gitseg.phantom import make_phantom_case
    except ImportError:
        make_phantom_case = None
    if make_phantom_case is not None:
        stack = make_phantom_case(seed, case=case, n_slices=n_slices, size=size)
        return stack.image, stack.masks, f"phantom seed={seed} case={case}"
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    image = np.zeros((n_slices, h, w), np.float32)
    masks = np.zeros((3, n_slices, h, w), bool)
    body = ((yy - h / 2) / (0.3 * h)) ** 2 + ((xx - w / 2) / (0.4 * w)) ** 2 < 1
    for z in range(n_slices):
        image[z][body] = 300
        for c in range(3):
            if (z // 20 + c) % 2:
                cy, cx = h / 2 + (c - 1) * 0.15 * h, w / 2 + (c - 1) * 0.2 * w
                blob = (yy - cy) ** 2 + (xx - cx) ** 2 < (0.06 * h) ** 2
                image[z][blob] = 600 + 200 * c
                masks[c, z] = blob
    image += rng.normal(0, 20, image.shape)
    return np.clip(image, 0, None).astype(np.uint16), masks, "synthetic blobs (phantom module missing)"


def challenge_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean over slices and classes of the per-slice Dice (empty vs empty = 1), as in the challenge."""
    try:
        from training.metrics import dice_per_slice

        return float(dice_per_slice(pred, truth).mean())
    except ImportError:
        inter = (pred & truth).sum(axis=(-2, -1))
        denom = pred.sum(axis=(-2, -1)) + truth.sum(axis=(-2, -1))
        return float(np.where(denom > 0, 2 * inter / np.maximum(denom, 1), 1.0).mean())


# ---- fallback model -------------------------------------------------------------------------------
def train_fallback(out_stem: Path, steps: int, seed: int, size: tuple[int, int], threads: int) -> None:
    """Train a small Unet/resnet18 on phantom scans (not the test scan) and save it as a bundle."""
    import torch

    from napari_gitseg.model.bundle import save_bundle
    from napari_gitseg.model.factory import ModelConfig, build_model, forward_logits
    from napari_gitseg.model.normalize import DEFAULT_NORMALIZATION, normalize_stack
    from napari_gitseg.model.windows import make_windows
    from napari_gitseg.predict.postprocess import body_box
    from napari_gitseg.predict.predictor import cpu_bf16_enabled

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cfg = ModelConfig(arch="Unet", encoder="resnet18", k=3, stride=2, cls_head=True)
    model = build_model(cfg).train().to(memory_format=torch.channels_last)
    volumes, targets, boxes = [], [], []
    for case in range(2, 6):
        image, masks, _ = make_case(seed + case, 144, size, case=case)
        vol = normalize_stack(image, DEFAULT_NORMALIZATION)
        volumes.append(vol)
        targets.append(masks)
        boxes.append(body_box(vol))
    bf16 = cpu_bf16_enabled()
    opt = torch.optim.AdamW(model.parameters(), 2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps, pct_start=0.15)
    t0 = time.perf_counter()
    for step in range(steps):
        i = int(rng.integers(len(volumes)))
        vol, masks, box = volumes[i], targets[i], boxes[i]
        # half of each batch holds organs, half is drawn anywhere (empty slices teach the gate)
        has = np.flatnonzero(masks.any(axis=(0, 2, 3)))
        zs = np.concatenate([rng.choice(has, 4), rng.integers(0, vol.shape[0], 4)])
        y0, y1, x0, x1 = box if box is not None else (0, vol.shape[1], 0, vol.shape[2])
        jy, jx = rng.integers(-12, 13, 2)  # jittered body crop, 32-multiple, as the Predictor frames it
        hh, ww = (
            min(-(-(y1 - y0) // 32) * 32, vol.shape[1] // 32 * 32),
            min(-(-(x1 - x0) // 32) * 32, vol.shape[2] // 32 * 32),
        )
        ys = int(np.clip((y0 + y1) // 2 - hh // 2 + jy, 0, vol.shape[1] - hh))
        xs = int(np.clip((x0 + x1) // 2 - ww // 2 + jx, 0, vol.shape[2] - ww))
        x = make_windows(vol, zs, cfg.k, cfg.stride)[:, :, ys : ys + hh, xs : xs + ww]
        y = masks[:, zs, ys : ys + hh, xs : xs + ww].transpose(1, 0, 2, 3)
        if rng.random() < 0.5:
            x, y = x[..., ::-1], y[..., ::-1]
        x = torch.from_numpy(np.ascontiguousarray(x)).contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy(np.ascontiguousarray(y)).float()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            seg, cls = forward_logits(model, x)
        seg, cls = seg.float(), cls.float()
        p = torch.sigmoid(seg)
        soft_dice = 1 - (2 * (p * y).sum((0, 2, 3)) + 1) / (p.sum((0, 2, 3)) + y.sum((0, 2, 3)) + 1)
        loss = (
            torch.nn.functional.binary_cross_entropy_with_logits(seg, y)
            + soft_dice.mean()
            + 0.5 * torch.nn.functional.binary_cross_entropy_with_logits(cls, y.amax((2, 3)))
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            print(
                f"  train step {step + 1}/{steps} loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)", flush=True
            )
    save_bundle(
        model.eval().to(memory_format=torch.contiguous_format),
        cfg,
        out_stem,
        training={"data": "phantom cases 2-5", "steps": steps, "command": "benchmarks/bench_predict.py"},
        notes="benchmark fallback model (resources/models/default.json was absent)",
    )


def get_model(args) -> tuple[Path, str]:
    """The bundle to benchmark and a sentence saying where it came from."""
    if args.model:
        return Path(args.model), f"model: {args.model}"
    default = REPO / "resources" / "models" / "default.json"
    if default.is_file() and not args.train:
        return default, f"model: {default.relative_to(REPO)}"
    cache = Path(args.cache) if args.cache else Path(tempfile.gettempdir()) / "gitseg-bench"
    cache.mkdir(parents=True, exist_ok=True)
    stem = cache / f"unet_resnet18_s{args.train_steps}_seed{args.seed}_{args.size}"
    if not stem.with_suffix(".json").is_file():
        print(
            f"no resources/models/default.json: training a fallback Unet/resnet18 for {args.train_steps} steps "
            f"in a child process (cached as {stem}.json)",
            flush=True,
        )
        cmd = [
            sys.executable,
            __file__,
            "--train-only",
            str(stem),
            "--train-steps",
            str(args.train_steps),
            "--seed",
            str(args.seed),
            "--size",
            str(args.size),
            "--threads",
            str(args.threads),
        ]
        subprocess.run(cmd, check=True)
    return stem.with_suffix(
        ".json"
    ), f"model: fallback Unet/resnet18 trained {args.train_steps} steps on phantom scans ({stem}.json)"


# ---- the two contenders ---------------------------------------------------------------------------
def naive_predict(model, cfg, spec, image, visible, batch=8):
    """The Kaggle-notebook loop: eval + no_grad, fp32, fixed batches in slice order, full frame.

    Frames as in training: padded to the divisor at native resolution, or letterboxed to the
    model's ``input_size`` (scaled to fit keeping the aspect ratio, zero-padded) and scaled back.
    """
    import torch
    import torch.nn.functional as F

    from napari_gitseg.model.factory import input_divisor
    from napari_gitseg.model.normalize import normalize_stack
    from napari_gitseg.model.windows import make_windows

    t0 = time.perf_counter()
    first = None
    model.eval()
    vol = normalize_stack(image, spec)
    n, h, w = vol.shape
    if cfg.input_size is not None:
        th, tw = cfg.input_size
        scale = min(th / h, tw / w)
        nh, nw = max(1, min(th, round(h * scale))), max(1, min(tw, round(w * scale)))
        top, left = (th - nh) // 2, (tw - nw) // 2
    else:
        div = input_divisor(model)
        nh, nw = h, w
        th, tw = h + (-h % div), w + (-w % div)
        top, left = (th - h) // 2, (tw - w) // 2
    masks = np.zeros((len(cfg.classes), n, h, w), bool)
    with torch.no_grad():
        for start in range(0, n, batch):
            idx = np.arange(start, min(start + batch, n))
            x = torch.from_numpy(make_windows(vol, idx, cfg.k, cfg.stride))
            if (nh, nw) != (h, w):
                x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=nh < h)
            x = F.pad(x, (left, tw - nw - left, top, th - nh - top))
            out = model(x)
            seg = out[0] if isinstance(out, (tuple, list)) else out
            seg = seg[..., top : top + nh, left : left + nw]
            if (nh, nw) != (h, w):
                seg = F.interpolate(seg, size=(h, w), mode="bilinear", align_corners=False)
            masks[:, idx] = (torch.sigmoid(seg) > 0.5).numpy().transpose(1, 0, 2, 3)
            if first is None and visible in idx:
                first = time.perf_counter() - t0
    return masks, time.perf_counter() - t0, first


class OrtModel:
    """ONNX Runtime session wrapped to look like the torch model (for the ablation only)."""

    def __init__(self, model, k, threads):
        import onnxruntime as ort
        import torch

        self.path = Path(tempfile.mkdtemp()) / "model.onnx"
        dummy = torch.zeros(2, k, 64, 64)
        torch.onnx.export(
            model,
            (dummy,),
            str(self.path),
            dynamo=False,
            input_names=["x"],
            output_names=["seg", "cls"][: 2 if getattr(model, "classification_head", None) else 1],
            dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}},
            opset_version=17,
        )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        self.encoder = model.encoder  # for input_divisor

    def eval(self):
        return self

    def __call__(self, x):
        import torch

        outs = self.session.run(None, {"x": x.numpy()})
        return tuple(torch.from_numpy(o) for o in outs)


def memory_probe(kind: str, bundle_path: Path, image_path: Path, visible: int) -> float:
    """Peak RSS (MB) of a fresh process that loads the model and the image and segments it once."""
    cmd = [
        sys.executable,
        __file__,
        "--memory-probe",
        kind,
        "--probe-model",
        str(bundle_path),
        "--probe-image",
        str(image_path),
        "--probe-visible",
        str(visible),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def _probe(kind: str, bundle_path: str, image_path: str, visible: int) -> None:
    image = np.load(image_path)
    if kind == "naive":
        from napari_gitseg.model.bundle import load_bundle

        model, bundle = load_bundle(bundle_path)
        naive_predict(model, bundle.config, bundle.normalization, image, visible)
    else:
        from napari_gitseg.predict import Predictor

        Predictor([bundle_path], device="cpu").predict(image, first_slice=visible)
    print(rss_mb())


def rss_mb() -> float:
    """Peak resident memory of this process in MB (VmHWM on Linux: unlike ru_maxrss it is not inherited
    from the parent across fork + exec)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def _parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=144)
    parser.add_argument("--size", type=int, default=266)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training and ORT")
    parser.add_argument("--model", help="model bundle to benchmark (default: resources/models/default.json)")
    parser.add_argument("--train", action="store_true", help="use the fallback model even if default.json exists")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--train-only", help=argparse.SUPPRESS)
    parser.add_argument("--memory-probe", choices=["naive", "predictor"], help=argparse.SUPPRESS)
    parser.add_argument("--probe-model", help=argparse.SUPPRESS)
    parser.add_argument("--probe-image", help=argparse.SUPPRESS)
    parser.add_argument("--probe-visible", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--site",
        action="append",
        default=[],
        help="extra folder appended to sys.path (e.g. where onnxruntime was pip-installed --target)",
    )
    parser.add_argument("--cache", help="folder for the fallback model (default: the temp folder)")
    parser.add_argument("--no-extras", action="store_true", help="skip the alternatives (batch, threads, ORT, compile)")
    parser.add_argument("--compile", action="store_true", help="also try torch.compile (slow to compile)")
    parser.add_argument("--quick", action="store_true", help="48 slices, one repeat, no extras")
    args = parser.parse_args()
    if args.quick:
        args.slices, args.repeats, args.no_extras = 48, 1, True
    return args


# the Predictor's optimisations one after the other, ending with its defaults
STEPS = [
    (
        "Predictor: inference_mode, fp32, full frame",
        {"channels_last": False, "crop_to_body": False, "use_gate": False, "amp": False, "freeze": False},
    ),
    (
        "+ channels_last",
        {"channels_last": True, "crop_to_body": False, "use_gate": False, "amp": False, "freeze": False},
    ),
    (
        "+ frozen graphs (torch.jit.freeze)",
        {"channels_last": True, "crop_to_body": False, "use_gate": False, "amp": False},
    ),
    ("+ body crop", {"channels_last": True, "crop_to_body": True, "use_gate": False, "amp": False}),
    ("+ empty-slice gate = defaults (fp32 on the CPU)", {"cpu_bf16": False}),
]
# bf16 on the CPU is an opt-in (GITSEG_CPU_BF16=1): measured here against the fp32 defaults
BF16_STEP = ("  defaults in bf16 (GITSEG_CPU_BF16=1: bf16 graphs)", {"cpu_bf16": True})
EXTRAS = [
    ("  defaults, batch 4", {"batch_size": 4}),
    ("  defaults, batch 16", {"batch_size": 16}),
    ("  defaults, 1 thread", {"num_threads": 1}),
    ("  defaults without the gate", {"use_gate": False}),
    ("  defaults without frozen graphs (eager)", {"freeze": False}),
    ("  defaults in bf16, eager autocast", {"cpu_bf16": True, "freeze": False}),
]


def _variants(args, bundle_path, model, cfg, image) -> list[tuple[str, object]]:
    """(name, variant) pairs: the naive loop first, then the Predictor steps, bf16 and the extras."""
    import torch

    from napari_gitseg.predict import Predictor

    base = {"device": "cpu", "batch_size": 8}
    variants: list[tuple[str, object]] = [("naive Kaggle loop (no_grad, fp32, bs 8, full frame)", "naive")]
    variants += [
        (name, Predictor([bundle_path], **{**base, **opts}))
        for name, opts in STEPS + [BF16_STEP] + ([] if args.no_extras else EXTRAS)
    ]
    if not args.no_extras:
        try:
            variants.append(
                ("  naive loop on ONNX Runtime (fp32, full frame)", ("ort", OrtModel(model, cfg.k, args.threads)))
            )
        except Exception as err:  # noqa: BLE001 - optional
            print(f"ONNX Runtime: skipped ({type(err).__name__}: {str(err)[:120]}); pip install onnxruntime onnx")
    if args.compile:
        try:
            t0 = time.perf_counter()
            compiled_pred = Predictor([bundle_path], **base)
            member = compiled_pred.members[0]
            member.model = torch.compile(member.model, dynamic=True)
            member.split = False  # compiled forward: full model, gate applied to the masks only
            compiled_pred.predict(image[:16], first_slice=8)
            print(f"torch.compile: {time.perf_counter() - t0:.1f} s to compile and warm up")
            variants.append(("  defaults + torch.compile", compiled_pred))
        except Exception as err:  # noqa: BLE001 - optional
            print(f"torch.compile: skipped ({type(err).__name__}: {str(err)[:160]})")
    return variants


def _time_variants(variants, model, cfg, spec, image, truth, visible: int, repeats: int) -> dict[str, dict]:
    """Warm-up (oneDNN builds its kernels on first use), then interleaved timed repeats of every variant."""
    for _, v in variants:
        _run(v, model, cfg, spec, image[: min(16, len(image))], 8)
    results: dict[str, dict] = {}
    for _ in range(repeats):
        for name, v in variants:
            masks, seconds, first = _run(v, model, cfg, spec, image, visible)
            r = results.setdefault(name, {"times": [], "first": []})
            r["times"].append(seconds)
            r["first"].append(first)
            r["dice"] = challenge_dice(masks, truth)
    return results


def _report(results: dict, variants, n_slices: int, bundle_path, image, visible: int) -> None:
    """The table, the ratio and Dice lines, bf16, peak memory and a JSON line."""
    naive = results[variants[0][0]]
    t_naive, d_naive = min(naive["times"]), naive["dice"]
    print(f"\n{'variant':58s} {'time s':>7s} {'speed-up':>8s} {'Dice':>7s} {'dDice':>8s} {'visible s':>9s}")
    for name, _ in variants:
        r = results[name]
        t = min(r["times"])
        gain, first = r["dice"] - d_naive, min(r["first"])
        print(f"{name:58s} {t:7.2f} {t_naive / t:7.2f}x {r['dice']:7.4f} {gain:+8.4f} {first:9.3f}")
    best = results[STEPS[-1][0]]
    t_best = min(best["times"])
    print()
    print(f"time (a) naive:     {t_naive:.2f} s  ({1000 * t_naive / n_slices:.0f} ms/slice)")
    print(f"time (b) Predictor: {t_best:.2f} s  ({1000 * t_best / n_slices:.0f} ms/slice, defaults)")
    print(f"ratio:              {t_naive / t_best:.2f}x")
    print(f"Dice (a) {d_naive:.4f}  (b) {best['dice']:.4f}  difference {best['dice'] - d_naive:+.4f}")
    print(f"visible slice ready after: (a) {min(naive['first']):.3f} s  (b) {min(best['first']):.3f} s")
    bf16 = results[BF16_STEP[0]]
    print(
        f"CPU bf16 (opt-in): {min(bf16['times']):.2f} s ({t_best / min(bf16['times']):.2f}x the fp32 "
        f"defaults), Dice {bf16['dice']:.4f} vs fp32 {best['dice']:.4f} "
        f"(difference {bf16['dice'] - best['dice']:+.4f}; "
        f"on by default only if within 0.005 and faster)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        image_path = Path(tmp) / "image.npy"
        np.save(image_path, image)
        mem = {kind: memory_probe(kind, bundle_path, image_path, visible) for kind in ("naive", "predictor")}
    print(
        f"peak RSS of a fresh process segmenting this scan: (a) {mem['naive']:.0f} MB  (b) {mem['predictor']:.0f} MB"
        f"  (this benchmark process, holding {len(variants)} variants: {rss_mb():.0f} MB)"
    )
    print(
        json.dumps(
            {
                "naive_s": round(t_naive, 3),
                "predictor_s": round(t_best, 3),
                "ratio": round(t_naive / t_best, 2),
                "dice_naive": round(d_naive, 4),
                "dice_predictor": round(best["dice"], 4),
                "visible_s": round(min(best["first"]), 3),
                "bf16_s": round(min(bf16["times"]), 3),
                "dice_bf16": round(bf16["dice"], 4),
                "peak_rss_mb": round(mem["predictor"]),
            }
        )
    )


def main() -> int:
    args = _parse_args()
    size = (args.size, args.size)
    sys.path.extend(args.site)
    if args.train_only:
        train_fallback(Path(args.train_only), args.train_steps, args.seed, size, args.threads)
        return 0
    if args.memory_probe:
        _probe(args.memory_probe, args.probe_model, args.probe_image, args.probe_visible)
        return 0

    bundle_path, model_note = get_model(args)
    import torch

    from napari_gitseg.model.bundle import load_bundle
    from napari_gitseg.predict.predictor import cpu_bf16_enabled, cpu_has_native_bf16

    image, truth, case_note = make_case(args.seed, args.slices, size)
    visible = args.slices // 2
    model, bundle = load_bundle(bundle_path)
    cfg, spec = bundle.config, bundle.normalization
    print(f"{case_note}: {image.shape[0]} slices of {image.shape[1]}x{image.shape[2]}; {model_note}")
    print(
        f"{cfg.arch}/{cfg.encoder} k={cfg.k} stride={cfg.stride} cls_head={cfg.cls_head}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, native CPU bf16: {cpu_has_native_bf16()}, "
        f"$GITSEG_CPU_BF16 bf16 autocast: {cpu_bf16_enabled()}"
    )
    print(GOALS)
    variants = _variants(args, bundle_path, model, cfg, image)
    results = _time_variants(variants, model, cfg, spec, image, truth, visible, args.repeats)
    _report(results, variants, args.slices, bundle_path, image, visible)
    return 0


def _run(variant, model, cfg, spec, image, visible):
    """(masks, seconds, seconds until the visible slice) for one variant."""
    if variant == "naive":
        return naive_predict(model, cfg, spec, image, visible)
    if isinstance(variant, tuple) and variant[0] == "ort":
        return naive_predict(variant[1], cfg, spec, image, visible)
    t0 = time.perf_counter()
    pred = variant.predict(image, first_slice=visible)
    return pred.masks, time.perf_counter() - t0, pred.timings["first_slice"]


if __name__ == "__main__":
    raise SystemExit(main())
