"""Headless FAMOUS: stack -> run folder -> organelle meshes in Blender -> files.

Inside Blender::

    blender -b -P blender_scripts/run_famous.py -- --stack S --classes C \\
        (--model MODEL_DIR | --boxes DIR | --run RUN_DIR) --out DIR [--mesher hull|volume] \\
        [--backend auto|cpu|cuda|cuda_fp16] [--flip-views 1|2|4] [--no-zoom-pass]

or with the ``bpy`` wheel::

    python blender_scripts/run_famous.py --stack S --classes C --boxes DIR --out DIR

Writes ``DIR/famous.blend``, ``DIR/render.png``, ``DIR/quantification.csv``,
``DIR/meshes/<class>/<class>_<id>.stl`` and, unless ``--run`` is given, the
run folder ``DIR/run``; with ``--compare M1 [M2]`` also the comparison
report ``DIR/compare/report.md`` (tables and plots). An existing
``famous.blend`` is only replaced with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

try:
    import famous_addon  # noqa: F401
except ModuleNotFoundError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from famous_addon.core.compare.run import compare_for_headless
from famous_addon.core.errors import Cancelled, FamousError
from famous_addon.core.progress import TqdmProgress, sub
from famous_addon.core.quantify.run import quantify_run
from famous_addon.core.request import RunRequest


def script_argv(argv: list[str]) -> list[str]:
    """The script's own arguments: those after ``--`` when Blender passes its own too."""
    return argv[argv.index("--") + 1 :] if "--" in argv else argv[1:]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_famous.py",
        description="Run FAMOUS and build the organelle meshes in Blender (headless).",
        epilog="Inside Blender put the script's arguments after '--': "
        "blender -b -P blender_scripts/run_famous.py -- --stack ...",
    )
    p.add_argument("--stack", help="image stack (multi-page TIFF, folder of slices, MRC)")
    p.add_argument("--classes", help="class config (TOML, obj.names, or fibsem/yeast)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="detector model folder")
    src.add_argument("--boxes", help="folder of per-slice YOLO .txt files")
    src.add_argument("--run", help="an existing run folder to mesh (skips detection)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--mesher", choices=["hull", "volume"], help="mesher for every class (default: per class)"
    )
    p.add_argument(
        "--voxel-size", nargs=3, type=float, metavar=("Z", "Y", "X"), help="voxel size in nm"
    )
    p.add_argument("--backend", default="auto", choices=["auto", "cpu", "cuda", "cuda_fp16"])
    p.add_argument(
        "--flip-views",
        type=int,
        choices=[1, 2, 4],
        help="with --model: test-time mirrored views (default: the model's setting)",
    )
    p.add_argument(
        "--no-zoom-pass",
        dest="zoom_pass",
        action="store_false",
        help="with --model: skip the model's enlarged pass for small objects (faster)",
    )
    p.add_argument("--workers", type=int, default=1, help="local processes for the slices")
    p.add_argument(
        "--resolution",
        nargs=2,
        type=int,
        default=[1280, 720],
        metavar=("W", "H"),
        help="size of render.png",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing famous.blend")
    p.add_argument(
        "--quantify",
        action="store_true",
        help="measure every organelle (shape, size, proximity): DIR/quantify/",
    )
    p.add_argument(
        "--compare",
        nargs="+",
        metavar="MANUAL",
        help="manual segmentations (STL folders, label TIFFs) to compare with: M1 [M2 ...]; "
        "writes DIR/compare/report.md",
    )
    return p


def run(args: argparse.Namespace) -> dict:
    """Do the work for parsed arguments; raises FamousError on bad input."""
    # bpy (about 0.4 s with the wheel) loads once the arguments are parsed: --help
    # and argument errors answer without it.
    import bpy

    from famous_addon.blender import export, workflow

    workflow.check_writable(args.out, args.overwrite)
    if args.run is None and (args.stack is None or args.classes is None):
        raise FamousError(
            "--stack and --classes are needed to run detection.",
            fix="give both, or mesh an existing run folder with --run RUN_DIR.",
        )
    bar = TqdmProgress("FAMOUS")
    try:
        run_dir = args.run
        if run_dir is None:
            run_dir = workflow.detect(RunRequest.from_args(args), progress=sub(bar, 0.0, 0.5))
        bpy.ops.wm.read_factory_settings(use_empty=True)
        built = workflow.build(
            run_dir, args.mesher, args.stack, args.voxel_size, sub(bar, 0.5, 0.9)
        )
        bar(0.9, "writing meshes, table, render and .blend")
        title = Path(args.stack).name if args.stack else Path(run_dir).resolve().parent.name
        paths = export.write_outputs(Path(args.out), tuple(args.resolution), title=title)
        if args.quantify:
            measured = quantify_run(
                run_dir,
                Path(args.out) / "quantify",
                progress=sub(bar, 0.92, 0.95),
                mesh_areas=paths["csv"],
            )
            paths["quantify"] = measured.organelles_csv
        if args.compare:
            report = compare_for_headless(
                run_dir, args.compare, Path(args.out) / "compare", progress=sub(bar, 0.95, 1.0)
            )
            paths["compare"] = report["report_md"]
        bar(1.0, "done")
    finally:
        bar.close()
    for note in built.notes:
        print(f"note: {note}")
    paths["organelles"] = len(built.organelles)
    return paths


def main(argv: list[str] | None = None) -> int:
    """Entry point; ``argv`` are the script's own arguments (no ``--``)."""
    args = build_parser().parse_args(script_argv(sys.argv) if argv is None else argv)
    t0 = time.perf_counter()
    try:
        paths = run(args)
    except FamousError as exc:
        print(f"run_famous.py: error: {exc.message}", file=sys.stderr)
        return 2
    except (Cancelled, KeyboardInterrupt):
        print("run_famous.py: stopped; run the same command again to continue.", file=sys.stderr)
        return 130
    print(
        f"{paths['organelles']} organelles meshed in {time.perf_counter() - t0:.1f} s\n"
        f"  blend:  {paths['blend']}\n  render: {paths.get('render')}\n"
        f"  table:  {paths['csv']}\n  meshes: {paths['meshes']}"
    )
    if "quantify" in paths:
        print(f"  measurements: {paths['quantify']}")
    if "compare" in paths:
        print(f"  comparison report: {paths['compare']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
