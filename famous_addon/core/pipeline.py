"""The bpy-free pipeline: stack + boxes -> linked organelles, point clouds, labels.

:func:`run_pipeline` only orchestrates; each stage lives in its own module:

1. per slice (:mod:`.slices`): boxes from the box source, pixels from
   :mod:`.extract` (paper Algorithms 1-3), cached in ``RUN/cache``
   (:mod:`.slicecache`) so a killed run resumes where it stopped;
2. linking: Algorithm 4 (:mod:`.link`), then the refinements that join
   bridged organelles and drop flashes (:mod:`.refine`) and those that add
   boxes where the detector missed an organelle (:mod:`.follow`), tracks joined
   again across the gaps following shortened, and last the join of pieces
   boxed side by side (:func:`.refine.join_touching`);
3. assembly (:mod:`.assemble`): point clouds with per-class outlier removal
   (:mod:`.pointcloud`), the organelle table and, on request, ``labels.tif``,
   all written to the run folder (:mod:`.runfolder`).

What to run comes in one :class:`~.request.RunRequest`, built by the CLI, the
Blender panel and the headless script alike.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import scipy
import tifffile

from . import runfolder as rf
from .annotations import read_yolo_mark
from .assemble import assemble, write_outputs
from .calibrate import calibrate
from .classes import ClassConfig, load_classes
from .continuation import join_continuations
from .errors import Cancelled, FamousError
from .fileio import remove_leftovers, write_json
from .follow import fill_gaps, follow
from .guard import FolderLock, writable_folder
from .link import link_boxes
from .progress import ProgressFn, silent, sub
from .quantify.tables import remove_measurements
from .refine import drop_small, drop_spanning, drop_unconfirmed, join_touching, merge_bridges
from .request import RunRequest
from .separate import split_spanning
from .slicecache import cache_path, clear_filled, fingerprint, gather_detections, prepare_out
from .slices import make_box_source, run_slices
from .stack import Stack, in_plane_nm, open_stack
from .version import __version__


@dataclass
class RunSummary:
    """What a finished run produced."""

    path: Path
    counts: dict[str, int]
    n_detections: int
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    calibration: dict | None = None
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        """A short per-class summary for the terminal."""
        width = max([len(c) for c in self.counts] + [5])
        lines = [f"{'class':<{width}}  organelles"]
        lines += [f"{c:<{width}}  {n:>10}" for c, n in self.counts.items()]
        lines.append(f"{self.n_detections} detections, {self.seconds:.1f} s -> {self.path}")
        return "\n".join(lines)


def _versions() -> dict:
    return {
        "famous": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "scipy": scipy.__version__,
        "tifffile": tifffile.__version__,
    }


@dataclass
class _Inputs:
    """A request's inputs, opened and checked before any slice is processed."""

    stack: Stack
    classes: ClassConfig
    source: object
    pixel_nm: float
    calibration: dict | None


def _open_inputs(request: RunRequest, progress: ProgressFn) -> _Inputs:
    """Stack, classes and box source of a request; extraction calibrated on its annotations."""
    stack, vs_nm, channel = request.stack, request.voxel_size_nm, request.channel
    if not isinstance(stack, Stack):
        stack = open_stack(stack, vs_nm, channel)
    elif vs_nm is not None or (channel is not None and channel != stack.channel):
        kept = stack.voxel_size_nm if stack.voxel_source == "override" else None
        channel = stack.channel if channel is None else channel
        stack = open_stack(stack.path, kept if vs_nm is None else vs_nm, channel)
    vs = stack.require_voxel_size()
    classes = request.classes
    if not isinstance(classes, ClassConfig):
        classes = load_classes(classes)
    source = make_box_source(stack, classes, request)
    pixel_nm = in_plane_nm(vs)
    calibration = None
    if request.annotations is not None:
        images, marked = read_yolo_mark(request.annotations, len(classes), load_images=True)
        classes, calibration = calibrate(
            images, marked, classes, pixel_nm, progress=sub(progress, 0, 0.05)
        )
    return _Inputs(stack, classes, source, pixel_nm, calibration)


