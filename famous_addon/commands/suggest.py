"""``famous suggest MODEL STACK --n 5 --out DIR``: slices to correct, pre-filled."""

from __future__ import annotations

import argparse
import shlex

from . import add_channel, add_voxel_size


def cmd_suggest(args) -> int:
    """Pick the slices where the model's 3-D result is least sure and export them pre-filled."""
    # imported when the command runs, so that `famous --help` stays quick
    from ..core.progress import TqdmProgress
    from ..core.stack import open_stack
    from ..core.suggest import SUGGESTIONS_CSV, suggest, train_command

    voxel = tuple(args.voxel_size) if args.voxel_size else None
    stack = open_stack(args.stack, voxel, args.channel)
    bar = TqdmProgress("suggest")
    try:
        picks = suggest(args.model, stack, args.out, args.n, args.run, args.annotations, bar)
    finally:
        bar.close()
    for p in picks:
        print(f"slice {p.slice:>5}: {p.why()}")
    print(f"wrote {len(picks)} pre-filled slices and {SUGGESTIONS_CSV} to {args.out}")
    print(
        "correct the boxes with YOLO_mark, then:", shlex.join(train_command(args.model, args.out))
    )
    return 0


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``suggest`` subcommand."""
    p = subparsers.add_parser(
        "suggest",
        help="slices to correct next: where the model's 3-D result is least sure, pre-filled",
        description="Runs the model on the stack (or reads --run), scores each slice by what "
        "its 3-D result doubts (broken tracks, filled-in, weak or dropped boxes, suspected "
        "merges) and writes the N slices of most doubt, spread over the stack and away from "
        "the boxed ones, as YOLO_mark images with the model's boxes in their .txt files, "
        "plus suggestions.csv.",
    )
    p.add_argument("model", help="model folder (famous train output)")
    p.add_argument("stack", help="multi-page TIFF, folder of slices, or MRC")
    p.add_argument("--n", type=int, default=5, help="slices to suggest (default 5)")
    p.add_argument("--out", required=True, help="folder to write (must not hold these slices)")
    p.add_argument("--run", help="a finished run of this model on this stack (skips the run)")
    p.add_argument(
        "--annotations",
        action="append",
        help="a folder of slices already boxed (repeatable; default: the model's own)",
    )
    add_voxel_size(p)
    add_channel(p)
    p.set_defaults(func=cmd_suggest)
