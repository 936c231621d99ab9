"""Quantification: per-organelle 3-D morphometrics, proximity and per-class statistics.

Input is an instance label volume (one id per organelle, ZYX, uint16/uint32)
with its voxel size in nm (z, y, x); every output is in µm. Each organelle is
measured on its own bounding-box crop (``scipy.ndimage.find_objects``), so the
cost grows with the organelles' size, not the stack's.

Measurements (columns of ``organelles.csv``)
--------------------------------------------
``volume_um3``
    Voxel count times the voxel volume.
``surface_um2``
    Area of a marching-cubes surface. The surface is the zero level of the
    mask's signed distance (``scipy.ndimage.distance_transform_edt`` with the
    voxel size as ``sampling``), resampled linearly to isotropic voxels and
    lightly smoothed (Gaussian, 0.7 voxel). Marching cubes on the raw binary
    mask overestimates a sphere's area by ~9 % (isotropic voxels) to ~14 %
    (z 2.5x coarser) because of the voxel staircase; this surface was within
    ~1 % of the true area for spheres 30-50 voxels across with slices 1-8x
    the pixel size, and within 4 % for spheres only 4 slices thick (the
    tests check 3 % at (10, 10, 10) and (20, 8, 8) nm).
    ``area_mesh_um2`` is the Blender mesh's area, merged from
    ``quantification.csv`` when the add-on has written one.
``equiv_diameter_um``
    Diameter of the sphere of the same volume.
``sphericity``
    pi^(1/3) (6 V)^(2/3) / A with V the volume the surface encloses (not the
    voxel count: for objects a few voxels across the two differ, and only
    the surface's own volume keeps sphericity <= 1): 1 for a sphere, smaller
    for any other shape.
``axis_major_um``, ``axis_middle_um``, ``axis_minor_um``
    Principal axis lengths from a PCA of the voxels (µm). A solid ellipsoid
    with semi-axis a has variance a²/5 along that axis, so a full axis length
    is 2 sqrt(5 λ) for the covariance eigenvalue λ. The covariance is that of
    the union of voxel boxes (voxel-centre covariance plus d²/12 per axis), so
    thin objects are not underestimated by one voxel.
``elongation``, ``flatness``
    major / middle and middle / minor axis length (both >= 1; 1 for a sphere).
``feret_um``
    Maximum Feret length: the largest distance between two points of the
    surface (pairs of convex-hull vertices, ``scipy.spatial.ConvexHull``).
``centroid_{x,y,z}_um``, ``extent_{x,y,z}_um``, ``z_min`` … ``x_max``, ``n_slices``
    Centre of mass, bounding-box size, bounding box (voxel indices, inclusive)
    and slices spanned.
``length_um``, ``branches`` (tubular classes only, mitochondria by default)
    From the 3-D skeleton (``skimage.morphology.skeletonize``) of the mask
    with its cavities filled and smoothed (Gaussian, 1.5 of the finest voxel side, threshold
    0.5, cavities filled again), so the roughness of a slice-by-slice
    segmentation does not sprout false branches. The skeleton
    voxels are joined to their 26 neighbours with edges of their physical
    length and reduced to a minimum spanning tree
    (``scipy.sparse.csgraph.minimum_spanning_tree``), which drops the
    redundant diagonal edges of staircase steps (loops are opened). The tree
    splits into *arms* at its junctions (voxels with three or more tree
    neighbours). ``length_um`` is the tree's length after Laplacian
    smoothing of the voxel positions (which removes the digital path's
    one-voxel zigzag) plus, at each end point, the distance to the surface
    along the skeleton's direction (thinning stops about one radius short
    of a tip). A *branch* is an arm: an unbranched skeleton (no junction)
    has ``branches = 0`` and a Y has 3. Terminal arms shorter than the
    tube's radius at their junction are bumps of the surface (spurs):
    removed before measuring and counting.
``nearest_<class>_um``
    Smallest distance between this organelle's surface and the surface of
    any organelle of ``<class>`` (for its own class: any *other* organelle
    of the class). Measured between marching-cubes surface vertices with
    ``scipy.spatial.cKDTree``, so touching organelles read ~0 and the value
    is a gap, not a distance between voxel centres. Empty where the class
    has no (other) organelle.
``touches_border``
    1 where the organelle touches a face of the stack: its measurements are
    partial.

Per class (``classes.csv``): count, count touching the border, total, mean,
median and quartile volume, volume fraction of the stack and of the ``cell``
class (where one exists), density (count per µm³ of stack and of cell),
median and quartiles of surface, sphericity, elongation and length.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree
from scipy.spatial import ConvexHull, QhullError, cKDTree
from scipy.spatial.distance import cdist

from .errors import FamousError
from .fileio import atomic_path, read_csv, write_csv
from .progress import ProgressFn, silent, sub
from .runfolder import LABELS_TIF, ORGANELLE_COLUMNS, ORGANELLES_CSV, RunFolder

TUBULAR_DEFAULT = ("mitochondria",)
CELL_CLASS = "cell"
CLASSES_CSV = "classes.csv"
QUANTIFICATION_CSV = "quantification.csv"
PLOTS_DIR = "plots"

# Gaussian smoothing (in resampled voxels) of the signed distance before
# marching cubes: removes the voxel staircase without shrinking the shape.
SURFACE_SIGMA = 0.7
# Cap on the voxels of one object's resampled surface grid; larger objects are
# meshed on a coarser isotropic grid (their relative area error stays small).
MAX_SURFACE_VOXELS = 8_000_000
# Crop margin (voxels) so the surface closes and the smoothing sees background.
_PAD = 3

MEASUREMENT_COLUMNS = (
    "voxels",
    "volume_um3",
    "surface_um2",
    "equiv_diameter_um",
    "sphericity",
    "axis_major_um",
    "axis_middle_um",
    "axis_minor_um",
    "elongation",
    "flatness",
    "feret_um",
    "centroid_x_um",
    "centroid_y_um",
    "centroid_z_um",
    "z_min",
    "z_max",
    "y_min",
    "y_max",
    "x_min",
    "x_max",
    "n_slices",
    "extent_x_um",
    "extent_y_um",
    "extent_z_um",
    "length_um",
    "branches",
    "touches_border",
)

CLASS_STAT_COLUMNS = ("surface_um2", "sphericity", "elongation", "length_um")


@dataclass
class Surface:
    """One organelle's surface mesh in world µm, vertices as (z, y, x)."""

    vertices: np.ndarray
    faces: np.ndarray

    @property
    def area(self) -> float:
        from skimage.measure import mesh_surface_area

        return float(mesh_surface_area(self.vertices, self.faces))

    @property
    def volume(self) -> float:
        return _enclosed_volume(self.vertices, self.faces)


