"""Linking speed: the KD-tree form of Algorithm 4 against a direct transcription.

Synthetic boxes shaped like a whole-cell FIB-SEM run (default 1800 slices x 200
boxes): organelles that persist over 5-60 slices with ±1 px drift. The
transcription is timed on the first ``--ref-slices`` slices and extrapolated
linearly (its cost per box is constant once the look-back window is full).

    python benchmarks/linking.py [--slices 1800] [--boxes 200] [--ref-slices 150]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from famous_addon.core.link import link_boxes, link_boxes_reference


def synthetic_boxes(n_slices: int, per_slice: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = []
    alive = []
    for z in range(n_slices):
        alive = [o for o in alive if o["end"] > z]
        while len(alive) < per_slice:
            alive.append(
                {
                    "c": int(rng.integers(0, 5)),
                    "x": rng.uniform(0, 2000),
                    "y": rng.uniform(0, 2000),
                    "s": rng.uniform(8, 120),
                    "end": z + int(rng.integers(5, 60)),
                }
            )
        for o in alive:
            o["x"] += rng.integers(-1, 2)
            o["y"] += rng.integers(-1, 2)
            rows.append((z, o["c"], o["x"], o["y"], o["s"], o["s"] * 0.8))
    a = np.array(rows)
    return a[:, 0], a[:, 1], a[:, 2:6]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--slices", type=int, default=1800)
    ap.add_argument("--boxes", type=int, default=200)
    ap.add_argument("--ref-slices", type=int, default=150)
    args = ap.parse_args()
    z, c, xywh = synthetic_boxes(args.slices, args.boxes)
    t0 = time.perf_counter()
    fast = link_boxes(z, c, xywh)
    t_fast = time.perf_counter() - t0
    sub = z < args.ref_slices
    t0 = time.perf_counter()
    ref = link_boxes_reference(z[sub], c[sub], xywh[sub])
    t_ref_sub = time.perf_counter() - t0
    same = np.array_equal(link_boxes(z[sub], c[sub], xywh[sub]), ref)
    t_ref = t_ref_sub * len(z) / sub.sum()
    print(f"{'method':<34} {'boxes':>9} {'seconds':>9}")
    print(f"{'KD-tree (link_boxes)':<34} {len(z):>9} {t_fast:>9.2f}")
    print(f"{'transcription, measured':<34} {int(sub.sum()):>9} {t_ref_sub:>9.2f}")
    print(f"{'transcription, extrapolated':<34} {len(z):>9} {t_ref:>9.1f}")
    print(
        f"speed-up: {t_ref / t_fast:.0f}x   organelles: {fast.max() + 1}   "
        f"same labels on the measured part: {same}"
    )


if __name__ == "__main__":
    main()
