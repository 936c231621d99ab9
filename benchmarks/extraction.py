"""Per-box extraction recipes on real SBEM data with perfect boxes.

Boxes are the 2-D connected components (8-connectivity) of the CDeep3M
mitochondria labels, slice by slice, so the scores measure the extraction
step alone (a perfect detector). Every recipe of
:data:`famous_addon.core.extract.RECIPES` is run on the validation split; the
``learned`` row is the pixel classifier of :mod:`famous_addon.core.learned`
trained on the *training* split's boxes and images, and the ``calibrated``
row is the recipe :func:`famous_addon.core.calibrate.calibrate` chose from
them alone.

Scores: voxel IoU and Dice of the union of all masks against the labels, and
3-D object precision / recall / F1 (IoU >= 0.5, Hungarian, no split
adjustment) of the 26-connected components of both foregrounds, since the
labels are semantic. ``ms/box`` is the extraction time per box.

With ``--phantom`` it instead runs the whole pipeline on the seeded phantom
(:func:`famous_addon.core.phantom.write.write_phantom`, true boxes) with the
``fibsem`` preset's thresholding classes all set to ``paper``, with the preset
as shipped, with them all set to ``refined``, and as calibrated on the
phantom's annotated slices, and prints the per-class object scores against
the phantom's truth.

Run::

    nice -n 10 .venv/bin/python benchmarks/extraction.py [--data DIR] [--pixel-nm 5.9]
    nice -n 10 .venv/bin/python benchmarks/extraction.py --phantom [--shape 48 384 384]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from famous_addon.core.boxes import Box
from famous_addon.core.calibrate import calibrate
from famous_addon.core.classes import ClassConfig, ClassSpec, ExtractRecipe
from famous_addon.core.compare.score import match_objects
from famous_addon.core.extract import RECIPES, segment_slice
from famous_addon.core.learned import fit_pixel_classifier

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cdeep3m-mito"


def boxes_from_labels(labels: np.ndarray, cls: int = 0) -> list[Box]:
    """Tight boxes of the 8-connected components of a 2-D binary label image."""
    lab, _ = ndimage.label(labels > 0, np.ones((3, 3)))
    return [
        Box(cls, sl[1].start, sl[0].start, sl[1].stop - sl[1].start, sl[0].stop - sl[0].start)
        for sl in ndimage.find_objects(lab)
    ]


def object_scores(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """Precision, recall, F1 of 26-connected 3-D components matched at IoU >= 0.5."""
    s26 = np.ones((3, 3, 3))
    la, na = ndimage.label(pred, s26)
    lb, nb = ndimage.label(truth, s26)
    score = match_objects(
        la.astype(np.uint32),
        {i: "object" for i in range(1, na + 1)},
        lb.astype(np.uint32),
        {i: "object" for i in range(1, nb + 1)},
        adjust_splits=False,
    )[0]
    return score.precision, score.recall, score.f1


def evaluate(raw, truth, classes: ClassConfig, pixel_nm: float) -> dict:
    """Extract every slice with ``classes`` and score the union against ``truth``."""
    pred = np.zeros(truth.shape, bool)
    n_boxes, seconds = 0, 0.0
    for k in range(raw.shape[0]):
        boxes = boxes_from_labels(truth[k])
        t0 = time.perf_counter()
        res = segment_slice(raw[k], boxes, classes, pixel_nm)
        seconds += time.perf_counter() - t0
        n_boxes += len(boxes)
        for i in range(len(res)):
            x0, y0, x1, y1 = res.bounds[i]
            pred[k, y0:y1, x0:x1] |= res.mask(i)
    t = truth > 0
    inter, union = np.count_nonzero(pred & t), np.count_nonzero(pred | t)
    p, r, f1 = object_scores(pred, t)
    return {
        "iou": inter / union,
        "dice": 2 * inter / (pred.sum() + t.sum()),
        "precision": p,
        "recall": r,
        "f1": f1,
        "ms_per_box": 1000 * seconds / max(n_boxes, 1),
    }


def one_class(recipe: ExtractRecipe) -> ClassConfig:
    return ClassConfig((ClassSpec("mitochondria", extract=recipe),))


def _with_method(config: ClassConfig, method: str) -> ClassConfig:
    """``config`` with every thresholding class switched to ``method`` (ellipses kept)."""
    specs = tuple(
        c
        if c.extract.method == "ellipse"
        else replace(c, extract=replace(c.extract, method=method))
        for c in config
    )
    return replace(config, classes=specs)


def phantom(shape: tuple[int, int, int], seed: int) -> None:
    """Pipeline object scores per class on the phantom, per recipe set."""
    import tempfile

    import tifffile

    from famous_addon.core.annotations import read_yolo_mark
    from famous_addon.core.classes import preset
    from famous_addon.core.compare.score import match_objects
    from famous_addon.core.compare.tables import format_table
    from famous_addon.core.fileio import read_csv
    from famous_addon.core.phantom.write import write_phantom
    from famous_addon.core.pipeline import run_pipeline
    from famous_addon.core.request import RunRequest
    from famous_addon.core.runfolder import RunFolder

    fib = preset("fibsem")
    with tempfile.TemporaryDirectory() as tmp:
        ph = Path(tmp) / "ph"
        info = write_phantom(ph, shape, seed, stl=False)
        truth = tifffile.imread(ph / "truth_labels.tif")
        truth_cls = {int(r["id"]): r["class"] for r in read_csv(ph / "truth.csv")}
        images, boxes = read_yolo_mark(ph / "annotations", len(fib), load_images=True)
        pixel_nm = float(np.sqrt(info["voxel_size_nm"][1] * info["voxel_size_nm"][2]))
        calibrated, report = calibrate(images, boxes, fib, pixel_nm)
        print(f"phantom {shape}, seed {seed}; calibration on {len(images)} annotated slices:")
        for name, rep in report.items():
            print(f"  {name}: {rep['choice']} (score {rep.get('score', '-')})")
        configs = {
            "paper": _with_method(fib, "paper"),
            "fibsem preset": fib,
            "refined": _with_method(fib, "refined"),
            "calibrated": calibrated,
        }
        for name, cfg in configs.items():
            t0 = time.perf_counter()
            run_pipeline(
                RunRequest(ph / "stack.tif", cfg, Path(tmp) / name, boxes=ph / "boxes", labels=True)
            )
            rf = RunFolder(Path(tmp) / name)
            labels = tifffile.imread(rf.labels_path)
            cls = {int(o["id"]): o["class"] for o in rf.organelles()}
            scores = match_objects(labels, cls, truth, truth_cls, class_order=fib.names)
            print(f"\n{name} ({time.perf_counter() - t0:.0f} s):")
            print(format_table(scores))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--pixel-nm", type=float, default=5.9, help="in-plane pixel size (nm)")
    ap.add_argument("--phantom", action="store_true", help="pipeline check on the phantom")
    ap.add_argument("--shape", type=int, nargs=3, default=(48, 384, 384), metavar=("Z", "Y", "X"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.phantom:
        phantom(tuple(args.shape), args.seed)
        return 0
    needed = ["train_raw.tif", "train_mito.tif", "val_raw.tif", "val_mito.tif"]
    if not all((args.data / n).is_file() for n in needed):
        print(f"skipped: CDeep3M data not found in {args.data}")
        return 0
    import tifffile

    val_raw = tifffile.imread(args.data / "val_raw.tif")
    val_lab = tifffile.imread(args.data / "val_mito.tif")
    tr_raw = tifffile.imread(args.data / "train_raw.tif")
    tr_lab = tifffile.imread(args.data / "train_mito.tif")

    base = ExtractRecipe(polarity="dark")
    rows = [
        (name, one_class(replace(base, method=name)))
        for name in RECIPES
        if name not in ("otsu", "learned")
    ]
    tr_boxes = [boxes_from_labels(s) for s in tr_lab]
    t0 = time.perf_counter()
    weights = fit_pixel_classifier(list(tr_raw), tr_boxes, base, args.pixel_nm)
    t_learn = time.perf_counter() - t0
    rows.append(("learned", one_class(replace(base, method="learned", weights=weights))))
    t0 = time.perf_counter()
    config, report = calibrate(list(tr_raw), tr_boxes, one_class(base), args.pixel_nm)
    t_cal = time.perf_counter() - t0
    rows.append(("calibrated", config))

    print(f"CDeep3M validation split {val_raw.shape}, pixel {args.pixel_nm} nm, perfect boxes")
    head = (
        f"{'recipe':<12} {'IoU':>6} {'Dice':>6} {'prec':>6} {'recall':>6} {'F1':>6} {'ms/box':>7}"
    )
    print(head)
    print("-" * len(head))
    for name, cfg in rows:
        s = evaluate(val_raw, val_lab, cfg, args.pixel_nm)
        print(
            f"{name:<12} {s['iou']:6.3f} {s['dice']:6.3f} {s['precision']:6.3f} "
            f"{s['recall']:6.3f} {s['f1']:6.3f} {s['ms_per_box']:7.2f}"
        )
    print(f"learned: pixel classifier trained on the training split's boxes in {t_learn:.1f} s")
    report = {n: {k: v for k, v in r.items() if k != "recipe"} for n, r in report.items()}
    print(f"calibration on the training split ({t_cal:.1f} s): {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