def _start(out: Path, request: RunRequest, inputs: _Inputs) -> dict:
    """Prepare (or resume) the run folder and write its ``run.json`` as running."""
    stack, classes = inputs.stack, inputs.classes
    found = fingerprint(stack, classes, inputs.source)
    prepare_out(out, request.resume, found)
    # what a killed run was writing; this run holds the folder's lock, so none is in use
    remove_leftovers(out)
    remove_leftovers(out / rf.CACHE_DIR)
    if request.resume:  # measurements of the labels this run replaces
        remove_measurements(out)
    if stack.dtype != np.uint8 and stack.window is None:
        stack.window = stack.estimate_window()
    info = {
        "status": "running",
        "fingerprint": found,
        "versions": _versions(),
        "input": stack.describe(),
        "classes": classes.to_dict(),
        "class_notes": list(classes.notes),
        "boxes": found["boxes"],
        "settings": asdict(request.settings),
        # a resumed run rewrites a labels.tif that is there, so none is left from other settings
        "labels": request.labels or (out / rf.LABELS_TIF).is_file(),
        "calibration": inputs.calibration,
        "timings_s": {},
    }
    write_json(out / rf.RUN_JSON, info)
    return info


def _rejoin(out: Path, inputs: _Inputs, det: dict, det_labels: np.ndarray, settings, gap: int):
    """Tracks joined across the gaps that following has shortened, and those gaps filled.

    Following carries tracks into some of the slices the detector missed, so
    two tracks of one organelle that were more than ``gap`` slices apart (too
    far for :func:`.continuation.join_continuations`) may now be within
    reach of each other. On CDeep3M's SBEM a mitochondrion missed on four
    sections in a row was followed over two of them and came out in two
    organelles; joined, it is matched (docs/results.md, session 30).
    """
    before = np.unique(det_labels[det_labels >= 0]).size
    det_labels = join_continuations(out, det, det_labels, gap, settings.continue_overlap)
    if gap and np.unique(det_labels[det_labels >= 0]).size < before:
        stack, classes, pixel_nm = inputs.stack, inputs.classes, inputs.pixel_nm
        det, det_labels = fill_gaps(out, stack, classes, pixel_nm, det, det_labels, gap)
    return det, det_labels


def _link(out: Path, request: RunRequest, inputs: _Inputs, progress: ProgressFn):
    """Algorithm 4 and its refinements: the detections, their organelle labels (-1: none)
    and the IoU each class was followed at (empty without following)."""
    stack, classes, pixel_nm = inputs.stack, inputs.classes, inputs.pixel_nm
    settings, n_slices = request.settings, stack.shape[0]
    clear_filled(out)
    det = gather_detections(out, n_slices)
    labels0 = link_boxes(
        det["slice"],
        det["cls"],
        det["xywh"],
        settings.layers_to_scan,
        settings.tolerance,
        settings.min_tolerance_px,
    )
    min_span = settings.min_span(stack.voxel_size_nm[0])
    if settings.separation > 0 and len(labels0):
        step = sub(progress, 0.0, 0.2)
        det, labels0 = split_spanning(
            out, stack, classes, det, labels0, settings.separation, min_span, step
        )
    det_labels = labels0
    if settings.merge_bridges and len(labels0):
        det_labels = merge_bridges(out, stack, det, labels0, settings, sub(progress, 0.2, 0.6))
    gap = settings.gap_slices(stack.voxel_size_nm[0])
    det_labels = join_continuations(out, det, det_labels, gap, settings.continue_overlap)
    det_labels = drop_small(det_labels, det, min_span, n_slices)
    confirm = getattr(inputs.source, "confirm_thresholds", None)
    if confirm is not None:
        det_labels = drop_unconfirmed(det_labels, det, confirm, settings.confirm_boxes)
    if settings.short_joins_one and len(det_labels):
        det_labels = drop_spanning(det_labels, det)
    if gap and len(det_labels):
        det, det_labels = fill_gaps(out, stack, classes, pixel_nm, det, det_labels, gap)
    followed = {}
    if settings.follow_iou > 0 and len(det_labels):
        det, det_labels, followed = follow(
            out, stack, classes, pixel_nm, det, det_labels, settings, sub(progress, 0.6, 0.9)
        )
        det, det_labels = _rejoin(out, inputs, det, det_labels, settings, gap)
    if settings.join_touching > 0 and len(det_labels):
        step = sub(progress, 0.9, 1.0)
        det_labels = join_touching(out, stack, det, det_labels, settings.join_touching, step)
    return det, det_labels, followed


