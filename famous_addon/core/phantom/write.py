"""``famous phantom``: write a phantom and all its ground truth to a folder.

:func:`write_phantom` renders each slice once and writes from it both TIFFs
(slice by slice, so the volume is never held), the per-slice YOLO boxes, and
the annotator-like exports: the ``annotations/`` folder in the YOLO_mark
layout that a user would have boxed; then the class config, the truth table
and, when the label volume fits in memory, one truth STL per organelle.
"""

from __future__ import annotations

import queue
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tifffile

from ..annotations import write_neighbours
from ..boxes import Box, write_yolo_txt
from ..classes import preset, save_classes
from ..errors import FamousError
from ..fileio import atomic_path, atomic_write_bytes, write_csv
from ..progress import ProgressFn, silent, sub
from ..stack import open_stack
from .cell import DEFAULT_SHAPE, DEFAULT_VOXEL_NM, Phantom
from .organelles import CLASS_NAMES
from .truth import TRUTH_COLUMNS, write_truth_stls

STL_MAX_BYTES = 256 * 1024**2


class _TiffSink:
    """Write a Z-stack slice by slice as an ImageJ hyperstack, from a background thread.

    tifffile writes a correct ImageJ Z-stack only from one call with an
    iterator of pages; a thread per file lets one render loop feed two files.
    """

    def __init__(self, path: Path, shape, dtype, voxel_nm):
        self._atomic = atomic_path(path)
        self._tmp = self._atomic.__enter__()
        self._queue: queue.Queue = queue.Queue(maxsize=4)
        self._done = threading.Event()
        self._error: BaseException | None = None
        dz, dy, dx = (v / 1000.0 for v in voxel_nm)
        kwargs = dict(
            shape=tuple(shape),
            dtype=dtype,
            imagej=True,
            resolution=(1.0 / dx, 1.0 / dy),
            metadata={"spacing": dz, "unit": "um", "axes": "ZYX"},
        )
        self._thread = threading.Thread(target=self._run, args=(kwargs,), daemon=True)
        self._thread.start()

    def _pages(self):
        while True:
            page = self._queue.get()
            if page is None:
                return
            yield page

    def _run(self, kwargs) -> None:
        try:
            tifffile.imwrite(self._tmp, data=self._pages(), **kwargs)
        except BaseException as exc:  # reported to the caller in close()
            self._error = exc
        finally:
            self._done.set()

    def put(self, page: np.ndarray | None) -> None:
        """Queue a page (``None`` ends the stack); dropped once the writer has stopped."""
        while not self._done.is_set():
            try:
                self._queue.put(page, timeout=0.1)
                return
            except queue.Full:
                continue

    def close(self, ok: bool) -> None:
        """Finish the file; ``ok=False`` (the caller failed) removes it."""
        self.put(None)
        self._thread.join()
        if ok and self._error is None:
            self._atomic.__exit__(None, None, None)
            return
        self._atomic.__exit__(RuntimeError, None, None)
        if ok:
            raise self._error


