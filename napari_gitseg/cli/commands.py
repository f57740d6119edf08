"""``gitseg predict|export|import``: segment stacks and move labels in and out of a project's store."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def cmd_predict(args) -> int:
    """Segment every stack at PATH with a model bundle and write the masks (by OUT's extension)."""
    from napari_gitseg.io import GitsegInputError, format_of, read_stacks, write_masks
    from napari_gitseg.predict import Predictor
    from napari_gitseg.resources import default_model_path

    model = args.model or default_model_path()
    if model is None:
        raise GitsegInputError(None, "no --model given and no default model bundle found in resources/models")
    stacks = read_stacks(args.path)
    predictor = Predictor([model], device=args.device, tta_flips=args.tta, batch_size=args.batch_size)
    out = Path(args.out)
    if len(stacks) > 1 and (args.format or format_of(out) != "csv"):
        raise GitsegInputError(args.out, f"{len(stacks)} stacks found: only a .csv output can hold several")
    all_masks = []
    for stack in stacks:
        bar = _bar(stack.shape[0], f"predict {stack.name}")
        pred = predictor.predict(stack, progress=lambda done, _total, b=bar: b.update(done - b.n))
        bar.close()
        all_masks.append(pred.masks)
    if args.format in ("rtstruct", "seg"):
        from napari_gitseg.io.dicom.export import write_dicom_labels

        written = write_dicom_labels(
            out, stacks[0], all_masks[0], args.format, with_images=args.with_images, algorithm="AUTOMATIC"
        )
        out = written[-1]
    elif len(stacks) == 1:
        write_masks(out, all_masks[0], stacks[0])
    else:  # each case-day its own scan, whatever its grid
        from napari_gitseg.io import write_scans_rle_csv

        write_scans_rle_csv(out, [(s.slice_ids, m) for s, m in zip(stacks, all_masks)])
    print(f"wrote {out}")
    return 0


def cmd_export(args) -> int:
    """Export the reviewed masks of a label store (csv|tif|nii) with a provenance side file."""
    from napari_gitseg.export import export_store

    paths = export_store(
        args.store,
        args.out,
        fmt=args.format,
        stack=args.stack,
        reviewed_only=not args.all,
        with_images=args.with_images,
        smooth_sigma=args.smooth,
    )
    for p in paths:
        print(f"wrote {p}")
    return 0


def cmd_import(args) -> int:
    """Seed a label store with the organs of a DICOM RT-STRUCT/SEG (provenance ``imported``)."""
    from napari_gitseg.import_labels import import_labels

    print(json.dumps(import_labels(args.store, args.path)))
    return 0


def _bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="slice", file=sys.stderr, disable=None)


def add_commands(sub) -> None:
    """Register predict, export and import on ``gitseg``'s sub-parsers."""
    p = sub.add_parser("predict", help="segment a stack/case/dataset; OUT by extension (.csv .tif .nii.gz) or --format")
    p.add_argument("path")
    p.add_argument("--model", help="model bundle .json (default: the bundled model)")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    p.add_argument(
        "--tta",
        action="store_true",
        help="flip test-time augmentation (not for a model trained without mirrored images)",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--format",
        choices=("rtstruct", "seg"),
        default=None,
        help="write a DICOM RT-STRUCT or SEG (OUT.dcm) on the input's DICOM series instead",
    )
    p.add_argument(
        "--with-images",
        action="store_true",
        help="with --format, for a non-DICOM input: also write its images as a DICOM MR series",
    )
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export reviewed masks from a label store")
    p.add_argument("store", help="project folder holding gitseg_labels.sqlite")
    p.add_argument(
        "--format",
        choices=("csv", "tif", "nii", "rtstruct", "seg"),
        default="csv",
        help="rtstruct / seg: DICOM RT Structure Set / Segmentation on the stack's DICOM series",
    )
    p.add_argument(
        "--with-images",
        action="store_true",
        help="rtstruct/seg of a non-DICOM stack: also write its images as a DICOM MR series",
    )
    p.add_argument(
        "--smooth",
        type=float,
        default=0.0,
        metavar="SIGMA",
        help="rtstruct: smooth the contours (Gaussian sigma in pixels; default 0 = exact pixel outlines)",
    )
    p.add_argument("--out", required=True)
    p.add_argument("--stack", default=None, help="only this stack (default: all)")
    p.add_argument("--all", action="store_true", help="include unreviewed model predictions")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="seed a label store with a DICOM RT-STRUCT/SEG's organs (clinician labels)")
    p.add_argument("path", help="RT-STRUCT or SEG file (its series beside it), or a series folder holding one")
    p.add_argument("--store", required=True, help="project folder holding gitseg_labels.sqlite")
    p.set_defaults(func=cmd_import)
