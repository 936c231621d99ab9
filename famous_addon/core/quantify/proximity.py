"""Surface gaps between organelles: the ``nearest_<class>_um`` columns.

See ``nearest_<class>_um`` in :mod:`famous_addon.core.quantify`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist

from ..progress import ProgressFn, silent
from .surface import Surface


class OrganelleSurface:
    """An organelle's surface vertices, centre and reach, for gap queries.

    Parameters
    ----------
    oid : int
        The organelle's id.
    cls : str
        Its class.
    surface : Surface
        Its surface mesh in world µm.
    centroid : ndarray, shape (3,)
        Its centre of mass in µm; ``reach`` is the farthest vertex from it.
    """

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
    objects: Sequence[OrganelleSurface],
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
