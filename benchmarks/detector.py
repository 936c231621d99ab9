"""Detector benchmark: DNN forward per tile, per-slice overhead, training time, demo accuracy.

Prints these tables:

1. ms per tile and tiles/s of the OpenCV DNN forward at 416 and 608 input,
   one tile per forward against several, on the CPU and, where the OpenCV
   build has CUDA, on the CUDA backends;
2. per backend, the time to detect one 2048 x 2048 slice (tiling, decoding,
   merging, suppression) as a ratio to the sum of its DNN forwards in the same
   run (goal <= 1.25x);
3. where the OpenCV build has CUDA: how far the CUDA backends' raw outputs
   lie from the CPU's on the same tiles, and how many of the CPU's boxes on
   phantom slices they find again (same class, IoU >= 0.5);
4. the demo model's training time (from its report) and its accuracy on an
   unseen phantom (another seed than the one it was trained on): mAP@0.5,
   per-class precision/recall, and recall for edge-touching, small and other
   boxes (goal: mAP and every recall >= 0.90).

Usage::

    python benchmarks/detector.py [--model assets/demo_model] [--seed 2] [--slices 200]
        [--backend cpu|cuda|cuda_fp16] [--skip-accuracy]

``--backend`` chooses the backend of the accuracy table; tables 1-3 use every
backend the OpenCV build has.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from famous_addon.core.classes import from_names
from famous_addon.core.detector.evaluate import evaluate
from famous_addon.core.detector.inference import cuda_available, load_detector

ROOT = Path(__file__).resolve().parents[1]


def available_backends() -> list[str]:
    # CUDA only where this OpenCV build has CUDA and sees a device (pip's wheels do not)
    return ["cpu"] + (["cuda", "cuda_fp16"] if cuda_available() else [])


def forward_table(model: Path, repeats: int) -> None:
    backends = available_backends()
    print("\nDNN forward (OpenCV", cv2.__version__, f"{cv2.getNumThreads()} CPU threads)")
    if len(backends) == 1:
        print("(no CUDA in this OpenCV build: CPU only; README says how to get one with CUDA)")
    print(f"{'backend':>9} {'input':>6} {'tiles/forward':>14} {'ms/tile':>8} {'tiles/s':>8}")
    rng = np.random.default_rng(0)
    for size in (416, 608):
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("model.weights", "obj.names"):
                shutil.copy(model / name, Path(tmp) / name)
            cfg = (model / "model.cfg").read_text()
            cfg = cfg.replace("width=416", f"width={size}").replace("height=416", f"height={size}")
            (Path(tmp) / "model.cfg").write_text(cfg)
            tiles = rng.integers(0, 255, (8, size, size), dtype=np.uint8)
            for backend in backends:
                det = load_detector(tmp, backend=backend)
                det.forward(tiles[:1])
                for n in (1, 4, 8):
                    t = time.perf_counter()
                    for _ in range(repeats):
                        det.forward(tiles[:n])
                    s = (time.perf_counter() - t) / repeats / n
                    print(f"{backend:>9} {size:>6} {n:>14} {s * 1000:>8.1f} {1 / s:>8.1f}")


def slice_overhead(model: Path, repeats: int, backend: str) -> None:
    from famous_addon.core.phantom.cell import Phantom

    det = load_detector(model, backend=backend)
    ph = Phantom((3, 2048, 2048), seed=5, voxel_size_nm=(10, 10, 10))
    image = ph.render_with_neighbours(1) if det.neighbours else ph.render_slice(1)[0]
    spent, tiles_seen = [], []
    forward = det.forward

    def timed(tiles):
        t = time.perf_counter()
        out = forward(tiles)
        spent.append(time.perf_counter() - t)
        tiles_seen.append(len(tiles))
        return out

    det.forward = timed
    det.detect(image)
    totals, fwd = [], []
    for _ in range(repeats):
        spent.clear()
        tiles_seen.clear()
        t = time.perf_counter()
        boxes = det.detect(image)
        totals.append(time.perf_counter() - t)
        fwd.append(sum(spent))
    total, f = np.median(totals), np.median(fwd)
    print(
        f"\nOne 2048 x 2048 slice ({backend}, demo model, batch {det.settings.batch} tiles/forward)"
    )
    print(
        f"{'tiles':>6} {'forwards':>9} {'forward s':>10} {'detect s':>9} {'ratio':>6} {'boxes':>6}"
    )
    print(
        f"{sum(tiles_seen):>6} {len(spent):>9} {f:>10.2f} {total:>9.2f} {total / f:>6.2f} "
        f"{len(boxes):>6}"
    )
    print(f"(tile overlap {det.settings.tile_overlap} px; tiles include the whole-slice pass)")


def backend_agreement(model: Path, seed: int, n_slices: int) -> None:
    """CUDA backends against the CPU: raw outputs on the same tiles, boxes on phantom slices."""
    from famous_addon.core.phantom.cell import Phantom

    cuda = available_backends()[1:]
    if not cuda:
        return
    names = (model / "obj.names").read_text().split()
    ph = Phantom((n_slices, 1024, 1024), seed=seed, voxel_size_nm=(10, 10, 10))
    dets = {b: load_detector(model, from_names(names), b) for b in ["cpu", *cuda]}
    cpu = dets["cpu"]
    size = cpu.info.height
    slices = [
        ph.render_with_neighbours(k) if cpu.neighbours else ph.render_slice(k)[0]
        for k in range(1, n_slices - 1)
    ]
    tiles = np.stack([s[:size, :size] for s in slices])
    ref = cpu.forward(tiles)
    ref_boxes = [cpu(k, s) for k, s in enumerate(slices)]
    shapes = [s.shape[:2] for s in slices]
    print(
        f"\nCUDA against CPU: {len(tiles)} phantom tiles (raw outputs), "
        f"{len(slices)} slices of 1024 x 1024 (boxes)"
    )
    print(
        f"{'backend':>9} {'max |d| xywh':>13} {'max |d| score':>14} "
        f"{'CPU boxes':>10} {'found':>6} {'extra':>6}"
    )
    for b in cuda:
        out = dets[b].forward(tiles)
        d = np.abs(out - ref)
        boxes = [dets[b](k, s) for k, s in enumerate(slices)]
        per = evaluate(boxes, ref_boxes, shapes, names)["per_class"].values()
        n_ref = sum(c["n_truth"] for c in per)
        found = sum(round(c["recall"] * c["n_truth"]) for c in per)
        extra = sum(len(x) for x in boxes) - found
        print(
            f"{b:>9} {d[..., :4].max():>13.2e} {d[..., 4:].max():>14.2e} "
            f"{n_ref:>10} {found:>6} {extra:>6}"
        )


def demo_accuracy(model: Path, seed: int, n_slices: int, step: int, backend: str) -> None:
    from famous_addon.core.phantom.cell import Phantom

    # A model may have been trained in steps (base, then fine-tunes): one line each.
    tuned = sorted(model.glob("finetune*_report.json"), key=lambda p: int(p.stem[8:-7] or 0))
    steps = [p for p in (model / "base_report.json", *tuned, model / "report.json") if p.is_file()]
    print(f"\nTraining of {model.name} ({os.cpu_count()} cores here):")
    print(f"{'report':<24} {'device':>6} {'threads':>7} {'epochs':>6} {'min':>6}  command")
    total: dict[str, float] = {}
    for path in steps:
        report = json.loads(path.read_text())
        cfg = report["config"]
        device = cfg.get("device", "cpu")
        minutes = report["train_seconds"] / 60
        total[device] = total.get(device, 0.0) + minutes
        print(
            f"{path.name:<24} {device:>6} {report['threads']:>7} {cfg['epochs']:>6} "
            f"{minutes:>6.1f}  {report['command']}"
        )
    print("total: " + ", ".join(f"{m:.1f} min on {d}" for d, m in total.items()))
    names = (model / "obj.names").read_text().split()
    det = load_detector(model, from_names(names), backend)
    ph = Phantom((n_slices, 512, 512), seed=seed, voxel_size_nm=(10, 10, 10))
    preds, truths, shapes = [], [], []
    low = [0.01] * len(names)
    chosen = det.settings.score_thresholds
    low_preds = []
    for k in range(0, n_slices, step):
        image, labels = ph.render_slice(k)
        truths.append(ph.boxes(k, labels))
        shapes.append(image.shape)
        seen = ph.render_with_neighbours(k) if det.neighbours else image
        preds.append(det(k, seen))
        det.settings.score_thresholds = low
        low_preds.append(det(k, seen))
        det.settings.score_thresholds = chosen
    at_thr = evaluate(preds, truths, shapes, names)
    ap = evaluate(low_preds, truths, shapes, names)
    print(
        f"\nUnseen phantom seed {seed}, {len(truths)} slices of 512 x 512 (every {step}th), "
        f"{det.backend} backend"
    )
    print(f"mAP@0.5 {ap['mAP50']:.3f}")
    print(
        f"{'class':<16} {'AP50':>6} {'prec':>6} {'recall':>6} {'truth':>6} {'edge':>6} {'small':>6}"
    )
    for name in names:
        c, a = at_thr["per_class"][name], ap["per_class"][name]
        print(
            f"{name:<16} {a['AP50']:>6.3f} {c['precision']:>6.3f} {c['recall']:>6.3f} "
            f"{c['n_truth']:>6} {c['recall_edge']:>6.3f} {c['recall_small']:>6.3f}"
        )
    cases = at_thr["recall_by_case"]
    print(
        "recall by case: "
        + ", ".join(f"{k} {v['recall']:.3f} (n={v['n']})" for k, v in cases.items())
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "assets" / "demo_model")
    parser.add_argument("--seed", type=int, default=2, help="phantom seed for the accuracy table")
    parser.add_argument("--slices", type=int, default=200, help="phantom depth")
    parser.add_argument("--step", type=int, default=4, help="evaluate every STEP-th slice")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument(
        "--backend", default="cpu", choices=["cpu", "cuda", "cuda_fp16"], help="accuracy table"
    )
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    forward_table(args.model, args.repeats)
    for backend in available_backends():
        slice_overhead(args.model, max(1, args.repeats // 2), backend)
    backend_agreement(args.model, args.seed, 10)
    if not args.skip_accuracy:
        demo_accuracy(args.model, args.seed, args.slices, args.step, args.backend)


if __name__ == "__main__":
    main()
