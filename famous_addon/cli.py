"""The ``famous`` command line.

Core commands (``info``, ``phantom``, ``run``) live here; the detector,
comparison and quantification commands are added by their modules in
:mod:`famous_addon.commands`. Known errors print as one clear line and exit
with status 2; tracebacks are for bugs only.

Each command imports the stages it runs inside its function, so that parsing
and ``famous --help`` do not load OpenCV, SciPy and scikit-image (about a
second).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from .commands import add_channel, add_voxel_size
from .core.errors import Cancelled, FamousError
from .core.progress import TqdmProgress

COMMAND_MODULES = ("detector", "suggest", "compare", "quantify")


def _workers(text: str) -> int | str:
    """``--workers``: a whole number (checked by the request: 1 or more) or ``auto``."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number or auto") from None


def cmd_info(args) -> int:
    from .core.stack import open_stack  # here, not on top: `famous --help` stays quick

    stack = open_stack(args.stack, args.voxel_size, args.channel)
    z, y, x = stack.shape
    print(f"stack:       {stack.path}")
    print(f"format:      {stack.kind}")
    print(f"shape:       {z} slices x {y} rows x {x} columns (Z, Y, X)")
    print(f"dtype:       {stack.dtype}")
    if stack.voxel_size_nm:
        vz, vy, vx = stack.voxel_size_nm
        print(f"voxel size:  {vz:g} x {vy:g} x {vx:g} nm (z, y, x; {stack.voxel_source})")
        print(f"extent:      {z * vz / 1e3:.2f} x {y * vy / 1e3:.2f} x {x * vx / 1e3:.2f} µm")
    else:
        print("voxel size:  unknown: give it with --voxel-size Z Y X (nm)")
    for note in stack.notes:
        print(f"note:        {note}")
    # Estimates on this project's 2-core machine: the demo model on a 40 x 1,792 x
    # 2,048 phantom without the small-object pass, 0.48 s per megapixel of a slice
    # in one process, 0.28 with two (benchmarks/scale.py, docs/results.md); a
    # process holds ~110 MB per megapixel.
    from .core.slices import auto_workers  # here, not on top: `famous --help` stays quick

    mpx = y * x / 1e6
    workers = auto_workers(z, y * x)
    per_mpx = 0.28 if workers > 1 else 0.48
    print(
        f"estimate:    ~{z * mpx * per_mpx / 60:.1f} min on 2 cores with the detector, "
        f"{workers} process(es) (--workers auto), ~{120 + 110 * mpx:.0f} MB each"
    )
    return 0


def cmd_phantom(args) -> int:
    from .core.phantom.write import write_phantom  # here, not on top: `famous --help` stays quick

    bar = TqdmProgress("phantom")
    try:
        info = write_phantom(
            args.out,
            shape=tuple(args.shape),
            seed=args.seed,
            voxel_size_nm=tuple(args.voxel_size),
            progress=bar,
        )
    finally:
        bar.close()
    print(f"phantom written to {args.out}")
    for name, n in info["counts"].items():
        print(f"  {name:<16} {n}")
    for note in info["notes"]:
        print(f"note: {note}")
    return 0


def cmd_run(args) -> int:
    from .core.pipeline import run_pipeline  # here, not on top: `famous --help` stays quick
    from .core.request import RunRequest  # (as above)

    request = RunRequest.from_args(args, labels=args.labels or args.quantify)
    bar = TqdmProgress("famous run")
    try:
        summary = run_pipeline(request, progress=bar)
    finally:
        bar.close()
    for note in summary.notes:
        print(f"note: {note}")
    print(summary.table())
    for name, report in (summary.calibration or {}).items():
        print(f"calibration: {name}: {report['choice']} (score {report['score']:.3f})")
    if args.quantify:
        # here, not on top: `famous --help` stays quick
        from .commands.quantify import quantify_and_print

        result = quantify_and_print(summary.path)
        print(f"measurements: {result.organelles_csv}, {result.classes_csv}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="famous",
        description="FAMOUS: segment, mesh and quantify organelles in volume EM stacks.",
    )
    subs = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_info_and_phantom(subs)
    _add_run(subs)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f".commands.{name}", __package__)
        except ModuleNotFoundError as exc:
            if (
                exc.name != f"{__package__}.commands.{name}"
                and exc.name != f"{__package__}.commands"
            ):
                raise
            continue
        module.add_parsers(subs)
    return parser


