"""Render a FAMOUS result to a PNG (the README picture), headless.

From a saved result or straight from a run folder::

    python blender_scripts/render_demo.py --blend OUT/famous.blend --out assets/demo_render.png
    python blender_scripts/render_demo.py --run RUN --out assets/demo_render.png
    blender -b -P blender_scripts/render_demo.py -- --run RUN --out PNG

Workbench, class colours, camera framed on the organelles, the stack slice
in the middle of the cell for context.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import famous_addon  # noqa: F401
except ModuleNotFoundError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from famous_addon.core.errors import FamousError


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else sys.argv[1:]
    p = argparse.ArgumentParser(prog="render_demo.py", description="Render a FAMOUS result.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--blend", help="a famous.blend written by run_famous.py")
    src.add_argument("--run", help="a run folder to mesh and render")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--resolution", nargs=2, type=int, default=[1600, 900], metavar=("W", "H"))
    args = p.parse_args(argv)
    # bpy (about 0.4 s with the wheel) loads once the arguments are parsed: --help
    # and argument errors answer without it.
    import bpy

    from famous_addon.blender import export, workflow

    try:
        if args.blend:
            if not Path(args.blend).is_file():
                raise FamousError("not found.", args.blend, "give the famous.blend of a result.")
            bpy.ops.wm.open_mainfile(filepath=str(args.blend))
        else:
            bpy.ops.wm.read_factory_settings(use_empty=True)
            workflow.build(args.run)
        path = export.render_png(Path(args.out), tuple(args.resolution))
    except FamousError as exc:
        print(f"render_demo.py: error: {exc.message}", file=sys.stderr)
        return 2
    print(f"render: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
