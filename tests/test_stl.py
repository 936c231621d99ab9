"""STL reading and voxelisation against shapes with known voxel sets and volumes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import trimesh

from famous_addon.core.compare import stl
from famous_addon.core.compare.score import match_objects

SPACING = (0.5, 0.25, 0.25)  # (dz, dy, dx) µm


def grid(shape=(40, 96, 96)):
    return stl.Grid(shape, SPACING)


def sphere(center_xyz, r, subdiv=4):
    m = trimesh.creation.icosphere(subdivisions=subdiv, radius=r)
    m.apply_translation(center_xyz)
    return m


def write(mesh, path: Path, ascii_=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    if ascii_:
        path.write_text(trimesh.exchange.stl.export_stl_ascii(mesh))
    else:
        path.write_bytes(trimesh.exchange.stl.export_stl(mesh))
    return path


def as_object(mesh, cls="x", watertight=True):
    return stl.MeshObject(
        "obj", cls, np.asarray(mesh.vertices, float), np.asarray(mesh.faces), Path("."), watertight
    )


def test_box_gives_exactly_the_voxel_centres_inside():
    lo, hi = np.array([1.3, 2.1, 0.7]), np.array([5.3, 6.6, 3.2])  # x, y, z µm
    box = trimesh.creation.box(bounds=[lo, hi])
    g = grid()
    labels, classes, notes = stl.voxelise([as_object(box, "box")], g)
    zz, yy, xx = np.indices(g.shape)
    want = (
        (xx * SPACING[2] >= lo[0]) & (xx * SPACING[2] <= hi[0])
        & (yy * SPACING[1] >= lo[1]) & (yy * SPACING[1] <= hi[1])
        & (zz * SPACING[0] >= lo[2]) & (zz * SPACING[0] <= hi[2])
    )  # fmt: skip
    np.testing.assert_array_equal(labels == 1, want)
    assert classes == {1: "box"} and notes == []


def test_sphere_volume_and_ascii_equals_binary(tmp_path):
    s = sphere((12.0, 12.0, 10.0), 6.0)
    g = grid()
    seg_b = stl.read_stl_segmentation(write(s, tmp_path / "bin" / "ball.stl"))
    seg_a = stl.read_stl_segmentation(write(s, tmp_path / "asc" / "ball.stl", ascii_=True))
    lab_b, _, _ = stl.voxelise(seg_b.objects, g)
    lab_a, _, _ = stl.voxelise(seg_a.objects, g)
    np.testing.assert_array_equal(lab_a, lab_b)
    vol = np.count_nonzero(lab_b) * g.voxel_volume_um3
    assert vol == pytest.approx(s.volume, rel=0.01)
    assert vol == pytest.approx(4 / 3 * math.pi * 6.0**3, rel=0.02)
    assert seg_b.warnings == [] and seg_b.objects[0].watertight


def test_overlapping_sphere_stls_give_the_lens_volume(tmp_path):
    r, d = 6.0, 5.0
    c = np.array([12.0, 12.0, 10.0])
    write(sphere(c - [d / 2, 0, 0], r), tmp_path / "A" / "ball.stl")
    write(sphere(c + [d / 2, 0, 0], r), tmp_path / "B" / "ball.stl")
    g = grid()
    la, ca, _ = stl.voxelise(stl.read_stl_segmentation(tmp_path / "A").objects, g)
    lb, cb, _ = stl.voxelise(stl.read_stl_segmentation(tmp_path / "B").objects, g)
    [s] = match_objects(la, ca, lb, cb, voxel_volume_um3=g.voxel_volume_um3)
    lens = math.pi * (4 * r + d) * (2 * r - d) ** 2 / 12
    assert s.volume_overlap * s.volume_b_um3 == pytest.approx(lens, rel=0.02)


def test_open_mesh_is_voxelised_by_vote_with_a_warning(tmp_path):
    s = sphere((12.0, 12.0, 10.0), 6.0)
    closed, _, _ = stl.voxelise([as_object(s)], grid())
    # cut a cap of triangles away: a hole several voxels across
    cap = s.triangles_center[:, 2] > 10.0 + 5.2
    holed = trimesh.Trimesh(s.vertices, s.faces[~cap], process=False)
    seg = stl.read_stl_segmentation(write(holed, tmp_path / "holed.stl"))
    assert len(seg.objects) == 1
    assert any("open" in w and "holed.stl" in w for w in seg.warnings)
    assert not seg.objects[0].watertight
    lab, _, _ = stl.voxelise(seg.objects, grid())
    diff = np.count_nonzero((lab > 0) != (closed > 0))
    assert diff / np.count_nonzero(closed) < 0.02


def test_broken_files_warn_and_the_rest_is_read(tmp_path):
    folder = tmp_path / "M1"
    write(sphere((5.0, 5.0, 5.0), 2.0, 2), folder / "mitochondria" / "m_1.stl")
    (folder / "mitochondria" / "m_2.stl").write_bytes(b"")
    (folder / "lysosome").mkdir()
    (folder / "lysosome" / "l_1.stl").write_text("this is not an stl file at all\n")
    good = trimesh.exchange.stl.export_stl(sphere((9.0, 9.0, 5.0), 2.0, 2))
    (folder / "lysosome" / "l_2.stl").write_bytes(good[: len(good) // 2])  # truncated
    seg = stl.read_stl_segmentation(folder)
    assert [o.class_name for o in seg.objects] == ["mitochondria"]
    for name in ("m_2.stl", "l_1.stl", "l_2.stl"):
        assert sum(name in w for w in seg.warnings) == 1, seg.warnings


def test_multi_object_stl_is_split_into_bodies(tmp_path):
    balls = [sphere((4.0 + 6 * i, 6.0, 5.0), 2.0, 2) for i in range(3)]
    one = write(trimesh.util.concatenate(balls), tmp_path / "mitochondria.stl")
    seg = stl.read_stl_segmentation(one)
    assert len(seg.objects) == 3
    assert {o.class_name for o in seg.objects} == {"mitochondria"}
    # one file per object: a file with two disconnected parts stays one object
    write(trimesh.util.concatenate(balls[:2]), tmp_path / "per_obj" / "lyso" / "lyso_1.stl")
    write(balls[2], tmp_path / "per_obj" / "lyso" / "lyso_2.stl")
    seg = stl.read_stl_segmentation(tmp_path / "per_obj")
    assert len(seg.objects) == 2
    seg = stl.read_stl_segmentation(tmp_path / "per_obj", split_bodies=True)
    assert len(seg.objects) == 3


def test_class_from_file_name_patterns(tmp_path):
    for name in ("Mito_001.stl", "Mito_002.stl", "LE 3.stl", "lysosome_7.stl"):
        write(sphere((5.0, 5.0, 5.0), 1.0, 1), tmp_path / name)
    seg = stl.read_stl_segmentation(
        tmp_path, class_map={"mito*": "mitochondria", "le *": "late_endosome"}
    )
    assert sorted(o.class_name for o in seg.objects) == [
        "late_endosome",
        "lysosome",
        "mitochondria",
        "mitochondria",
    ]


def test_units_axes_and_the_bounds_check(tmp_path):
    s = sphere((8.0, 6.0, 4.0), 2.0, 2)
    nm = s.copy()
    nm.apply_scale(1000.0)  # exported in nm
    path = write(nm, tmp_path / "ball.stl")
    g = grid()
    seg = stl.read_stl_segmentation(path)
    check = stl.check_bounds(seg.bounds_xyz(), g)
    assert check.fraction < 0.01 and check.suggested_scale == pytest.approx(1e-3)
    assert "scale 0.001" in check.message
    fixed = stl.read_stl_segmentation(path, transform=stl.Transform(scale=1e-3))
    np.testing.assert_allclose(fixed.bounds_xyz(), s.bounds, atol=1e-6)
    assert stl.check_bounds(fixed.bounds_xyz(), g).suggested_scale is None
    swapped = stl.read_stl_segmentation(
        path, transform=stl.Transform(scale=1e-3, axes="x-zy", offset=(0.0, 10.0, 0.0))
    )
    (x0, y0, z0), (x1, y1, z1) = s.bounds
    np.testing.assert_allclose(
        swapped.bounds_xyz(), [[x0, 10.0 - z1, y0], [x1, 10.0 - z0, y1]], atol=1e-6
    )
    with pytest.raises(stl.FamousError, match="permutation"):
        stl.Transform(axes="xxz").matrix()


def test_tiny_and_outside_objects_are_noted():
    g = grid()
    tiny = sphere((5.1, 5.1, 5.2), 0.05, 1)  # between voxel centres
    outside = sphere((500.0, 5.0, 5.0), 1.0, 1)
    lab, classes, notes = stl.voxelise([as_object(tiny, "t"), as_object(outside, "o")], g)
    assert np.count_nonzero(lab == 1) == 1 and np.count_nonzero(lab == 2) == 0
    assert classes == {1: "t", 2: "o"}
    assert any("smaller than a voxel" in n for n in notes)
    assert any("outside the stack" in n for n in notes)


def test_grid_resampling_keeps_the_extent():
    g = stl.Grid.from_nm((40, 96, 96), (500, 250, 250))
    assert g.voxel_size_um == SPACING
    c = g.resampled((1.0, 1.0, 1.0))
    assert c.shape == (20, 24, 24)