def _prepare_out(out: Path) -> Path:
    """Make ``out`` ready: new, empty, or an earlier phantom (whose folders are cleared)."""
    if out.exists() and not out.is_dir():
        raise FamousError("is a file, not a folder.", out, "give a folder for the phantom.")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "truth.csv").is_file():
            raise FamousError(
                "is not empty and holds no earlier phantom; its files would be mixed with the "
                "phantom's.",
                out,
                "give a new or empty folder.",
            )
        # stale per-slice files of a deeper earlier phantom would outlive it
        for name in ("boxes", "annotations", "truth_stl"):
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_phantom(
    out: str | Path,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    seed: int = 0,
    voxel_size_nm: tuple[float, float, float] = DEFAULT_VOXEL_NM,
    annotate_fraction: float = 0.01,
    stl: bool = True,
    progress: ProgressFn | None = None,
) -> dict:
    """Write a phantom and its ground truth to the folder ``out``.

    Writes ``stack.tif`` (uint8) and ``truth_labels.tif`` (uint16), both
    ImageJ Z-stacks with the voxel size, written slice by slice;
    ``truth.csv`` (id, class, kind, touching, voxels, volume_um3, n_boxes);
    ``classes.toml`` (the ``fibsem`` preset); ``boxes/slice_NNNNN.txt`` (YOLO
    boxes of every slice, empty when it has none); ``annotations/`` (YOLO_mark
    layout for ``annotate_fraction`` of the slices, at least 2: 8-bit PNGs,
    their YOLO txt, ``obj.names``, ``train.txt`` listing the PNG names
    relative to that folder, and ``neighbours/``);
    ``truth_stl/<class>/<class>_<id>.stl`` (one marching-cubes surface per
    organelle in µm, x y z), when ``stl`` is true and the label volume fits
    in 256 MB.

    Parameters
    ----------
    out : str or Path
        Output folder: new, empty, or an earlier phantom's (then replaced).
    shape : (Z, Y, X)
        Stack shape in voxels.
    seed : int
        Seed of everything in the phantom.
    voxel_size_nm : (z, y, x)
        Voxel size in nm, written to both TIFFs' ImageJ metadata.
    annotate_fraction : float
        Fraction of the slices (evenly spread, at least 2) written to
        ``annotations/``.
    stl : bool
        Write ``truth_stl/`` (needs the label volume in memory).
    progress : callable, optional
        ``progress(fraction, message)``; may raise
        :class:`~famous_addon.core.errors.Cancelled`, which leaves no TIFF.

    Returns
    -------
    dict
        ``out``, ``shape``, ``voxel_size_nm``, ``seed``, ``counts`` (organelles per
        class), ``boxes`` (total), ``annotated_slices``, ``stl`` (files
        written) and ``notes``.
    """
    if not 0.0 <= annotate_fraction <= 1.0:
        raise FamousError(
            f"annotate_fraction {annotate_fraction} is not a fraction of the slices.",
            fix="give a number between 0 and 1 (0.01 annotates 1% of the slices).",
        )
    progress = progress or silent
    ph = Phantom(shape, seed, voxel_size_nm)
    out = _prepare_out(Path(out))
    keep_volume, notes = _stl_plan(ph.shape, stl)
    annotated = _annotated_slices(ph.shape[0], annotate_fraction)
    render_progress = sub(progress, 0.0, 0.85 if keep_volume else 1.0)
    tally = _write_slices(ph, out, annotated, keep_volume, render_progress)
    _finish_annotations(out / "annotations", out / "stack.tif", annotated)
    save_classes(preset("fibsem"), out / "classes.toml")
    rows, stl_files = _write_truth(out, ph, tally, sub(progress, 0.85, 1.0))
    progress(1.0, "phantom written")
    counts = {n: 0 for n in CLASS_NAMES}
    for r in rows:
        counts[r["class"]] += 1
    return {
        "out": str(out),
        "shape": list(ph.shape),
        "voxel_size_nm": list(ph.voxel_size_nm),
        "seed": ph.seed,
        "counts": counts,
        "boxes": tally.n_boxes,
        "annotated_slices": annotated,
        "stl": len(stl_files),
        "notes": notes,
    }


def _stl_plan(shape: tuple[int, int, int], stl: bool) -> tuple[bool, list[str]]:
    """Whether to keep the label volume for ``truth_stl/``, and the note when it is too big."""
    Z, Y, X = shape
    keep_volume = stl and Z * Y * X * 2 <= STL_MAX_BYTES
    notes = []
    if stl and not keep_volume:
        notes.append(
            f"truth_stl/ skipped: the {Z}x{Y}x{X} label volume is over "
            f"{STL_MAX_BYTES // 1024**2} MB (meshing holds it in memory)."
        )
    return keep_volume, notes