def surface_mesh(mask: np.ndarray, voxel_um: Sequence[float], origin_um=(0.0, 0.0, 0.0)) -> Surface:
    """Smooth marching-cubes surface of a binary mask.

    Parameters
    ----------
    mask : ndarray of bool, shape (Z, Y, X)
        The object, with at least one background voxel on every side.
    voxel_um : sequence of 3 floats
        Voxel size (z, y, x) in µm.
    origin_um : sequence of 3 floats
        World position (z, y, x) of ``mask[0, 0, 0]``.

    Returns
    -------
    Surface
        Vertices in world µm (z, y, x) and triangle faces.

    Notes
    -----
    The zero level of the signed distance (positive inside) is resampled to
    isotropic voxels of the finest axis (coarser for very large objects, see
    ``MAX_SURFACE_VOXELS``), smoothed with a Gaussian of ``SURFACE_SIGMA``
    voxels, and meshed with ``skimage.measure.marching_cubes``. Where the
    smoothed surface encloses a volume more than 15 % off the voxel volume
    (objects only a few voxels thick), the unsmoothed distance is meshed.
    """
    from skimage.measure import marching_cubes

    vox = np.asarray(voxel_um, dtype=float)
    sdf = ndi.distance_transform_edt(mask, sampling=vox) - ndi.distance_transform_edt(
        ~mask, sampling=vox
    )
    extent = vox * (np.array(mask.shape) - 1)
    step = max(vox.min(), (np.prod(extent + vox) / MAX_SURFACE_VOXELS) ** (1 / 3))
    new_shape = np.maximum(np.round(extent / step).astype(int) + 1, 2)
    if np.array_equal(new_shape, mask.shape):
        grid = sdf.astype(np.float32)
        spacing = vox
    else:
        grid = ndi.zoom(
            sdf.astype(np.float32),
            (new_shape - 1) / (np.array(mask.shape) - 1),
            order=1,
            grid_mode=False,
        )
        spacing = extent / (np.array(grid.shape) - 1)
    smooth = ndi.gaussian_filter(grid, SURFACE_SIGMA)
    voxel_volume = float(mask.sum() * np.prod(vox))
    if smooth.max() > 0.0:
        verts, faces, _, _ = marching_cubes(smooth, 0.0, spacing=tuple(spacing))
        # Smoothing shrinks objects only a few voxels thick (and erases
        # thinner ones); their surface is taken from the raw signed distance.
        if abs(_enclosed_volume(verts, faces) - voxel_volume) <= 0.15 * voxel_volume:
            return Surface((verts + np.asarray(origin_um)).astype(np.float32), faces)
    verts, faces, _, _ = marching_cubes(grid, 0.0, spacing=tuple(spacing))
    return Surface((verts + np.asarray(origin_um)).astype(np.float32), faces)


