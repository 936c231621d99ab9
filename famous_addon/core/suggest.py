"""Suggested slices: where a model's 3-D result is least sure, pre-filled for correcting.

After a first training, most of a model's boxes are right, and the 3-D
result shows where they are not: an organelle that skips slices, or whose
track stops and starts again a few slices later at the same place; boxes
that gap filling or following had to put in; boxes scored just above the
threshold; boxes the 3-D result did not keep; one organelle holding two
cross-sections on a slice, or a box much larger than its organelle's boxes
beside it (a box around two neighbours). Each slice gets a count of each
kind (:func:`slice_doubts`); the slices with most doubt, spread over the
stack and away from the slices already boxed (:func:`pick_slices`), are
exported as ``annotate-pick`` does, each with a **pre-filled** YOLO ``.txt``
of the model's boxes there (:func:`export_suggestions`): the user corrects
them in YOLO_mark instead of drawing every box, and ``famous train FIRST_DIR
THIS_DIR --init MODEL`` continues from the model.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import runfolder as rf
from .annotations import read_yolo_mark, write_neighbours, write_source, write_yolo_mark
from .boxes import Box
from .classes import load_classes
from .detector.boxops import iou_matrix
from .detector.darknet import CFG_NAME, CLASSES_NAME, NAMES_NAME, REPORT_NAME, THRESHOLDS_NAME
from .errors import FamousError
from .fileio import read_csv, write_csv
from .progress import ProgressFn, silent, sub
from .request import RunSettings
from .selftrain import user_slices

REASONS = ("broken_tracks", "filled_boxes", "weak_boxes", "dropped_boxes", "suspected_merges")
#: How much one instance of each kind counts. A suspected merge is the error
#: that costs most organelles (on real FIB-SEM it joins two long ones).
WEIGHTS = {
    "broken_tracks": 1.0,
    "filled_boxes": 1.0,
    "weak_boxes": 0.5,
    "dropped_boxes": 1.0,
    "suspected_merges": 2.0,
}
#: A box scores "weak" below its class threshold plus this share of the way to 1.
WEAK_MARGIN = 0.25
#: A box this many times larger than its organelle's boxes beside it may hold two.
SWELL = 1.7
#: Two boxes of one organelle sharing this much of the smaller box box one cross-section.
NESTED = 0.5
SUGGESTIONS_CSV = "suggestions.csv"
_WORDS = {
    "broken_tracks": ("broken track", "broken tracks"),
    "filled_boxes": ("filled-in box", "filled-in boxes"),
    "weak_boxes": ("weak box", "weak boxes"),
    "dropped_boxes": ("dropped box", "dropped boxes"),
    "suspected_merges": ("suspected merge", "suspected merges"),
}


@dataclass(frozen=True)
class Suggestion:
    """One suggested slice: where it is, how much doubt it holds and of which kinds."""

    slice: int
    score: float
    counts: dict[str, int]

    def why(self) -> str:
        """The kinds of doubt on this slice, in words (``"2 broken tracks, 1 weak box"``)."""
        parts = [f"{n} {_WORDS[kind][n != 1]}" for kind, n in self.counts.items() if n]
        return ", ".join(parts) or "no doubt found: spread over the stack"


def _box(row: dict) -> tuple[float, float, float, float]:
    x, y, w, h = (float(row[c]) for c in "xywh")
    return x, y, x + w, y + h


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def slice_doubts(
    detections: list[dict],
    n_slices: int,
    thresholds: dict[str, float],
    max_gap: int,
) -> dict[str, np.ndarray]:
    """Per slice, how many of each kind of doubt (:data:`REASONS`) a run's result holds.

    Parameters
    ----------
    detections : list of dict
        Rows of a run folder's ``detections.csv`` (score 0: a box gap filling
        or following put in; organelle 0: a box the 3-D result dropped).
    n_slices : int
    thresholds : dict
        The model's box score threshold per class name.
    max_gap : int
        A track that stops and another of its class that starts within this
        many slices at an overlapping place count as one track broken: every
        slice between them (or the two ends, when adjacent) counts.

    Returns
    -------
    dict
        Kind: (n_slices,) int array.
    """
    out = {kind: np.zeros(n_slices, np.int64) for kind in REASONS}
    tracks: dict[int, list[tuple[int, tuple, str]]] = {}
    for row in detections:
        k, score, cls = int(row["slice"]), float(row["score"]), row["class"]
        oid = int(row["organelle_id"] or 0)
        if oid == 0:
            out["dropped_boxes"][k] += 1
            continue
        tracks.setdefault(oid, []).append((k, _box(row), cls))
        if score == 0:
            out["filled_boxes"][k] += 1
        elif score < (t := thresholds.get(cls, 0.5)) + WEAK_MARGIN * (1 - t):
            out["weak_boxes"][k] += 1
    _count_merges(tracks, out["suspected_merges"])
    _count_breaks(tracks, max_gap, out["broken_tracks"])
    return out


def _count_merges(tracks: dict, merges: np.ndarray) -> None:
    """Slices where one organelle holds two boxes, or a box swells past its neighbours."""
    for boxes in tracks.values():
        by_slice: dict[int, list] = {}
        for k, b, _ in boxes:
            by_slice.setdefault(k, []).append(b)
        area = {k: sum((b[2] - b[0]) * (b[3] - b[1]) for b in bs) for k, bs in by_slice.items()}
        for k, bs in by_slice.items():
            beside = [area[j] for j in (k - 2, k - 1, k + 1, k + 2) if j in area]
            if len(bs) > 1 or (beside and area[k] > SWELL * float(np.median(beside))):
                merges[k] += 1


def _count_breaks(tracks: dict, max_gap: int, broken: np.ndarray) -> None:
    """Slices an organelle skips, and between a track's end and one that starts again there."""
    starts: dict[str, list[tuple[int, int, tuple]]] = {}
    ends = []
    for oid, boxes in tracks.items():
        present = np.zeros(len(broken), bool)
        present[[k for k, _, _ in boxes]] = True
        first_k, last_k = np.flatnonzero(present)[[0, -1]]
        broken[first_k:last_k] += ~present[first_k:last_k]
        z0, box0, cls = min(boxes, key=lambda t: t[0])
        starts.setdefault(cls, []).append((z0, oid, box0))
        ends.append((oid, max(boxes, key=lambda t: t[0])))
    for found in starts.values():
        found.sort(key=lambda t: t[0])
    first_z = {cls: [t[0] for t in found] for cls, found in starts.items()}
    for oid, (z_end, box_end, cls) in ends:
        # only the tracks of its class that start within max_gap slices after it ends
        lo_i = bisect.bisect_right(first_z[cls], z_end)
        hi_i = bisect.bisect_right(first_z[cls], z_end + max_gap + 1)
        for z_start, other, box_start in starts[cls][lo_i:hi_i]:
            if other != oid and _overlap(box_end, box_start):
                lo, hi = (z_end + 1, z_start) if z_start - z_end > 1 else (z_end, z_start + 1)
                broken[lo:hi] += 1


