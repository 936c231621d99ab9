"""FAMOUS on real EM, as a user following the README would run it, scored against the labels.

Two development sets (``../shared/data``; the script says so and stops when one
is absent):

- ``lucchi``: the EPFL FIB-SEM training volume (165 x 768 x 1024, 5 nm, every
  mitochondrion labelled). Its README's protocol: boxes from the labels on
  slices 27, 55, 82, 109, 137; train on those; run on the whole volume;
  objects of 200 voxels or more; one-to-one matching at 3-D IoU >= 0.5.
- ``cdeep3m``: SBEM mitochondria (40 x 5.9 x 5.9 nm). Boxes from the labels of
  the 20 training slices (``--split-touching 0.25``: the labels are binary);
  run on the 10 validation slices; truth objects are the labels' 26-connected
  components (all sizes, as ``benchmarks/cdeep3m_pipeline.py`` scores them).

Each step is one of the README's commands (``famous boxes-from-labels``,
``famous train``, ``famous run``), run with their defaults; ``--boxes-everywhere``
gives the ceiling instead: boxes from the labels on every slice of the run,
no training. Printed: object precision, recall, F1 and Jaccard; voxel IoU;
volume overlap; each matched organelle's volume over its true object's
(median, and median error: what a biologist reads per organelle); box
recall (all, boxes touching the slice border, small boxes, boxes over
128 px); merges (one organelle holding >= 20 % of each of
two true objects), splits (one true object >= 20 % in each of two
organelles), spilled voxels (predicted voxels outside every true object);
the unmatched true objects by how they are lost (:func:`lost_by_kind`); the
true objects that continue each other across 1-3 unlabelled slices, and the
object F1 and merges with each such pair scored as one object
(:func:`label_gaps`: beside the protocol's numbers, not instead); how many
true objects are separate profiles on some slice (:func:`several_profiles`:
touching mitochondria that binary labels make one object); the time of each
step.

    python benchmarks/real_em.py lucchi [--work DIR] [--boxes-everywhere] [--objects]
    python benchmarks/real_em.py cdeep3m [--train-args "--epochs 60"] [--run-args "..."]

The data may be used for development and benchmarks only: nothing trained on
them goes into the project (the work folder is temporary unless ``--work``).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

from famous_addon.core.annotations import boxes_from_label_slice
from famous_addon.core.compare.score import match_objects
from famous_addon.core.detector.boxops import iou_matrix
from famous_addon.core.detector.evaluate import small_boxes
from famous_addon.core.fileio import read_csv

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FAMOUS = [sys.executable, "-m", "famous_addon.cli"]
SHARE = 0.2  # a merge or split: >= 20 % of each object involved
GAP_SLICES = 3  # unlabelled slices between two truth objects that continue each other
LARGE_PX = 128  # half the default 256 px training crop: random crops cut such boxes


@dataclass(frozen=True)
class Dataset:
    """Where a development set lives and how it is scored."""

    name: str
    train_stack: Path
    train_labels: Path
    train_slices: str
    run_stack: Path
    run_labels: Path
    voxel_size: tuple[float, float, float] | None
    min_voxels: int
    split_touching: float


DATASETS = {
    "lucchi": Dataset(
        "lucchi",
        DATA / "lucchi-train/stack.tif",
        DATA / "lucchi-train/mito_labels.tif",
        "27,55,82,109,137",
        DATA / "lucchi-train/stack.tif",
        DATA / "lucchi-train/mito_labels.tif",
        None,
        200,
        0.0,
    ),
    "cdeep3m": Dataset(
        "cdeep3m",
        DATA / "cdeep3m-mito/train_raw.tif",
        DATA / "cdeep3m-mito/train_mito.tif",
        "0-19",
        DATA / "cdeep3m-mito/val_raw.tif",
        DATA / "cdeep3m-mito/val_mito.tif",
        (40.0, 5.9, 5.9),
        0,
        0.25,
    ),
}


def famous(*args, log: Path) -> float:
    """Run one ``famous`` command, its output to ``log``; its wall time in seconds."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        done = subprocess.run([*FAMOUS, *map(str, args)], stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"famous {args[0]} failed (exit {done.returncode}); see {log}")
    return time.perf_counter() - t0


