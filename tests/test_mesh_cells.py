"""The cells a volume mesh is built on: shape interpolation between thick sections."""

import numpy as np
import pytest

from famous_addon.core.mesh_cells import coarsen, shape_field, thick_sections


def ellipsoid(radii_nm, voxel_nm, centre_nm):
    """(z, y, x) voxels whose centres lie inside an ellipsoid (nm)."""
    n = [int(np.ceil((c + r) / v)) + 2 for r, v, c in zip(radii_nm, voxel_nm, centre_nm)]
    grid = np.indices(n).reshape(3, -1).T
    inside = (((grid * np.asarray(voxel_nm) - centre_nm) / radii_nm) ** 2).sum(axis=1) <= 1
    return grid[inside]


def mesh_cells(vox, voxel_nm, max_voxels, n_slices=None):
    """The cells inside the interpolated shape, their size and origin."""
    field, cell_nm, origin = shape_field(vox, voxel_nm, max_voxels, n_slices)
    assert (field[[0, -1]] < 0).all() and (field[:, [0, -1]] < 0).all()
    assert (field[:, :, [0, -1]] < 0).all()  # every side outside: a closed surface
    return np.argwhere(field > 0), cell_nm, origin


def stacked(vox, voxel_nm):
    """One slab a section: the voxels as cells."""
    return vox, np.asarray(voxel_nm, float), np.zeros(3)


def positions(cells, cell_nm, origin_nm):
    return cells * cell_nm + origin_nm


def outline_distance(cells, cell_nm, origin_nm, centre, radii):
    """Distance (nm) from the centres of the cells on the shape's rim to the ellipsoid."""
    lo = cells.min(axis=0) - 1
    grid = np.zeros(tuple(cells.max(axis=0) - lo + 2), bool)
    grid[tuple((cells - lo).T)] = True
    inner = grid.copy()
    for axis in range(3):
        for step in (1, -1):
            inner &= np.roll(grid, step, axis=axis)
    rim = np.argwhere(grid & ~inner) + lo
    p = positions(rim, cell_nm, origin_nm) - centre
    q = np.linalg.norm(p / radii, axis=1)
    return np.abs(1 - 1 / q) * np.linalg.norm(p, axis=1)


def cone(radii):
    """(z, y, x) voxels of discs of the given radii (pixels), one a slice."""
    yy, xx = np.indices((61, 61)) - 30
    return np.concatenate(
        [
            np.column_stack([np.full(m.sum(), k), *np.nonzero(m)])
            for k, r in enumerate(radii)
            for m in [np.hypot(yy, xx) <= r]
        ]
    )


def test_only_sections_thicker_than_pixels_are_interpolated():
    assert not thick_sections((10.0, 10.0, 10.0))
    assert not thick_sections((15.0, 10.0, 10.0))
    assert thick_sections((16.0, 10.0, 10.0)) and thick_sections((50.0, 5.9, 5.9))


def test_thick_sections_are_interpolated_on_cubic_cells():
    voxel = (40.0, 10.0, 10.0)
    centre, radii = np.array([503.0, 611.0, 707.0]), np.array([150.0, 150.0, 150.0])
    vox = ellipsoid(radii, voxel, centre)
    cells, cell_nm, origin = mesh_cells(vox, voxel, 100_000)
    np.testing.assert_allclose(cell_nm, [10, 10, 10])
    # at each section the cells are that section's own voxels
    world = positions(cells, cell_nm, origin)
    for k in np.unique(vox[:, 0]):
        on = np.isclose(world[:, 0], k * voxel[0])
        got = {tuple(p) for p in np.round(world[on, 1:] / voxel[1:]).astype(int)}
        assert got == {tuple(p) for p in vox[vox[:, 0] == k, 1:]}
    exact = 4 / 3 * np.pi * radii.prod()
    assert len(cells) * cell_nm.prod() == pytest.approx(exact, rel=0.02)
    # the outline follows the sphere between sections: within a quarter of a section,
    # where stacked slabs leave ledges of up to half a section
    near = outline_distance(cells, cell_nm, origin, centre, radii)
    far = outline_distance(*stacked(vox, voxel), centre, radii)
    assert np.percentile(near, 95) < 0.25 * voxel[0] < np.percentile(far, 95)


