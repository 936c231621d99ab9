"""Point clouds in µm and statistical outlier removal ("Cleaning point cloud noise").

Each detection contributes its mask's outline (or all its pixels) at its
slice's height. World coordinates follow docs/design.md: x = column * px_x,
y = row * px_y, z = slice * dz, all in µm.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from scipy.spatial import cKDTree


def mask_points(
    mask: np.ndarray, x0: int, y0: int, mode: str = "outline"
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel positions of a mask's outline (or all its pixels) with in-plane normals.

    Parameters
    ----------
    mask : 2-D bool array
        The detection's mask in box coordinates.
    x0, y0 : int
        Position of the mask's top-left pixel in the slice.
    mode : {"outline", "all"}
        Outline pixels (OpenCV contours, outer and holes) or every mask pixel.

    Returns
    -------
    points : (n, 2) float array
        (column, row) in slice pixels.
    normals : (n, 2) float array
        Unit in-plane normals pointing out of the mask (zero for ``"all"``).
    """
    if mode == "all":
        rows, cols = np.nonzero(mask)
        pts = np.column_stack([cols + x0, rows + y0]).astype(np.float64)
        return pts, np.zeros_like(pts)
    points, normals, _ = outline_points([mask], [(x0, y0)])
    return points, normals


def outline_points(masks: list[np.ndarray], origins) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`mask_points`'s outlines of several masks at once, end to end.

    One pass over all their points: per mask, the same steps cost more in
    numpy's call overhead than in arithmetic (a slice has some 200 masks).

    Parameters
    ----------
    masks : list of 2-D bool arrays
    origins : list of (x0, y0)
        Each mask's top-left pixel in the slice.

    Returns
    -------
    points, normals : (n, 2) float arrays
        As :func:`mask_points` gives them, mask after mask.
    counts : (len(masks),) int array
        Points of each mask.
    """
    masks = [np.ascontiguousarray(m, dtype=np.uint8) for m in masks]
    contours, owner = [], []
    for i, m in enumerate(masks):
        found, _ = cv2.findContours(m, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        contours += found
        owner += [i] * len(found)
    if not contours:
        return np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(len(masks), np.int64)
    # all contours at once (a mask has several: holes, specks), each point's tangent
    # from its two neighbours along its own closed contour
    lens = np.array([len(c) for c in contours])
    p = np.concatenate([c[:, 0, :] for c in contours]).astype(np.float64)
    cid = np.repeat(np.arange(len(lens)), lens)
    start = (np.cumsum(lens) - lens)[cid]
    pos, length = np.arange(len(p)) - start, lens[cid]
    t = p[start + (pos + 1) % length] - p[start + (pos - 1) % length]
    n = np.column_stack([t[:, 1], -t[:, 0]])
    # Point normals away from the mask: a step along them must leave it.
    probe = np.round(
        p + 0.75 * n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-9)
    ).astype(int)
    # each point's own mask, its pixels found in the masks laid end to end
    which = np.asarray(owner)[cid]
    shapes = np.array([m.shape for m in masks]).reshape(-1, 2)
    flat = np.concatenate([m.ravel() for m in masks]) > 0
    base = np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1])[:-1]])[which]
    rows, cols = shapes[which, 0], shapes[which, 1]
    inside = (probe[:, 0] >= 0) & (probe[:, 1] >= 0) & (probe[:, 0] < cols) & (probe[:, 1] < rows)
    inside[inside] = flat[base[inside] + probe[inside, 1] * cols[inside] + probe[inside, 0]]
    flip = np.bincount(cid, weights=inside, minlength=len(lens)) > 0.5 * lens
    n[flip[cid]] *= -1
    n[(lens < 3)[cid]] = 0.0  # too short to have a direction
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    normals = np.divide(n, norm, out=np.zeros_like(n), where=norm > 0)
    p += np.asarray(origins, np.float64).reshape(-1, 2)[which]
    return p, normals, np.bincount(which, minlength=len(masks))


def to_world(pixels: np.ndarray, slice_index: int, voxel_size_nm) -> np.ndarray:
    """(column, row) pixels on a slice to (x, y, z) in µm."""
    dz, py, px = (v / 1000.0 for v in voxel_size_nm)
    out = np.empty((len(pixels), 3), np.float32)
    out[:, 0] = pixels[:, 0] * px
    out[:, 1] = pixels[:, 1] * py
    out[:, 2] = slice_index * dz
    return out


def mean_knn_distance(points: np.ndarray, k: int) -> np.ndarray:
    """Mean distance of each point to its ``k`` nearest neighbours (same cloud)."""
    n = len(points)
    if n < 2:
        return np.zeros(n)
    kk = min(k, n - 1)
    # all cores: outlier removal runs after the slice workers are done
    d, _ = cKDTree(points).query(points, k=kk + 1, workers=-1)
    return d[:, 1:].mean(axis=1)


class PointStore:
    """Point clouds streamed to disk slice by slice, then grouped per organelle.

    A whole-cell run holds tens of millions of outline points; keeping them in
    memory until the last slice would make memory grow with the stack. Points
    are appended to a flat file as slices are assembled, then sorted by
    organelle with a chunked counting sort, and cleaned one organelle at a
    time, so memory stays bounded by the largest organelle.

    Parameters
    ----------
    folder : Path
        Where the temporary files go (the run's cache folder).
    """

    RECORD = 6  # x, y, z (µm), nx, ny, nz
    # points held before a write: two small writes a detection took 0.8 s of a 40-slice run
    BUFFER = 1 << 16

    def __init__(self, folder):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._rec_path = self.folder / "points.f32"
        self._id_path = self.folder / "point_ids.i32"
        self._rec = open(self._rec_path, "wb")
        self._ids = open(self._id_path, "wb")
        self.n = 0
        self._held: list[tuple[int, np.ndarray]] = []
        self._n_held = 0

    def add(self, organelle: int, xyz: np.ndarray, normals: np.ndarray) -> None:
        """Append one detection's points (organelle index 0..m-1)."""
        rec = np.empty((len(xyz), self.RECORD), np.float32)
        rec[:, :3] = xyz
        rec[:, 3:] = normals
        self._held.append((organelle, rec))
        self._n_held += len(rec)
        self.n += len(xyz)
        if self._n_held >= self.BUFFER:
            self._write_held()

    def _write_held(self) -> None:
        if not self._held:
            return
        np.concatenate([rec for _, rec in self._held]).tofile(self._rec)
        owners = np.array([o for o, _ in self._held], np.int32)
        np.repeat(owners, [len(rec) for _, rec in self._held]).tofile(self._ids)
        self._held, self._n_held = [], 0

    def group(self, m: int, chunk: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
        """Sort the points by organelle.

        Returns
        -------
        offsets : (m + 1,) int64
            Points of organelle ``i`` are ``records[offsets[i]:offsets[i + 1]]``.
        records : (n, 6) float32 memmap
            x, y, z, nx, ny, nz, grouped by organelle (stream order within one).
        """
        self._write_held()
        self._rec.close()
        self._ids.close()
        sorted_path = self.folder / "points_sorted.f32"
        offsets = np.zeros(m + 1, np.int64)
        if self.n == 0:
            return offsets, np.zeros((0, self.RECORD), np.float32)
        ids = np.memmap(self._id_path, np.int32, "r", shape=(self.n,))
        rec = np.memmap(self._rec_path, np.float32, "r", shape=(self.n, self.RECORD))
        counts = np.zeros(m, np.int64)
        for s in range(0, self.n, chunk):
            counts += np.bincount(ids[s : s + chunk], minlength=m)
        offsets[1:] = np.cumsum(counts)
        out = np.memmap(sorted_path, np.float32, "w+", shape=(self.n, self.RECORD))
        cursor = offsets[:-1].copy()
        for s in range(0, self.n, chunk):
            part = np.asarray(ids[s : s + chunk])
            order = np.argsort(part, kind="stable")
            sid = part[order]
            rank = np.arange(len(sid)) - np.searchsorted(sid, sid, "left")
            out[cursor[sid] + rank] = rec[s : s + chunk][order]
            cursor += np.bincount(part, minlength=m)
        out.flush()
        del ids, rec
        self._rec_path.unlink()
        self._id_path.unlink()
        return offsets, np.memmap(sorted_path, np.float32, "r", shape=(self.n, self.RECORD))


def clean_grouped(
    records: np.ndarray,
    offsets: np.ndarray,
    organelle_class: np.ndarray,
    k: int = 8,
    n_std: float = 2.0,
    scratch=None,
) -> tuple[np.ndarray, dict[int, dict]]:
    """Statistical outlier removal per class ("Cleaning point cloud noise").

    For every point the mean distance to its ``k`` nearest neighbours in its
    own organelle is computed; each class's mean and standard deviation of
    these distances give its threshold ``mean + n_std * std`` (the paper's
    per-class statistic), and points above it are outliers. Computed one
    organelle at a time; the distances wait in ``scratch`` (a file) between
    the two passes, so memory does not grow with the number of points.

    Parameters
    ----------
    records : (n, >=3) array
        Points (x, y, z in µm first), grouped by organelle.
    offsets : (m + 1,) int array
        Organelle ``i`` owns ``records[offsets[i]:offsets[i + 1]]``.
    organelle_class : (m,) int array
        Class index of each organelle.
    k : int
        Neighbours per point.
    n_std : float
        Threshold in standard deviations above the class mean.
    scratch : Path, optional
        File for the distances (in memory when omitted).

    Returns
    -------
    keep : (n,) bool array
        True for points to keep.
    stats : dict
        Per class index: ``mean_um``, ``std_um``, ``threshold_um``, ``removed``.
    """
    n = len(records)
    if scratch is None or n == 0:
        dist = np.zeros(n, np.float32)
    else:
        dist = np.memmap(scratch, np.float32, "w+", shape=(n,))
    sums: dict[int, list[float]] = {}
    for i in range(len(offsets) - 1):
        s, e = offsets[i], offsets[i + 1]
        d = mean_knn_distance(np.asarray(records[s:e, :3], np.float64), k)
        dist[s:e] = d
        acc = sums.setdefault(int(organelle_class[i]), [0.0, 0.0, 0])
        acc[0] += float(d.sum())
        acc[1] += float((d**2).sum())
        acc[2] += len(d)
    stats = {}
    for c, (s1, s2, cnt) in sums.items():
        mean = s1 / max(cnt, 1)
        std = float(np.sqrt(max(s2 / max(cnt, 1) - mean * mean, 0.0)))
        stats[c] = {"mean_um": mean, "std_um": std, "threshold_um": mean + n_std * std}
        stats[c]["removed"] = 0
    keep = np.ones(n, bool)
    for i in range(len(offsets) - 1):
        s, e = offsets[i], offsets[i + 1]
        st = stats.get(int(organelle_class[i]))
        if st is None:
            continue
        keep[s:e] = dist[s:e] <= st["threshold_um"]
        st["removed"] += int(e - s - keep[s:e].sum())
    del dist
    if scratch is not None and n:
        Path(scratch).unlink(missing_ok=True)
    return keep, stats