def truth_objects(ds: Dataset) -> np.ndarray:
    """Instance labels of the run stack's truth, small objects removed."""
    lab = tifffile.imread(ds.run_labels)
    if lab.max() <= 1:  # a binary mask: 26-connected components are the objects
        lab = ndimage.label(lab > 0, structure=np.ones((3, 3, 3)))[0]
    return drop_small(lab, ds.min_voxels)


def drop_small(labels: np.ndarray, min_voxels: int) -> np.ndarray:
    """``labels`` without the objects under ``min_voxels`` voxels."""
    if min_voxels <= 0:
        return labels
    sizes = np.bincount(labels.ravel())
    small = sizes < min_voxels
    small[0] = False
    return np.where(small[labels], 0, labels)


def label_gaps(truth: np.ndarray, max_gap: int = GAP_SLICES) -> list[tuple[int, int, int]]:
    """Truth objects that continue each other across unlabelled slices: (a, b, slices skipped).

    Object a ends on slice za and b begins on zb, with 1 to ``max_gap`` slices
    between, where a's last cross-section and b's first overlap by half the
    smaller one. Labels drawn slice by slice (lucchi's were rasterised from
    per-slice outlines) miss a slice here and there; the organelle is then two
    objects of the 3-D connected components, and a pipeline that keeps it whole
    counts as a merge. Reported beside the protocol's scores, never instead.
    """
    found = []
    spans = ndimage.find_objects(truth)
    for a, sa in enumerate(spans, 1):
        if sa is None:
            continue
        za = sa[0].stop - 1
        last = truth[za] == a
        for b, sb in enumerate(spans, 1):
            if sb is None or not za + 1 < sb[0].start <= za + 1 + max_gap:
                continue
            first = truth[sb[0].start] == b
            shared = np.count_nonzero(last & first)
            if shared >= 0.5 * min(np.count_nonzero(last), np.count_nonzero(first)):
                found.append((a, b, sb[0].start - za - 1))
    return found


def several_profiles(truth: np.ndarray) -> list[int]:
    """Truth objects that are two or more separate profiles (8-connected) on some slice.

    Where the labels are a binary mask (CDeep3M), the truth objects are its
    3-D connected components: mitochondria that touch anywhere in 3-D are one
    object, seen on a slice as separate profiles. A pipeline that keeps them
    apart counts as a split, and even the labels' own boxes miss them
    (docs/results.md, session 32). Reported beside the scores.
    """
    found = np.zeros(int(truth.max()) + 1, bool)
    for k in range(truth.shape[0]):
        pieces, n = ndimage.label(truth[k] > 0, np.ones((3, 3), bool))
        if n < 2:
            continue
        # pixels counted per (object, profile): a count, not a sort of the slice
        key = truth[k].astype(np.int64) * (n + 1) + pieces
        held = np.bincount(key.ravel(), minlength=found.size * (n + 1)).reshape(-1, n + 1)
        found |= np.count_nonzero(held[:, 1:], axis=1) >= 2
    found[0] = False
    return np.flatnonzero(found).tolist()


def join_gaps(truth: np.ndarray, gaps: list[tuple[int, int, int]]) -> np.ndarray:
    """``truth`` with each pair of :func:`label_gaps` given one id (chains followed)."""
    lut = np.arange(int(truth.max()) + 1)
    for a, b, _ in gaps:
        lut[lut == lut[b]] = lut[a]
    return lut[truth]


