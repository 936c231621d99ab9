"""The bpy-free pipeline: stack + boxes -> linked organelles, point clouds, labels.

Stages (each in its own module):

1. per slice (:func:`process_slice`): boxes from the box source, pixels from
   :mod:`.extract`. A pure function of (slice, boxes, classes, pixel size);
   its result is cached in ``RUN/cache`` so a killed run resumes where it
   stopped. It runs in this process, in local worker processes
   (``workers > 1``) or on a running ``dask.distributed`` cluster.
2. linking (:mod:`.link`): Algorithm 4, then the optional bridge merge.
3. point clouds (:mod:`.pointcloud`) with per-class outlier removal, the
   organelle table and, on request, ``labels.tif``, all written to the run
   folder (:mod:`.runfolder`).
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from . import runfolder as rf
from .boxes import Box, YoloTxtBoxes, boxes_from_array
from .classes import ClassConfig, load_classes
from .errors import FamousError
from .extract import SliceResult, extract_box, mask_iou, segment_slice
from .link import link_boxes, merge_labels, overlap_pairs
from .pointcloud import PointStore, clean_grouped, mask_points, to_world
from .progress import ProgressFn, silent, sub
from .stack import Stack, open_stack
from .version import __version__


@dataclass(frozen=True)
class RunSettings:
    """Options of the linking and point-cloud stages (recorded in run.json).

    An organelle that does not touch the first or last slice is kept when it
    spans at least ``min_slices`` slices and ``min_depth_nm`` in z (see
    :meth:`min_span`). Where a kept organelle skips slices, up to
    ``fill_gaps_nm`` of them in z get a box interpolated between its boxes
    on either side (see :meth:`gap_slices`). A kept organelle is then
    followed into the slices beyond its ends (and across longer gaps) where
    the detector missed it, while the mask found there overlaps the one
    beside it by ``follow_iou`` (0: off; see :func:`_follow`).
    """

    layers_to_scan: int = 50
    tolerance: float = 0.2
    min_tolerance_px: float = 2.5
    merge_bridges: bool = True
    merge_min_overlap: float = 0.3
    min_slices: int = 3
    min_depth_nm: float = 60.0
    confirm_boxes: int = 2
    fill_gaps_nm: float = 100.0
    follow_iou: float = 0.5
    points: str = "outline"
    outlier_k: int = 8
    outlier_std: float = 2.0

    def min_span(self, z_nm: float) -> int:
        """Fewest slices an organelle must span at slice thickness ``z_nm``.

        The organelles FAMOUS segments are at least ~100 nm across, while a
        detector's false positives flicker over a few slices whatever the
        slice thickness: at 10 nm slices 3 were not enough (on ten unseen
        phantoms most false objects spanned 3-5 slices, the thinnest real
        organelle 19), at 40 nm 3 slices are already 120 nm.
        """
        depth = math.ceil(self.min_depth_nm / z_nm - 1e-9) if z_nm > 0 else 0
        return max(self.min_slices, depth)

    def gap_slices(self, z_nm: float) -> int:
        """Most slices in a row an organelle may skip and get filled in.

        Algorithm 4 links an organelle across slices where the detector
        missed it, but those slices keep no pixels of it, so the organelle
        comes out with a hole or cut in two. An organelle does not vanish for
        a few slices: on two of fifteen unseen phantoms such gaps (8 slices in
        one, 1-3 slices in the other) kept an organelle's 3-D IoU just under
        0.5.
        """
        return int(self.fill_gaps_nm / z_nm + 1e-9) if z_nm > 0 else 0


@dataclass
class RunSummary:
    """What a finished run produced."""

    path: Path
    counts: dict[str, int]
    n_detections: int
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    calibration: dict | None = None

    def table(self) -> str:
        """A short per-class summary for the terminal."""
        width = max([len(c) for c in self.counts] + [5])
        lines = [f"{'class':<{width}}  organelles"]
        lines += [f"{c:<{width}}  {n:>10}" for c, n in self.counts.items()]
        lines.append(f"{self.n_detections} detections, {self.seconds:.1f} s -> {self.path}")
        return "\n".join(lines)


def _versions() -> dict:
    import cv2
    import scipy
    import tifffile

    return {
        "famous": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "scipy": scipy.__version__,
        "tifffile": tifffile.__version__,
    }


def make_box_source(
    stack: Stack,
    classes: ClassConfig,
    boxes: str | Path | None = None,
    model: str | Path | None = None,
    backend: str = "auto",
    flip_views: int | None = None,
    zoom_pass: bool = True,
):
    """The box source for a run: per-slice YOLO files or the YOLOv4 detector.

    Everything is checked here, before any slice is processed. ``flip_views``
    (1, 2 or 4) overrides the model's test-time views; ``zoom_pass`` False
    turns off the model's enlarged pass for small objects.
    """
    if (boxes is None) == (model is None):
        raise FamousError(
            "give exactly one source of boxes.",
            fix="use --boxes DIR (YOLO txt per slice) or --model MODEL_DIR (trained detector).",
        )
    if boxes is not None:
        source = YoloTxtBoxes(boxes, stack.shape[1:], len(classes), n_slices=stack.shape[0])
        source.validate()
        return source
    from .detect import FLIP_VIEWS, load_detector

    detector = load_detector(model, classes, backend=backend)
    if flip_views is not None:
        if flip_views not in FLIP_VIEWS:
            raise FamousError(f"flip_views {flip_views!r}: use 1 (off), 2 or 4 views.")
        detector.settings = replace(detector.settings, flip_views=flip_views)
    if not zoom_pass:
        detector.settings = replace(detector.settings, zoom_thresholds={})
    return detector


def process_slice(stack: Stack, source, classes: ClassConfig, pixel_nm: float, k: int) -> dict:
    """The per-slice stage: boxes of slice ``k`` and their masks, as arrays."""
    if getattr(source, "neighbours", False):
        seen = stack.read_with_neighbours(k)
        image = np.ascontiguousarray(seen[..., 1])
    else:
        seen = image = stack.read(k)
    result = segment_slice(image, source(k, seen), classes, pixel_nm)
    return result.to_arrays()


def _cache_path(out: Path, k: int) -> Path:
    return out / rf.CACHE_DIR / f"slice_{k:05d}.npz"


def _filled_path(out: Path, k: int) -> Path:
    return out / rf.CACHE_DIR / f"filled_{k:05d}.npz"


def _load_slice(out: Path, k: int) -> SliceResult:
    """Slice ``k``'s boxes and masks, with the boxes filled into its gaps where there are any."""
    filled = _filled_path(out, k)
    with np.load(filled if filled.is_file() else _cache_path(out, k)) as z:
        return SliceResult.from_arrays(z)


