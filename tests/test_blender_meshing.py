"""Both meshers on shapes with known volumes, on the real bpy wheel."""

import numpy as np
import pytest
from blender_fixtures import ellipsoid_surface, ellipsoid_voxels

from famous_addon.core.errors import FamousError
from famous_addon.core.pointcloud import clean_grouped

pytestmark = pytest.mark.blender

RADII = (1.0, 0.7, 0.5)
CENTRE = (3.0, 2.0, 1.0)
VOLUME = 4 / 3 * np.pi * np.prod(RADII)


def noisy_ellipsoid(seed=0, n=2000):
    """``n`` surface points plus 6 far outliers, cleaned by the core's outlier removal."""
    rng = np.random.default_rng(seed)
    points = ellipsoid_surface(n, RADII, CENTRE, seed)
    far = rng.normal(size=(6, 3))
    far = far / np.linalg.norm(far, axis=1, keepdims=True) * 2.5 + CENTRE
    cloud = np.vstack([points, far])
    keep = clean_grouped(cloud, np.array([0, len(cloud)]), np.zeros(1, int))[0]
    assert not keep[-6:].any(), "the core's outlier removal should catch the far points"
    return cloud[keep]


def check_clean(stats):
    assert stats.manifold
    assert stats.zero_area_faces == 0
    assert stats.faces > 100


@pytest.mark.parametrize("shape", ["uniform", "project"])
def test_hull_mesher_ellipsoid_volume(blender, shape):
    from famous_addon.blender import measure, meshing

    obj = meshing.hull_mesh("e", noisy_ellipsoid(), None, shape)
    stats = measure.mesh_stats(obj)
    check_clean(stats)
    assert stats.volume_um3 == pytest.approx(VOLUME, rel=0.03)
    # Only the result is left in the scene: no helper objects or meshes leak.
    assert list(blender.data.objects) == [obj]
    assert len(blender.data.meshes) == 1


def test_hull_mesher_lands_on_the_surface(blender):
    from famous_addon.blender import meshing

    obj = meshing.hull_mesh("e", noisy_ellipsoid(1), None, "project", stop_after="project")
    v = meshing.vertex_array(obj) - CENTRE
    # Distance to the true surface along the ray from the centre.
    r = np.linalg.norm(v, axis=1)
    on_surface = r / np.sqrt(((v / RADII) ** 2).sum(axis=1))
    err = np.abs(r - on_surface)
    assert np.median(err) < 0.005 and err.max() < 0.05


def test_hull_mesher_uses_normals(blender):
    """In-plane contour normals, as the pipeline writes them, give the same volume."""
    from famous_addon.blender import measure, meshing

    points = ellipsoid_surface(3000, RADII, seed=2)
    normals = points / np.asarray(RADII) ** 2
    normals[:, 2] = 0
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    stats = measure.mesh_stats(meshing.hull_mesh("e", points, normals, "project"))
    check_clean(stats)
    assert stats.volume_um3 == pytest.approx(VOLUME, rel=0.03)


def test_every_hull_step_can_be_shown(blender):
    from famous_addon.blender import measure, meshing

    points = noisy_ellipsoid(3, n=800)
    for step in meshing.HULL_STEPS:
        obj = meshing.hull_mesh(step, points, None, "project", stop_after=step)
        assert list(blender.data.objects) == [obj]
        if step == "clean":
            assert len(obj.data.polygons) == 0 and 0 < len(obj.data.vertices) <= len(points)
        else:
            stats = measure.mesh_stats(obj)
            assert stats.manifold
            assert stats.volume_um3 == pytest.approx(VOLUME, rel=0.06)
        meshing.remove_object(obj)


def test_clean_step_drops_points_off_the_surface(blender):
    """Noise the core's outlier removal missed: points 20 % off the surface."""
    from famous_addon.blender import measure, meshing

    points = ellipsoid_surface(2000, RADII, seed=4)
    d = np.random.default_rng(1).normal(size=(4, 3))
    near = 1.2 * d / np.sqrt(((d / RADII) ** 2).sum(axis=1, keepdims=True))
    cloud = np.vstack([points, near])
    kept = meshing.hull_mesh("c", cloud, None, "uniform", stop_after="clean")
    v = meshing.vertex_array(kept)
    assert 0.97 * len(points) <= len(v) <= len(points)
    assert not any(np.isclose(v, p, atol=1e-6).all(axis=1).any() for p in near)
    meshing.remove_object(kept)
    stats = measure.mesh_stats(meshing.hull_mesh("e", cloud, None, "uniform"))
    assert stats.volume_um3 == pytest.approx(VOLUME, rel=0.03)