def _enclosed_volume(verts: np.ndarray, faces: np.ndarray) -> float:
    """Volume enclosed by a closed triangle mesh (divergence theorem)."""
    a, b, c = (verts[faces[:, i]].astype(np.float64) for i in range(3))
    return abs(float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum()) / 6.0)


def principal_axes(coords_um: np.ndarray, voxel_um: Sequence[float]) -> np.ndarray:
    """Principal axis lengths (µm, largest first) of a set of voxels.

    Parameters
    ----------
    coords_um : ndarray, shape (N, 3)
        Voxel centres in µm.
    voxel_um : sequence of 3 floats
        Voxel size in µm along the same axes.

    Returns
    -------
    ndarray, shape (3,)
        Full axis lengths 2 sqrt(5 λ) of the solid ellipsoid with the same
        second moments (λ: eigenvalues of the covariance of the union of
        voxel boxes).
    """
    cov = np.cov(coords_um, rowvar=False, bias=True) if len(coords_um) > 1 else np.zeros((3, 3))
    cov = cov + np.diag(np.asarray(voxel_um, dtype=float) ** 2 / 12.0)
    lam = np.clip(np.linalg.eigvalsh(cov), 0.0, None)[::-1]
    return 2.0 * np.sqrt(5.0 * lam)


def max_feret(points: np.ndarray, chunk: int = 2048) -> float:
    """Largest distance between two of ``points`` (through their convex hull)."""
    pts = np.asarray(points, dtype=float)
    if len(pts) < 2:
        return 0.0
    try:
        pts = pts[ConvexHull(pts).vertices]
    except QhullError:
        pass  # flat or degenerate: every point is a candidate
    best = 0.0
    for i in range(0, len(pts), chunk):
        best = max(best, float(cdist(pts[i : i + chunk], pts[i:]).max()))
    return best


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
    from skimage.morphology import skeletonize

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
    """Length (µm) and branch count of a tubular object; see the module notes.

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


class _Object:
    """An organelle's surface vertices, centre and reach, for gap queries."""

    def __init__(self, oid: int, cls: str, surface: Surface, centroid: np.ndarray):
        self.id = oid
        self.cls = cls
        self.vertices = surface.vertices.astype(np.float64)
        self.centroid = centroid
        self.reach = float(np.linalg.norm(self.vertices - centroid, axis=1).max())


def _grid_reps(points: np.ndarray, h: float) -> tuple[np.ndarray, np.ndarray]:
    """One representative point per grid cell of side ``h``, and each point's cell."""
    cells = np.floor(points / h).astype(np.int64)
    cells -= cells.min(axis=0)
    dims = cells.max(axis=0) + 1
    key = (cells[:, 0] * dims[1] + cells[:, 1]) * dims[2] + cells[:, 2]
    _, first, cell_of = np.unique(key, return_index=True, return_inverse=True)
    return first, cell_of


def _surface_gap(pa: np.ndarray, pb: np.ndarray, finest: float) -> float:
    """Smallest distance between two point sets (surface vertices), exactly.

    A k-d tree's nearest-neighbour query is slow for points far from a large,
    flat surface (every leaf at a similar distance is visited), so the search
    is coarse to fine: on a grid of cells of side h, the gap between one
    representative point per cell bounds the true gap from above, and every
    cell farther than that bound plus two cell diagonals from the other set
    cannot hold the closest pair and is dropped. h halves until it reaches
    ``finest`` or few points remain; then the remaining points are compared
    exactly.
    """
    span = np.ptp(np.vstack([pa, pb]), axis=0)
    h = max(float(np.sqrt(span @ span)) / 16.0, finest)
    while True:
        if len(pa) * len(pb) <= 4_000_000:
            return float(min(cdist(pa[i : i + 1024], pb).min() for i in range(0, len(pa), 1024)))
        if h <= finest:
            # Close or touching surfaces: the bound is small, so the query is quick.
            upper = float(cdist(pa[:1], pb[:1])[0, 0])
            d = cKDTree(pb).query(pa, k=1, distance_upper_bound=upper * (1 + 1e-9) + 1e-12)[0]
            return float(min(d.min(), upper))
        first_a, cell_a = _grid_reps(pa, h)
        first_b, cell_b = _grid_reps(pb, h)
        reps_a, reps_b = pa[first_a], pb[first_b]
        da = cKDTree(reps_b).query(reps_a, k=1)[0]
        db = cKDTree(reps_a).query(reps_b, k=1)[0]
        slack = float(da.min()) + 2.0 * h * math.sqrt(3.0)
        pa = pa[(da <= slack)[cell_a]]
        pb = pb[(db <= slack)[cell_b]]
        h /= 2.0