def _run_slices(stack, source, classes, pixel_nm, todo, out, workers, dask_scheduler, progress):
    """Compute and cache the slices in ``todo`` with the chosen executor."""
    total = max(len(todo), 1)

    def store(k, arrays, done):
        rf.save_npz(_cache_path(out, k), **arrays)
        progress(done / total, f"slice {k + 1}/{stack.shape[0]}")

    if dask_scheduler:
        from distributed import Client, as_completed

        with Client(dask_scheduler) as client:
            remote = client.scatter([stack, source, classes], broadcast=True)
            futures = {
                client.submit(process_slice, *remote, pixel_nm, k, pure=False): k for k in todo
            }
            for done, fut in enumerate(as_completed(futures), 1):
                store(futures[fut], fut.result(), done)
                fut.release()
        return
    if workers <= 1:
        for done, k in enumerate(todo, 1):
            store(k, process_slice(stack, source, classes, pixel_nm, k), done)
        return
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # "spawn": forked children of a process that holds OpenCV or Blender threads
    # can deadlock; spawn starts clean interpreters.
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        pending, queue, done = {}, list(todo), 0
        while queue or pending:
            while queue and len(pending) < 2 * workers:
                k = queue.pop(0)
                pending[pool.submit(process_slice, stack, source, classes, pixel_nm, k)] = k
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                done += 1
                store(pending.pop(fut), fut.result(), done)


def _paint(shape, result: SliceResult, det_labels: np.ndarray) -> np.ndarray:
    """Label image of a slice: ``det_labels[i] + 1`` on detection i's mask.

    Larger masks are painted first so that a small organelle inside a large
    box (a vesicle on the nucleus) stays visible.
    """
    img = np.zeros(shape, np.int32)
    areas = result.areas()
    for i in np.argsort(-areas, kind="stable"):
        if det_labels[i] < 0:
            continue
        x0, y0, x1, y1 = result.bounds[i]
        view = img[y0:y1, x0:x1]
        view[result.mask(i)] = det_labels[i] + 1
    return img


def _fingerprint(stack: Stack, classes: ClassConfig, source) -> dict:
    """What the cached per-slice results depend on; a resume must match it."""
    describe = getattr(source, "describe", lambda: {"kind": type(source).__name__})
    return {
        "input": str(Path(stack.path).resolve()),
        "shape": list(stack.shape),
        "voxel_size_nm": list(stack.voxel_size_nm),
        "classes": classes.to_dict(),
        "boxes": describe(),
    }