def _add_info_and_phantom(subs) -> None:
    p = subs.add_parser("info", help="shape, dtype, voxel size, run-time and memory estimate")
    p.add_argument("stack", help="multi-page TIFF, folder of slices, or MRC")
    add_voxel_size(p)
    add_channel(p)
    p.set_defaults(func=cmd_info)

    p = subs.add_parser("phantom", help="write a synthetic vEM stack with ground truth")
    p.add_argument("out", help="output folder")
    p.add_argument("--shape", nargs=3, type=int, default=[64, 512, 512], metavar=("Z", "Y", "X"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--voxel-size",
        nargs=3,
        type=float,
        default=[10.0, 10.0, 10.0],
        metavar=("Z", "Y", "X"),
        help="voxel size in nm (z, y, x)",
    )
    p.set_defaults(func=cmd_phantom)


def _add_run(subs) -> None:
    p = subs.add_parser("run", help="detect, extract, link: stack -> run folder")
    p.add_argument("stack", help="multi-page TIFF, folder of slices, or MRC")
    p.add_argument("--classes", required=True, help="class TOML, obj.names, or fibsem/yeast")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--boxes", help="folder of per-slice YOLO .txt files (name ends in slice index)"
    )
    src.add_argument("--model", help="detector model folder (model.cfg, model.weights, ...)")
    p.add_argument("--out", required=True, help="run folder to create")
    add_voxel_size(p)
    add_channel(p)
    p.add_argument("--labels", action="store_true", help="also write labels.tif")
    p.add_argument(
        "--quantify",
        action="store_true",
        help="measure every organelle at the end (implies --labels; see famous quantify)",
    )
    p.add_argument(
        "--workers",
        type=_workers,
        default="auto",
        help="local processes for the per-slice stage (default auto: one per core, at most 4, "
        "on stacks of 100 Mpx or more)",
    )
    p.add_argument(
        "--dask-scheduler", metavar="ADDR", help="run slices on this dask.distributed scheduler"
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument(
        "--annotations",
        metavar="DIR",
        help="YOLO_mark folder of boxed slices: choose each class's extraction recipe on them",
    )
    p.add_argument("--backend", default="auto", choices=["auto", "cpu", "cuda", "cuda_fp16"])
    p.add_argument(
        "--flip-views",
        type=int,
        choices=[1, 2, 4],
        help="with --model: also detect on mirrored slices and fuse the boxes "
        "(1 off, 2, 4; default: the model's thresholds.json)",
    )
    p.add_argument(
        "--no-zoom-pass",
        dest="zoom_pass",
        action="store_false",
        help="with --model: skip the model's enlarged pass for small objects "
        "(about half the detection time, fewer small organelles found)",
    )
    _add_linking(p)
    p.set_defaults(func=cmd_run)


def _add_linking(p) -> None:
    """``famous run``'s linking options; their defaults are ``RunSettings``' (a test holds them)."""
    p.add_argument("--layers-to-scan", type=int, default=50, help="Algorithm 4 look-back (slices)")
    p.add_argument("--tolerance", type=float, default=0.2, help="Algorithm 4 centre tolerance")
    p.add_argument(
        "--min-tolerance-px",
        type=float,
        default=2.5,
        help="lower bound of the centre tolerance in pixels (0: the paper's rule)",
    )
    p.add_argument("--no-merge", action="store_true", help="do not join bridged organelles")
    p.add_argument(
        "--merge-overlap",
        type=float,
        default=0.3,
        help="join same-class organelles whose masks on adjacent slices overlap by this "
        "fraction of the smaller one (default 0.3)",
    )
    p.add_argument(
        "--short-joins-one",
        action="store_true",
        help="an organelle shorter than the minimum span joins only the long organelle it "
        "overlaps most (or ones it holds half of), and a box holding boxes of two organelles "
        "is left out (FIB-SEM mitochondria side by side; off: it split pieces on ssTEM)",
    )
    p.add_argument(
        "--separation",
        type=float,
        default=0.25,
        help="cut a mask that spans two organelles of the slice beside where the grey values "
        "along the cut lie this share of the way to the background (default 0.25; 0: off)",
    )
    _add_keeping(p)


def _add_keeping(p) -> None:
    """``famous run``'s options on which organelles are kept, filled and joined."""
    p.add_argument(
        "--min-slices",
        type=int,
        default=3,
        help="drop organelles seen on fewer slices (detector flashes; 1 and "
        "--min-depth-nm 0 keep all)",
    )
    p.add_argument(
        "--min-depth-nm",
        type=float,
        default=100.0,
        help="... or spanning less than this in z, in nm (default 100; 0: slices only)",
    )
    p.add_argument(
        "--fill-gaps-nm",
        type=float,
        default=100.0,
        help="where an organelle skips slices, fill up to this much of z (nm) with boxes "
        "interpolated from its neighbouring slices (default 100; 0: off)",
    )
    p.add_argument(
        "--follow-iou",
        type=float,
        default=0.5,
        help="follow an organelle into slices where the detector missed it, while the mask "
        "found there overlaps the one beside it by this IoU (default 0.5; 0: off), and as "
        "much as the class's masks overlap from slice to slice in this stack",
    )
    p.add_argument(
        "--continue-overlap",
        type=float,
        default=0.5,
        help="join a track that ends to one of its class that begins within the gap (see "
        "--fill-gaps-nm) where their masks overlap by this share of the smaller: an organelle "
        "whose boxes drifted apart (default 0.5; 0: off)",
    )
    p.add_argument(
        "--join-touching",
        type=float,
        default=0.5,
        help="join same-class organelles whose masks touch on this share of the shorter one's "
        "slices: pieces of one organelle boxed side by side; neighbours it keeps apart are not "
        "joined through a box over one's edge either (default 0.5; 0: off)",
    )
    p.add_argument(
        "--confirm-boxes",
        type=int,
        default=2,
        help="with --model: keep an organelle only if this many of its boxes reach its "
        "class's confirm score (thresholds.json; 0 keeps all)",
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``famous`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        return args.func(args) or 0
    except FamousError as exc:
        print(f"famous {args.command}: error: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:
        # the disk, not FAMOUS: a full disk, a read-only folder, a path under a file
        where = f"{exc.filename}: " if exc.filename else ""
        print(
            f"famous {args.command}: error: {where}{exc.strerror or exc}. "
            "Fix: check the path, its permissions and the free space.",
            file=sys.stderr,
        )
        return 2
    except (Cancelled, KeyboardInterrupt):
        print(
            f"famous {args.command}: stopped after {time.perf_counter() - t0:.0f} s; "
            "rerun with --resume to continue.",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
