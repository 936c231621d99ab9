"""Point clouds: outline points, normals, world coordinates and outlier removal."""

import numpy as np
import pytest

from famous_addon.core.pointcloud import (
    PointStore,
    clean_grouped,
    mask_points,
    outline_points,
    to_world,
)


def test_outline_of_a_disk_with_outward_normals():
    yy, xx = np.mgrid[0:41, 0:41]
    mask = (yy - 20) ** 2 + (xx - 20) ** 2 <= 15**2
    pts, normals = mask_points(mask, x0=100, y0=50)
    radius = np.hypot(pts[:, 0] - 120, pts[:, 1] - 70)
    assert radius.min() > 13.5 and radius.max() < 15.5
    outward = (pts - [120, 70]) / radius[:, None]
    assert (np.sum(outward * normals, axis=1) > 0.5).mean() > 0.95
    everything, _ = mask_points(mask, 0, 0, mode="all")
    assert len(everything) == mask.sum()


def test_ring_outline_has_both_contours():
    yy, xx = np.mgrid[0:41, 0:41]
    r2 = (yy - 20) ** 2 + (xx - 20) ** 2
    ring = (r2 <= 15**2) & (r2 >= 8**2)
    pts, _ = mask_points(ring, 0, 0)
    radius = np.hypot(pts[:, 0] - 20, pts[:, 1] - 20)
    assert (radius < 10).any() and (radius > 13).any()


def test_outlines_of_several_masks_at_once_are_each_masks_own():
    yy, xx = np.mgrid[0:41, 0:41]
    r2 = (yy - 20) ** 2 + (xx - 20) ** 2
    masks = [r2 <= 15**2, (r2 <= 15**2) & (r2 >= 8**2), np.zeros((5, 7), bool), yy[:9, :30] < 4]
    origins = [(100, 50), (0, 0), (3, 3), (7, 400)]
    points, normals, counts = outline_points(masks, origins)
    assert counts[2] == 0 and len(points) == counts.sum()
    cut = np.cumsum(counts)[:-1]
    for mask, (x0, y0), p, n in zip(masks, origins, np.split(points, cut), np.split(normals, cut)):
        one_p, one_n = mask_points(mask, x0, y0)
        np.testing.assert_array_equal(p, one_p)
        np.testing.assert_array_equal(n, one_n)
    # the ring's inner outline has normals towards its hole, the outer ones away from it
    p, n = np.split(points, cut)[1], np.split(normals, cut)[1]
    radial = np.sum((p - 20) * n, axis=1) / np.hypot(*(p - 20).T)
    inner = np.hypot(*(p - 20).T) < 10
    assert (radial[inner] < 0).mean() > 0.9 and (radial[~inner] > 0).mean() > 0.9


def test_world_coordinates_follow_the_axis_convention():
    w = to_world(np.array([[10.0, 20.0]]), slice_index=3, voxel_size_nm=(40, 5, 4))
    assert w[0] == pytest.approx([10 * 0.004, 20 * 0.005, 3 * 0.04])


def test_outliers_removed_per_class(tmp_path):
    rng = np.random.default_rng(0)
    store = PointStore(tmp_path)
    # Streamed as slices would come: organelles interleaved, in pieces.
    clouds = []
    for centre in ([0, 0, 0], [5, 5, 5], [9, 0, 0]):
        d = rng.normal(size=(2000, 3))
        sphere = centre + d / np.linalg.norm(d, axis=1, keepdims=True)
        clouds.append(np.vstack([sphere, np.array(centre) + [[4, 0, 0], [0, -4, 0], [0, 0, 3.5]]]))
    for piece in range(4):
        for i, c in enumerate(clouds):
            part = c[piece::4]
            store.add(i, part, np.zeros_like(part))
    offsets, records = store.group(3, chunk=1000)
    assert list(np.diff(offsets)) == [2003, 2003, 2003]
    for i, c in enumerate(clouds):
        got = np.asarray(records[offsets[i] : offsets[i + 1], :3])
        assert sorted(map(tuple, got.round(4))) == sorted(map(tuple, c.astype(np.float32).round(4)))
    keep, stats = clean_grouped(
        records, offsets, np.array([0, 0, 1]), k=8, n_std=2.0, scratch=tmp_path / "d.f32"
    )
    for i in range(3):
        mask = keep[offsets[i] : offsets[i + 1]]
        got = np.asarray(records[offsets[i] : offsets[i + 1], :3])
        far = np.linalg.norm(got - got.mean(axis=0), axis=1) > 2
        assert not mask[far].any()  # the three far points go
        assert mask[~far].mean() > 0.97  # the surface stays
    assert stats[0]["removed"] >= 6 and stats[1]["removed"] >= 3
