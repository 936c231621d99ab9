"""``make demo``: the whole FAMOUS job on synthetic FIB-SEM cells.

1. writes a phantom (a synthetic FIB-SEM cell with ground truth) and runs the
   pipeline on it with its truth boxes: how good extraction and linking are
   when detection is perfect;
2. with the bundled detector (``assets/demo_model``), runs the real job on a
   second phantom the model never saw: YOLOv4 through OpenCV DNN, extraction,
   linking, labels; scored against that phantom's truth;
3. meshes the result in Blender (bpy), writes the .blend, the STL meshes, the
   quantification table, per-organelle measurements and plots, and a render;
4. compares it with two "manual" segmentations, as the paper does: the
   phantom's truth as M1 and a simulated second annotator as M2 (tables,
   plots, report).

Run as ``python -m famous_addon.demo --out demo_out``.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import time
from pathlib import Path

import tifffile

from .core import runfolder as rf
from .core.compare.annotator import simulate_annotator
from .core.compare.score import match_objects
from .core.compare.stl import write_object_stls
from .core.compare.tables import format_table
from .core.phantom.truth import load_truth
from .core.phantom.write import write_phantom
from .core.pipeline import run_pipeline
from .core.progress import TqdmProgress
from .core.request import RunRequest

DEMO_MODEL = Path(__file__).resolve().parents[1] / "assets" / "demo_model"


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def _with_bar(title: str, fn, *args, **kwargs):
    bar = TqdmProgress(title)
    try:
        return fn(*args, progress=bar, **kwargs)
    finally:
        bar.close()


def score_run(run: Path, phantom: Path):
    """Per-class scores of a run folder against the phantom's truth."""
    folder = rf.RunFolder(run)
    labels = tifffile.imread(folder.labels_path)
    truth, rows = load_truth(phantom)
    vz, vy, vx = folder.voxel_size_nm
    return match_objects(
        labels,
        {o["id"]: o["class"] for o in folder.organelles()},
        truth,
        {int(r["id"]): r["class"] for r in rows},
        0.5,
        vz * vy * vx / 1e9,
        class_order=folder.class_names,
    )


def _phantom(folder: Path, shape, seed: int) -> None:
    _step(f"synthetic FIB-SEM phantom {tuple(shape)}, seed {seed} -> {folder}")
    if (folder / "truth.csv").is_file():
        print("   already there, reused")
        return
    _with_bar("phantom", write_phantom, folder, shape=tuple(shape), seed=seed)


def _run(phantom: Path, run: Path, **source) -> Path:
    # The demo owns its output folder: an earlier demo result is replaced, never a user's data.
    shutil.rmtree(run, ignore_errors=True)
    summary = _with_bar(
        "famous run",
        run_pipeline,
        RunRequest(phantom / "stack.tif", phantom / "classes.toml", run, labels=True, **source),
    )
    print(summary.table())
    scores = score_run(run, phantom)
    print("\nagainst the phantom's truth (3-D IoU >= 0.5, Hungarian matching):")
    print(format_table(scores))
    print(f"lowest per-class object F1: {min(s.f1 for s in scores):.3f}")
    return run


def _second_annotator(phantom: Path, out: Path) -> Path:
    """M2: the truth as a second annotator would have drawn it (known changes)."""
    folder = out / "M2_stl"
    if folder.is_dir():
        return folder
    truth, rows = load_truth(phantom)
    classes = {int(r["id"]): r["class"] for r in rows}
    m2, c2, changes = simulate_annotator(truth, classes, seed=4)
    write_object_stls(folder, m2, c2, (0.01, 0.01, 0.01))
    print(f"   M2: {changes}")
    return folder


def _headless_script():
    """blender_scripts/run_famous.py as a module (it is a script, not a package)."""
    path = Path(__file__).resolve().parents[1] / "blender_scripts" / "run_famous.py"
    spec = importlib.util.spec_from_file_location("run_famous", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default="demo_out", help="folder for everything the demo writes")
    ap.add_argument("--shape", nargs=3, type=int, default=[64, 512, 512], metavar=("Z", "Y", "X"))
    ap.add_argument("--no-blender", action="store_true", help="stop after the bpy-free stages")
    args = ap.parse_args(argv)
    out = Path(args.out)
    t_start = time.perf_counter()

    seen = out / "phantom_seed0"
    _phantom(seen, args.shape, 0)
    _step("1. pipeline with the phantom's truth boxes (perfect detection)")
    run = _run(seen, out / "run_truth_boxes", boxes=seen / "boxes")
    phantom = seen

    if (DEMO_MODEL / "model.weights").is_file():
        unseen = out / "phantom_seed4"
        _phantom(unseen, args.shape, 4)
        _step(f"2. the real job: detector {DEMO_MODEL.name} on a phantom it never saw")
        run = _run(unseen, out / "run_detector", model=DEMO_MODEL)
        phantom = unseen
    else:
        _step(f"2. skipped: no detector in {DEMO_MODEL}")

    if args.no_blender:
        print(
            f"\ndemo finished in {time.perf_counter() - t_start:.0f} s; outputs in {out.resolve()}"
        )
        return 0

    _step("3. Blender: meshes, measurements, .blend, render; 4. comparison with M1 and M2")
    m2 = _second_annotator(phantom, out)
    code = _headless_script().main(
        [
            "--run",
            str(run),
            "--stack",
            str(phantom / "stack.tif"),
            "--out",
            str(out / "blender"),
            "--overwrite",
            "--quantify",
            "--compare",
            str(phantom / "truth_stl"),
            str(m2),
        ]
    )
    if code:
        return code
    print(f"\ndemo finished in {time.perf_counter() - t_start:.0f} s; outputs in {out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
