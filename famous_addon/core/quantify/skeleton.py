"""Length and branch count of tubular organelles from their 3-D skeleton.

See ``length_um`` and ``branches`` in :mod:`famous_addon.core.quantify`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree
from skimage.morphology import skeletonize

_OFFSETS = np.array(
    [
        (dz, dy, dx)
        for dz in (-1, 0, 1)
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
        if (dz, dy, dx) > (0, 0, 0)
    ]
)


def skeleton_graph(skeleton: np.ndarray, voxel_um: Sequence[float]):
    """Minimum spanning tree of a skeleton's 26-neighbour voxel graph.

    Returns
    -------
    coords : ndarray, shape (N, 3)
        Skeleton voxel indices.
    edges : ndarray, shape (E, 2)
        The tree's edges (pairs of indices into ``coords``).
    weights : ndarray, shape (E,)
        Edge lengths in µm.
    """
    coords = np.argwhere(skeleton)
    index = np.full(np.array(skeleton.shape) + 2, -1, dtype=np.int64)
    index[tuple((coords + 1).T)] = np.arange(len(coords))
    vox = np.asarray(voxel_um, dtype=float)
    rows, cols, weights = [], [], []
    for off in _OFFSETS:
        nb = index[tuple((coords + 1 + off).T)]
        ok = nb >= 0
        rows.append(np.flatnonzero(ok))
        cols.append(nb[ok])
        weights.append(np.full(ok.sum(), float(np.linalg.norm(off * vox))))
    n = len(coords)
    graph = coo_matrix(
        (np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
    )
    tree = minimum_spanning_tree(graph).tocoo()
    return coords, np.column_stack([tree.row, tree.col]), tree.data


_TIP_STEP = 5
# Gaussian smoothing of a tubular mask before its skeleton is taken, in voxels
# of the finest axis (the same physical width along every axis).
SKELETON_SIGMA = 1.5
_SMOOTH_ITERATIONS = 8
_MAX_PRUNE_ROUNDS = 20


def _skeletonize(mask: np.ndarray) -> np.ndarray:
    """3-D skeleton (``skimage.morphology.skeletonize``), never empty for a non-empty mask.

    skimage's 3-D thinning deletes some objects entirely when their
    thickness is even (scikit-image issue #3757, open); growing the mask by
    one voxel along one axis makes that thickness odd and shifts the
    skeleton by half a voxel at most.
    """
    skel = skeletonize(mask)
    for axis in range(3):
        if skel.any() or not mask.any():
            break
        grown = mask.copy()
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        grown[tuple(hi)] |= mask[tuple(lo)]
        skel = skeletonize(grown)
    return skel.astype(bool)


def _tip_reach(inside: np.ndarray, end_um: np.ndarray, direction: np.ndarray, vox: np.ndarray):
    """Distance (µm) from a skeleton end to the surface, along the skeleton's direction.

    Thinning stops short of a tube's tip (about one radius for a rounded
    tip); the skeleton's own direction at the end reaches the tip.
    ``inside`` is the mask as float32; ``end_um`` is in the mask's µm frame.
    """
    norm = float(np.linalg.norm(direction))
    if norm == 0:
        return 0.0
    step = vox.min() / 4
    t = np.arange(0.0, float(np.linalg.norm(np.array(inside.shape) * vox)), step)
    where = (end_um[:, None] + (direction / norm)[:, None] * t[None, :]) / vox[:, None]
    hit = ndi.map_coordinates(inside, where, order=1, cval=0.0) < 0.5
    return float(t[np.argmax(hit)]) if hit.any() else float(t[-1])


def _arms(n: int, edges: np.ndarray, weights: np.ndarray, alive: np.ndarray, radius: np.ndarray):
    """Split the live tree into arms (runs of vertices between junctions).

    Returns each vertex's degree, each vertex's arm (-1 for junctions and
    removed vertices), and per arm: its length including the links to its
    junctions, the largest radius at those junctions (0 if none), and
    whether it holds an end point.
    """
    live = alive[edges[:, 0]] & alive[edges[:, 1]]
    e, w = edges[live], weights[live]
    degree = np.bincount(e.ravel(), minlength=n)
    junction = degree >= 3
    inner = ~junction[e[:, 0]] & ~junction[e[:, 1]]
    graph = coo_matrix((np.ones(inner.sum()), (e[inner, 0], e[inner, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    member = alive & ~junction
    _, arm_of = np.unique(np.where(member, comp, -1), return_inverse=True)
    arm_of = arm_of.ravel() - (0 if member.all() else 1)
    arm_of[~member] = -1
    n_arms = int(arm_of.max()) + 1
    length = np.bincount(arm_of[e[inner, 0]], weights=w[inner], minlength=n_arms)
    link = junction[e[:, 0]] ^ junction[e[:, 1]]
    outer = np.where(junction[e[link, 0]], e[link, 1], e[link, 0])
    joint = np.where(junction[e[link, 0]], e[link, 0], e[link, 1])
    length += np.bincount(arm_of[outer], weights=w[link], minlength=n_arms)
    joint_radius = np.zeros(n_arms)
    np.maximum.at(joint_radius, arm_of[outer], radius[joint])
    has_end = np.zeros(n_arms, dtype=bool)
    has_end[arm_of[member & (degree == 1)]] = True
    return degree, arm_of, length, joint_radius, has_end


def skeleton_measures(mask: np.ndarray, voxel_um: Sequence[float]) -> tuple[float, int]:
    """Length (µm) and branch count of a tubular object; see :mod:`famous_addon.core.quantify`.

    Parameters
    ----------
    mask : ndarray of bool, shape (Z, Y, X)
        The object, with background on every side.
    voxel_um : sequence of 3 floats
        Voxel size (z, y, x) in µm.

    Returns
    -------
    length_um : float
        Length of the smoothed skeleton tree plus, at each end point, the
        distance to the surface along the skeleton's direction.
    branches : int
        Arms between junctions and end points; 0 for an unbranched tube.
    """
    vox = np.asarray(voxel_um, dtype=float)
    # Cavities would wrap the skeleton round them and surface roughness from
    # slice-by-slice segmentation sprouts false branches: skeletonize the
    # filled, smoothed mask (unless smoothing erases a very thin object).
    mask = ndi.binary_fill_holes(mask)
    smooth = ndi.binary_fill_holes(
        ndi.gaussian_filter(mask.astype(np.float32), SKELETON_SIGMA * vox.min() / vox) >= 0.5
    )
    if smooth.any():
        mask = smooth
    skel = _skeletonize(mask)
    if not skel.any():
        return 0.0, 0
    radius_map = ndi.distance_transform_edt(mask, sampling=vox)
    coords, edges, weights = skeleton_graph(skel, vox)
    n = len(coords)
    if n == 1:
        return 2.0 * float(radius_map[tuple(coords[0])]), 0
    radius = radius_map[tuple(coords.T)]
    alive = np.ones(n, dtype=bool)
    for _ in range(_MAX_PRUNE_ROUNDS):
        degree, arm_of, length, joint_radius, has_end = _arms(n, edges, weights, alive, radius)
        # A terminal arm shorter than the tube's radius where it leaves is a
        # bump of the surface (a spur), not a branch.
        spur = has_end & (joint_radius > 0) & (length < joint_radius)
        if not spur.any():
            break
        alive &= ~((arm_of >= 0) & spur[np.maximum(arm_of, 0)])
    branches = int(arm_of.max()) + 1 if (degree >= 3).any() else 0

    live = alive[edges[:, 0]] & alive[edges[:, 1]]
    e = edges[live]
    adj = coo_matrix((np.ones(2 * len(e)), (e.ravel(), e[:, ::-1].ravel())), shape=(n, n)).tocsr()
    # Laplacian smoothing (ends and junctions fixed) straightens the digital
    # path's one-voxel zigzag, which would otherwise add several % of length.
    pts = coords * vox
    free = degree == 2
    for _ in range(_SMOOTH_ITERATIONS):
        mean = adj @ pts / np.maximum(degree, 1)[:, None]
        pts[free] = 0.5 * pts[free] + 0.5 * mean[free]
    total = float(np.linalg.norm(pts[e[:, 0]] - pts[e[:, 1]], axis=1).sum())

    ends = np.flatnonzero(alive & (degree == 1))
    prev, cur = ends.copy(), adj.indices[adj.indptr[ends]]
    for _ in range(_TIP_STEP - 1):
        two = degree[cur] == 2
        first = adj.indices[adj.indptr[cur]]
        second = adj.indices[np.minimum(adj.indptr[cur] + 1, len(adj.indices) - 1)]
        nxt = np.where(first == prev, second, first)
        prev, cur = np.where(two, cur, prev), np.where(two, nxt, cur)
    inside = mask.astype(np.float32)
    for end, inner_pt in zip(ends, cur):
        total += _tip_reach(inside, pts[end], pts[end] - pts[inner_pt], vox)
    return total, branches
