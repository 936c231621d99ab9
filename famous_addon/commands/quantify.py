"""``famous quantify RUN [--out DIR]``: morphometrics, per-class table and plots of a run."""

from __future__ import annotations

import argparse


def quantify_and_print(run, out=None, tubular=None):
    """Quantify a finished run with a progress bar and print the per-class table.

    Shared by ``famous quantify`` and ``famous run --quantify``.
    """
    # Imported here so that `famous --help` does not load the measurement stack.
    from ..core.progress import TqdmProgress
    from ..core.quantify import TUBULAR_DEFAULT
    from ..core.quantify.run import quantify_run

    bar = TqdmProgress("quantify")
    try:
        result = quantify_run(run, out, progress=bar, tubular=tuple(tubular or TUBULAR_DEFAULT))
    finally:
        bar.close()
    print(f"{'class':<16} {'count':>6} {'total µm³':>11} {'median µm³':>11} {'fraction':>9}")
    for t in result.classes:
        median = t["median_volume_um3"]
        print(
            f"{t['class']:<16} {t['count']:>6} {t['total_volume_um3']:>11.4g} "
            f"{'-' if median is None else f'{median:.4g}':>11} "
            f"{t['volume_fraction_stack']:>9.4f}"
        )
    return result


def cmd_quantify(args) -> int:
    """Quantify a finished run folder and print the per-class table."""
    result = quantify_and_print(args.run, args.out, args.tubular)
    if args.export_labels:
        # Imported here so that `famous --help` does not load the measurement stack.
        from ..core.quantify.labelfile import export_labels, read_labels
        from ..core.runfolder import RunFolder

        run = RunFolder(args.run)
        path = export_labels(args.export_labels, read_labels(run.labels_path), run.voxel_size_nm)
        print(f"wrote {path} (labels for Fiji, napari and Amira)")
    print(f"wrote {result.organelles_csv}")
    print(f"wrote {result.classes_csv}")
    for path in result.plots:
        print(f"wrote {path}")
    return 0


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``quantify`` subcommand."""
    from ..core.quantify import TUBULAR_DEFAULT  # the package alone: no scipy

    p = subparsers.add_parser(
        "quantify",
        help="per-organelle shape, size and proximity; per-class table; plots",
        description="Measure every organelle of a finished run (needs its labels.tif) and "
        "write organelles.csv (the run's columns plus measurements), classes.csv and plots/.",
    )
    p.add_argument("run", help="a finished run folder (famous run ... --labels)")
    p.add_argument("--out", help="folder for the outputs (default: the run folder)")
    p.add_argument(
        "--tubular",
        nargs="*",
        default=list(TUBULAR_DEFAULT),
        metavar="CLASS",
        help="classes measured for skeleton length and branches (default: %(default)s)",
    )
    p.add_argument(
        "--export-labels",
        metavar="FILE",
        help="also write the labels as a .tif for Fiji, napari and Amira (uint16/uint32, "
        "voxel size in µm in the metadata)",
    )
    p.set_defaults(func=cmd_quantify)
