"""Self-training: the detector learns from the slices the user did not box.

The user boxes ~1 % of a stack; the other 99 % hold the same organelles, in
every state a few slices do not show (pale, cut by the slice edge, thin caps).
After a first training, FAMOUS runs on the whole stack, and the organelles it
confirms in 3-D become training boxes on slices spread over it:

* **confirmed**: an organelle spanning at least the physical depth a real one
  must (:meth:`~.request.RunSettings.min_span`, counted without the exemption
  for organelles cut by the stack's ends), so a flicker of false boxes never
  becomes a pseudo-box;
* **its boxes on a slice**: the detector's own boxes of that organelle, and
  the boxes that gap filling and following put where the detector missed it:
  the edge slivers and thin sections that 3-D continuity recovers;
* **the unconfirmed is left out**: on a pseudo-labelled slice, whatever the
  first detector saw there but 3-D did not confirm (every box of the run,
  and the boxes the detector scores :data:`UNCONFIRMED_SCORE` or more) is
  left out of the loss, and only the rest is taught as background. With
  nothing taught as background there (session 26-35's rule), the retrained
  detector boxed the background: on lucchi 3,948 of its 6,829 boxes, 1,822
  of them scored 0.9 or more, against 429 of 2,981 for the first detector
  (docs/results.md). Pseudo-boxes weigh less than the user's, and the
  user's own slices are never pseudo-labelled (a pseudo-box never overrides
  a user's box);
* **judged on the user's boxes alone**: anchors, thresholds, the held-out
  split and its metric come from the user's slices, and a round is kept
  unless its held-out mAP@0.5 falls more than ``SelfTrainConfig.tolerance``
  below the best kept round's. The held-out slices are a few of the user's; a
  round learns from the rest of the stack, which they do not show. On both
  development sets (two seeds each) every round raised object F1 (by
  0.013-0.068) and voxel IoU, while the held-out mAP moved by -0.045 to
  +0.016; a rule that refused any fall refused three of the four
  (docs/results.md, session 36).

Each round trains a new detector from scratch on the user's boxes and the
pseudo-boxes of the round's run (the weights of a detector trained on its own
mistakes carry them on). Folder layout under the model folder::

    self-training/round-0/          the first detector (user's boxes only)
    self-training/round-1/run/      FAMOUS run with round 0's detector
    self-training/round-1/pseudo/   YOLO_mark folder of the pseudo-boxes (open it in YOLO_mark),
                                    with unconfirmed/: the regions left out of the loss
    self-training/round-1/model/    the detector trained on both

and the model folder itself holds a copy of the kept round's detector, with a
``report.json`` whose ``self_training`` entry says what each round added.
Since the stack gives the pixel size, each class's extraction recipe is
chosen on the user's boxes too (:mod:`.calibrate`), used by the runs that
pseudo-label, and stored in the model folder's ``classes.toml``, so
``famous run --classes MODEL/classes.toml`` uses it
(``report.json``: ``extraction_calibration``).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from . import runfolder as rf
from .annotations import (
    UNCONFIRMED_DIR,
    find_annotated,
    read_yolo_mark,
    spread_indices,
    write_neighbours,
    write_yolo_mark,
)
from .boxes import Box, write_yolo_txt
from .calibrate import calibrate
from .classes import save_classes
from .detector.config import PseudoShare
from .detector.darknet import (
    CFG_NAME,
    CHECKSUM_SUFFIX,
    CLASSES_NAME,
    NAMES_NAME,
    REPORT_NAME,
    THRESHOLDS_NAME,
    WEIGHTS_NAME,
)
from .detector.inference import load_detector
from .fileio import atomic_path, read_csv, write_json
from .progress import ProgressFn, silent, sub
from .request import RunRequest, RunSettings
from .stack import Stack, in_plane_nm, open_stack

SELF_DIR = "self-training"
MODEL_FILES = (
    CFG_NAME,
    WEIGHTS_NAME,
    WEIGHTS_NAME + CHECKSUM_SUFFIX,  # travels with the weights: loading compares the two
    NAMES_NAME,
    CLASSES_NAME,
    THRESHOLDS_NAME,
)
_SLICE_STEM = re.compile(r"slice_(\d+)$")
# a region the first detector scores this much is not taught as background
# on a pseudo-labelled slice (unless 3-D confirmed a box there)
UNCONFIRMED_SCORE = 0.05


@dataclass(frozen=True)
class SelfTrainConfig:
    """Settings of self-training.

    Attributes
    ----------
    rounds : int
        Rounds of pseudo-labelling and retraining after the first training.
    slices : int
        Pseudo-labelled slices per round (0: four per boxed slice, at least
        10 and at most 40; never more than the stack's unboxed slices).
    share : float
        Share of the training crops cut from pseudo-labelled slices.
    weight : float
        Weight of a pseudo-box in the loss against a user's box (1).
    tolerance : float
        A round is kept unless its held-out mAP@0.5 falls more than this
        below the best round's (see the module docstring).
    """

    rounds: int = 1
    slices: int = 0
    share: float = 0.5
    weight: float = 0.5
    tolerance: float = 0.05


def user_slices(annotations: str | Path, images: list[np.ndarray], stack: Stack) -> list[int]:
    """The stack's slices the user boxed: ``slice_NNNNN`` images that are that slice.

    ``images`` are the folder's annotated images (:func:`~.annotations.read_yolo_mark`).
    An annotation folder made from another stack (same names, other pixels)
    shares no slice with this one.
    """
    paths = find_annotated(annotations)[0]  # the images' files, in the same order
    found = []
    for path, image in zip(paths, images):
        m = _SLICE_STEM.match(path.stem)
        k = int(m.group(1)) if m else -1
        if 0 <= k < stack.shape[0] and np.array_equal(image, stack.read(k)):
            found.append(k)
    return sorted(found)


def pseudo_slices(n_slices: int, boxed: list[int], count: int) -> list[int]:
    """``count`` slices spread over the stack, none of them a boxed one."""
    free = [k for k in range(n_slices) if k not in set(boxed)]
    if not free or count <= 0:
        return []
    picks = spread_indices(len(free), min(1.0, count / len(free)), minimum=1)
    return [free[i] for i in picks]


def pseudo_boxes(
    run: str | Path, slices: list[int], class_names: list[str], min_span: int
) -> dict[int, list[Box]]:
    """The boxes of the organelles a run confirmed, on ``slices``.

    Parameters
    ----------
    run : str or Path
        A run folder (``detections.csv`` and ``organelles.csv``).
    slices : list of int
    class_names : list of str
        The detector's classes, in its order.
    min_span : int
        Fewest slices a confirmed organelle spans (organelles cut by the
        stack's ends included: a stub there is not confirmed).

    Returns
    -------
    dict
        Slice: its pseudo-boxes (an empty list where it holds none).
    """
    run = Path(run)
    confirmed = {
        int(row["id"])
        for row in read_csv(run / rf.ORGANELLES_CSV)
        if int(row["n_slices"]) >= min_span
    }
    wanted = set(slices)
    out: dict[int, list[Box]] = {k: [] for k in slices}
    for row in read_csv(run / rf.DETECTIONS_CSV):
        k, oid = int(row["slice"]), row["organelle_id"]
        if k not in wanted or not oid or int(oid) not in confirmed:
            continue
        box = Box(
            class_names.index(row["class"]),
            float(row["x"]),
            float(row["y"]),
            float(row["w"]),
            float(row["h"]),
        )
        out[k].append(box)
    return out


def unconfirmed_boxes(run: str | Path, detector, stack: Stack, slices: list[int]) -> dict:
    """What the first detector saw on ``slices``: every box of ``run`` there (confirmed
    or not, filled in or dropped), and the boxes ``detector`` scores
    :data:`UNCONFIRMED_SCORE` or more. Slice: list of Box (class ids of ``detector``)."""
    names = list(detector.names)
    out: dict[int, list[Box]] = {k: [] for k in slices}
    for row in read_csv(Path(run) / rf.DETECTIONS_CSV):
        k = int(row["slice"])
        if k in out:
            xywh = (float(row[c]) for c in "xywh")
            out[k].append(Box(names.index(row["class"]), *xywh))
    n = len(names)
    low = {c: UNCONFIRMED_SCORE for c in detector.settings.zoom_thresholds}
    detector.settings = replace(
        detector.settings, score_thresholds=[UNCONFIRMED_SCORE] * n, zoom_thresholds=low
    )
    for k in slices:
        image = stack.read_with_neighbours(k) if detector.neighbours else stack.read(k)
        out[k] += detector(k, image)
    return out


def self_train(
    annotations: str | Path,
    stack: str | Path | Stack,
    classes,
    out: str | Path,
    train,
    config: SelfTrainConfig | None = None,
    progress: ProgressFn | None = None,
    voxel_size_nm: tuple[float, float, float] | None = None,
) -> dict:
    """Train, then pseudo-label the stack and retrain, ``config.rounds`` times.

    Parameters
    ----------
    annotations : str or Path
        The user's YOLO_mark folder.
    stack : path or Stack
        The stack the annotated slices come from (or the one the detector is for).
    classes : ClassConfig
    out : str or Path
        The model folder to write (see the module docstring for its layout).
    train : callable
        ``train(out, pseudo, mix, progress) -> report``: one training of the
        user's settings into the folder ``out``, with the pseudo-labelled
        YOLO_mark folder ``pseudo`` mixed in as ``mix`` says
        (:class:`~.detector.config.PseudoShare`; both None for the first).
    config, progress : SelfTrainConfig, callable, optional
    voxel_size_nm : (z, y, x), optional
        Overrides the stack's metadata, for the runs that pseudo-label.

    Returns
    -------
    dict
        The kept round's ``report.json``, as written to ``out``.
    """
    config = config or SelfTrainConfig()
    progress = progress or silent
    out = Path(out)
    stack = stack if isinstance(stack, Stack) else open_stack(stack, voxel_size_nm)
    where = out / SELF_DIR
    n_rounds = config.rounds + 1
    step = 1.0 / n_rounds
    report = train(where / "round-0", None, None, sub(progress, 0.0, step))
    rounds = [_round_facts(0, report, None)]
    images, boxes = read_yolo_mark(annotations, len(classes), load_images=True)
    vs = stack.require_voxel_size()
    # each class's extraction recipe chosen on the user's boxes, as `famous run --annotations`
    classes, extraction = calibrate(images, boxes, classes, in_plane_nm(vs))
    best, best_dir, best_round = report, where / "round-0", 0
    top = _held_out(report)  # the best held-out mAP of a kept round: no drift round by round
    boxed = user_slices(annotations, images, stack)
    count = config.slices or min(40, max(10, 4 * max(1, len(boxed))))
    picks = pseudo_slices(stack.shape[0], boxed, count)
    for r in range(1, n_rounds):
        if not picks:
            break
        base = where / f"round-{r}"
        part = sub(progress, r * step, (r + 1) * step)
        progress(r * step, f"self-training round {r}: running on the stack")
        pseudo = _pseudo_label(stack, classes, best_dir, base, picks, sub(part, 0.0, 0.3))
        mix = PseudoShare(0, config.share, config.weight)
        report = train(base / "model", pseudo, mix, sub(part, 0.3, 1.0))
        rounds.append(_round_facts(r, report, pseudo))
        if _held_out(report) < top - config.tolerance:
            break
        best, best_dir, best_round = report, base / "model", r
        top = max(top, _held_out(report))
    report = {
        **best,
        "extraction_calibration": extraction,
        "self_training": {
            "config": asdict(config),
            "boxed_slices": boxed,
            "kept_round": best_round,
            "rounds": rounds,
        },
    }
    _publish(best_dir, out, report)
    save_classes(classes, out / CLASSES_NAME)  # the recipes chosen on the user's boxes
    return report


def _pseudo_label(stack: Stack, classes, model: Path, base: Path, picks, progress) -> Path:
    """Run FAMOUS with ``model`` and write the confirmed organelles' boxes on ``picks``."""
    # imported here: the pipeline pulls in linking and assembly, which training alone never needs
    from .pipeline import run_pipeline

    run = base / "run"
    done = (run / rf.RUN_JSON).is_file() and rf.read_run_json(run).get("status") == "complete"
    if not done:
        request = RunRequest(stack, classes, run, model=model, resume=run.exists())
        run_pipeline(request, progress)
    min_span = RunSettings().min_span(stack.voxel_size_nm[0])
    boxes = pseudo_boxes(run, picks, list(classes.names), min_span)
    folder = base / "pseudo"
    if folder.exists():  # an interrupted round: written again from its finished run
        shutil.rmtree(folder)
    stems = [f"slice_{k:05d}" for k in picks]
    write_yolo_mark(
        folder, (stack.read(k) for k in picks), stems, classes.names, list(boxes.values())
    )
    write_neighbours(folder, stack, picks)
    seen = unconfirmed_boxes(run, load_detector(model, classes), stack, picks)
    for stem, k in zip(stems, picks):
        write_yolo_txt(folder / UNCONFIRMED_DIR / f"{stem}.txt", seen[k], stack.shape[1:])
    return folder


def _held_out(report: dict) -> float:
    """A round's mAP@0.5 on the user's held-out slices (on all of them without a split)."""
    value = report.get("metrics", {}).get("mAP50", float("nan"))
    return -1.0 if value is None or not np.isfinite(value) else float(value)


def _round_facts(r: int, report: dict, pseudo: Path | None) -> dict:
    """What one round added and how it scored, for ``report.json``."""
    metrics = report.get("metrics", {})
    facts = {
        "round": r,
        "mAP50": metrics.get("mAP50"),
        "evaluated_on": metrics.get("evaluated_on"),
        "train_seconds": report.get("train_seconds"),
    }
    if pseudo is not None:
        facts["pseudo"] = report.get("pseudo")
    return facts


def _publish(best_dir: Path, out: Path, report: dict) -> None:
    """Copy the kept round's detector into ``out`` and write ``report`` there."""
    for name in MODEL_FILES:
        src = best_dir / name
        if src.is_file():
            with atomic_path(out / name) as tmp:
                shutil.copyfile(src, tmp)
    write_json(out / REPORT_NAME, report)