def _prepare_out(out: Path, resume: bool, fingerprint: dict) -> None:
    info_path = out / rf.RUN_JSON
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        if not resume:
            state = "a finished run" if info.get("status") == "complete" else "an interrupted run"
            raise FamousError(
                f"already holds {state}; results are never overwritten.",
                out,
                "add --resume to continue it, or choose another --out folder.",
            )
        if info.get("fingerprint") != json.loads(json.dumps(fingerprint)):
            raise FamousError(
                "holds a run made with other input, classes or boxes, so it cannot be resumed.",
                out,
                "choose another --out folder for this input.",
            )
    elif out.exists() and any(out.iterdir()):
        raise FamousError(
            "exists, is not empty and is not a FAMOUS run folder.",
            out,
            "choose a new or empty --out folder.",
        )
    out.mkdir(parents=True, exist_ok=True)


def run_pipeline(
    stack: str | Path | Stack,
    classes: str | Path | ClassConfig,
    out: str | Path,
    *,
    boxes: str | Path | None = None,
    model: str | Path | None = None,
    backend: str = "auto",
    flip_views: int | None = None,
    zoom_pass: bool = True,
    voxel_size_nm: tuple[float, float, float] | None = None,
    labels: bool = False,
    workers: int = 1,
    dask_scheduler: str | None = None,
    resume: bool = False,
    annotations: str | Path | None = None,
    settings: RunSettings | None = None,
    progress: ProgressFn | None = None,
) -> RunSummary:
    """Run the bpy-free pipeline and write a run folder.

    Parameters
    ----------
    stack : path or Stack
        The image stack (see :func:`~famous_addon.core.stack.open_stack`).
    classes : path or ClassConfig
        Class TOML, ``obj.names`` or preset name.
    out : path
        Run folder to create (or to resume).
    boxes, model : path
        Exactly one: a folder of per-slice YOLO txt files, or a detector model folder.
    backend : {"auto", "cpu", "cuda", "cuda_fp16"}
        DNN backend for ``model``.
    flip_views : {1, 2, 4}, optional
        Test-time mirrored views for ``model``; None: the model's own setting.
    zoom_pass : bool
        False turns off the ``model``'s enlarged pass for small objects
        (:attr:`~.detect.DetectSettings.zoom_thresholds`), for about half the
        detection time of a model that has one.
    voxel_size_nm : (z, y, x), optional
        Overrides the stack's metadata.
    labels : bool
        Also write ``labels.tif``.
    workers : int
        Local processes for the per-slice stage.
    dask_scheduler : str, optional
        Address of a running ``dask.distributed`` scheduler for the per-slice stage.
    resume : bool
        Continue a run in ``out`` that was interrupted (cached slices are reused).
    annotations : path, optional
        A YOLO_mark folder of annotated slices (boxes only): each class's
        extraction recipe is then chosen on them (:mod:`.calibrate`) and the
        choice reported in run.json.
    settings : RunSettings, optional
        Linking and point-cloud options.
    progress : callable, optional
        ``progress(fraction, message)``; may raise ``Cancelled``.

    Returns
    -------
    RunSummary
    """
    t_start = time.perf_counter()
    progress = progress or silent
    settings = settings or RunSettings()
    out = Path(out)
    if not isinstance(stack, Stack):
        stack = open_stack(stack, voxel_size_nm)
    elif voxel_size_nm is not None:
        stack = open_stack(stack.path, voxel_size_nm)
    vs = stack.require_voxel_size()
    if not isinstance(classes, ClassConfig):
        classes = load_classes(classes)
    source = make_box_source(stack, classes, boxes, model, backend, flip_views, zoom_pass)
    pixel_nm = float(np.sqrt(vs[1] * vs[2]))
    calibration = None
    if annotations is not None:
        from .annotations import read_yolo_mark
        from .calibrate import calibrate

        images, marked = read_yolo_mark(annotations, len(classes), load_images=True)
        classes, calibration = calibrate(
            images, marked, classes, pixel_nm, progress=sub(progress, 0, 0.05)
        )
    fingerprint = _fingerprint(stack, classes, source)
    _prepare_out(out, resume, fingerprint)
    if stack.dtype != np.uint8 and stack.window is None:
        stack.window = stack.estimate_window()
    info = {
        "status": "running",
        "fingerprint": fingerprint,
        "versions": _versions(),
        "input": stack.describe(),
        "classes": classes.to_dict(),
        "class_notes": list(classes.notes),
        "boxes": fingerprint["boxes"],
        "settings": asdict(settings),
        "labels": labels,
        "calibration": calibration,
        "timings_s": {},
    }
    rf.write_json(out / rf.RUN_JSON, info)
    timings = info["timings_s"]

    # 1. per-slice stage (cached)
    t0 = time.perf_counter()
    n_slices = stack.shape[0]
    todo = [k for k in range(n_slices) if not _cache_path(out, k).is_file()]
    _run_slices(
        stack,
        source,
        classes,
        pixel_nm,
        todo,
        out,
        workers,
        dask_scheduler,
        sub(progress, 0.05, 0.7),
    )
    timings["slices"] = time.perf_counter() - t0
    timings["slices_computed"] = len(todo)

    # 2. linking
    t0 = time.perf_counter()
    progress(0.7, "linking slices")
    for path in (out / rf.CACHE_DIR).glob("filled_*.npz"):
        path.unlink()  # an earlier run's: filled from its own linking
    det = _gather_detections(out, n_slices)
    labels0 = link_boxes(
        det["slice"],
        det["cls"],
        det["xywh"],
        settings.layers_to_scan,
        settings.tolerance,
        settings.min_tolerance_px,
    )
    det_labels = labels0
    if settings.merge_bridges and len(labels0):
        det_labels = _merge_bridges(out, stack, det, labels0, settings, sub(progress, 0.72, 0.76))
    min_span = settings.min_span(stack.voxel_size_nm[0])
    det_labels = _drop_small(det_labels, det, min_span, n_slices)
    confirm = getattr(source, "confirm_thresholds", None)
    if confirm is not None:
        det_labels = _drop_unconfirmed(det_labels, det, confirm, settings.confirm_boxes)
    gap = settings.gap_slices(stack.voxel_size_nm[0])
    if gap and len(det_labels):
        det, det_labels = _fill_gaps(out, stack, classes, pixel_nm, det, det_labels, gap)
    if settings.follow_iou > 0 and len(det_labels):
        det, det_labels = _follow(
            out, stack, classes, pixel_nm, det, det_labels, settings, sub(progress, 0.76, 0.8)
        )
    timings["linking"] = time.perf_counter() - t0

    # 3. point clouds, organelle table, labels
    t0 = time.perf_counter()
    organelles, store = _assemble(
        out, stack, classes, det, det_labels, labels, settings, sub(progress, 0.8, 0.97)
    )
    timings["assemble"] = time.perf_counter() - t0

    progress(0.97, "writing the run folder")
    outlier_stats = _write_outputs(out, classes, det, det_labels, organelles, store, settings)
    counts = {name: 0 for name in classes.names}
    for o in organelles:
        counts[o["class"]] += 1
    seconds = time.perf_counter() - t_start
    info.update(
        status="complete",
        input=stack.describe(),
        counts=counts,
        n_detections=int(len(det_labels)),
        outliers=outlier_stats,
        timings_s={**timings, "total": seconds},
    )
    rf.write_json(out / rf.RUN_JSON, info)
    progress(1.0, "done")
    return RunSummary(out, counts, int(len(det_labels)), seconds, info["timings_s"], calibration)


