"""Per-slice time and memory of the bpy-free pipeline on a large phantom.

Writes a phantom (default 300 x 2048 x 2048, ~1.2 GB; reused if already
there), runs ``run_pipeline`` on it with its truth boxes, and prints the time
per slice of each stage and the process's resident memory as the run
advances: the memory must stay flat as slices go by.

    python benchmarks/pipeline.py [--shape 300 2048 2048] [--work /tmp/famous_bench]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import psutil

from famous_addon.core.phantom.write import write_phantom
from famous_addon.core.pipeline import run_pipeline
from famous_addon.core.request import RunRequest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shape", nargs=3, type=int, default=[300, 2048, 2048])
    ap.add_argument("--work", default="/tmp/famous_bench")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    z, y, x = args.shape
    work = Path(args.work) / f"phantom_{z}x{y}x{x}"
    proc = psutil.Process()
    if not (work / "truth.csv").is_file():
        t0 = time.perf_counter()
        write_phantom(work, shape=(z, y, x), seed=0, stl=False)
        print(f"phantom written in {time.perf_counter() - t0:.0f} s")
    run = Path(args.work) / f"run_{z}x{y}x{x}"
    shutil.rmtree(run, ignore_errors=True)
    samples = []

    def progress(fraction, message):
        samples.append((fraction, message, proc.memory_info().rss / 2**20))

    base = proc.memory_info().rss / 2**20
    summary = run_pipeline(
        RunRequest(
            work / "stack.tif",
            work / "classes.toml",
            run,
            boxes=work / "boxes",
            labels=True,
            workers=args.workers,
        ),
        progress=progress,
    )
    t = summary.timings
    print(f"\n{'stage':<28} {'total s':>9} {'ms / slice':>11}")
    for stage in ("slices", "linking", "assemble"):
        print(f"{stage:<28} {t[stage]:>9.1f} {1000 * t[stage] / z:>11.1f}")
    print(f"{'total':<28} {t['total']:>9.1f} {1000 * t['total'] / z:>11.1f}")
    print(f"\ndetections: {summary.n_detections}, organelles: {sum(summary.counts.values())}")
    print(f"\nresident memory (MB) as the run advances (start {base:.0f} MB):")
    print(f"{'progress':>9} {'stage':<26} {'RSS MB':>8}")
    marks = [0.07, 0.14, 0.35, 0.56, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0]
    for mark in marks:
        hit = next((s for s in samples if s[0] >= mark), samples[-1])
        print(f"{hit[0]:>9.2f} {hit[1][:26]:<26} {hit[2]:>8.0f}")
    print(f"peak RSS: {max(s[2] for s in samples):.0f} MB")


if __name__ == "__main__":
    main()