def object_scores(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Object P/R/F1/Jaccard (one-to-one, 3-D IoU >= 0.5), voxel IoU and volume overlap."""
    # the ids present, counted: np.unique sorts the whole volume (30 s on lucchi)
    cls_p = {int(i): "mito" for i in np.flatnonzero(np.bincount(pred.ravel())) if i}
    cls_t = {int(i): "mito" for i in np.flatnonzero(np.bincount(truth.ravel())) if i}
    (s,) = match_objects(pred, cls_p, truth, cls_t, 0.5, 1.0, adjust_splits=False)
    fg_p, fg_t = pred > 0, truth > 0
    inter = np.count_nonzero(fg_p & fg_t)
    return {
        "objects (pred/truth)": f"{len(cls_p)}/{len(cls_t)}",
        "object precision": s.precision,
        "object recall": s.recall,
        "object F1": s.f1,
        "object Jaccard": s.tp / max(s.tp + s.fp + s.fn, 1),
        "voxel IoU": inter / max(np.count_nonzero(fg_p | fg_t), 1),
        "volume overlap": inter / max(np.count_nonzero(fg_t), 1),
    }


def overlaps(pred: np.ndarray, truth: np.ndarray):
    """Voxels shared by each organelle and true object, (organelles + 1, objects + 1),
    the objects' sizes, and which organelle holds >= 20 % of which object."""
    m, mp = int(truth.max()) + 1, int(pred.max()) + 1
    both = (pred > 0) & (truth > 0)
    inter = np.zeros((mp, m), np.int64)
    np.add.at(inter, (pred[both].astype(np.int64), truth[both].astype(np.int64)), 1)
    t_size = np.bincount(truth.ravel(), minlength=m)
    # objects dropped as small have no voxels; row and column 0 are the background
    holds = (inter >= SHARE * t_size[None]) & (t_size > 0)[None]
    holds[0] = False
    return inter, t_size, holds


def merges_splits_spill(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Merged truth pairs, split truth objects and predicted voxels outside the truth."""
    _, _, holds = overlaps(pred, truth)
    per_organelle, per_object = holds.sum(axis=1), holds.sum(axis=0)
    merged = per_organelle[per_organelle >= 2]
    n_pred = np.count_nonzero(pred)
    spilled = np.count_nonzero((pred > 0) & (truth == 0))
    return {
        "merges (organelles holding >= 2 objects)": len(merged),
        "objects lost to merges": int(merged.sum()),
        "split objects": int(np.count_nonzero(per_object >= 2)),
        "spilled voxels (share of predicted)": f"{spilled} ({spilled / max(n_pred, 1):.3f})",
    }


def matched_volumes(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Each matched organelle's volume over its true object's (3-D IoU >= 0.5, one to one):
    the volume a biologist reads per organelle, median and median error."""
    inter, t_size, _ = overlaps(pred, truth)
    p_size = np.bincount(pred.ravel(), minlength=inter.shape[0])
    iou = inter / np.maximum(p_size[:, None] + t_size[None] - inter, 1)
    iou[0], iou[:, 0] = 0, 0
    p, t = np.nonzero(iou >= 0.5)  # at most one partner each at IoU >= 0.5
    ratio = p_size[p] / t_size[t]
    if not len(ratio):
        return {"matched volume / true volume, median": "none matched"}
    return {
        "matched volume / true volume, median": float(np.median(ratio)),
        "matched volume error, median": float(np.median(np.abs(ratio - 1))),
    }


def box_recall(run: Path, truth: np.ndarray) -> dict:
    """Recall of the truth's per-slice boxes by the detector's boxes (IoU >= 0.5)."""
    dets = read_csv(run / "detections.csv")
    by_slice: dict[int, list] = {}
    for d in dets:
        if float(d["score"]) > 0:  # score 0: added by gap filling or following
            x, y, w, h = (float(d[c]) for c in "xywh")
            by_slice.setdefault(int(d["slice"]), []).append((x, y, x + w, y + h))
    rows, cols = truth.shape[1:]
    hit, edge, areas, longer = [], [], [], []
    for k in range(truth.shape[0]):
        boxes = boxes_from_label_slice(truth[k], 0)
        if not boxes:
            continue
        t = np.array([(b.x, b.y, b.x + b.w, b.y + b.h) for b in boxes])
        d = np.array(by_slice.get(k, np.zeros((0, 4))))
        best = iou_matrix(t, d)[0].max(axis=1) if len(d) else np.zeros(len(t))
        hit += list(best >= 0.5)
        edge += list((t[:, 0] <= 0) | (t[:, 1] <= 0) | (t[:, 2] >= cols) | (t[:, 3] >= rows))
        areas += list((t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1]))
        longer += list(np.maximum(t[:, 2] - t[:, 0], t[:, 3] - t[:, 1]))
    hit, edge = np.array(hit), np.array(edge)
    small = small_boxes(np.zeros(len(areas), int), np.array(areas))
    large = np.array(longer) > LARGE_PX

    def share(sel):
        return f"{hit[sel].mean():.3f} of {int(sel.sum())}" if sel.any() else "-"

    return {
        "box recall": share(np.ones(len(hit), bool)),
        "box recall, at the border": share(edge),
        "box recall, small": share(small & ~edge),
        f"box recall, large (over {LARGE_PX} px)": share(large),
    }


def lost_objects(pred: np.ndarray, truth: np.ndarray) -> list[str]:
    """One line per unmatched true object: its id, size, slices, kind (as
    :func:`lost_by_kind`), best IoU, and the organelle holding most of it."""
    inter, t_size, holds = overlaps(pred, truth)
    p_size = np.bincount(pred.ravel(), minlength=len(inter))
    iou = inter / np.maximum(p_size[:, None] + t_size[None] - inter, 1)
    spans = ndimage.find_objects(truth)
    lines = []
    for t in np.flatnonzero(t_size[1:]) + 1:
        best = iou[1:, t].max(initial=0)
        if best >= 0.5:
            continue
        p = int(np.argmax(inter[1:, t])) + 1
        kind = _kind(holds, p, t)
        z = spans[t - 1][0]
        held = inter[p, t] / t_size[t]
        lines.append(
            f"t{t}: {t_size[t]} voxels, slices {z.start}-{z.stop - 1}, {kind}, best IoU {best:.2f}"
            + (f", organelle {p} holds {held:.2f} of it" if held else ", on no organelle")
        )
    return lines


def _kind(holds: np.ndarray, p: int, t: int) -> str:
    """How true object t, whose organelle of most overlap is p, is lost (see lost_by_kind)."""
    if not holds[p, t]:
        return "undetected"
    if holds[p].sum() >= 2:
        return "merged"
    if holds[:, t].sum() >= 2:
        return "split"
    return "too large or short"


def lost_by_kind(pred: np.ndarray, truth: np.ndarray) -> dict:
    """How each unmatched true object is lost, by its organelle of most overlap.

    - undetected: no organelle holds 20 % of it;
    - merged: that organelle also holds 20 % of another true object;
    - split: two or more organelles hold 20 % of it each;
    - too large or short: one organelle holds it, but spills past it or stops
      short of it (IoU under 0.5).
    """
    inter, t_size, holds = overlaps(pred, truth)
    p_size = np.bincount(pred.ravel(), minlength=len(inter))
    iou = inter / np.maximum(p_size[:, None] + t_size[None] - inter, 1)
    kinds = {"undetected": 0, "merged": 0, "split": 0, "too large or short": 0}
    for t in np.flatnonzero(t_size[1:]) + 1:
        if iou[1:, t].max(initial=0) >= 0.5:
            continue
        kinds[_kind(holds, int(np.argmax(inter[1:, t])) + 1, t)] += 1
    return {"objects lost: " + ", ".join(kinds): " / ".join(map(str, kinds.values()))}


def annotate_and_train(ds: Dataset, work: Path, train_args: list[str]) -> dict:
    """The README's first two steps: boxes on the chosen slices, then ``famous train``."""
    names = work / "obj.names"
    names.write_text("mitochondria\n")
    ann, model = work / "annotations", work / "model"
    t = {}
    args = ["boxes-from-labels", ds.train_labels, "--slices", ds.train_slices]
    args += ["--stack", ds.train_stack, "--classes", names, "--out", ann, "--neighbours"]
    if ds.split_touching:
        args += ["--split-touching", ds.split_touching]
    t["boxes-from-labels"] = famous(*args, log=work / "boxes.log")
    args = ["train", ann, "--classes", names, "--out", model, "--neighbours", *train_args]
    # as a user whose stack lacks the voxel size gives it (annotate-pick records it otherwise)
    args += ["--voxel-size", *ds.voxel_size] if ds.voxel_size else []
    if ds.run_stack != ds.train_stack:
        # self-training on the stack the detector is for, as README says for boxes of another
        # (the default, the slices' own stack, has every slice boxed on CDeep3M)
        args += ["--stack", ds.run_stack]
    t["train"] = famous(*args, log=work / "train.log")
    return t


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("dataset", choices=sorted(DATASETS))
    ap.add_argument("--boxes-everywhere", action="store_true", help="the ceiling: truth boxes")
    ap.add_argument("--work", help="keep the work folder here (default: a temporary one)")
    ap.add_argument("--model", help="skip training: run this model folder")
    ap.add_argument("--train-args", default="", help="extra `famous train` options")
    ap.add_argument("--run-args", default="", help="extra `famous run` options")
    ap.add_argument("--objects", action="store_true", help="also list each lost true object")
    args = ap.parse_args()
    ds = DATASETS[args.dataset]
    if not ds.run_stack.is_file():
        print(f"{ds.run_stack} not found: the {ds.name} data are not on this machine.")
        return 0
    work = Path(args.work or tempfile.mkdtemp(prefix=f"famous_{ds.name}_"))
    work.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    try:
        names = work / "obj.names"
        names.write_text("mitochondria\n")
        if args.boxes_everywhere:
            source = ["--boxes", work / "boxes_everywhere"]
            n = tifffile.TiffFile(ds.run_stack).series[0].shape[0]
            times["boxes-from-labels"] = famous(
                "boxes-from-labels", ds.run_labels, "--slices", f"0-{n - 1}", "--classes",
                names, "--out", source[1], *(["--split-touching", ds.split_touching]
                                             if ds.split_touching else []),
                log=work / "boxes.log",
            )  # fmt: skip
            classes = names
        elif args.model:
            source, classes = ["--model", args.model], Path(args.model) / "classes.toml"
        else:
            times.update(annotate_and_train(ds, work, shlex.split(args.train_args)))
            source, classes = ["--model", work / "model"], work / "model" / "classes.toml"
        run = work / "run"
        shutil.rmtree(run, ignore_errors=True)
        extra = ["--voxel-size", *ds.voxel_size] if ds.voxel_size else []
        extra += shlex.split(args.run_args)
        times["run"] = famous(
            "run", ds.run_stack, "--classes", classes, *source, "--out", run, "--labels", *extra,
            log=work / "run.log",
        )  # fmt: skip
        pred = drop_small(tifffile.imread(run / "labels.tif"), ds.min_voxels)
        truth = truth_objects(ds)
        rows = {**object_scores(pred, truth), **matched_volumes(pred, truth)}
        rows.update(merges_splits_spill(pred, truth))
        rows.update(lost_by_kind(pred, truth))
        lost = lost_objects(pred, truth) if args.objects else []
        gaps = label_gaps(truth)
        rows["truth objects split by unlabelled slices"] = (
            ", ".join(f"t{a}/t{b} ({n})" for a, b, n in gaps) or "none"
        )
        if gaps:
            joined = join_gaps(truth, gaps)
            rows["object F1, those pairs as one object"] = object_scores(pred, joined)["object F1"]
            rows["merges, those pairs as one object"] = merges_splits_spill(pred, joined)[
                "merges (organelles holding >= 2 objects)"
            ]
        several = several_profiles(truth)
        rows["truth objects of 2+ profiles on a slice"] = (
            f"{len(several)} of {len(np.flatnonzero(np.bincount(truth.ravel()))) - 1}"
        )
        rows.update(box_recall(run, tifffile.imread(ds.run_labels)))
        rows.update({f"time: {k} (s)": v for k, v in times.items()})
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    what = "boxes from the labels on every slice" if args.boxes_everywhere else "README defaults"
    print(f"{ds.name}: {what} {' '.join([args.train_args, args.run_args]).strip()}")
    for key, value in rows.items():
        print(f"  {key:<44} {value:.3f}" if isinstance(value, float) else f"  {key:<44} {value}")
    for line in lost:
        print(f"  lost {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