def _gather_detections(out: Path, n_slices: int) -> dict:
    """Boxes and mask areas of every cached slice (masks stay on disk)."""
    results = (_load_slice(out, k) for k in range(n_slices))
    return _detections([(r.boxes, r.areas()) for r in results])


def _detections(per_slice: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Detections as flat arrays from each slice's ``(n, 6)`` boxes and mask areas."""
    n_slices = len(per_slice)
    sl = [np.full(len(b), k) for k, (b, _) in enumerate(per_slice) if len(b)]
    boxes = [b for b, _ in per_slice if len(b)]
    areas = [a for b, a in per_slice if len(b)]
    if not sl:
        return {
            "slice": np.zeros(0, np.int64),
            "cls": np.zeros(0, np.int64),
            "xywh": np.zeros((0, 4)),
            "score": np.zeros(0),
            "area": np.zeros(0, np.int64),
            "start": np.zeros(n_slices + 1, np.int64),
        }
    b = np.concatenate(boxes)
    s = np.concatenate(sl)
    start = np.searchsorted(s, np.arange(n_slices + 1))
    return {
        "slice": s,
        "cls": b[:, 0].astype(np.int64),
        "xywh": b[:, 1:5],
        "score": b[:, 5],
        "area": np.concatenate(areas),
        "start": start,
    }


def _fill_gaps(out, stack, classes, pixel_nm, det, det_labels, max_gap):
    """Boxes, with their masks, on the slices (``max_gap`` at most in a row) an organelle skips.

    Each filled box is interpolated linearly in z between the organelle's
    boxes (their union) on the slices either side, with score 0, and
    extracted with the slice's other boxes so that no pixel goes to two
    organelles. Affected slices are written beside the cache
    (``filled_NNNNN.npz``), which stays as the detector left it. Returns the
    detections and their organelle labels with the filled boxes added.
    """
    added: dict[int, list[tuple[int, Box]]] = {}
    xyxy = np.column_stack([det["xywh"][:, :2], det["xywh"][:, :2] + det["xywh"][:, 2:]])
    kept = np.flatnonzero(det_labels >= 0)
    if not len(kept):
        return det, det_labels
    by_organelle = kept[np.argsort(det_labels[kept], kind="stable")]
    ends = np.flatnonzero(np.diff(det_labels[by_organelle])) + 1
    for idx in np.split(by_organelle, ends):
        o = det_labels[idx[0]]
        zs, boxes = det["slice"][idx], xyxy[idx]
        cls = int(det["cls"][idx[0]])
        for a, b in zip(np.unique(zs)[:-1], np.unique(zs)[1:]):
            if not 1 < b - a <= max_gap + 1:
                continue
            lo, hi = _union(boxes[zs == a]), _union(boxes[zs == b])
            for k in range(a + 1, b):
                x0, y0, x1, y1 = lo + (hi - lo) * (k - a) / (b - a)
                added.setdefault(int(k), []).append(
                    (int(o), Box(cls, x0, y0, x1 - x0, y1 - y0, 0.0))
                )
    # only the filled slices are read and extracted again; the others keep their rows
    changed = {}
    for k, items in added.items():
        boxes = boxes_from_array(_load_slice(out, k).boxes)
        result = segment_slice(stack.read(k), boxes + [b for _, b in items], classes, pixel_nm)
        rows = slice(det["start"][k], det["start"][k + 1])
        changed[k] = (result, np.concatenate([det_labels[rows], [o for o, _ in items]]))
    return _with_slices(out, det, det_labels, changed)


def _with_slices(out, det, det_labels, changed: dict[int, tuple[SliceResult, np.ndarray]]):
    """Detections and organelle labels with the slices in ``changed`` swapped in.

    ``changed`` maps a slice to its new result and its detections' labels;
    each result is written as ``filled_NNNNN.npz`` beside the cache, which
    stays as the detector left it.
    """
    if not changed:
        return det, det_labels
    rows = [slice(det["start"][k], det["start"][k + 1]) for k in range(len(det["start"]) - 1)]
    boxes_of = np.column_stack([det["cls"], det["xywh"], det["score"]])
    per_slice = [(boxes_of[r], det["area"][r]) for r in rows]
    labels = [det_labels[r] for r in rows]
    for k, (result, slice_labels) in changed.items():
        rf.save_npz(_filled_path(out, k), **result.to_arrays())
        per_slice[k] = (result.boxes, result.areas())
        labels[k] = slice_labels
    return _detections(per_slice), np.concatenate(labels).astype(np.int64)


# A followed organelle's box: its mask's box on the slice beside, grown by this
# fraction of its longer side so that an organelle that widens is not cut off.
FOLLOW_GROW = 0.25
# ... and a mask outside this range of areas relative to the one beside ends it:
# a cap shrinks, and a box grown step by step must not take in a neighbour.
FOLLOW_AREA = (0.5, 1.5)


def _follow(out, stack, classes, pixel_nm, det, det_labels, settings, progress):
    """Follow each organelle into the slices where the detector missed it.

    A detector misses an organelle on some slices (a thin mitochondrion
    turning diagonal, its cap at the stack's end), which cuts it short or in
    two and keeps its 3-D IoU under 0.5 (on CDeep3M's validation stack most
    missed mitochondria were found on half their slices). Sweeping up, then
    down the stack, an organelle on slice k - 1 (k + 1) but not on slice k is
    looked for in its box from there, grown by :data:`FOLLOW_GROW`, with its
    class's recipe; the mask, less pixels another organelle has, is kept
    (as a box of score 0) when its IoU with the organelle's mask beside is at
    least ``settings.follow_iou`` and its area within :data:`FOLLOW_AREA`
    of it, and the sweep goes on from it. An organelle followed into another
    is joined to it as a bridge is (``settings.merge_bridges``). Changed
    slices are written as ``filled_NNNNN.npz`` (see :func:`_fill_gaps`).
    Returns the detections and their organelle labels with the followed
    boxes added.
    """
    n, shape = stack.shape[0], stack.shape[1:]
    cls_of = np.zeros(int(det_labels.max()) + 1, np.int64)
    cls_of[det_labels[det_labels >= 0]] = det["cls"][det_labels >= 0]
    rows = [slice(det["start"][k], det["start"][k + 1]) for k in range(n)]
    # only the slices that change are held, so memory does not grow with the stack
    changed: dict[int, tuple[SliceResult, np.ndarray]] = {}
    pairs = []

    def state(k):
        return changed.get(k) or (_load_slice(out, k), det_labels[rows[k]])

    for order in (range(1, n), range(n - 2, -1, -1)):
        beside = _paint(shape, *state(order.start - order.step)) if n > 1 else None
        for k in order:
            result, labels = state(k)
            here = _paint(shape, result, labels)
            # bincount, not np.unique: a sort per slice was most of this stage's time
            missing = np.flatnonzero(_present(beside, len(cls_of)) & ~_present(here, len(cls_of)))
            image = stack.read(k) if len(missing) else None
            where = ndimage.find_objects(beside, len(cls_of)) if len(missing) else []
            extra, followed = [], []
            for o in missing:
                (y0, y1), (x0, x1) = ((s.start, s.stop) for s in where[o - 1])
                cls = int(cls_of[o - 1])
                hit = _follow_one(
                    image,
                    beside[y0:y1, x0:x1] == o,
                    (x0, y0, x1, y1),
                    here,
                    cls,
                    classes[cls].extract,
                    pixel_nm,
                    settings.follow_iou,
                )
                if hit is None:
                    continue
                _, (bx0, by0, bx1, by1), mask = hit
                here[by0:by1, bx0:bx1][mask] = o
                extra.append(hit)
                followed.append(o - 1)
            if extra:
                changed[k] = (_appended(result, extra), np.append(labels, followed))
            if order.step == -1 and settings.merge_bridges:
                # the down sweep meets each slice pair after both have their last additions
                p = overlap_pairs(beside, here, settings.merge_min_overlap)
                pairs.append(p[cls_of[p[:, 0]] == cls_of[p[:, 1]]])
            beside = here
            done = k if order.step == 1 else 2 * n - 2 - k
            progress(done / max(2 * n - 2, 1), "following organelles past missed slices")
    det, det_labels = _with_slices(out, det, det_labels, changed)
    if pairs:
        # not in place: with no slice changed, det_labels is still the caller's array
        joined = merge_labels(np.arange(len(cls_of)), np.concatenate(pairs))
        det_labels = np.where(det_labels >= 0, joined[det_labels], det_labels)
    return det, det_labels


def _present(painted: np.ndarray, m: int) -> np.ndarray:
    """Which of organelles 1..m a painted slice holds: bool, index 0 (background) False."""
    counts = np.bincount(painted.ravel(), minlength=m + 1) > 0
    counts[0] = False
    return counts


def _follow_one(image, prev, bounds, here, cls, recipe, pixel_nm, min_iou):
    """An organelle (mask ``prev`` in ``bounds`` of the slice beside) looked for on ``image``.

    ``here`` is the slice's painted labels. Returns the organelle's box,
    clipped bounds and mask there, or None where it is not found.
    """
    x0, y0, x1, y1 = bounds
    g = FOLLOW_GROW * max(x1 - x0, y1 - y0)
    box = Box(cls, x0 - g, y0 - g, x1 - x0 + 2 * g, y1 - y0 + 2 * g, 0.0)
    found, mask = extract_box(image, box, recipe, pixel_nm)
    fx0, fy0, fx1, fy1 = found
    mask &= here[fy0:fy1, fx0:fx1] == 0
    lo, hi = FOLLOW_AREA
    before = np.count_nonzero(prev)
    if not lo * before <= np.count_nonzero(mask) <= hi * before:
        return None
    if mask_iou(mask, found, prev, bounds) < min_iou:
        return None
    return box, found, mask


def _appended(result: SliceResult, extra: list[tuple[Box, tuple, np.ndarray]]) -> SliceResult:
    """``result`` with more detections: (box, clipped bounds, mask) each."""
    return SliceResult.of(
        boxes_from_array(result.boxes) + [b for b, _, _ in extra],
        [*result.bounds.reshape(-1, 4).tolist(), *(bnd for _, bnd, _ in extra)],
        [result.mask(i) for i in range(len(result))] + [m for _, _, m in extra],
    )


def _union(xyxy: np.ndarray) -> np.ndarray:
    """The box around ``(n, 4)`` x0 y0 x1 y1 boxes."""
    return np.concatenate([xyxy[:, :2].min(axis=0), xyxy[:, 2:].max(axis=0)])


def _iter_slices(out: Path, det: dict, n_slices: int) -> Iterator[tuple[int, SliceResult, slice]]:
    for k in range(n_slices):
        yield k, _load_slice(out, k), slice(det["start"][k], det["start"][k + 1])


def _merge_bridges(out, stack, det, labels0, settings, progress) -> np.ndarray:
    """Join same-class organelles whose masks overlap on adjacent slices."""
    label_class = np.zeros(labels0.max() + 1, np.int64)
    label_class[labels0] = det["cls"]
    pairs, prev = [], None
    n = stack.shape[0]
    for k, result, sel in _iter_slices(out, det, n):
        cur = _paint(stack.shape[1:], result, labels0[sel])
        if prev is not None:
            p = overlap_pairs(prev, cur, settings.merge_min_overlap)
            pairs.append(p[label_class[p[:, 0]] == label_class[p[:, 1]]])
        prev = cur
        progress((k + 1) / n, "joining bridged organelles")
    pairs = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)
    return merge_labels(labels0, pairs)