def test_a_cone_narrows_steadily_between_sections():
    """Discs whose radius falls by 3 pixels a section: every sub-section between
    sections with a straight line on both sides has the radius on that line."""
    voxel = (50.0, 10.0, 10.0)
    vox = cone([27 - 3 * k for k in range(8)])
    cells, cell_nm, origin = mesh_cells(vox, voxel, 100_000)
    world = positions(cells, cell_nm, origin)
    for z in np.unique(world[:, 0]):
        if voxel[0] <= z <= 6 * voxel[0]:
            area = np.isclose(world[:, 0], z).sum()
            radius = 27 - 3 * z / voxel[0]
            assert np.sqrt(area / np.pi) == pytest.approx(radius, abs=0.5)


def test_a_gap_of_empty_sections_stays_empty():
    """Two parts of one label four sections apart are not bridged."""
    yy, xx = np.indices((41, 41)) - 20
    disc = np.argwhere(np.hypot(yy, xx) <= 15)
    vox = np.concatenate([np.column_stack([np.full(len(disc), k), disc]) for k in (0, 1, 6, 7)])
    voxel = (40.0, 10.0, 10.0)
    cells, cell_nm, origin = mesh_cells(vox, voxel, 100_000)
    z = positions(cells, cell_nm, origin)[:, 0]
    # each part closes within half a section beyond its last one
    assert not ((z > 1.5 * voxel[0]) & (z < 5.5 * voxel[0])).any()
    assert z.min() >= -0.5 * voxel[0] and z.max() <= 7.5 * voxel[0]


def test_large_organelles_get_larger_cells_in_place():
    voxel = (40.0, 10.0, 10.0)
    centre, radii = np.array([1000.0, 1500.0, 1500.0]), np.array([900.0, 1400.0, 1400.0])
    vox = ellipsoid(radii, voxel, centre)
    cells, cell_nm, origin = mesh_cells(vox, voxel, 20_000)
    assert len(cells) < 40_000 and cell_nm[1] > voxel[1]
    world = positions(cells, cell_nm, origin)
    np.testing.assert_allclose(world.mean(axis=0), centre, atol=cell_nm.max())
    exact = 4 / 3 * np.pi * radii.prod()
    assert len(cells) * cell_nm.prod() == pytest.approx(exact, rel=0.03)


def test_coarsen_keeps_small_organelles_and_merges_large_ones():
    vox = ellipsoid(np.array([300.0, 300, 300]), (10.0, 10, 10), np.array([400.0, 400, 400]))
    same, factors = coarsen(vox, (10.0, 10.0, 10.0), len(vox))
    np.testing.assert_array_equal(same, vox)
    np.testing.assert_array_equal(factors, [1, 1, 1])
    cells, factors = coarsen(vox, (10.0, 10.0, 10.0), len(vox) // 7)
    np.testing.assert_array_equal(factors, [2, 2, 2])
    assert len(cells) * 8 == pytest.approx(len(vox), rel=0.05)


def test_the_stack_end_cuts_an_organelle_flat():
    """A cone whose tip section is the stack's first slice goes on beyond it: it ends
    flat there, within half a section; inside the stack it narrows on beyond its tip."""
    voxel = (40.0, 10.0, 10.0)
    vox = cone([9 + 3 * k for k in range(6)])
    tip = (vox[:, 0] == 0).sum()

    def lowest(vox, n_slices):
        cells, cell_nm, origin = mesh_cells(vox, voxel, 100_000, n_slices=n_slices)
        z = positions(cells, cell_nm, origin)[:, 0] - vox[:, 0].min() * voxel[0]
        return z.min(), (z == z.min()).sum()

    z, area = lowest(vox, n_slices=6)
    assert z == -0.25 * voxel[0] and area >= 0.95 * tip
    # the same voxels three slices up, in a stack that goes on: a whole organelle
    z, area = lowest(vox + [3, 0, 0], n_slices=None)
    assert z == -0.25 * voxel[0] and area < 0.9 * tip