def test_flat_points_are_refused(blender):
    from famous_addon.blender import meshing

    flat = np.column_stack([np.random.default_rng(0).random((50, 2)), np.zeros(50)])
    with pytest.raises(FamousError, match="span no volume"):
        meshing.hull_mesh("flat", flat)
    assert len(blender.data.objects) == 0


@pytest.mark.parametrize("max_voxels", [100_000, 10_000])
def test_volume_mesher_anisotropic_ellipsoid(blender, max_voxels):
    """Full resolution, and merged into coarser cells (3 x 3 pixels per cell)."""
    from famous_addon.blender import measure, meshing

    # 10 nm pixels, 30 nm slices: radii 0.4, 0.3, 0.24 µm.
    voxel_nm = (30.0, 10.0, 10.0)
    radii_vox = (8, 30, 40)
    vox = ellipsoid_voxels(radii_vox, (19, 63, 83))
    obj = meshing.volume_mesh("v", vox, voxel_nm, max_voxels=max_voxels)
    stats = measure.mesh_stats(obj)
    check_clean(stats)
    exact = 4 / 3 * np.pi * np.prod(np.asarray(radii_vox) * np.asarray(voxel_nm) / 1000)
    assert stats.volume_um3 == pytest.approx(exact, rel=0.03)
    assert stats.volume_um3 == pytest.approx(len(vox) * np.prod(voxel_nm) / 1e9, rel=0.03)
    # Placed in world µm: x = column * px, y = row * py, z = slice * dz.
    v = meshing.vertex_array(obj)
    centre = (v.min(axis=0) + v.max(axis=0)) / 2
    np.testing.assert_allclose(centre, [41 * 0.01, 31 * 0.01, 9 * 0.03], atol=0.01)


def test_volume_mesher_follows_a_sphere_between_thick_sections(blender):
    """40 nm sections of 10 nm pixels: the mesh follows the sphere between sections
    (shape interpolation), where slabs leave ledges."""
    from famous_addon.blender import measure, meshing

    voxel_nm = np.array([40.0, 10.0, 10.0])
    shape = np.array([11, 35, 35])
    vox = ellipsoid_voxels(150 / voxel_nm, tuple(shape))
    centre_um = (shape - 1) / 2 * voxel_nm / 1000

    def p95_nm(obj):
        xyz = meshing.vertex_array(obj)
        return np.percentile(np.abs(np.linalg.norm(xyz - centre_um[::-1], axis=1) - 0.15), 95) * 1e3

    smooth = meshing.volume_mesh("s", vox, voxel_nm)
    check_clean(measure.mesh_stats(smooth))
    assert measure.mesh_stats(smooth).volume_um3 == pytest.approx(4 / 3 * np.pi * 0.15**3, rel=0.03)
    slabs = meshing.volume_mesh("l", vox, voxel_nm, interpolate=False)
    assert p95_nm(smooth) < 0.2 * voxel_nm[0] and p95_nm(smooth) < 0.5 * p95_nm(slabs)


def test_an_organelle_of_a_few_voxels_in_thick_sections_is_meshed(blender):
    """Smoothing would erase it: its surface comes from the unsmoothed distance."""
    from famous_addon.blender import measure, meshing

    for vox in ([[3, 10, 10]], [[3, 10, 10], [3, 10, 11], [4, 10, 10]]):
        stats = measure.mesh_stats(meshing.volume_mesh("v", np.array(vox), (40.0, 10.0, 10.0)))
        assert stats.manifold and stats.zero_area_faces == 0
        # one voxel stands for 40 x 10 x 10 nm: a closed shape within a few of them
        assert 0.2 * len(vox) * 4e-6 < stats.volume_um3 < 2 * len(vox) * 4e-6
