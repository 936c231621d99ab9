"""Quantification time on the phantom and on 1,000 synthetic organelles.

Usage::

    .venv/bin/python benchmarks/quantify.py [--phantom-shape Z Y X] [--n 1000] [--seed 0]

Prints one table row per case: the label volume, the organelle count, the
time of :func:`famous_addon.core.quantify.morphometry.measure_labels` (all measurements
and proximity), of the per-class table and of the plots, and the peak memory
of the process.
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from famous_addon.core.fileio import read_csv  # noqa: E402
from famous_addon.core.quantify.labelfile import read_labels  # noqa: E402
from famous_addon.core.quantify.morphometry import measure_labels  # noqa: E402
from famous_addon.core.quantify.plots import plot_measurements  # noqa: E402
from famous_addon.core.quantify.tables import class_table  # noqa: E402


def lattice_organelles(n: int, seed: int, cell: int = 32):
    """``n`` organelles, one per cell of a cubic lattice (so none overlap).

    Two in three are ellipsoids (random semi-axes 5-12 voxels, random
    orientation: "lysosome"), one in three a capsule (radius 3-6 voxels,
    length up to 26 voxels, random direction: "mitochondria").
    """
    rng = np.random.default_rng(seed)
    side = math.ceil(n ** (1 / 3))
    labels = np.zeros((side * cell,) * 3, np.uint16)
    classes = {}
    g = np.indices((cell, cell, cell), dtype=np.float32).reshape(3, -1).T - (cell - 1) / 2
    for i in range(n):
        k, rem = divmod(i, side * side)
        j, m = divmod(rem, side)
        if rng.random() < 2 / 3:
            rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))
            semi = rng.uniform(5, 12, size=3)
            inside = (((g @ rot) / semi) ** 2).sum(axis=1) <= 1
            classes[i + 1] = "lysosome"
        else:
            d = rng.normal(size=3)
            d /= np.linalg.norm(d)
            r = rng.uniform(3, 6)
            half = rng.uniform(4, 13 - r)
            t = np.clip(g @ d, -half, half)
            inside = np.linalg.norm(g - t[:, None] * d, axis=1) <= r
            classes[i + 1] = "mitochondria"
        block = labels[
            k * cell : (k + 1) * cell, j * cell : (j + 1) * cell, m * cell : (m + 1) * cell
        ]
        block[inside.reshape(cell, cell, cell)] = i + 1
    return labels, classes


def run_case(name, labels, voxel_nm, classes, out):
    names = sorted(set(classes.values()))
    t0 = time.perf_counter()
    rows = measure_labels(labels, voxel_nm, classes, class_names=names)
    t1 = time.perf_counter()
    class_table(rows, names, labels.shape, voxel_nm)
    t2 = time.perf_counter()
    plot_measurements(rows, names, out / name)
    t3 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    shape = "x".join(map(str, labels.shape))
    print(
        f"| {name:<24} | {shape:>13} | {len(rows):>10} | {t1 - t0:>10.1f} | "
        f"{1000 * (t1 - t0) / max(len(rows), 1):>9.0f} | {t2 - t1:>7.2f} | {t3 - t2:>7.1f} | "
        f"{peak:>8.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phantom-shape", nargs=3, type=int, default=[64, 512, 512])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from famous_addon.core.phantom.write import write_phantom

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(
            "| case                     |   shape (ZYX) | organelles | measure s | ms/organ. "
            "| table s | plots s | peak MB |"
        )
        print("|" + "---|" * 8)
        write_phantom(tmp / "phantom", shape=tuple(args.phantom_shape), seed=args.seed, stl=False)
        labels = read_labels(tmp / "phantom" / "truth_labels.tif")
        truth = read_csv(tmp / "phantom" / "truth.csv")
        classes = {int(r["id"]): r["class"] for r in truth}
        run_case("phantom truth", labels, (10.0, 10.0, 10.0), classes, tmp)
        del labels
        labels, classes = lattice_organelles(args.n, args.seed)
        run_case(f"{args.n} lattice organelles", labels, (10.0, 10.0, 10.0), classes, tmp)


if __name__ == "__main__":
    main()
