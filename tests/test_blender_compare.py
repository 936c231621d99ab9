"""STL segmentations in the scene and the Compare operator, on the real bpy wheel."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import trimesh

pytestmark = pytest.mark.blender


def _sphere(centre, r):
    m = trimesh.creation.icosphere(subdivisions=3, radius=r)
    m.apply_translation(centre)
    return m


@pytest.fixture
def stl_folder(tmp_path):
    folder = tmp_path / "M1"
    for i, c in enumerate([(0.3, 0.3, 0.08), (0.9, 0.3, 0.08)]):
        p = folder / "mitochondria" / f"mito_{i + 1}.stl"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(trimesh.exchange.stl.export_stl(_sphere(c, 0.05)))
    (folder / "lysosome").mkdir()
    (folder / "lysosome" / "lyso_1.stl").write_bytes(
        trimesh.exchange.stl.export_stl(_sphere((0.6, 0.9, 0.08), 0.08))
    )
    (folder / "lysosome" / "broken.stl").write_text("not an stl")
    return folder


def test_import_builds_a_coloured_collection_tree(blender, stl_folder):
    from famous_addon.blender import measure, stl_import
    from famous_addon.blender.materials import srgb_to_linear

    res = stl_import.import_segmentation(stl_folder, "M1")
    assert res.objects == 3 and res.classes == {"lysosome": 1, "mitochondria": 2}
    assert len(res.warnings) == 1 and "broken.stl" in res.warnings[0]
    assert stl_import.segmentations() == ["M1"]
    subs = stl_import.class_collections("M1")
    assert set(subs) == {"mitochondria", "lysosome"}
    lyso = subs["lysosome"].objects[0]
    assert tuple(lyso.active_material.diffuse_color)[:3] == pytest.approx(
        srgb_to_linear((0.85, 0.12, 0.12))
    )
    # µm in, µm (Blender units) out: the mesh encloses the sphere's volume
    vol = measure.mesh_stats(lyso).volume_um3
    assert vol == pytest.approx(4 / 3 * math.pi * 0.08**3, rel=0.03)
    assert lyso["famous_class"] == "lysosome" and lyso["famous_segmentation"] == "M1"

    # importing again replaces, and a second segmentation gets its own tree and colour
    stl_import.import_segmentation(stl_folder, "M1")
    stl_import.import_segmentation(stl_folder, "M2")
    assert sorted(stl_import.segmentations()) == ["M1", "M2"]
    assert len([o for o in blender.data.objects if o.get("famous_segmentation") == "M1"]) == 3
    m2 = stl_import.class_collections("M2")["lysosome"].objects[0]
    assert tuple(m2.active_material.diffuse_color)[:3] == pytest.approx(
        srgb_to_linear((0.12, 0.35, 0.9))
    )


def test_visibility_per_segmentation_and_class(blender, stl_folder):
    from famous_addon.blender import stl_import

    stl_import.import_segmentation(stl_folder, "M1")
    stl_import.set_visible("M1", False, "mitochondria")
    assert stl_import.layer_collection("M1", "mitochondria").hide_viewport
    assert not stl_import.layer_collection("M1", "lysosome").hide_viewport
    stl_import.set_visible("M1", False)
    assert stl_import.layer_collection("M1").hide_viewport
    with pytest.raises(KeyError):
        stl_import.set_visible("M9", True)


def test_bounds_check_suggests_the_unit_scale(blender, tmp_path):
    from famous_addon.blender import stl_import
    from famous_addon.core.compare.stl import Grid, Transform

    p = tmp_path / "nm" / "mitochondria.stl"
    p.parent.mkdir()
    big = _sphere((300.0, 300.0, 80.0), 50.0)  # exported in nm
    p.write_bytes(trimesh.exchange.stl.export_stl(big))
    grid = Grid.from_nm((16, 160, 160), (10, 10, 10))
    res = stl_import.import_segmentation(p.parent, "M1", grid=grid)
    assert res.check.suggested_scale == pytest.approx(1e-3)
    assert any("scale 0.001" in w for w in res.warnings)
    res = stl_import.import_segmentation(p.parent, "M1", grid=grid, transform=Transform(1e-3))
    assert res.check.suggested_scale is None and res.warnings == []


def test_compare_operator_against_truth_stls(blender, phantom_run, tmp_path):
    import tifffile

    import famous_addon
    from famous_addon.core.compare.segmentations import read_classes_csv
    from famous_addon.core.compare.stl import write_object_stls

    phantom, run = phantom_run
    truth = tifffile.imread(phantom / "truth_labels.tif")
    classes = read_classes_csv(phantom / "truth.csv")
    write_object_stls(tmp_path / "M1", truth, classes, (0.01, 0.01, 0.01))
    famous_addon.register()
    try:
        c = blender.context.scene.famous.compare
        c.run = str(run)
        c.m1 = str(tmp_path / "M1")
        assert blender.ops.famous.import_segmentation(which="M1") == {"FINISHED"}
        assert blender.ops.famous.compare() == {"FINISHED"}
        rows = {r.name: r for r in c.rows}
        assert set(rows) == set(classes.values())
        assert {r.pair for r in c.rows} == {"automatic vs M1"}
        assert c.report.endswith("report.md") and Path(c.report).is_file()
        nucleus = rows["nucleus"]
        assert nucleus.precision == nucleus.recall == 1.0
        assert 0.9 < nucleus.volume_overlap <= 1.0
    finally:
        famous_addon.unregister()
