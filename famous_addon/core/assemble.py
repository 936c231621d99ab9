"""Assembly: linked detections to organelle records, point clouds, ``labels.tif`` and tables.

One pass over the cached slices paints each slice's organelles, moves their
edges to where the user draws them (each class's ``inset_nm``, :mod:`.inset`),
measures them and streams their outline points to disk; then each class's point
clouds are cleaned of outliers (:mod:`.pointcloud`) and the run folder's
``pointclouds.npz``, ``organelles.csv`` and ``detections.csv`` are written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from . import runfolder as rf
from .fileio import atomic_path, write_csv
from .inset import apply_inset
from .link import label_areas
from .pointcloud import PointStore, clean_grouped, mask_points, outline_points, to_world
from .slicecache import iter_slices
from .stack import in_plane_nm


def assemble(out, stack, classes, det, det_labels, write_labels, settings, progress):
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
    inset = _insets(classes, organelle_class, vs)

    def label_slices():
        for k, result, sel in iter_slices(out, det, n_slices):
            lab = det_labels[sel]
            img, areas = _painted(result, lab, (rows, cols), m, inset)
            voxels[:] += areas
            on_slice = set()
            kept = []
            for i, organelle in enumerate(lab):
                if organelle < 0:
                    continue
                x0, y0, x1, y1 = result.bounds[i]
                mask = result.mask(i)
                if inset is not None:  # the pixels the inset left it
                    mask = mask & (img[y0:y1, x0:x1] == organelle + 1)
                if not mask.any():
                    continue
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
                kept.append((organelle, mask, (x0, y0)))
            _add_points(store, kept, k, vs, settings.points)
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


def _insets(classes, organelle_class: np.ndarray, voxel_size_nm) -> np.ndarray | None:
    """Each painted value's inset in pixels (value = organelle + 1), None where none moves
    a pixel: under a pixel an inset moves nothing (see :mod:`.inset`), so the slices are
    not even scanned."""
    per_class = np.array([c.extract.inset_nm for c in classes]) / in_plane_nm(voxel_size_nm)
    per_class[per_class < 1.0] = 0.0
    if not per_class.any():
        return None
    return np.concatenate([[0.0], per_class[organelle_class]])


def _painted(result, lab, shape, m: int, inset: np.ndarray | None):
    """A slice's painted organelles, moved inside their edges by ``inset``, and their areas."""
    img, areas = result.paint_areas(shape, lab, m + 1)
    if inset is None:
        return img, areas
    img = apply_inset(img, inset)
    return img, label_areas(img, m + 1)


def _add_points(store, kept, k, voxel_size_nm, mode) -> None:
    """The point clouds of slice ``k``'s kept detections, ``(organelle, mask, (x0, y0))``."""
    if mode == "all":
        found = [mask_points(mask, x0, y0, mode) for _, mask, (x0, y0) in kept]
    else:  # all outlines of the slice at once
        p, n, counts = outline_points([m for _, m, _ in kept], [o for _, _, o in kept])
        cut = np.cumsum(counts)[:-1]
        found = zip(np.split(p, cut), np.split(n, cut))
    for (organelle, _, _), (p, n) in zip(kept, found):
        store.add(organelle, to_world(p, k, voxel_size_nm), np.column_stack([n, np.zeros(len(n))]))


def _write_labels(path: Path, slices, shape, vs, m: int) -> None:
    """Stream label slices into an ImageJ TIFF (uint16, or uint32 beyond 65535 ids)."""

    if m < 2**16:
        dtype, imagej = np.uint16, True
    else:
        # ImageJ TIFFs hold no 32-bit integers; such a file opens in napari/Amira.
        dtype, imagej = np.uint32, False
    dz, py, px = (v / 1000.0 for v in vs)
    with atomic_path(path) as tmp:
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


def write_outputs(out, classes, det, det_labels, organelles, store, settings) -> dict:
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
    write_csv(out / rf.ORGANELLES_CSV, rf.ORGANELLE_COLUMNS, organelles)
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
    write_csv(out / rf.DETECTIONS_CSV, rf.DETECTION_COLUMNS, rows)
    return {classes[c].name: st for c, st in stats.items()}
