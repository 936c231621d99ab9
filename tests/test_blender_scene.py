"""Building the scene from a phantom run: collections, objects, volumes, cancel."""

import numpy as np
import pytest
import tifffile

from famous_addon.core.fileio import read_csv
from famous_addon.core.runfolder import RunFolder

pytestmark = pytest.mark.blender


def by_class(rows):
    counts = {}
    for r in rows:
        counts[r["class"]] = counts.get(r["class"], 0) + 1
    return counts


def test_one_collection_per_class(blender, phantom_run):
    """The paper's hull mesher on every organelle of the phantom."""
    from famous_addon.blender import scene
    from famous_addon.blender.materials import colour_tag

    _, run_dir = phantom_run
    run = RunFolder(run_dir)
    organelles = scene.SceneBuilder(run, mesher="hull").build()
    root = blender.data.collections["FAMOUS"]
    assert [c.name for c in root.children] == run.class_names
    rows = run.organelles()
    assert len(organelles) == len(rows) > 0
    for coll in root.children:
        objs = list(coll.objects)
        assert len(objs) == by_class(rows).get(coll.name, 0)
        for obj in objs:
            assert obj.name == f"{coll.name}_{obj['id']}"
            assert obj["class"] == coll.name
            assert obj.active_material.name == f"FAMOUS {coll.name}"
    spec = run.classes()[0]
    # the class's hex colour as sRGB, stored scene-linear: #d62728 renders as #d62728
    linear = tuple(blender.data.materials[f"FAMOUS {spec.name}"].diffuse_color)[:3]
    srgb = [c * 12.92 if c <= 0.0031308 else 1.055 * c ** (1 / 2.4) - 0.055 for c in linear]
    assert srgb == pytest.approx(spec.rgb, abs=1e-4)
    assert {c.name: c.color_tag for c in root.children} == {
        s.name: colour_tag(s.rgb) for s in run.classes()
    }
    for o in organelles:
        assert o.stats.manifold and o.stats.zero_area_faces == 0
        assert o.obj["volume_um3"] == pytest.approx(o.stats.volume_um3)
        assert o.obj["slices"] == next(r for r in rows if r["id"] == o.id)["n_slices"]


def test_volume_mesher_matches_the_labels(blender, phantom_run):
    """Volume-mesher volumes against the run's own voxel counts (labels.tif)."""
    from famous_addon.blender import scene

    _, run_dir = phantom_run
    run = RunFolder(run_dir)
    organelles = scene.SceneBuilder(run, mesher="volume").build()
    rows = {r["id"]: r for r in run.organelles()}
    for o in organelles:
        assert o.stats.manifold and o.stats.zero_area_faces == 0
        # Organelles here are cut by the stack's top and bottom, so allow 6 %.
        assert o.stats.volume_um3 == pytest.approx(rows[o.id]["volume_um3"], rel=0.06)
        # Every face shows the class colour (no empty material slot left in use).
        slots = o.obj.material_slots
        used = {p.material_index for p in o.obj.data.polygons}
        assert {slots[i].material.name for i in used} == {f"FAMOUS {o.cls}"}


def test_cancel_leaves_nothing_and_keeps_the_previous_result(blender, phantom_run):
    from famous_addon.blender import scene

    _, run_dir = phantom_run
    first = scene.SceneBuilder(run_dir, mesher="volume").build()
    before = sorted(o.name for o in blender.data.objects)
    n_meshes = len(blender.data.meshes)
    builder = scene.SceneBuilder(run_dir, mesher="volume")
    steps = builder.steps()
    for _ in range(3):
        next(steps)
    builder.abort()
    assert sorted(o.name for o in blender.data.objects) == before
    assert len(blender.data.meshes) == n_meshes
    assert "FAMOUS (building)" not in blender.data.collections
    assert len(scene.scene_organelles()) == len(first)


def test_rebuild_replaces_the_result(blender, phantom_run):
    from famous_addon.blender import scene

    _, run_dir = phantom_run
    scene.SceneBuilder(run_dir, mesher="volume").build()
    again = scene.SceneBuilder(run_dir, mesher="volume").build()
    assert len(scene.scene_organelles()) == len(again)
    assert sorted(o.name for o in scene.scene_organelles()) == sorted(o.obj.name for o in again)


def test_stack_plane_scrubs_through_z(blender, phantom_run):
    from famous_addon.blender import scene

    phantom, run_dir = phantom_run
    plane = scene.plane_for_run(RunFolder(run_dir))
    stack = tifffile.imread(phantom / "stack.tif")
    for k in (0, 5, 15):
        assert scene.show_slice(k) == k
        assert plane.location.z == pytest.approx(k * 0.010)
        pixels = np.empty(stack.shape[1] * stack.shape[2] * 4, np.float32)
        blender.data.images[scene.PLANE].pixels.foreach_get(pixels)
        grey = pixels.reshape(stack.shape[1], stack.shape[2], 4)[..., 0]
        np.testing.assert_allclose(grey * 255, stack[k], atol=0.6)
    assert scene.show_slice(99) == 15


def test_volume_mesher_needs_labels(blender, phantom_run, tmp_path):
    import shutil

    from famous_addon.blender import scene
    from famous_addon.core.errors import FamousError

    _, run_dir = phantom_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("labels.tif", "cache"))
    with pytest.raises(FamousError, match="labels.tif"):
        scene.SceneBuilder(copy, mesher="volume").build()
    assert len(blender.data.objects) == 0
    assert read_csv(copy / "organelles.csv")
