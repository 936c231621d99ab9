"""The run folder's slice cache: per-slice results on disk, resume, the detection table.

The per-slice stage writes each slice's boxes and masks to
``RUN/cache/slice_NNNNN.npz`` (the detector's result, never changed), so a
killed run resumes where it stopped. Stages that add boxes after linking (gap
filling, following) write the changed slices as ``filled_NNNNN.npz``, which
later stages read instead. The later stages hold only the flat detection table
(:func:`detections_table`) in memory; masks stay on disk.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from . import runfolder as rf
from .classes import ClassConfig
from .errors import FamousError
from .extract import SliceResult
from .fileio import save_npz
from .guard import LOCK_NAME
from .stack import Stack


def cache_path(out: Path, k: int) -> Path:
    return out / rf.CACHE_DIR / f"slice_{k:05d}.npz"


def filled_path(out: Path, k: int) -> Path:
    return out / rf.CACHE_DIR / f"filled_{k:05d}.npz"


def load_slice(out: Path, k: int) -> SliceResult:
    """Slice ``k``'s boxes and masks, with the boxes filled into its gaps where there are any."""
    filled = filled_path(out, k)
    with np.load(filled if filled.is_file() else cache_path(out, k)) as z:
        return SliceResult.from_arrays(z)


def iter_slices(out: Path, det: dict, n_slices: int) -> Iterator[tuple[int, SliceResult, slice]]:
    for k in range(n_slices):
        yield k, load_slice(out, k), slice(det["start"][k], det["start"][k + 1])


def clear_filled(out: Path) -> None:
    """Remove an earlier run's filled slices: each run fills from its own linking."""
    for path in (out / rf.CACHE_DIR).glob("filled_*.npz"):
        path.unlink()


def fingerprint(stack: Stack, classes: ClassConfig, source) -> dict:
    """What the cached per-slice results depend on; a resume must match it."""
    describe = getattr(source, "describe", lambda: {"kind": type(source).__name__})
    found = {
        "input": str(Path(stack.path).resolve()),
        "shape": list(stack.shape),
        "voxel_size_nm": list(stack.voxel_size_nm),
        "classes": classes.to_dict(),
        "boxes": describe(),
    }
    if stack.channel is not None:  # only then: runs of one-channel stacks resume as before
        found["channel"] = stack.channel
    return found


def prepare_out(out: Path, resume: bool, fingerprint: dict) -> None:
    """Check that ``out`` may take this run: new, empty, or a run of the same input to resume."""
    info_path = out / rf.RUN_JSON
    if info_path.is_file():
        info = rf.read_run_json(out)
        status = info.get("status")
        if not resume:
            state = {"complete": "a finished run", "failed": "a failed run"}.get(
                status, "an interrupted run"
            )
            raise FamousError(
                f"already holds {state}; results are never overwritten.",
                out,
                "add --resume to continue it"
                + (" once its input is fixed" if status == "failed" else "")
                + ", or choose another --out folder.",
            )
        if info.get("fingerprint") != json.loads(json.dumps(fingerprint)):
            raise FamousError(
                "holds a run made with other input, classes or boxes, so it cannot be resumed.",
                out,
                "choose another --out folder for this input.",
            )
    elif out.exists() and any(p.name != LOCK_NAME for p in out.iterdir()):
        raise FamousError(
            "exists, is not empty and is not a FAMOUS run folder.",
            out,
            "choose a new or empty --out folder.",
        )
    out.mkdir(parents=True, exist_ok=True)


def gather_detections(out: Path, n_slices: int) -> dict:
    """Boxes and mask areas of every cached slice (masks stay on disk)."""
    results = (load_slice(out, k) for k in range(n_slices))
    return detections_table([(r.boxes, r.areas()) for r in results])


def detections_table(per_slice: list[tuple[np.ndarray, np.ndarray]]) -> dict:
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


def with_slices(out, det, det_labels, changed: dict[int, tuple[SliceResult, np.ndarray]]):
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
        save_npz(filled_path(out, k), **result.to_arrays())
        per_slice[k] = (result.boxes, result.areas())
        labels[k] = slice_labels
    return detections_table(per_slice), np.concatenate(labels).astype(np.int64)