def pick_slices(
    doubts: dict[str, np.ndarray], n: int, boxed: list[int], spacing: int | None = None
) -> list[Suggestion]:
    """The ``n`` slices of most doubt, at least ``spacing`` slices from boxed and picked ones.

    ``spacing`` defaults to half the stack's depth over the number of boxed
    and suggested slices, so suggestions spread over the stack and, on a stack
    deep enough for a spacing of 2 or more, never sit next to a slice the user
    has boxed. Where no slice holds doubt, the slice furthest from every boxed
    and picked one is taken.
    """
    n_slices = len(next(iter(doubts.values())))
    score = sum(WEIGHTS[kind] * doubts[kind] for kind in REASONS).astype(float)
    if spacing is None:
        spacing = max(1, n_slices // (2 * max(1, n + len(boxed))))
    taken = list(boxed)
    picks = []
    for _ in range(min(n, n_slices)):
        z = np.arange(n_slices)
        far = np.full(n_slices, n_slices)
        if taken:
            far = np.min(np.abs(z[:, None] - np.array(taken)[None, :]), axis=1)
        free = far >= spacing
        if not free.any():
            free = far > 0
        if not free.any():
            break
        # most doubt first; among equals, furthest from what is boxed already
        key = np.where(free, score * (n_slices + 1) + far, -1.0)
        k = int(np.argmax(key))
        picks.append(
            Suggestion(k, float(score[k]), {kind: int(doubts[kind][k]) for kind in REASONS})
        )
        taken.append(k)
    return picks


def prefilled_boxes(detections: list[dict], slices: list[int], names: list[str]) -> list[list[Box]]:
    """The boxes of the run's organelles on each of ``slices``, one per cross-section.

    Filled-in boxes are included (3-D continuity found them where the
    detector did not); of two boxes of one organelle sharing at least
    :data:`NESTED` of the smaller one (a piece and the whole, or two views of
    one cross-section), only the higher-scoring is: the user would delete the
    other.
    """
    found: dict[tuple[int, int], list[tuple[float, Box]]] = {}
    wanted = set(slices)
    for row in detections:
        k, oid = int(row["slice"]), int(row["organelle_id"] or 0)
        if k in wanted and oid and row["class"] in names:
            x0, y0, x1, y1 = _box(row)
            box = Box(names.index(row["class"]), x0, y0, x1 - x0, y1 - y0)
            found.setdefault((k, oid), []).append((float(row["score"]), box))
    out: dict[int, list[Box]] = {k: [] for k in slices}
    for (k, _), boxes in sorted(found.items()):
        boxes.sort(key=lambda sb: -sb[0])
        xyxy = np.array([(b.x, b.y, b.x + b.w, b.y + b.h) for _, b in boxes])
        shared = iou_matrix(xyxy, xyxy)[1]  # intersection over the smaller box
        kept: list[int] = []
        for i in range(len(boxes)):
            if not any(shared[i, j] >= NESTED for j in kept):
                kept.append(i)
        out[k] += [boxes[i][1] for i in kept]
    return [out[k] for k in slices]


def export_suggestions(
    stack, run: str | Path, picks: list[Suggestion], names: list[str], out
) -> Path:
    """Write the picked slices for YOLO_mark with pre-filled boxes, and ``suggestions.csv``.

    The folder is laid out as ``annotate-pick`` writes it (PNG slices,
    ``neighbours/``, ``obj.names``); each slice's ``.txt`` holds the run's
    boxes of its organelles there, ready to correct. Existing files of the
    same names are an error (a user's boxes are never overwritten).
    """
    out = Path(out)
    slices = [p.slice for p in picks]
    detections = read_csv(Path(run) / rf.DETECTIONS_CSV)
    boxes = prefilled_boxes(detections, slices, names)
    stems = [f"slice_{k:05d}" for k in slices]
    write_yolo_mark(out, (stack.read(k) for k in slices), stems, names, boxes)
    write_neighbours(out, stack, slices)
    write_source(out, stack)
    rows = [
        (p.slice, round(p.score, 2), *(p.counts[k] for k in REASONS), len(b), p.why())
        for p, b in zip(picks, boxes)
    ]
    write_csv(out / SUGGESTIONS_CSV, ("slice", "score", *REASONS, "prefilled_boxes", "why"), rows)
    return out


def boxed_slices(folders: list[str | Path], stack, n_classes: int) -> list[int]:
    """The stack's slices boxed in ``folders`` (``slice_NNNNN`` images that are that slice)."""
    found: set[int] = set()
    for folder in folders:
        images, _ = read_yolo_mark(folder, n_classes, load_images=True)
        found.update(user_slices(folder, images, stack))
    return sorted(found)


def model_annotations(model: str | Path) -> list[Path]:
    """The annotation folders a model was trained on, as its ``report.json`` names them."""
    report = Path(model) / REPORT_NAME
    if not report.is_file():
        return []
    named = json.loads(report.read_text()).get("annotations") or []
    named = [named] if isinstance(named, str) else named
    return [Path(p) for p in named if Path(p).is_dir()]


def model_thresholds(model: str | Path) -> dict:
    """A model folder's ``thresholds.json`` as written ({} where it has none)."""
    path = Path(model) / THRESHOLDS_NAME
    return json.loads(path.read_text()) if path.is_file() else {}


def train_command(model: str | Path, out: str | Path) -> list[str]:
    """``famous train`` going on from ``model`` with the slices corrected in ``out``."""
    train = ["famous", "train", "FIRST_DIR", str(out), "--init", str(model), "--classes"]
    train += [str(Path(model) / NAMES_NAME), "--out", "NEW_MODEL"]
    if model_thresholds(model).get("neighbours"):
        train.append("--neighbours")  # the model sees each slice between its neighbours
    return train


def model_classes(model: str | Path):
    """A model folder's classes, in its detector's order (``classes.toml``, else ``obj.names``)."""
    toml = Path(model) / CLASSES_NAME
    return load_classes(toml if toml.is_file() else Path(model) / NAMES_NAME)


def suggest(
    model: str | Path,
    stack,
    out: str | Path,
    n: int = 5,
    run: str | Path | None = None,
    annotations: list[str | Path] | None = None,
    progress: ProgressFn | None = None,
) -> list[Suggestion]:
    """Pick ``n`` slices to correct and export them pre-filled (``famous suggest``).

    Parameters
    ----------
    model : path
        The detector model folder (``famous train``'s output).
    stack : Stack
        The stack to suggest slices of (opened, voxel size known).
    out : path
        Folder to write the slices to, ready for YOLO_mark; without ``run``
        FAMOUS first runs the model on the stack into ``out/run`` (an
        interrupted run resumes).
    n : int
    run : path, optional
        A finished run folder of this model on this stack, to skip the run.
    annotations : list of path, optional
        Folders of slices already boxed (default: those the model's
        ``report.json`` names), which suggestions keep away from.
    progress : callable, optional

    Returns
    -------
    list of Suggestion
    """
    progress = progress or silent
    model, out = Path(model), Path(out)
    if n < 1:
        raise FamousError(f"--n {n}: no slices to suggest.", fix="ask for 1 or more, e.g. --n 5.")
    if not (model / CFG_NAME).is_file():
        raise FamousError(
            "is not a model folder (no model.cfg).", model, "give the folder famous train wrote."
        )
    classes = model_classes(model)
    if run is None:
        # imported here: the pipeline pulls in linking and assembly
        from .pipeline import run_pipeline
        from .request import RunRequest

        run = out / "run"
        done = (run / rf.RUN_JSON).is_file() and rf.read_run_json(run).get("status") == "complete"
        if not done:
            request = RunRequest(stack, classes, run, model=model, resume=run.exists())
            run_pipeline(request, sub(progress, 0.0, 0.9))
    run = Path(run)
    detections = read_csv(run / rf.DETECTIONS_CSV)
    thresholds = model_thresholds(model).get("score_thresholds", {})
    z_nm = stack.require_voxel_size()[0]
    max_gap = max(3, 2 * RunSettings().gap_slices(z_nm))
    doubts = slice_doubts(detections, stack.shape[0], thresholds, max_gap)
    folders = model_annotations(model) if annotations is None else annotations
    boxed = boxed_slices(folders, stack, len(classes))
    picks = pick_slices(doubts, n, boxed)
    progress(0.95, "writing the suggested slices")
    export_suggestions(stack, run, picks, list(classes.names), out)
    progress(1.0, f"suggested {len(picks)} slices")
    return picks
