"""The per-slice stage: a box source, and boxes to masks on every slice, in one of three executors.

A box source is per-slice YOLO files or the trained detector
(:func:`make_box_source`). :func:`process_slice` is a pure function of (slice,
boxes, classes, pixel size); :func:`run_slices` runs it in this process, in
local worker processes (``workers > 1``) or on a running ``dask.distributed``
cluster, and caches each result (:mod:`.slicecache`).
"""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import replace

import cv2
import numpy as np

from .boxes import YoloTxtBoxes
from .classes import ClassConfig
from .detector.inference import load_detector
from .detector.settings import FLIP_VIEWS
from .errors import FamousError
from .extract import segment_slice
from .fileio import save_npz
from .request import RunRequest
from .slicecache import cache_path
from .stack import Stack


def make_box_source(stack: Stack, classes: ClassConfig, request: RunRequest):
    """The box source of a request: per-slice YOLO files or the YOLOv4 detector.

    Everything is checked here, before any slice is processed. The request's
    ``flip_views`` (1, 2 or 4) overrides the model's test-time views;
    ``zoom_pass`` False turns off the model's enlarged pass for small objects.
    """
    boxes, model = request.boxes, request.model
    flip_views = request.flip_views
    if boxes is not None:
        source = YoloTxtBoxes(boxes, stack.shape[1:], len(classes), n_slices=stack.shape[0])
        source.validate()
        return source
    detector = load_detector(model, classes, backend=request.backend)
    if flip_views is not None:
        if flip_views not in FLIP_VIEWS:
            raise FamousError(f"flip_views {flip_views!r}: use 1 (off), 2 or 4 views.")
        detector.settings = replace(detector.settings, flip_views=flip_views)
    if not request.zoom_pass:
        detector.settings = replace(detector.settings, zoom_thresholds={})
    return detector


def process_slice(stack: Stack, source, classes: ClassConfig, pixel_nm: float, k: int) -> dict:
    """The per-slice stage: boxes of slice ``k`` and their masks, as arrays."""
    if getattr(source, "neighbours", False):
        seen = stack.read_with_neighbours(k)
        image = np.ascontiguousarray(seen[..., 1])
    else:
        seen = image = stack.read(k)
    # boxes from files are the user's: none of them is dropped as a detector's error
    detected = not isinstance(source, YoloTxtBoxes)
    result = segment_slice(image, source(k, seen), classes, pixel_nm, detected=detected)
    return result.to_arrays()


# workers="auto": processes only where the slices hold this many pixels, since
# each takes 1-3 s to start (imports, the network); and at most this many, each
# holding its own network (about 0.5 GB on 2,048 px slices)
AUTO_MIN_PIXELS = 100_000_000
AUTO_MAX_WORKERS = 4


def auto_workers(n_slices: int, slice_pixels: int, cores: int | None = None) -> int:
    """Local processes for ``workers="auto"``: one per core, or 1 for little work.

    On this project's 2-core machine two processes ran the slice stage of a
    40 x 1,792 x 2,048 phantom at 0.64 s a slice instead of 1.08
    (``benchmarks/scale.py``, docs/results.md).
    """
    cores = cores or os.cpu_count() or 1
    if n_slices * slice_pixels < AUTO_MIN_PIXELS:
        return 1
    return max(1, min(cores, AUTO_MAX_WORKERS, n_slices))


def run_slices(stack, source, classes, pixel_nm, todo, out, workers, dask_scheduler, progress):
    """Compute and cache the slices in ``todo`` with the chosen executor."""
    total = max(len(todo), 1)
    if workers == "auto":
        workers = auto_workers(len(todo), int(np.prod(stack.shape[1:3])))

    def store(k, arrays, done):
        save_npz(cache_path(out, k), **arrays)
        progress(done / total, f"slice {k + 1}/{stack.shape[0]}")

    if dask_scheduler:
        from distributed import Client, as_completed  # dask: imported only when used (slow)

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
    # "spawn": forked children of a process that holds OpenCV or Blender threads
    # can deadlock; spawn starts clean interpreters.
    # each worker gets its share of the cores: OpenCV would otherwise start a
    # thread per core in every worker, and the workers would take turns
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(
        workers,
        mp_context=mp.get_context("spawn"),
        initializer=cv2.setNumThreads,
        initargs=(threads,),
    ) as pool:
        pending, queue, done = {}, list(todo), 0
        while queue or pending:
            while queue and len(pending) < 2 * workers:
                k = queue.pop(0)
                pending[pool.submit(process_slice, stack, source, classes, pixel_nm, k)] = k
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                done += 1
                store(pending.pop(fut), fut.result(), done)
