"""Per-organelle size, shape and position: the rows of ``organelles.csv``.

Each organelle is measured on its own bounding-box crop
(``scipy.ndimage.find_objects``), so the cost grows with the organelles' size,
not the stack's. The columns are described in :mod:`famous_addon.core.quantify`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import cdist

from ..errors import FamousError
from ..progress import ProgressFn, sub
from . import TUBULAR_DEFAULT
from .proximity import OrganelleSurface, nearest_distances
from .skeleton import skeleton_measures
from .surface import surface_mesh

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
    vox = _check_labels(labels, voxel_size_nm)
    tubular = set(tubular)
    progress = sub(progress, 0.0, 1.0)
    slices = ndi.find_objects(labels)
    ids = [i + 1 for i, s in enumerate(slices) if s is not None and (i + 1) in classes]
    rows, objects = [], []
    for n, oid in enumerate(ids):
        row, obj = _measure_one(labels, oid, slices[oid - 1], classes[oid], vox, tubular)
        rows.append(row)
        objects.append(obj)
        progress(0.7 * (n + 1) / len(ids), f"measured organelle {n + 1}/{len(ids)}")
    names = sorted(set(classes.values())) if class_names is None else list(class_names)
    for row, near in zip(
        rows, nearest_distances(objects, names, float(vox.min()), sub(progress, 0.7, 1.0))
    ):
        row.update(near)
    progress(1.0, f"measured {len(rows)} organelles")
    return rows


def _check_labels(labels: np.ndarray, voxel_size_nm: Sequence[float]) -> np.ndarray:
    """The voxel size in µm (z, y, x), after checking the labels and the voxel size."""
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
    return vox


def _measure_one(
    labels: np.ndarray,
    oid: int,
    sl: tuple[slice, ...],
    cls: str,
    vox: np.ndarray,
    tubular: set[str],
) -> tuple[dict, OrganelleSurface]:
    """One organelle's row (without the proximity columns) and its surface.

    ``sl`` is the organelle's bounding box; it is measured on that crop,
    padded by ``_PAD`` voxels.
    """
    shape = np.array(labels.shape)
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
        "class": cls,
        "voxels": len(idx),
        "volume_um3": volume,
        "surface_um2": area,
        "equiv_diameter_um": (6.0 * volume / math.pi) ** (1 / 3),
        "sphericity": math.pi ** (1 / 3) * (6.0 * surf.volume) ** (2 / 3) / area if area else None,
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
    if cls in tubular:
        row["length_um"], row["branches"] = skeleton_measures(mask, vox)
    return row, OrganelleSurface(oid, cls, surf, centroid)
