"""Point clouds in µm and statistical outlier removal ("Cleaning point cloud noise").

Each detection contributes its mask's outline (or all its pixels) at its
slice's height. World coordinates follow DESIGN.md: x = column * px_x,
y = row * px_y, z = slice * dz, all in µm.
"""

from __future__ import annotations

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
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    pts_all, nrm_all = [], []
    for c in contours:
        p = c[:, 0, :].astype(np.float64)
        if len(p) >= 3:
            t = np.roll(p, -1, 0) - np.roll(p, 1, 0)
            n = np.column_stack([t[:, 1], -t[:, 0]])
            # Point normals away from the mask: a step along them must leave it.
            probe = np.round(
                p + 0.75 * n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-9)
            ).astype(int)
            inside = (
                (probe[:, 0] >= 0)
                & (probe[:, 1] >= 0)
                & (probe[:, 0] < m.shape[1])
                & (probe[:, 1] < m.shape[0])
            )
            inside[inside] = m[probe[inside, 1], probe[inside, 0]] > 0
            if inside.mean() > 0.5:
                n = -n
        else:
            n = np.zeros_like(p)
        norm = np.linalg.norm(n, axis=1, keepdims=True)
        pts_all.append(p)
        nrm_all.append(np.divide(n, norm, out=np.zeros_like(n), where=norm > 0))
    if not pts_all:
        return np.zeros((0, 2)), np.zeros((0, 2))
    pts = np.concatenate(pts_all)
    pts[:, 0] += x0
    pts[:, 1] += y0
    return pts, np.concatenate(nrm_all)


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
    d, _ = cKDTree(points).query(points, k=kk + 1)
    return d[:, 1:].mean(axis=1)


def outlier_masks(
    clouds: list[np.ndarray], k: int = 8, n_std: float = 2.0
) -> tuple[list[np.ndarray], dict]:
    """Statistical outlier removal for the organelles of one class.

    For every point the mean distance to its ``k`` nearest neighbours in its
    own organelle is computed; the class's mean and standard deviation of
    these distances give the threshold ``mean + n_std * std`` (the paper's
    per-class statistic). Points above it are outliers.

    Parameters
    ----------
    clouds : list of (n_i, 3) arrays
        The class's organelle point clouds in µm.
    k : int
        Neighbours per point.
    n_std : float
        Threshold in standard deviations above the class mean.

    Returns
    -------
    keep : list of bool arrays
        Per organelle, True for points to keep.
    stats : dict
        ``mean_um``, ``std_um``, ``threshold_um``, ``removed``.
    """
    dists = [mean_knn_distance(c, k) for c in clouds]
    flat = np.concatenate(dists) if dists else np.zeros(0)
    if flat.size == 0:
        return [np.ones(0, bool) for _ in clouds], {"removed": 0}
    mean, std = float(flat.mean()), float(flat.std())
    thr = mean + n_std * std
    keep = [d <= thr for d in dists]
    removed = int(sum((~m).sum() for m in keep))
    return keep, {"mean_um": mean, "std_um": std, "threshold_um": thr, "removed": removed}
