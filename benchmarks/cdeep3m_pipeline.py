"""The whole bpy-free pipeline on real SBEM: CDeep3M mitochondria, validation split.

Boxes come from the labels (one box per 4-connected piece per slice) or, with
``--model``, from a detector trained on the training split; the pipeline
extracts, links and labels, and the result is scored against the labels:
voxel IoU/Dice, and 3-D object F1 at IoU >= 0.5 on connected components and
on FAMOUS's organelles (strict and with the paper's split adjustment).

    python benchmarks/cdeep3m_pipeline.py [--data ../shared/data/cdeep3m-mito] [--model DIR]

How the detectors were trained, and every session's results:
docs/benchmarks/cdeep3m_pipeline.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

from famous_addon.core.annotations import boxes_from_label_slice
from famous_addon.core.boxes import write_yolo_txt
from famous_addon.core.compare.score import match_objects
from famous_addon.core.compare.tables import format_table
from famous_addon.core.pipeline import run_pipeline
from famous_addon.core.request import RunRequest, RunSettings

# The sample states no voxel size; CDeep3M's matching model is named xy5.9nm40nmz.
VOXEL_NM = (40.0, 5.9, 5.9)


def components(mask: np.ndarray) -> np.ndarray:
    return ndimage.label(mask, structure=np.ones((3, 3, 3)))[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    here = Path(__file__).resolve().parents[1]
    ap.add_argument("--data", default=str(here.parent / "shared/data/cdeep3m-mito"))
    ap.add_argument("--split", default="val", choices=["train", "val"])
    ap.add_argument("--model", help="detector model folder (default: boxes from the labels)")
    ap.add_argument(
        "--confirm-boxes", type=int, default=2, help="with --model (0: no confirmation)"
    )
    ap.add_argument(
        "--flip-views", type=int, choices=[1, 2, 4], help="with --model: test-time mirrored views"
    )
    ap.add_argument(
        "--fill-gaps-nm", type=float, default=100.0, help="fill slices an organelle skips (0: off)"
    )
    ap.add_argument(
        "--follow-iou", type=float, default=0.5, help="follow organelles past missed boxes (0: off)"
    )
    ap.add_argument(
        "--split-touching", type=float, default=0.0, help="without --model: cut boxes at necks"
    )
    args = ap.parse_args()
    data = Path(args.data)
    raw, lab = data / f"{args.split}_raw.tif", data / f"{args.split}_mito.tif"
    if not raw.is_file():
        print(f"{raw} not found: the CDeep3M sample is not on this machine; nothing to do.")
        return 0
    truth = tifffile.imread(lab) > 0
    work = Path(tempfile.mkdtemp(prefix="famous_cdeep3m_"))
    try:
        boxes = work / "boxes"
        n_boxes = 0
        for k in range(truth.shape[0]):
            b = boxes_from_label_slice(truth[k].astype(np.uint8), 0, 4, args.split_touching)
            n_boxes += len(b)
            write_yolo_txt(boxes / f"slice_{k:05d}.txt", b, truth.shape[1:])
        names = work / "obj.names"
        names.write_text("mitochondria\n")
        source = (
            {"model": args.model, "flip_views": args.flip_views} if args.model else {"boxes": boxes}
        )
        t0 = time.perf_counter()
        settings = RunSettings(
            confirm_boxes=args.confirm_boxes,
            fill_gaps_nm=args.fill_gaps_nm,
            follow_iou=args.follow_iou,
        )
        run_pipeline(
            RunRequest(
                raw,
                names,
                work / "run",
                voxel_size_nm=VOXEL_NM,
                labels=True,
                settings=settings,
                **source,
            )
        )
        seconds = time.perf_counter() - t0
        pred = tifffile.imread(work / "run" / "labels.tif")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fg = pred > 0
    inter, union = (fg & truth).sum(), (fg | truth).sum()
    where = f"detector {args.model}" if args.model else f"{n_boxes} boxes from the labels"
    print(f"{raw.name}: {truth.shape}, {where}, run {seconds:.1f} s")
    print(f"voxel IoU {inter / union:.3f}   Dice {2 * inter / (fg.sum() + truth.sum()):.3f}")
    vox = float(np.prod(VOXEL_NM)) / 1e9
    t_cc = components(truth)
    t_cls = {i: "mitochondria" for i in range(1, t_cc.max() + 1)}
    for title, a in (
        ("3-D connected components (26) of the result", components(fg)),
        ("FAMOUS's linked organelles", pred),
    ):
        a_cls = {int(i): "mitochondria" for i in np.unique(a) if i}
        print(f"\nobjects: {title} vs 26-connected components of the labels")
        print(format_table(match_objects(a, a_cls, t_cc, t_cls, 0.5, vox, adjust_splits=False)))
        (adj,) = match_objects(a, a_cls, t_cc, t_cls, 0.5, vox, adjust_splits=True)
        print(
            f"with the paper's adjustment for split objects (famous compare's default): "
            f"precision {adj.precision:.3f}, recall {adj.recall:.3f}, F1 {adj.f1:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
