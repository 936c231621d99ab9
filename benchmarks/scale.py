"""Time per slice of a FIB-SEM-sized run, beside the time of its DNN forwards (issue 29).

Writes a phantom of full-size slices (default 40 x 1792 x 2048, reused when
there), runs ``famous run --labels`` on it with the bundled demo model (CPU
backend), without and with the small-object pass, in one process and with
``--workers auto`` (one process per core, at most 4), each run started in a
process of its own, and prints per slice:

- the whole run, and its stages from ``run.json`` (slices, linking, assembly);
- inside the slice stage, detection (``Detector.__call__``) and the sum of
  the network's forwards (``Detector.forward``), timed by wrapping the two
  methods in the measuring process (so not with worker processes);
- the run over its forwards, peak resident memory, and the run extrapolated
  to 1,800 slices (the paper's stacks).

    python benchmarks/scale.py [--shape 40 1792 2048] [--work /tmp/famous_scale]
        [--model assets/demo_model] [--slices 1800]

Run it with nothing else on the machine: the numbers are wall times.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(stack: Path, classes: Path, model: Path, out: Path, zoom: bool, workers) -> dict:
    """One run, with the detector's calls and forwards timed where they run in this process."""
    from famous_addon.core.detector.inference import Detector
    from famous_addon.core.pipeline import run_pipeline
    from famous_addon.core.request import RunRequest

    spent = {"forward": 0.0, "detect": 0.0, "forwards": 0}

    def timed(method, key):
        def wrapper(self, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - t0
                if key == "forward":
                    spent["forwards"] += 1

        return wrapper

    Detector.forward = timed(Detector.forward, "forward")
    Detector.__call__ = timed(Detector.__call__, "detect")
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    request = RunRequest(
        stack,
        classes,
        out,
        model=model,
        backend="cpu",
        labels=True,
        zoom_pass=zoom,
        workers=workers,
    )
    run_pipeline(request)
    total = time.perf_counter() - t0
    timings = json.loads((out / "run.json").read_text())["timings_s"]
    return {
        "zoom": zoom,
        "workers": workers,
        "total": total,
        "slices": timings["slices"],
        "linking": timings["linking"],
        "assemble": timings["assemble"],
        **spent,
        # ru_maxrss is in KiB on Linux; the largest of this process and its workers
        "peak_mb": max(
            resource.getrusage(who).ru_maxrss / 1024
            for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        ),
    }


def table(rows: list[dict], n: int, extrapolate: int) -> str:
    """The printed table: per-slice seconds of each part, ratios, memory, 1,800-slice time."""
    head = (
        "| small-object pass | processes | run s | s/slice | slice stage | detection "
        "| DNN forwards | linking | assembly | run / forwards | peak RSS MB a process "
        "| 1,800 slices (min) |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        per = {k: r[k] / n for k in ("total", "slices", "detect", "forward", "linking", "assemble")}
        here = r["forwards"] > 0  # with worker processes the network runs in them, untimed
        lines.append(
            f"| {'on' if r['zoom'] else 'off'} | {r['workers']} | {r['total']:.0f} "
            f"| {per['total']:.2f} | {per['slices']:.2f} "
            + (
                f"| {per['detect']:.2f} | {per['forward']:.2f} ({r['forwards'] / n:.0f} a slice) "
                if here
                else "| - | - "
            )
            + f"| {per['linking']:.2f} | {per['assemble']:.2f} "
            + (f"| {r['total'] / r['forward']:.2f} " if here else "| - ")
            + f"| {r['peak_mb']:.0f} "
            f"| {per['total'] * extrapolate / 60:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", nargs=3, type=int, default=[40, 1792, 2048])
    ap.add_argument("--work", default="/tmp/famous_scale")
    ap.add_argument("--model", default=str(ROOT / "assets" / "demo_model"))
    ap.add_argument("--slices", type=int, default=1800, help="stack depth to extrapolate to")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # the child process: off|on, 1|auto
    args = ap.parse_args()
    z, y, x = args.shape
    work = Path(args.work)
    phantom = work / f"phantom_{z}x{y}x{x}"
    if args.one:
        zoom, workers = args.one.split(",")
        row = measure(
            phantom / "stack.tif",
            phantom / "classes.toml",
            Path(args.model),
            work / f"run_{z}x{y}x{x}_{zoom}_{workers}",
            zoom == "on",
            1 if workers == "1" else "auto",
        )
        print(json.dumps(row))
        return
    if not (phantom / "truth.csv").is_file():
        from famous_addon.core.phantom.write import write_phantom

        t0 = time.perf_counter()
        write_phantom(phantom, shape=(z, y, x), seed=0, stl=False)
        print(f"phantom written in {time.perf_counter() - t0:.0f} s")
    rows = []
    for one in ("off,1", "on,1", "off,auto", "on,auto"):
        done = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--one", one],
            check=True,
            capture_output=True,
            text=True,
        )
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"demo model, {z} x {y} x {x} phantom, CPU backend, `famous run --labels`")
    print(table(rows, z, args.slices))


if __name__ == "__main__":
    main()