@dataclass
class _Tally:
    """What the slice loop counts: voxels and boxes per organelle id, and the labels kept."""

    voxels: np.ndarray
    box_counts: np.ndarray
    n_boxes: int = 0
    volume: np.ndarray | None = None


def _write_slices(
    ph: Phantom, out: Path, annotated: list[int], keep_volume: bool, progress: ProgressFn
) -> _Tally:
    """Render every slice once and write it: both TIFFs, its boxes, its annotation files.

    A failure (or :class:`~famous_addon.core.errors.Cancelled` from
    ``progress``) leaves neither TIFF behind.
    """
    Z, Y, X = ph.shape
    n_ids = len(ph.objects) + 1
    tally = _Tally(np.zeros(n_ids, np.int64), np.zeros(n_ids, np.int64))
    tally.volume = np.zeros(ph.shape, np.uint16) if keep_volume else None
    sinks = [
        _TiffSink(out / "stack.tif", ph.shape, np.uint8, ph.voxel_size_nm),
        _TiffSink(out / "truth_labels.tif", ph.shape, np.uint16, ph.voxel_size_nm),
    ]
    ok = False
    try:
        for k, image, labels in ph.iter_slices():
            sinks[0].put(image)
            sinks[1].put(labels)
            tally.voxels += np.bincount(labels.ravel(), minlength=tally.voxels.size)
            found = ph.boxes_with_ids(k, labels)
            boxes = [box for _, box in found]
            np.add.at(tally.box_counts, [i for i, _ in found], 1)
            tally.n_boxes += len(boxes)
            write_yolo_txt(out / "boxes" / f"slice_{k:05d}.txt", boxes, (Y, X))
            if k in annotated:
                _write_annotated_slice(out / "annotations", k, image, boxes)
            if tally.volume is not None:
                tally.volume[k] = labels
            progress((k + 1) / Z, f"phantom slice {k + 1}/{Z}")
        ok = True
    finally:
        for s in sinks:
            s.close(ok)
    return tally


def _write_truth(out: Path, ph: Phantom, tally: _Tally, progress: ProgressFn):
    """``truth.csv``, and ``truth_stl/`` when the label volume was kept: its rows and STL files."""
    rows = ph.truth_rows(tally.voxels, tally.box_counts)
    write_csv(out / "truth.csv", TRUTH_COLUMNS, rows)
    stl_files = []
    if tally.volume is not None:
        stl_files = write_truth_stls(out / "truth_stl", tally.volume, ph, progress=progress)
    return rows, stl_files


# -- the annotator-like exports -------------------------------------------------


def _annotated_slices(n_slices: int, fraction: float) -> list[int]:
    """``fraction`` of the slices, evenly spread, at least 2: those a user would box."""
    n = min(n_slices, max(2, int(round(fraction * n_slices))))
    return sorted({int((i + 0.5) * n_slices / n) for i in range(n)})


def _write_annotated_slice(ann_dir: Path, k: int, image: np.ndarray, boxes: list[Box]) -> None:
    """Slice ``k`` as YOLO_mark holds a boxed image: an 8-bit PNG and its YOLO txt."""
    name = f"slice_{k:05d}"
    _, png = cv2.imencode(".png", image)
    atomic_write_bytes(ann_dir / f"{name}.png", png.tobytes())
    write_yolo_txt(ann_dir / f"{name}.txt", boxes, image.shape)


def _finish_annotations(ann_dir: Path, stack_path: Path, annotated: list[int]) -> None:
    """The rest of the YOLO_mark folder: ``neighbours/``, ``obj.names`` and ``train.txt``."""
    write_neighbours(ann_dir, open_stack(stack_path), annotated)
    atomic_write_bytes(ann_dir / "obj.names", "".join(n + "\n" for n in CLASS_NAMES).encode())
    atomic_write_bytes(
        ann_dir / "train.txt", "".join(f"slice_{k:05d}.png\n" for k in annotated).encode()
    )
