"""The headless command line: gitseg info|phantom|view|predict|export|import, plus train|bootstrap|eval.

The trainer's commands live in the ``training`` package, which ``napari_gitseg`` never imports (the
plugin starts the trainer as a process): every ``gitseg.commands`` entry point (pyproject.toml names
``training.commands:add_commands``) is called with the sub-parsers. An install without metadata (a bare
source tree on ``PYTHONPATH``) has the plugin's commands only; ``pip install -e .`` registers the rest.

This module builds the parser and runs info|phantom|view; ``commands`` runs predict|export|import.
Heavy imports (torch, napari) happen inside each command, so ``gitseg info`` stays quick.
Bad input exits with status 2 and one line naming the file and the problem.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import entry_points
from pathlib import Path

#: entry points whose ``add_commands(subparsers)`` add sub-commands to ``gitseg`` (the trainer's)
COMMANDS_GROUP = "gitseg.commands"


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=_json_default))


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def cmd_info(args) -> int:
    """Print shape, spacing, slices and labelled-slice counts of PATH as JSON."""
    from napari_gitseg.io import stack_info

    _print_json(stack_info(args.path))
    return 0


def cmd_phantom(args) -> int:
    """Write procedural phantom cases in the UW-Madison layout plus train.csv."""
    from napari_gitseg.phantom import write_phantom_dataset

    root = write_phantom_dataset(
        args.out,
        n_cases=args.cases,
        seed=args.seed,
        days_per_case=args.days,
        n_slices=args.slices,
        size=(args.size, args.size),
    )
    print(f"wrote {args.cases} phantom case(s) to {root}")
    return 0


def cmd_view(args) -> int:
    """Open napari with the plugin's docks, on PATH or the bundled phantom sample."""
    from napari_gitseg.app import launch_viewer

    return launch_viewer(
        path=args.path,
        sample=args.sample or not args.path,
        model=args.model,
        store=args.store,
        screenshot=args.screenshot,
        quit_after=args.quit_after,
        segment=args.segment,
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every ``gitseg`` sub-command."""
    parser = argparse.ArgumentParser(prog="gitseg", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="describe an MRI stack, case folder or dataset (JSON)")
    p.add_argument("path")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("phantom", help="write phantom cases in the UW-Madison layout + train.csv")
    p.add_argument("out")
    p.add_argument("--cases", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--days", type=int, default=1, help="scan days per case")
    p.add_argument("--slices", type=int, default=144)
    p.add_argument("--size", type=int, default=266, help="image height = width in pixels")
    p.set_defaults(func=cmd_phantom)

    p = sub.add_parser("view", help="open napari with the gitseg docks")
    p.add_argument("path", nargs="?")
    p.add_argument("--sample", action="store_true", help="open the bundled phantom case")
    p.add_argument("--model", help="model bundle (.json); default: the bundled model")
    p.add_argument("--store", help="label store folder; default: beside the data")
    p.add_argument("--segment", action="store_true", help="segment the opened scan with the model at once")
    p.add_argument("--screenshot", help="save a PNG of the window once loaded (with --segment: once segmented)")
    p.add_argument("--quit-after", type=float, default=None, help="close after N seconds (for scripts)")
    p.set_defaults(func=cmd_view)

    from napari_gitseg.cli import commands

    commands.add_commands(sub)
    for entry in entry_points(group=COMMANDS_GROUP):
        entry.load()(sub)
    return parser


def user_errors() -> tuple[type[Exception], ...]:
    """The errors that describe bad input and name its file or folder (data, model bundles, registries,
    label stores, RLE text): ``gitseg`` prints them as one line, not as a traceback."""
    from napari_gitseg.io import GitsegInputError
    from napari_gitseg.io.rle import RLEError
    from napari_gitseg.model.bundle import BundleError
    from napari_gitseg.model.registry import RegistryError
    from napari_gitseg.store import StoreError

    return (GitsegInputError, BundleError, RegistryError, StoreError, RLEError)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gitseg`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except user_errors() as err:
        print(f"gitseg {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gitseg {args.command}: cancelled", file=sys.stderr)
        return 130
