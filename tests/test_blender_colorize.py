"""Colouring organelles by a measurement, on the real bpy wheel."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.blender

VOLUMES = {1: 0.30, 2: 0.05, 3: 0.90, 4: 0.12}


def _luminance(rgb):
    return 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]


@pytest.fixture
def organelles(blender):
    """Four mitochondria and one lysosome, laid out as the scene builder does."""
    from famous_addon.blender.materials import class_material
    from famous_addon.blender.scene import ROOT

    bpy = blender
    root = bpy.data.collections.new(ROOT)
    bpy.context.scene.collection.children.link(root)
    objs = {}
    for cls, ids in (("mitochondria", VOLUMES), ("lysosome", {9: 0.2})):
        coll = bpy.data.collections.new(cls)
        root.children.link(coll)
        mat = class_material(cls, (0.8, 0.1, 0.1))
        for oid in ids:
            mesh = bpy.data.meshes.new(f"{cls}_{oid}")
            mesh.from_pydata([(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)], [], [(0, 1, 2)])
            mesh.materials.append(mat)
            obj = bpy.data.objects.new(f"{cls}_{oid}", mesh)
            coll.objects.link(obj)
            obj["id"], obj["class"] = oid, cls
            obj["volume_um3"], obj["area_um2"] = VOLUMES.get(oid, 0.2), 1.0
            objs[oid] = obj
    return objs


def _base_color(obj):
    mat = obj.material_slots[0].material
    rgba = mat.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value
    assert tuple(mat.diffuse_color) == pytest.approx(tuple(rgba))
    return tuple(rgba)[:3]


def test_colour_follows_the_measurement_order(organelles):
    from famous_addon.blender import colorize
    from famous_addon.blender.materials import srgb_to_linear

    legend = colorize.colorize("mitochondria", "volume_um3")
    assert (legend.vmin, legend.vmax) == pytest.approx((0.05, 0.90))
    assert legend.coloured == 4 and legend.missing == 0
    by_value = sorted(VOLUMES, key=VOLUMES.get)
    lum = [_luminance(_base_color(organelles[i])) for i in by_value]
    assert lum == sorted(lum) and len(set(lum)) == 4  # viridis brightens with the value
    ends = [srgb_to_linear(colorize.ramp_rgb(t)) for t in (0.0, 1.0)]
    assert _base_color(organelles[by_value[0]]) == pytest.approx(ends[0], abs=1e-6)
    assert _base_color(organelles[by_value[-1]]) == pytest.approx(ends[1], abs=1e-6)
    # the mesh keeps its class material, and other classes are untouched
    assert organelles[1].data.materials[0].name == "FAMOUS mitochondria"
    assert organelles[9].material_slots[0].link == "DATA"
    assert organelles[9].material_slots[0].material.name == "FAMOUS lysosome"
    assert colorize.current_legend().measurement == "volume_um3"
    stops = legend.stops(3)
    assert [v for v, _ in stops] == pytest.approx([0.05, 0.475, 0.90])


def test_measurements_from_the_table_then_reset(organelles, tmp_path):
    from famous_addon.blender import colorize
    from famous_addon.blender.materials import srgb_to_linear
    from famous_addon.core.fileio import write_csv

    table = tmp_path / "organelles.csv"
    rows = [(1, "mitochondria", 0.7, 2.0, 0), (2, "mitochondria", 0.4, 1.0, 2)]
    rows += [(3, "mitochondria", 0.9, "", 0), (9, "lysosome", 0.95, "", "")]
    write_csv(table, ["id", "class", "sphericity", "length_um", "branches"], rows)
    assert colorize.load_measurements(table) == 4
    assert organelles[1]["sphericity"] == pytest.approx(0.7) and organelles[2]["branches"] == 2
    assert "length_um" not in organelles[3] and "sphericity" not in organelles[4]
    assert "length_um" in colorize.numeric_properties(organelles.values())

    legend = colorize.colorize("mitochondria", "length_um", ramp="magma")
    assert legend.coloured == 2 and legend.missing == 2
    lum1, lum2 = (_luminance(_base_color(organelles[i])) for i in (1, 2))
    assert lum1 > lum2  # longer mitochondrion is brighter
    assert _base_color(organelles[3]) == pytest.approx(srgb_to_linear(colorize.MISSING_RGB))

    assert colorize.reset_colors("mitochondria") == 4
    assert all(organelles[i].material_slots[0].link == "DATA" for i in VOLUMES)
    assert organelles[1].material_slots[0].material.name == "FAMOUS mitochondria"
    assert colorize.current_legend() is None


def test_unknown_measurement_is_a_clear_error(organelles):
    from famous_addon.blender import colorize
    from famous_addon.core.errors import FamousError

    with pytest.raises(FamousError, match="Quantify"):
        colorize.colorize("mitochondria", "feret_um")
    with pytest.raises(FamousError, match="no organelles"):
        colorize.colorize("nucleus", "volume_um3")


def test_quantify_operator_stores_values_and_colours(organelles, tmp_path):
    """The panel's operators on a small run: table, object properties, legend."""
    import numpy as np
    from test_quantify import make_run

    import famous_addon

    bpy = pytest.importorskip("bpy")
    labels = np.zeros((12, 40, 80), np.uint16)
    for oid, x0 in ((1, 5), (2, 25), (3, 45)):
        labels[3:9, 10 : 14 + 2 * oid, x0 : x0 + 4 + 4 * oid] = oid
    labels[2:10, 25:35, 60:70] = 9
    classes = {1: "mitochondria", 2: "mitochondria", 3: "mitochondria", 9: "lysosome"}
    make_run(tmp_path / "out", labels, classes, (10.0, 10.0, 10.0))
    famous_addon.register()
    try:
        scene = bpy.context.scene
        scene.famous.output = str(tmp_path / "out")
        assert bpy.ops.famous.quantify_run() == {"FINISHED"}
        rows = {r.name: r for r in scene.famous.quantify.rows}
        assert rows["mitochondria"].count == 3 and rows["lysosome"].count == 1
        assert rows["lysosome"].median_sphericity > 0.5
        assert organelles[3]["length_um"] > organelles[1]["length_um"] > 0
        assert organelles[9]["sphericity"] == pytest.approx(rows["lysosome"].median_sphericity)
        assert organelles[4].get("sphericity") is None  # not in the run

        q = scene.famous.quantify
        q.cls, q.measurement = "mitochondria", "feret_um"
        assert bpy.ops.famous.colour_by() == {"FINISHED"}
        assert len(q.legend) == 5 and q.legend[0].value < q.legend[-1].value
        assert _luminance(_base_color(organelles[3])) > _luminance(_base_color(organelles[1]))
        assert bpy.ops.famous.reset_colours() == {"FINISHED"}
        assert organelles[3].material_slots[0].link == "DATA" and len(q.legend) == 0
    finally:
        famous_addon.unregister()