def _drop_small(det_labels: np.ndarray, det: dict, min_slices: int, n_slices: int) -> np.ndarray:
    """Remove organelles with empty masks or on fewer than ``min_slices`` slices.

    A detector's false positives are mostly flashes on one or two slices,
    while an organelle spans many. Organelles on the first or last slice are
    kept: the stack cuts them, so a short extent is expected there. Renumbers
    the rest 0..m-1.
    """
    if not len(det_labels):
        return det_labels
    total = np.bincount(det_labels, weights=det["area"])
    has_mask = det["area"] > 0
    lab, sl = det_labels[has_mask], det["slice"][has_mask]
    pairs = np.unique(np.column_stack([lab, sl]), axis=0)
    spans = np.bincount(pairs[:, 0], minlength=len(total))
    at_edge = np.zeros(len(total), bool)
    at_edge[lab[(sl == 0) | (sl == n_slices - 1)]] = True
    keep = (total > 0) & ((spans >= min_slices) | at_edge)
    return _renumbered(det_labels, keep)


def _renumbered(det_labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Labels with the kept organelles numbered 0..m-1 and the others (and -1) as -1."""
    new = np.where(keep, np.cumsum(keep) - 1, -1)
    return np.where(det_labels >= 0, new[det_labels], -1)


def _drop_unconfirmed(
    det_labels: np.ndarray, det: dict, confirm: list[float], n_boxes: int
) -> np.ndarray:
    """Remove organelles the detector is never confident about (hysteresis).

    Boxes above the detection threshold continue an organelle, but an
    organelle is kept only where at least ``n_boxes`` of its boxes score at
    least its class's ``confirm`` threshold. False positives (vesicles and
    noise taken for small organelles) flicker at middling scores over a few
    slices; a real organelle near its equator is detected confidently on
    several. Even a confident box alone is no confirmation: organelles on the
    stack's first or last slice escape the minimum span (:func:`_drop_small`),
    and a one-slice flash there was the demo's last false lysosome.
    Renumbers the rest 0..m-1.
    """
    ok = det_labels >= 0
    if not ok.any():
        return det_labels
    lab = det_labels[ok]
    sure = det["score"][ok] >= np.asarray(confirm, np.float64)[det["cls"][ok]]
    keep = np.bincount(lab, weights=sure) >= n_boxes
    return _renumbered(det_labels, keep)


def _assemble(out, stack, classes, det, det_labels, write_labels, settings, progress):
    """One pass over the cached slices: organelle stats, point clouds, labels.tif.

    Point clouds are streamed to disk (:class:`~.pointcloud.PointStore`), so
    memory does not grow with the number of slices.
    """
    n_slices, rows, cols = stack.shape
    m = int(det_labels.max()) + 1 if len(det_labels) else 0
    voxels = np.zeros(m + 1, np.int64)
    zr = np.full((m, 2), [n_slices, -1], np.int64)
    yr = np.full((m, 2), [rows, -1], np.int64)
    xr = np.full((m, 2), [cols, -1], np.int64)
    n_sl = np.zeros(m, np.int64)
    organelle_class = np.zeros(m, np.int64)
    valid = det_labels >= 0
    organelle_class[det_labels[valid]] = det["cls"][valid]
    store = PointStore(out / rf.CACHE_DIR)
    vs = stack.voxel_size_nm

    def label_slices():
        for k, result, sel in _iter_slices(out, det, n_slices):
            lab = det_labels[sel]
            img = _paint((rows, cols), result, lab)
            voxels[:] += np.bincount(img.ravel(), minlength=m + 1)
            on_slice = set()
            for i, organelle in enumerate(lab):
                mask = result.mask(i)
                if organelle < 0 or not mask.any():
                    continue
                x0, y0, _, _ = result.bounds[i]
                rr = np.flatnonzero(mask.any(axis=1))
                cc = np.flatnonzero(mask.any(axis=0))
                zr[organelle] = min(zr[organelle, 0], k), max(zr[organelle, 1], k)
                yr[organelle] = (
                    min(yr[organelle, 0], y0 + rr[0]),
                    max(yr[organelle, 1], y0 + rr[-1]),
                )
                xr[organelle] = (
                    min(xr[organelle, 0], x0 + cc[0]),
                    max(xr[organelle, 1], x0 + cc[-1]),
                )
                on_slice.add(organelle)
                p, n = mask_points(mask, x0, y0, settings.points)
                store.add(organelle, to_world(p, k, vs), np.column_stack([n, np.zeros(len(n))]))
            n_sl[list(on_slice)] += 1
            progress((k + 1) / n_slices, f"assembling slice {k + 1}/{n_slices}")
            yield img

    if write_labels:
        _write_labels(out / rf.LABELS_TIF, label_slices(), stack.shape, vs, m)
    else:
        for _ in label_slices():
            pass

    voxel_um3 = float(np.prod(vs)) / 1e9
    organelles = [
        {
            "id": i + 1,
            "class": classes[int(organelle_class[i])].name,
            "class_index": int(organelle_class[i]),
            "z_min": int(zr[i, 0]),
            "z_max": int(zr[i, 1]),
            "n_slices": int(n_sl[i]),
            "y_min": int(yr[i, 0]),
            "y_max": int(yr[i, 1]),
            "x_min": int(xr[i, 0]),
            "x_max": int(xr[i, 1]),
            "voxels": int(voxels[i + 1]),
            "volume_um3": round(voxels[i + 1] * voxel_um3, 6),
        }
        for i in range(m)
    ]
    return organelles, store


def _write_labels(path: Path, slices, shape, vs, m: int) -> None:
    """Stream label slices into an ImageJ TIFF (uint16, or uint32 beyond 65535 ids)."""
    import tifffile

    if m < 2**16:
        dtype, imagej = np.uint16, True
    else:
        # ImageJ TIFFs hold no 32-bit integers; such a file opens in napari/Amira.
        dtype, imagej = np.uint32, False
    dz, py, px = (v / 1000.0 for v in vs)
    with rf.atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp,
            (s.astype(dtype) for s in slices),
            shape=shape,
            dtype=dtype,
            imagej=imagej,
            resolution=(1.0 / px, 1.0 / py),
            metadata={"spacing": dz, "unit": "um", "axes": "ZYX"} if imagej else None,
        )


def _select(records: np.ndarray, keep: np.ndarray, path: Path, chunk: int = 1 << 20):
    """``records[keep]`` into a file-backed array, a chunk at a time."""
    n_kept = int(keep.sum())
    if n_kept == 0:
        return np.zeros((0, records.shape[1]), np.float32)
    kept = np.memmap(path, np.float32, "w+", shape=(n_kept, records.shape[1]))
    pos = 0
    for s in range(0, len(records), chunk):
        part = records[s : s + chunk][keep[s : s + chunk]]
        kept[pos : pos + len(part)] = part
        pos += len(part)
    return kept


def _write_outputs(out, classes, det, det_labels, organelles, store, settings) -> dict:
    """Outlier removal per class, then point clouds and CSV tables."""
    organelle_class = np.array([o["class_index"] for o in organelles], np.int64)
    offsets, records = store.group(len(organelles))
    keep, stats = clean_grouped(
        records,
        offsets,
        organelle_class,
        settings.outlier_k,
        settings.outlier_std,
        scratch=out / rf.CACHE_DIR / "knn.f32",
    )
    sizes = np.array([keep[s:e].sum() for s, e in zip(offsets[:-1], offsets[1:])], np.int64)
    clean_offsets = np.zeros(len(organelles) + 1, np.int64)
    clean_offsets[1:] = np.cumsum(sizes)
    kept = _select(records, keep, out / rf.CACHE_DIR / "points_kept.f32")
    rf.PointClouds(
        ids=np.array([o["id"] for o in organelles], np.int64),
        classes=organelle_class,
        offsets=clean_offsets,
        points=kept[:, :3],
        normals=kept[:, 3:],
    ).save(out / rf.POINTCLOUDS_NPZ)
    del kept, records
    for name in ("points_sorted.f32", "points_kept.f32"):
        (out / rf.CACHE_DIR / name).unlink(missing_ok=True)
    for o, n in zip(organelles, sizes):
        o["n_points"] = int(n)
    rf.write_csv(out / rf.ORGANELLES_CSV, rf.ORGANELLE_COLUMNS, organelles)
    names = classes.names
    rows = (
        (
            int(det["slice"][i]),
            names[det["cls"][i]],
            *(round(float(v), 2) for v in det["xywh"][i]),
            round(float(det["score"][i]), 4),
            int(det_labels[i]) + 1 if det_labels[i] >= 0 else 0,
        )
        for i in range(len(det_labels))
    )
    rf.write_csv(out / rf.DETECTIONS_CSV, rf.DETECTION_COLUMNS, rows)
    return {classes[c].name: st for c, st in stats.items()}
