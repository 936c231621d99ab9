"""Time to compare two segmentations of 1,000 objects each.

Segmentation A: ``--objects`` ellipsoids of random size and one of five classes
on a ``--shape`` grid; B: the same objects with boundaries moved by one voxel,
2 % left out and 2 % given another class (:func:`simulate_annotator`). Timed:

- ``count overlaps``: the one slab-wise pass over both label volumes;
- ``score (IoU 0.5 + 0.25)``: matching, scores and the split adjustment;
- ``confusion``: class confusion of objects matched regardless of class;
- ``labels: total``: :func:`compare_segmentations` on the two label volumes;
- ``STL: write``, ``STL: read``, ``STL: voxelise``: B as one STL per object,
  read back and voxelised on the grid (the path of a manual segmentation);
- ``report + plots``: :func:`write_outputs` for the pair.

Run::

    nice -n 10 .venv/bin/python benchmarks/compare.py [--objects 1000] [--shape 96 640 640]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from famous_addon.core.compare.annotator import simulate_annotator
from famous_addon.core.compare.comparison import compare_segmentations
from famous_addon.core.compare.report import write_outputs
from famous_addon.core.compare.score import class_confusion, count_overlaps, score_overlaps
from famous_addon.core.compare.segmentations import Segmentation
from famous_addon.core.compare.stl import Grid, read_stl_segmentation, voxelise, write_object_stls

CLASSES = ("early_endosome", "late_endosome", "mitochondria", "lysosome", "nucleus")


def make_objects(shape, n, seed=0):
    """``n`` non-overlapping ellipsoids (in cells of a regular lattice) with classes."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint16)
    per_axis = int(np.ceil(n ** (1 / 3)))
    cell = np.array(shape) // per_axis
    classes = {}
    i = 0
    for cz in range(per_axis):
        for cy in range(per_axis):
            for cx in range(per_axis):
                if i == n:
                    return labels, classes
                i += 1
                r = rng.uniform(0.25, 0.45, 3) * cell
                c = (np.array([cz, cy, cx]) + 0.5) * cell
                lo = np.maximum(np.floor(c - r).astype(int), 0)
                hi = np.minimum(np.ceil(c + r).astype(int) + 1, shape)
                zz, yy, xx = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
                inside = ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + (
                    (xx - c[2]) / r[2]
                ) ** 2 <= 1
                labels[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]][inside] = i
                classes[i] = CLASSES[int(rng.integers(len(CLASSES)))]
    return labels, classes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=1000)
    ap.add_argument("--shape", type=int, nargs=3, default=[96, 640, 640])
    ap.add_argument("--voxel-nm", type=float, default=10.0)
    args = ap.parse_args()

    shape = tuple(args.shape)
    grid = Grid.from_nm(shape, (args.voxel_nm,) * 3)
    t0 = time.perf_counter()
    a, ca = make_objects(shape, args.objects)
    n_drop = n_re = max(1, args.objects // 50)
    b, cb, _ = simulate_annotator(a, ca, seed=1, n_drop=n_drop, n_reclassify=n_re, shifts=(1,))
    setup = time.perf_counter() - t0

    rows = []

    def timed(name, fn):
        t = time.perf_counter()
        out = fn()
        rows.append((name, time.perf_counter() - t))
        return out

    ov = timed("count overlaps", lambda: count_overlaps(a, b))
    timed(
        "score (IoU 0.5 + 0.25)",
        lambda: [score_overlaps(ov, ca, cb, t, grid.voxel_volume_um3) for t in (0.5, 0.25)],
    )
    timed("confusion", lambda: class_confusion(ov, ca, cb, 0.5))
    seg_a = Segmentation("automatic", a, ca, "labels", Path("A"))
    seg_b = Segmentation("M1", b, cb, "labels", Path("B"))
    comp = timed("labels: total", lambda: compare_segmentations([seg_a, seg_b], grid))
    with tempfile.TemporaryDirectory() as tmp:
        timed("STL: write", lambda: write_object_stls(Path(tmp) / "B", b, cb, grid.voxel_size_um))
        stl = timed("STL: read", lambda: read_stl_segmentation(Path(tmp) / "B"))
        lab, _, _ = timed("STL: voxelise", lambda: voxelise(stl.objects, grid))
        same = np.count_nonzero((lab > 0) == (b > 0)) / lab.size
        timed("report + plots", lambda: write_outputs(comp, Path(tmp) / "report", slices=[48]))

    tp = sum(s.tp for s in comp.pairs[0].scores[0.5])
    print(
        f"{args.objects} objects per segmentation, grid {shape[0]}x{shape[1]}x{shape[2]} "
        f"({np.prod(shape) / 1e6:.1f} M voxels); setup {setup:.1f} s; "
        f"TP at IoU 0.5: {tp}; STL round trip voxel agreement {100 * same:.3f}%"
    )
    print(f"{'step':<26} {'seconds':>8}")
    print("-" * 35)
    for name, sec in rows:
        print(f"{name:<26} {sec:>8.2f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory: {peak:.0f} MB")


if __name__ == "__main__":
    main()