def nearest_distances(
    objects: Sequence[_Object],
    class_names: Sequence[str],
    finest: float,
    progress: ProgressFn | None = None,
) -> list[dict]:
    """Per object, the surface gap (µm) to the nearest organelle of each class.

    ``finest`` (µm, the smallest voxel side) ends the coarse-to-fine search.
    """
    progress = progress or silent
    by_class = {c: [o for o in objects if o.cls == c] for c in class_names}
    cents = {c: np.array([o.centroid for o in v]).reshape(-1, 3) for c, v in by_class.items()}
    reach = {c: np.array([o.reach for o in v]) for c, v in by_class.items()}
    cache: dict[tuple[int, int], float] = {}
    out = []
    for a in objects:
        row = {}
        for c in class_names:
            others = by_class[c]
            # Centroid distance minus both reaches bounds the surface gap from
            # below, so candidates are visited nearest-first and most skipped.
            bound = np.linalg.norm(cents[c] - a.centroid, axis=1) - reach[c] - a.reach
            best = math.inf
            for j in np.argsort(bound, kind="stable"):
                b = others[j]
                if b.id == a.id:
                    continue
                if bound[j] >= best:
                    break
                key = (min(a.id, b.id), max(a.id, b.id))
                if key not in cache:
                    cache[key] = _surface_gap(a.vertices, b.vertices, finest)
                best = min(best, cache[key])
            row[f"nearest_{c}_um"] = None if math.isinf(best) else round(best, 5)
        out.append(row)
        progress(len(out) / len(objects), f"distances from organelle {len(out)}/{len(objects)}")
    return out


