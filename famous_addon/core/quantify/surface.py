"""An organelle's smooth surface: marching cubes on a smoothed signed distance.

See ``surface_um2`` and ``sphericity`` in :mod:`famous_addon.core.quantify`
for why the surface is made this way and how close its area is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import marching_cubes, mesh_surface_area

# Gaussian smoothing (in resampled voxels) of the signed distance before
# marching cubes: removes the voxel staircase without shrinking the shape.
SURFACE_SIGMA = 0.7
# Cap on the voxels of one object's resampled surface grid; larger objects are
# meshed on a coarser isotropic grid (their relative area error stays small).
MAX_SURFACE_VOXELS = 8_000_000


@dataclass
class Surface:
    """One organelle's surface mesh in world µm, vertices as (z, y, x)."""

    vertices: np.ndarray
    faces: np.ndarray

    @property
    def area(self) -> float:
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
    voxel_volume = float(mask.sum() * np.prod(vox))
    verts, faces = zero_level(grid, spacing, voxel_volume)
    return Surface((verts + np.asarray(origin_um)).astype(np.float32), faces)


def zero_level(grid: np.ndarray, spacing, volume: float) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes at the zero level of a signed distance (positive inside), smoothed.

    The grid is smoothed with a Gaussian of ``SURFACE_SIGMA`` voxels first.
    Smoothing shrinks objects only a few voxels thick (and erases thinner
    ones): where the smoothed surface encloses a volume more than 15 % off
    ``volume`` (in the units of ``spacing``), the raw distance is meshed.

    Returns
    -------
    vertices : (n, 3) float array
        In the units of ``spacing``, from the grid's first voxel.
    faces : (m, 3) int array
    """
    smooth = ndi.gaussian_filter(grid, SURFACE_SIGMA)
    if smooth.max() > 0.0:
        verts, faces, _, _ = marching_cubes(smooth, 0.0, spacing=tuple(spacing))
        if abs(_enclosed_volume(verts, faces) - volume) <= 0.15 * volume:
            return verts, faces
    verts, faces, _, _ = marching_cubes(grid, 0.0, spacing=tuple(spacing))
    return verts, faces


def _enclosed_volume(verts: np.ndarray, faces: np.ndarray) -> float:
    """Volume enclosed by a closed triangle mesh (divergence theorem)."""
    a, b, c = (verts[faces[:, i]].astype(np.float64) for i in range(3))
    return abs(float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum()) / 6.0)
