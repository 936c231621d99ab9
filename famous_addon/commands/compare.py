"""``famous compare A B [C ...] --out DIR``: score segmentations against each other."""

from __future__ import annotations

import argparse


def _pair(text: str) -> tuple[str, str]:
    test, sep, ref = text.partition(":")
    if not sep or not test or not ref:
        raise argparse.ArgumentTypeError(f"{text!r}: give TEST:REFERENCE, e.g. automatic:M1")
    return test, ref


def _mapping(text: str) -> tuple[str, str]:
    pattern, sep, cls = text.partition("=")
    if not sep or not pattern or not cls:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give PATTERN=CLASS, e.g. '*mito*=mitochondria'"
        )
    return pattern, cls


def cmd_compare(args) -> int:
    """Compare the inputs pairwise, print the tables and write the report."""
    # Imported here so that `famous --help` does not load the comparison stack.
    from ..core.compare.run import run_compare
    from ..core.compare.stl import Transform
    from ..core.compare.tables import format_table
    from ..core.progress import TqdmProgress

    transform = Transform(args.stl_scale, args.stl_axes, tuple(args.stl_offset))
    bar = TqdmProgress("compare")
    try:
        comp, paths = run_compare(
            args.inputs,
            args.out,
            names=args.names,
            stack=args.stack,
            voxel_size_nm=tuple(args.voxel_size) if args.voxel_size else None,
            iou_threshold=args.iou,
            extra_thresholds=tuple(args.also_iou),
            pairs=args.pair or None,
            class_map=dict(args.class_map) if args.class_map else None,
            transform=transform,
            slices=args.slices,
            plots=not args.no_plots,
            adjust_splits=not args.no_split_adjustment,
            progress=bar,
        )
    finally:
        bar.close()
    for s in comp.segmentations:
        for note in s.notes:
            print(f"warning: {s.name}: {note}")
    for p in comp.pairs:
        print(f"\n{p.name} (IoU >= {comp.iou_threshold:g}; {p.reference} is the reference)")
        print(format_table(p.scores[comp.iou_threshold]))
    print(f"\nwrote {paths['metrics_csv']}")
    print(f"wrote {paths['confusion_csv']}")
    print(f"report: {paths['report_md']} and {paths['report_html']}")
    return 0


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``compare`` subcommand."""
    p = subparsers.add_parser(
        "compare",
        help="compare segmentations (run folder, label TIFF, STL folders): P/R/F1/Jaccard, volumes",
        description="Score each pair of segmentations object by object (IoU matching, "
        "Hungarian assignment per class) and by volume, as in the paper's Tables 1-7. "
        "Inputs: a run folder (automatic), LABELS.tif[,CLASSES.csv] (columns id,class), or "
        "an STL file or folder (one sub-folder per class). Writes metrics.csv, "
        "confusion.csv, volumes.csv, report.md/.html and plots/ into --out.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="two or more segmentations")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--iou", type=float, default=0.5, help="IoU of a match (default %(default)s)")
    p.add_argument(
        "--also-iou",
        nargs="*",
        type=float,
        default=[0.25],
        metavar="T",
        help="further IoU thresholds reported (default %(default)s)",
    )
    p.add_argument(
        "--voxel-size",
        nargs=3,
        type=float,
        metavar=("Z", "Y", "X"),
        help="voxel size of the comparison grid in nm (default: the stack's)",
    )
    p.add_argument("--stack", help="the EM stack: grid and slice overlays (default: the run's)")
    p.add_argument(
        "--names", nargs="+", help="one name per input (default: automatic, M1, M2, ...)"
    )
    p.add_argument(
        "--pair",
        action="append",
        type=_pair,
        metavar="TEST:REF",
        help="compare only these pairs (repeatable; default: every pair)",
    )
    p.add_argument(
        "--class-map",
        action="append",
        type=_mapping,
        metavar="PATTERN=CLASS",
        help="STL file-name pattern to class, e.g. '*mito*=mitochondria' (repeatable; "
        "default: sub-folder name or file name without its number)",
    )
    p.add_argument(
        "--stl-scale", type=float, default=1.0, help="STL coordinate scale, e.g. 0.001 for nm"
    )
    p.add_argument(
        "--stl-axes", default="xyz", help="STL axis order and signs, e.g. xzy or x-yz (default xyz)"
    )
    p.add_argument(
        "--stl-offset",
        nargs=3,
        type=float,
        default=[0.0, 0.0, 0.0],
        metavar=("X", "Y", "Z"),
        help="added to STL coordinates after scaling (µm)",
    )
    p.add_argument("--slices", nargs="+", type=int, help="slices for the overlay plots")
    p.add_argument("--no-plots", action="store_true", help="write tables and report only")
    p.add_argument(
        "--no-split-adjustment",
        action="store_true",
        help="count every part of a split object (default: the paper's adjustment)",
    )
    p.set_defaults(func=cmd_compare)
