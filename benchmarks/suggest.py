"""Suggested slices against evenly spaced ones, at the same number of boxed slices.

For a development set of ``real_em.py`` (boxes from its labels stand in for
the user's boxes and corrections), two comparisons, each a fresh training:

- 3 evenly spaced slices, then 2 that ``famous suggest`` picks (pre-filled,
  corrected to the labels' boxes, ``famous train FIRST SUGGESTED --init
  MODEL``, and the same from scratch: ``--init`` adds the first training's
  epochs), against 5 evenly spaced slices;
- 5 evenly spaced plus 5 suggested, against 10 evenly spaced.

Printed per arm: object F1 (and voxel IoU, merges) of ``famous run`` with the
model, scored as ``real_em.py`` scores; for the suggested slices, the edits a
user makes to the pre-filled boxes (add, delete, move: a pre-filled box with
IoU < 0.7 against the label's box) against drawing every box.

    python benchmarks/suggest.py lucchi|cdeep3m [--work DIR] [--seed N]

With ``--work``, what a previous call left there (models, suggestions) is
reused, so a stopped benchmark goes on where it stopped.

The data may be used for development and benchmarks only: nothing trained on
them goes into the project.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile
from real_em import DATASETS, drop_small, famous, merges_splits_spill, object_scores, truth_objects

from famous_addon.core.annotations import spread_indices
from famous_addon.core.boxes import parse_yolo_lines
from famous_addon.core.detector.boxops import iou_matrix

MOVE_IOU = 0.7  # a pre-filled box below this IoU with the label's box must be moved
SEED = 0  # every training's seed (--seed)


def boxes_of(folder: Path, ds, slices: list[int], work: Path) -> Path:
    """``famous boxes-from-labels`` on ``slices`` of the training labels into ``folder``."""
    args = ["boxes-from-labels", ds.train_labels, "--slices", ",".join(map(str, slices))]
    args += ["--stack", ds.train_stack, "--classes", work / "obj.names", "--out", folder]
    args += ["--neighbours"]
    if ds.split_touching:
        args += ["--split-touching", ds.split_touching]
    famous(*args, log=work / f"{folder.name}.log")
    return folder


def train(ds, folders: list[Path], model: Path, work: Path, init: Path | None = None) -> float:
    """``famous train`` on ``folders`` (continuing from ``init``); its seconds."""
    args = ["train", *folders, "--classes", work / "obj.names", "--out", model, "--neighbours"]
    args += ["--seed", SEED]
    # self-training as real_em.py's training does it (README's defaults): a stack without
    # a voxel size gets one, and the stack self-trained on is the one the detector is for
    args += ["--voxel-size", *ds.voxel_size] if ds.voxel_size else []
    if ds.run_stack != ds.train_stack:
        args += ["--stack", ds.run_stack]
    return famous(*args, *(["--init", init] if init else []), log=work / f"{model.name}.log")


def score(ds, model: Path, work: Path) -> dict:
    """Run ``model`` on the scored stack as real_em.py does; object F1, voxel IoU, merges."""
    run = work / f"run-{model.name}"
    shutil.rmtree(run, ignore_errors=True)
    extra = ["--voxel-size", *ds.voxel_size] if ds.voxel_size else []
    famous(
        "run", ds.run_stack, "--classes", model / "classes.toml", "--model", model,
        "--out", run, "--labels", *extra, log=work / f"{run.name}.log",
    )  # fmt: skip
    pred = drop_small(tifffile.imread(run / "labels.tif"), ds.min_voxels)
    truth = truth_objects(ds)
    s, m = object_scores(pred, truth), merges_splits_spill(pred, truth)
    return {
        "F1": s["object F1"],
        "voxel IoU": s["voxel IoU"],
        "merges": m["merges (organelles holding >= 2 objects)"],
    }


def edits(prefilled: list, truth: list) -> dict:
    """Adds, deletes and moves that turn ``prefilled`` boxes into ``truth`` boxes."""
    p = np.array([(b.x, b.y, b.x + b.w, b.y + b.h) for b in prefilled]).reshape(-1, 4)
    t = np.array([(b.x, b.y, b.x + b.w, b.y + b.h) for b in truth]).reshape(-1, 4)
    iou = iou_matrix(t, p)[0] if len(p) and len(t) else np.zeros((len(t), len(p)))
    free_t, free_p = set(range(len(t))), set(range(len(p)))
    moved = 0
    for limit in (MOVE_IOU, 1e-6):  # first what needs no edit, then what can be moved
        for i, j in sorted(np.argwhere(iou >= limit).tolist(), key=lambda ij: -iou[ij[0], ij[1]]):
            if i in free_t and j in free_p:
                free_t.discard(i)
                free_p.discard(j)
                moved += limit < MOVE_IOU
    return {"add": len(free_t), "delete": len(free_p), "move": moved, "draw": len(t)}


def suggested_arm(ds, first: list[int], n: int, work: Path, tag: str) -> tuple[dict, dict, dict]:
    """First slices, a model, ``n`` suggested slices corrected, then a model on all of them.

    Returns the scores of the model continued from the first (``--init``) and
    of one trained from scratch, and the edits on the suggested slices.
    """
    first_dir, model = even_model(ds, first, work)
    sug = work / f"suggested-{tag}"
    if not (sug / "suggestions.csv").is_file():
        shutil.rmtree(sug, ignore_errors=True)
        extra = ["--voxel-size", *ds.voxel_size] if ds.voxel_size else []
        famous(
            "suggest", model, ds.train_stack, "--n", n, "--out", sug, "--annotations", first_dir,
            *extra, log=work / f"{sug.name}.log",
        )  # fmt: skip
    picks = sorted(int(p.stem.split("_")[1]) for p in sug.glob("slice_*.png"))
    fixed = work / f"corrected-{tag}"
    if not fixed.exists():
        boxes_of(fixed, ds, picks, work)
    cost = {"add": 0, "delete": 0, "move": 0, "draw": 0}
    for k in picks:
        stem = f"slice_{k:05d}.txt"
        shape = tifffile.imread(ds.train_stack, key=k).shape
        pre = parse_yolo_lines((sug / stem).read_bytes(), shape, None, sug / stem)
        truth = parse_yolo_lines((fixed / stem).read_bytes(), shape, None, fixed / stem)
        for key, v in edits(pre, truth).items():
            cost[key] += v
    both, scratch = work / f"model-{tag}", work / f"model-{tag}-scratch"
    if not (both / "model.weights").is_file():
        train(ds, [first_dir, fixed], both, work, init=model)
    if not (scratch / "model.weights").is_file():
        train(ds, [first_dir, fixed], scratch, work)
    res = {**score(ds, both, work), "slices": picks}
    return res, {**score(ds, scratch, work), "slices": picks}, cost


def even_model(ds, slices: list[int], work: Path) -> tuple[Path, Path]:
    """The boxes on ``slices`` and a model trained on them (kept in ``work`` for reuse)."""
    folder, model = work / f"even-{len(slices)}", work / f"model-even-{len(slices)}"
    if not folder.exists():
        boxes_of(folder, ds, slices, work)
    if not (model / "model.weights").is_file():
        train(ds, [folder], model, work)
    return folder, model


def even_arm(ds, k: int, n_slices: int, work: Path) -> dict:
    """``k`` evenly spaced slices, a model, its score."""
    slices = spread_indices(n_slices, k / n_slices, minimum=k)
    _, model = even_model(ds, slices, work)
    return {**score(ds, model, work), "slices": slices}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", choices=sorted(DATASETS))
    ap.add_argument("--work", help="keep the work folder here (default: a temporary one)")
    ap.add_argument("--seed", type=int, default=0, help="the trainings' seed (default 0)")
    args = ap.parse_args()
    global SEED
    SEED = args.seed
    ds = DATASETS[args.dataset]
    if not ds.train_stack.is_file():
        print(f"{ds.train_stack} not found: the {ds.name} data are not on this machine.")
        return 0
    work = Path(args.work or tempfile.mkdtemp(prefix=f"famous_suggest_{ds.name}_"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "obj.names").write_text("mitochondria\n")
    n_slices = tifffile.TiffFile(ds.train_stack).series[0].shape[0]
    rows = []
    try:
        for first, extra in ((3, 2), (5, 5)):
            tag = f"{first}+{extra}"
            spread = spread_indices(n_slices, first / n_slices, minimum=first)
            res, fresh, cost = suggested_arm(ds, spread, extra, work, tag)
            rows.append((f"{first} even + {extra} suggested, `--init`", res, cost))
            rows.append((f"{first} even + {extra} suggested, from scratch", fresh, cost))
            rows.append(
                (f"{first + extra} even", even_arm(ds, first + extra, n_slices, work), None)
            )
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{ds.name}: suggested against evenly spaced slices (one training each, seed {SEED})")
    print(
        "| boxed slices | slices | object F1 | voxel IoU | merges "
        "| edits: add / delete / move (of boxes drawn) |"
    )
    print("|---|---|---|---|---|---|")
    for name, r, c in rows:
        effort = f"{c['add']} / {c['delete']} / {c['move']} ({c['draw']})" if c else "-"
        print(
            f"| {name} | {','.join(map(str, r['slices']))} | {r['F1']:.3f} | {r['voxel IoU']:.3f} "
            f"| {r['merges']} | {effort} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
