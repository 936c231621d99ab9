"""The grid a volume mesh is built on: thick sections interpolated, large organelles coarsened.

The volume mesher (:func:`famous_addon.blender.meshing.volume_mesh`) turns an
organelle's voxels into a surface. Two things make voxels a poor grid:

- **Thick sections.** On serial-section or SBEM stacks a slice is 3-10
  times thicker than a pixel. Meshing the voxels as they are stacks one slab
  per section, and every organelle shows the sections as ledges. Here
  (:func:`shape_field`) the shape is interpolated between sections instead
  (shape-based interpolation): each section's mask becomes a signed
  distance to its outline, that distance is carried from one section to
  the next by a monotone cubic, on sub-sections about as thick as a cell is
  wide, and the mesher takes its zero level. At each section the shape is
  the section's own mask; in between, an outline moves steadily from one
  section's to the next. Beyond an organelle's first and last section it
  closes as its outline was going, within half a section (a section stands
  for the half-sections either side of it).
- **Many voxels.** Above ``max_voxels`` the cells are larger than the
  voxels (:func:`coarsen`; meshing time grows with the cells, and the
  surface gains nothing visible from more than about 100k).

A cell ``c`` (z, y, x index) lies at ``c * cell_nm + origin_nm`` nm, where
the voxel (k, r, c) lies at ``(k, r, c) * voxel_size_nm``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Sections thicker than this many pixels are interpolated.
INTERPOLATE_ABOVE = 1.5


def thick_sections(voxel_size_nm) -> bool:
    """Whether slices are thicker than :data:`INTERPOLATE_ABOVE` pixels."""
    size = np.asarray(voxel_size_nm, dtype=float)
    return bool(size[0] > INTERPOLATE_ABOVE * size[1:].min())


def shape_field(voxels_zyx, voxel_size_nm, max_voxels: int, n_slices: int | None = None):
    """An organelle of thick sections as a signed distance interpolated between them.

    Parameters
    ----------
    voxels_zyx : (n, 3) int array
        (slice, row, column) of the organelle's voxels.
    voxel_size_nm : (z, y, x)
    max_voxels : int
        Cells grow (in y and x, and fewer sub-sections) so that the organelle
        holds about this many.
    n_slices : int, optional
        The stack's slices. An organelle on its first or last slice is cut
        there, not closed: its shape ends flat up to half a section beyond,
        as the voxels count it.

    Returns
    -------
    field : (Z, Y, X) float32 array
        Distance to the outline in nm, positive inside; every side of the
        field is outside.
    cell_nm : (3,) float array
        Cell size (z, y, x) in nm.
    origin_nm : (3,) float array
        Position (z, y, x) in nm of the cell (0, 0, 0).
    """
    vox = np.asarray(voxels_zyx, dtype=np.int64).reshape(-1, 3)
    size = np.asarray(voxel_size_nm, dtype=float)
    pixel = size[1:].min()
    # the cell edge at which the interpolated organelle has about max_voxels cells
    edge = max(pixel, (len(vox) * size.prod() / max_voxels) ** (1 / 3))
    g = max(1, int(np.floor(edge / pixel + 1e-9)))  # pixels per cell, in y and x
    f = max(1, int(np.round(size[0] / max(edge, g * pixel))))  # sub-sections per section
    masks, lo = _section_masks(vox, g)
    sdf = [_signed_distance(m, size[1:] * g) for m in masks]
    # the stack's first or last slice cuts the organelle (sdf[1] is slice lo[0])
    cut = (lo[0] == 0, n_slices is not None and lo[0] + len(sdf) - 3 >= n_slices - 1)
    _close_ends(sdf, masks, cut)
    layers = []
    last = len(sdf) - 1
    for k in range(last):
        a, b, c, d = sdf[max(k - 1, 0)], sdf[k], sdf[k + 1], sdf[min(k + 2, last)]
        # a monotone cubic (Fritsch-Butland slopes) through the four sections
        # around: it follows a rounded outline better than a straight line and,
        # unlike Catmull-Rom, never overshoots, so it adds no cell where both
        # sections beside are outside and leaves no hole where both are inside
        mb, mc = _slope(b - a, c - b), _slope(c - b, d - c)
        for j in range(f):
            t = j / f
            h01 = t * t * (3 - 2 * t)
            layers.append((1 - h01) * b + h01 * c + t * (1 - t) * ((1 - t) * mb - t * mc))
    layers.append(np.minimum(sdf[last], -pixel / 2))  # an empty section: outside
    field = np.stack(layers).astype(np.float32)
    cell_nm = np.array([size[0] / f, g * size[1], g * size[2]])
    # crop slice lo[0] - 1 is sub-section 0; block (0, 0) covers pixels lo[1:] .. lo[1:] + g - 1
    origin = np.array(
        [(lo[0] - 1) * size[0], (lo[1] + (g - 1) / 2) * size[1], (lo[2] + (g - 1) / 2) * size[2]]
    )
    return field, cell_nm, origin


def _slope(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """The slope at a section from the changes before and after it: their harmonic
    mean where both go the same way, else 0 (a monotone cubic)."""
    same = before * after > 0
    safe = np.where(same, before + after, 1.0)
    return np.where(same, 2 * before * after / safe, 0.0).astype(np.float32)


def _section_masks(vox: np.ndarray, g: int):
    """Each section's mask on blocks of g x g pixels (kept when half inside), with an empty
    section before and after, and an empty block border; and the crop's first voxel."""
    lo = vox.min(axis=0)
    lo[1:] -= g  # one empty block on each side, so every outline is closed
    rel = vox - lo
    dims = rel.max(axis=0) + 1
    rows, cols = -(-(dims[1] + g) // g), -(-(dims[2] + g) // g)
    counts = np.zeros((dims[0] + 2, rows, cols), np.int32)
    np.add.at(counts, (rel[:, 0] + 1, rel[:, 1] // g, rel[:, 2] // g), 1)
    return counts * 2 >= g * g, lo


def _signed_distance(mask: np.ndarray, sampling) -> np.ndarray:
    """Distance (nm) to the outline, which lies half a pixel outside the mask's
    pixels: positive inside, negative outside; ``None`` for an empty section."""
    if not mask.any():
        return None
    half = 0.5 * float(np.min(sampling))
    inside = ndimage.distance_transform_edt(mask, sampling=sampling)
    outside = ndimage.distance_transform_edt(~mask, sampling=sampling)
    return np.where(mask, inside - half, half - outside).astype(np.float32)


def _close_ends(sdf: list, masks, cut=(False, False)) -> None:
    """Give each empty section (in place) a distance that closes the shape beside it.

    Beyond an organelle's last section its outline goes on shrinking (or
    growing) as it did from the section before, but closes by half-way to
    the empty section at the latest: there, the distance is the last
    section's carried on linearly, and at most minus its size. A section
    alone, or one the stack's end cuts (``cut``: before the first section,
    after the last), closes half-way: a slab, as the voxels count it.
    """
    given = list(sdf)
    deepest = max((float(s.max()) for s in given if s is not None), default=1.0)
    for k, s in enumerate(given):
        if s is not None:
            continue
        flat = (k == 0 and cut[0]) or (k == len(given) - 1 and cut[1])
        closes = []
        for e in (k - 1, k + 1):
            if 0 <= e < len(given) and given[e] is not None:
                end, before = given[e], e - (k - e)
                close = -np.abs(end)
                if not flat and 0 <= before < len(given) and given[before] is not None:
                    close = np.minimum(2 * end - given[before], close)
                closes.append(close)
        if closes:
            sdf[k] = np.minimum.reduce(closes).astype(np.float32)
        else:  # between two empty sections: outside
            sdf[k] = np.full(masks[k].shape, -max(deepest, 1.0), np.float32)


def coarsen(voxels_zyx: np.ndarray, voxel_size_nm, max_voxels: int):
    """Merge voxels into coarser cells when there are more than ``max_voxels``.

    Cells are as close to cubes as the voxel size allows; a cell is kept when
    at least half of it belongs to the organelle.

    Returns
    -------
    cells : (m, 3) int array
        (z, y, x) cell indices.
    factors : (3,) int array
        Voxels per cell along z, y, x (all 1 when nothing was merged).
    """
    vox = np.asarray(voxels_zyx, dtype=np.int64)
    size = np.asarray(voxel_size_nm, dtype=float)
    if len(vox) <= max_voxels:
        return vox, np.ones(3, np.int64)
    cell = (len(vox) * size.prod() / max_voxels) ** (1 / 3)
    factors = np.maximum(1, np.ceil(cell / size)).astype(np.int64)
    coarse = vox // factors
    lo = coarse.min(axis=0)
    dims = coarse.max(axis=0) - lo + 1
    # One integer key per cell: a 1-D bincount is far faster than unique rows.
    counts = np.bincount(np.ravel_multi_index((coarse - lo).T, dims))
    keep = np.flatnonzero(counts * 2 >= factors.prod())
    return np.column_stack(np.unravel_index(keep, dims)) + lo, factors