def run_pipeline(request: RunRequest, progress: ProgressFn | None = None) -> RunSummary:
    """Run the bpy-free pipeline and write a run folder.

    The inputs are opened and checked first; then the run folder is locked
    (a second run on it fails at once) and marked running. A run that fails
    records ``status: failed`` and the error in ``run.json``; ``--resume``
    continues it once the input is fixed, and a stopped run continues too.

    Parameters
    ----------
    request : RunRequest
        Input, box source, run folder and options.
    progress : callable, optional
        ``progress(fraction, message)``; may raise ``Cancelled``.

    Returns
    -------
    RunSummary
    """
    t_start = time.perf_counter()
    progress = progress or silent
    out = Path(request.out)
    inputs = _open_inputs(request, progress)
    created = not out.exists()
    writable_folder(out, "choose another --out folder.")
    try:
        with FolderLock(out):
            info = _start(out, request, inputs)
            try:
                return _run_stages(out, request, inputs, info, progress, t_start)
            except (Cancelled, KeyboardInterrupt):
                raise  # stopped, not failed: run.json stays "running" and --resume continues
            except BaseException as exc:
                message = exc.message if isinstance(exc, FamousError) else repr(exc)
                write_json(out / rf.RUN_JSON, {**info, "status": "failed", "error": message})
                raise
    finally:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a run refused before it wrote anything leaves no folder behind


def _run_stages(
    out: Path, request: RunRequest, inputs: _Inputs, info: dict, progress: ProgressFn, t_start
) -> RunSummary:
    """The three stages of a started run, then its ``run.json`` marked complete."""
    stack, classes = inputs.stack, inputs.classes
    timings = info["timings_s"]

    # 1. per-slice stage (cached)
    t0 = time.perf_counter()
    n_slices = stack.shape[0]
    todo = [k for k in range(n_slices) if not cache_path(out, k).is_file()]
    run_slices(
        stack,
        inputs.source,
        classes,
        inputs.pixel_nm,
        todo,
        out,
        request.workers,
        request.dask_scheduler,
        sub(progress, 0.05, 0.7),
    )
    timings["slices"] = time.perf_counter() - t0
    timings["slices_computed"] = len(todo)

    # 2. linking
    t0 = time.perf_counter()
    progress(0.7, "linking slices")
    det, det_labels, followed = _link(out, request, inputs, sub(progress, 0.7, 0.8))
    timings["linking"] = time.perf_counter() - t0

    # 3. point clouds, organelle table, labels
    t0 = time.perf_counter()
    organelles, store = assemble(
        out,
        stack,
        classes,
        det,
        det_labels,
        info["labels"],
        request.settings,
        sub(progress, 0.8, 0.97),
    )
    timings["assemble"] = time.perf_counter() - t0
    progress(0.97, "writing the run folder")
    outliers = write_outputs(out, classes, det, det_labels, organelles, store, request.settings)

    counts = {name: 0 for name in classes.names}
    for o in organelles:
        counts[o["class"]] += 1
    seconds = time.perf_counter() - t_start
    info.update(
        status="complete",
        input=stack.describe(),
        counts=counts,
        n_detections=int(len(det_labels)),
        outliers=outliers,
        follow_iou_by_class=followed,
        timings_s={**timings, "total": seconds},
    )
    info.pop("error", None)
    write_json(out / rf.RUN_JSON, info)
    progress(1.0, "done")
    return RunSummary(
        out,
        counts,
        int(len(det_labels)),
        seconds,
        info["timings_s"],
        inputs.calibration,
        list(stack.notes),
    )
