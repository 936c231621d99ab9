"""``make demo``: the whole FAMOUS job on the bundled synthetic phantom.

1. writes a phantom (a synthetic FIB-SEM cell with ground truth);
2. runs the bpy-free pipeline on it with the phantom's truth boxes;
3. prints a per-class table of the result against the truth (3-D object
   matching at IoU >= 0.5, Hungarian; volumes).

Run as ``python -m famous_addon.demo --out demo_out``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from .core import runfolder as rf
from .core.compare import format_table, match_objects
from .core.pipeline import run_pipeline
from .core.progress import TqdmProgress
from .core.synthetic import load_truth, write_phantom


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def score_run(run: Path, phantom: Path):
    """Per-class scores of a run folder against the phantom's truth."""
    import tifffile

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default="demo_out", help="folder for everything the demo writes")
    ap.add_argument("--shape", nargs=3, type=int, default=[64, 512, 512], metavar=("Z", "Y", "X"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    t_start = time.perf_counter()

    phantom = out / "phantom"
    _step(f"1. synthetic FIB-SEM phantom {tuple(args.shape)} (seed {args.seed}) -> {phantom}")
    if (phantom / "truth.csv").is_file():
        print("   already there, reused")
    else:
        bar = TqdmProgress("phantom")
        try:
            write_phantom(phantom, shape=tuple(args.shape), seed=args.seed, progress=bar)
        finally:
            bar.close()

    run = out / "run_truth_boxes"
    _step(f"2. pipeline with the phantom's truth boxes -> {run}")
    # The demo owns this folder: a previous demo run is replaced, never a user's data.
    shutil.rmtree(run, ignore_errors=True)
    bar = TqdmProgress("famous run")
    try:
        summary = run_pipeline(
            phantom / "stack.tif",
            phantom / "classes.toml",
            run,
            boxes=phantom / "boxes",
            labels=True,
            progress=bar,
        )
    finally:
        bar.close()
    print(summary.table())

    _step("3. result against the phantom's truth (3-D IoU >= 0.5, Hungarian matching)")
    scores = score_run(run, phantom)
    print(format_table(scores))
    worst = min(s.f1 for s in scores)
    print(f"\nlowest per-class object F1: {worst:.3f}")
    print(f"\ndemo finished in {time.perf_counter() - t_start:.0f} s; outputs in {out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