def measure_labels(
    labels: np.ndarray,
    voxel_size_nm: Sequence[float],
    classes: Mapping[int, str],
    tubular: Iterable[str] = TUBULAR_DEFAULT,
    class_names: Sequence[str] | None = None,
    progress: ProgressFn | None = None,
) -> list[dict]:
    """Measure every organelle of an instance label volume.

    Parameters
    ----------
    labels : ndarray of int, shape (Z, Y, X)
        Instance labels, 0 = background.
    voxel_size_nm : sequence of 3 floats
        Voxel size (z, y, x) in nm.
    classes : mapping int -> str
        Organelle id -> class name. Labels not in the mapping are ignored.
    tubular : iterable of str
        Classes that get ``length_um`` and ``branches`` (skeleton).
    class_names : sequence of str, optional
        Classes for the ``nearest_<class>_um`` columns (default: those present
        in ``classes``, sorted).
    progress : callable, optional
        ``progress(fraction, message)``.

    Returns
    -------
    list of dict
        One row per organelle present in ``labels``, in id order, with the
        columns of ``MEASUREMENT_COLUMNS`` plus ``id``, ``class`` and the
        ``nearest_<class>_um`` columns (``None`` where undefined).
    """
    if labels.ndim != 3:
        raise FamousError(
            f"the label volume has {labels.ndim} axes; a (Z, Y, X) volume is needed.",
            fix="export the labels as a 3-D stack, one id per organelle.",
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise FamousError(
            f"the label volume has dtype {labels.dtype}; integer instance ids are needed.",
            fix="save the labels as uint16 or uint32.",
        )
    vox = np.asarray(voxel_size_nm, dtype=float) / 1000.0
    if vox.shape != (3,) or not np.all(vox > 0):
        raise FamousError(
            f"voxel size {tuple(voxel_size_nm)} nm is not three positive numbers (z, y, x).",
            fix="give the voxel size in nm as z y x.",
        )
    tubular = set(tubular)
    progress = sub(progress, 0.0, 1.0)
    shape = np.array(labels.shape)
    slices = ndi.find_objects(labels)
    ids = [i + 1 for i, s in enumerate(slices) if s is not None and (i + 1) in classes]
    rows, objects = [], []
    for n, oid in enumerate(ids):
        sl = slices[oid - 1]
        lo = np.array([s.start for s in sl])
        hi = np.array([s.stop for s in sl])
        mask = np.pad(labels[sl] == oid, _PAD)
        origin = (lo - _PAD) * vox
        idx = np.argwhere(mask)
        coords = (idx + lo - _PAD) * vox
        volume = len(idx) * float(np.prod(vox))
        surf = surface_mesh(mask, vox, origin)
        area = surf.area
        axes = principal_axes(coords, vox)
        centroid = coords.mean(axis=0)
        row = {
            "id": oid,
            "class": classes[oid],
            "voxels": len(idx),
            "volume_um3": volume,
            "surface_um2": area,
            "equiv_diameter_um": (6.0 * volume / math.pi) ** (1 / 3),
            "sphericity": math.pi ** (1 / 3) * (6.0 * surf.volume) ** (2 / 3) / area
            if area
            else None,
            "axis_major_um": axes[0],
            "axis_middle_um": axes[1],
            "axis_minor_um": axes[2],
            "elongation": axes[0] / axes[1] if axes[1] else None,
            "flatness": axes[1] / axes[2] if axes[2] else None,
            "feret_um": max_feret(surf.vertices),
            "centroid_x_um": centroid[2],
            "centroid_y_um": centroid[1],
            "centroid_z_um": centroid[0],
            "z_min": int(lo[0]),
            "z_max": int(hi[0] - 1),
            "y_min": int(lo[1]),
            "y_max": int(hi[1] - 1),
            "x_min": int(lo[2]),
            "x_max": int(hi[2] - 1),
            "n_slices": int(hi[0] - lo[0]),
            "extent_x_um": (hi[2] - lo[2]) * vox[2],
            "extent_y_um": (hi[1] - lo[1]) * vox[1],
            "extent_z_um": (hi[0] - lo[0]) * vox[0],
            "length_um": None,
            "branches": None,
            "touches_border": int(bool(np.any(lo == 0) or np.any(hi == shape))),
        }
        if classes[oid] in tubular:
            row["length_um"], row["branches"] = skeleton_measures(mask, vox)
        rows.append(row)
        objects.append(_Object(oid, classes[oid], surf, centroid))
        progress(0.7 * (n + 1) / len(ids), f"measured organelle {n + 1}/{len(ids)}")
    names = sorted(set(classes.values())) if class_names is None else list(class_names)
    for row, near in zip(
        rows, nearest_distances(objects, names, float(vox.min()), sub(progress, 0.7, 1.0))
    ):
        row.update(near)
    progress(1.0, f"measured {len(rows)} organelles")
    return rows


def _quartiles(values: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return None, None, None
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return float(q1), float(med), float(q3)


def class_table(
    rows: Sequence[dict],
    class_names: Sequence[str],
    shape: Sequence[int],
    voxel_size_nm: Sequence[float],
    cell_class: str = CELL_CLASS,
) -> list[dict]:
    """Per-class statistics from the per-organelle rows.

    Parameters
    ----------
    rows : sequence of dict
        Output of :func:`measure_labels`.
    class_names : sequence of str
        Classes to report (a class with no organelle gets count 0).
    shape : sequence of 3 ints
        Stack shape (Z, Y, X).
    voxel_size_nm : sequence of 3 floats
        Voxel size (z, y, x) in nm.
    cell_class : str
        Name of the class whose total volume is "the cell" (fractions and
        densities per cell volume are reported where it has organelles).

    Returns
    -------
    list of dict
        One row per class; see ``classes.csv`` in the module notes.
    """
    stack_um3 = float(np.prod(shape) * np.prod(np.asarray(voxel_size_nm) / 1000.0))
    cell_um3 = sum(r["volume_um3"] for r in rows if r["class"] == cell_class) or None
    table = []
    for c in class_names:
        mine = [r for r in rows if r["class"] == c]
        vols = [r["volume_um3"] for r in mine]
        total = float(sum(vols))
        q1, med, q3 = _quartiles(vols)
        entry = {
            "class": c,
            "count": len(mine),
            "count_touching_border": sum(r["touches_border"] for r in mine),
            "total_volume_um3": total,
            "mean_volume_um3": total / len(mine) if mine else None,
            "median_volume_um3": med,
            "q1_volume_um3": q1,
            "q3_volume_um3": q3,
            "volume_fraction_stack": total / stack_um3,
            "volume_fraction_cell": total / cell_um3 if cell_um3 else None,
            "density_per_um3_stack": len(mine) / stack_um3,
            "density_per_um3_cell": len(mine) / cell_um3 if cell_um3 else None,
        }
        for col in CLASS_STAT_COLUMNS:
            q1, med, q3 = _quartiles([r.get(col) for r in mine])
            entry[f"median_{col}"], entry[f"q1_{col}"], entry[f"q3_{col}"] = med, q1, q3
        table.append(entry)
    return table


def class_table_columns() -> list[str]:
    """Column order of ``classes.csv``."""
    cols = [
        "class",
        "count",
        "count_touching_border",
        "total_volume_um3",
        "mean_volume_um3",
        "median_volume_um3",
        "q1_volume_um3",
        "q3_volume_um3",
        "volume_fraction_stack",
        "volume_fraction_cell",
        "density_per_um3_stack",
        "density_per_um3_cell",
    ]
    for col in CLASS_STAT_COLUMNS:
        cols += [f"median_{col}", f"q1_{col}", f"q3_{col}"]
    return cols


def read_labels(path: str | Path) -> np.ndarray:
    """Read an instance label volume (ZYX integers) from a TIFF file."""
    import tifffile

    path = Path(path)
    try:
        labels = tifffile.imread(path)
    except (OSError, ValueError, tifffile.TiffFileError) as exc:
        raise FamousError(
            f"cannot read the label volume ({exc}).", path, "give a TIFF of instance labels."
        ) from exc
    labels = np.squeeze(labels)
    if labels.ndim == 2:
        labels = labels[None]
    if labels.ndim != 3 or not np.issubdtype(labels.dtype, np.integer):
        raise FamousError(
            f"is a {labels.ndim}-D {labels.dtype} image; a 3-D integer label volume is needed.",
            path,
            "export one id per organelle as a (Z, Y, X) uint16 or uint32 stack.",
        )
    return labels


def export_labels(path: str | Path, labels, voxel_size_nm: Sequence[float]) -> Path:
    """Write instance labels that Fiji, napari and Amira open with the voxel size.

    Parameters
    ----------
    path : str or Path
        Output ``.tif`` file (written atomically).
    labels : ndarray of int, shape (Z, Y, X), or sequence of 2-D slices
        The labels; a sequence (anything with ``len`` and indexing, e.g. a
        memory map) is written slice by slice without loading the whole volume.
    voxel_size_nm : sequence of 3 floats
        Voxel size (z, y, x) in nm.

    Returns
    -------
    Path
        The file written.

    Notes
    -----
    Ids up to 65535 are written as uint16 in an ImageJ hyperstack (``unit``
    µm, ``spacing`` = slice thickness, X/Y resolution in pixels per µm).
    ImageJ has no 32-bit integer type, so more ids are written as uint32
    OME-TIFF with ``PhysicalSizeX/Y/Z`` in µm (Fiji opens it with
    Bio-Formats). Never 64-bit, never extra axes.
    """
    import tifffile

    path = Path(path)
    z, y, x = (float(v) / 1000.0 for v in voxel_size_nm)
    n = len(labels)
    first = np.asarray(labels[0])
    top = max(int(np.asarray(labels[k]).max()) for k in range(n))
    if top > np.iinfo(np.uint32).max or min(int(np.asarray(labels[k]).min()) for k in range(n)) < 0:
        raise FamousError(
            f"label ids must lie in 0..{np.iinfo(np.uint32).max}.",
            path,
            "renumber the organelles from 1 (skimage.segmentation.relabel_sequential).",
        )
    dtype = np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32
    shape = (n, *first.shape)

    def slices():
        for k in range(n):
            yield np.asarray(labels[k]).astype(dtype, copy=False)

    with atomic_path(path) as tmp:
        if dtype == np.uint16:
            tifffile.imwrite(
                tmp,
                slices(),
                shape=shape,
                dtype=dtype,
                imagej=True,
                resolution=(1.0 / x, 1.0 / y),
                metadata={"axes": "ZYX", "spacing": z, "unit": "um"},
            )
        else:
            tifffile.imwrite(
                tmp,
                slices(),
                shape=shape,
                dtype=dtype,
                ome=True,
                resolution=(1.0 / x, 1.0 / y),
                resolutionunit="MICROMETER",
                metadata={
                    "axes": "ZYX",
                    "PhysicalSizeX": x,
                    "PhysicalSizeXUnit": "µm",
                    "PhysicalSizeY": y,
                    "PhysicalSizeYUnit": "µm",
                    "PhysicalSizeZ": z,
                    "PhysicalSizeZUnit": "µm",
                },
            )
    return path


def merge_mesh_areas(rows: Sequence[dict], csv_path: str | Path) -> bool:
    """Add ``area_mesh_um2`` (the Blender meshes' areas) to organelle rows.

    Parameters
    ----------
    rows : sequence of dict
        Organelle rows with an ``id``; updated in place (blank where the
        organelle has no mesh).
    csv_path : str or Path
        ``quantification.csv`` written by the add-on, with columns ``id`` and
        ``area_um2`` (or ``area_mesh_um2``).

    Returns
    -------
    bool
        False (rows untouched) when the file does not exist.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        return False
    mesh_rows = read_csv(csv_path)
    column = next(
        (c for c in ("area_mesh_um2", "area_um2") if mesh_rows and c in mesh_rows[0]), None
    )
    if mesh_rows and (column is None or "id" not in mesh_rows[0]):
        raise FamousError(
            "has no id and area_um2 columns.",
            csv_path,
            "re-export the quantification from the Blender add-on, or delete the file.",
        )
    areas = {int(r["id"]): float(r[column]) for r in mesh_rows if r[column] not in ("", None)}
    for row in rows:
        row["area_mesh_um2"] = areas.get(int(row["id"]))
    return True


def plot_measurements(
    rows: Sequence[dict],
    class_names: Sequence[str],
    out_dir: str | Path,
    colors: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write PNG plots of the per-organelle measurements.

    One figure per measurement (volume, sphericity, length) with a histogram
    per class, and a volume-vs-sphericity scatter of all classes.

    Parameters
    ----------
    rows : sequence of dict
        Output of :func:`measure_labels`.
    class_names : sequence of str
        Classes in display order.
    out_dir : str or Path
        Folder for the PNG files (created).
    colors : mapping str -> str, optional
        Class name -> matplotlib colour.

    Returns
    -------
    list of Path
        The files written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    colors = dict(colors or {})
    written = []

    def values(cls, col):
        return np.array(
            [r[col] for r in rows if r["class"] == cls and r.get(col) is not None], dtype=float
        )

    def save(fig, name):
        FigureCanvasAgg(fig)
        with atomic_path(out_dir / name) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        written.append(out_dir / name)

    specs = (
        ("volume_um3", "volume (µm³)", True),
        ("sphericity", "sphericity (1 = sphere)", False),
        ("length_um", "skeleton length (µm)", False),
    )
    from matplotlib.ticker import MaxNLocator

    for col, label, log in specs:
        shown = [c for c in class_names if values(c, col).size]
        if not shown:
            continue
        ncol = min(3, len(shown))
        nrow = math.ceil(len(shown) / ncol)
        fig = Figure(figsize=(4.2 * ncol, 3.2 * nrow), layout="constrained")
        for i, cls in enumerate(shown):
            ax = fig.add_subplot(nrow, ncol, i + 1)
            v = values(cls, col)
            use_log = log and v.min() > 0 and v.max() / v.min() > 20
            bins = np.geomspace(v.min(), v.max(), 21) if use_log else 20
            if col == "sphericity":
                # One fixed scale, so classes compare at a glance.
                bins = np.linspace(0.0, 1.0, 21)
            ax.hist(v, bins=bins, color=colors.get(cls, "#7f7f7f"), edgecolor="black", lw=0.4)
            if use_log:
                ax.set_xscale("log")
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(f"{cls} (n = {v.size}, median {np.median(v):.3g})", fontsize=9)
            ax.set_xlabel(label)
            ax.set_ylabel("organelles")
        save(fig, f"{col}.png")

    shown = [c for c in class_names if values(c, "sphericity").size]
    if shown:
        fig = Figure(figsize=(6.5, 4.5), layout="constrained")
        ax = fig.add_subplot()
        for cls in shown:
            mine = [r for r in rows if r["class"] == cls and r.get("sphericity") is not None]
            ax.scatter(
                [r["volume_um3"] for r in mine],
                [r["sphericity"] for r in mine],
                s=12,
                alpha=0.75,
                color=colors.get(cls),
                label=f"{cls} (n = {len(mine)})",
            )
        ax.set_xscale("log")
        ax.set_xlabel("volume (µm³)")
        ax.set_ylabel("sphericity (1 = sphere)")
        ax.set_title("volume vs sphericity")
        ax.legend(fontsize=8)
        save(fig, "volume_vs_sphericity.png")
    return written


def _fmt(value):
    if isinstance(value, float | np.floating):
        return "" if not math.isfinite(value) else f"{float(value):.6g}"
    if isinstance(value, np.integer):
        return int(value)
    return "" if value is None else value


@dataclass
class QuantifyResult:
    """What :func:`quantify_run` wrote and measured."""

    organelles_csv: Path
    classes_csv: Path
    plots: list[Path]
    rows: list[dict]
    classes: list[dict]


def quantify_run(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    progress: ProgressFn | None = None,
    tubular: Iterable[str] = TUBULAR_DEFAULT,
    mesh_areas: str | Path | None = None,
) -> QuantifyResult:
    """Measure every organelle of a finished run and write tables and plots.

    Parameters
    ----------
    run_dir : str or Path
        A finished run folder with ``labels.tif`` (``famous run --labels``).
    out_dir : str or Path, optional
        Where to write; default the run folder itself.
    progress : callable, optional
        ``progress(fraction, message)``.
    tubular : iterable of str
        Classes that get skeleton length and branch count.
    mesh_areas : str or Path, optional
        The add-on's ``quantification.csv`` (mesh areas, merged as
        ``area_mesh_um2``); default: one in ``out_dir`` or the run folder.

    Returns
    -------
    QuantifyResult
        Paths written (``organelles.csv`` with the run's columns followed by
        the measurements, ``classes.csv``, ``plots/*.png``) and the tables.
    """
    run = RunFolder(run_dir)
    out = Path(out_dir) if out_dir is not None else run.path
    if run.labels_path is None:
        raise FamousError(
            f"has no {LABELS_TIF}, which quantification measures.",
            run.path,
            "rerun `famous run` with --labels (the same --out resumes from its cache).",
        )
    progress = progress or silent
    progress(0.0, "reading labels")
    labels = read_labels(run.labels_path)
    if tuple(labels.shape) != tuple(run.shape):
        raise FamousError(
            f"has shape {labels.shape} but the run's stack is {tuple(run.shape)}.",
            run.labels_path,
            "rerun `famous run --labels` so the labels match the run.",
        )
    original = read_csv(run.path / ORGANELLES_CSV)
    classes = {int(r["id"]): r["class"] for r in original}
    names = run.class_names
    measured = measure_labels(
        labels,
        run.voxel_size_nm,
        classes,
        tubular=tubular,
        class_names=names,
        progress=sub(progress, 0.05, 0.85),
    )
    del labels
    by_id = {r["id"]: r for r in measured}
    rows = []
    for r in original:
        row = dict(r)
        row.update(by_id.get(int(r["id"]), {}))
        # The pipeline's own columns keep their values exactly as written
        # (a re-run replaces only the measurement columns).
        row.update({k: r[k] for k in ORGANELLE_COLUMNS if k in r})
        rows.append(row)
    candidates = [out / QUANTIFICATION_CSV, run.path / QUANTIFICATION_CSV]
    for path in [Path(mesh_areas)] if mesh_areas is not None else candidates:
        if merge_mesh_areas(rows, path):
            break
    new_cols = [*MEASUREMENT_COLUMNS, *(f"nearest_{c}_um" for c in names), "area_mesh_um2"]
    columns = list(original[0].keys()) if original else list(ORGANELLE_COLUMNS)
    columns += [c for c in new_cols if c not in columns and any(c in r for r in rows)]
    progress(0.88, "writing tables")
    organelles_csv = out / ORGANELLES_CSV
    write_csv(organelles_csv, columns, ([_fmt(r.get(c)) for c in columns] for r in rows))
    table = class_table(measured, names, run.shape, run.voxel_size_nm)
    classes_csv = out / CLASSES_CSV
    cols = class_table_columns()
    write_csv(classes_csv, cols, ([_fmt(t[c]) for c in cols] for t in table))
    progress(0.92, "plotting")
    # Colours only: read them as written, without validating the whole recipe.
    colors = {c["name"]: c.get("color") for c in run.info["classes"]["class"]}
    plots = plot_measurements(measured, names, out / PLOTS_DIR, colors)
    progress(1.0, f"quantified {len(measured)} organelles")
    return QuantifyResult(organelles_csv, classes_csv, plots, rows, table)
