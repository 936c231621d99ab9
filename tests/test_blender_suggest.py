"""Train's Suggest slices: pre-filled boxes drawn over the slices, corrected in Blender."""

from pathlib import Path

import numpy as np
import pytest

from famous_addon.cli import main
from famous_addon.core.annotations import read_yolo_mark
from famous_addon.core.fileio import read_csv

pytestmark = pytest.mark.blender

DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo_model"


def _boxes(folder: Path, k: int, shape) -> np.ndarray:
    from famous_addon.core.boxes import parse_yolo_lines

    txt = folder / f"slice_{k:05d}.txt"
    got = parse_yolo_lines(txt.read_bytes(), shape, None, txt)
    return np.array([(b.cls, b.x, b.y, b.x + b.w, b.y + b.h) for b in got]).reshape(-1, 5)


def test_suggest_draws_the_prefilled_boxes_and_saves_corrections(addon, phantom_run, tmp_path):
    bpy = addon
    from famous_addon.blender.scene import PLANE
    from famous_addon.blender.suggestions import COLLECTION
    from famous_addon.core.classes import load_classes

    phantom, _ = phantom_run
    s, t = bpy.context.scene.famous, bpy.context.scene.famous.train
    s.stack, s.classes, s.model = str(phantom / "stack.tif"), "fibsem", str(DEMO)
    first = tmp_path / "first"
    args = ["boxes-from-labels", str(phantom / "truth_labels.tif"), "--slices", "3,12"]
    args += ["--out", str(first), "--stack", str(phantom / "stack.tif"), "--neighbours"]
    assert main(args + ["--label-classes", str(phantom / "truth.csv")]) == 0
    t.annotations, t.suggest_out, t.suggest_n = str(first), str(tmp_path / "sug"), 2
    with pytest.raises(RuntimeError, match="no model is set"):
        s.model = ""
        bpy.ops.famous.suggest_slices()
    s.model = str(DEMO)
    assert bpy.ops.famous.suggest_slices() == {"FINISHED"}
    sug = tmp_path / "sug"
    picks = sorted(int(p.stem.split("_")[1]) for p in sug.glob("slice_*.png"))
    assert len(picks) == 2 and not {3, 12} & set(picks)
    assert s.status.startswith("slices ") and "Save corrections" in s.status

    # one outline a pre-filled box, at its slice's height, in its class's colour
    coll = bpy.data.collections[COLLECTION]
    shape = (160, 160)
    want = {k: _boxes(sug, k, shape) for k in picks}
    assert len(coll.objects) == sum(len(b) for b in want.values()) > 0
    classes = load_classes(DEMO / "classes.toml")
    dz, py, px = (v / 1000 for v in (10.0, 10.0, 10.0))
    obj = next(o for o in coll.objects if o["famous_slice"] == picks[0])
    xyz = np.array([obj.matrix_world @ v.co for v in obj.data.vertices])
    assert np.allclose(xyz[:, 2], (picks[0] + 0.1) * dz)  # just above the slice
    corner = np.array([xyz[:, 0].min() / px, xyz[:, 1].min() / py])
    rows = want[picks[0]]
    row = rows[np.argmin(np.abs(rows[:, 1:3] - corner).sum(axis=1))]
    assert np.abs(row[1:3] - corner).max() < 0.01
    spec = classes[int(row[0])]
    assert obj["famous_class"] == spec.name and len(obj.data.polygons) == 4  # a frame
    assert obj.active_material.name == f"FAMOUS {spec.name}"
    assert obj.color[0] == pytest.approx(srgb(spec.rgb[0]), abs=1e-4)
    # the plane shows the slice of most doubt, the first in suggestions.csv
    first_pick = int(read_csv(sug / "suggestions.csv")[0]["slice"])
    assert bpy.data.objects[PLANE]["famous_slice"] == first_pick == s.slice

    # only the shown slice's boxes are visible; moving the slider shows the other's
    assert all(o.hide_viewport == (o["famous_slice"] != first_pick) for o in coll.objects)
    s.slice = picks[0] if picks[0] != first_pick else picks[1]
    assert all(o.hide_viewport == (o["famous_slice"] != s.slice) for o in coll.objects)
    s.slice = 15 if 15 not in picks else 14  # not a suggested slice: all shown
    assert not any(o.hide_viewport for o in coll.objects)

    # corrections: one box deleted, one moved 10 px right, one duplicated 30 px down
    k = picks[0]
    mine = sorted((o for o in coll.objects if o["famous_slice"] == k), key=lambda o: o.name)
    bpy.data.objects.remove(mine[0])
    if len(mine) > 1:
        mine[1].location.x += 10 * px
    copy = mine[-1].copy()
    copy.data = mine[-1].data.copy()
    copy.location.y += 30 * py
    coll.objects.link(copy)
    # a box of the other suggested slice duplicated and moved to this one's height
    other = next(o for o in coll.objects if o["famous_slice"] != k)
    lifted = other.copy()
    lifted.data = other.data.copy()
    lifted.location.z += (k - other["famous_slice"]) * dz
    coll.objects.link(lifted)
    assert bpy.ops.famous.save_box_corrections() == {"FINISHED"}
    got = _boxes(sug, k, shape)
    # the top-left corners as the scene has them: mine[0] gone, mine[1] moved, a copy added
    here = [o for o in coll.objects if o["famous_slice"] == k] + [lifted]
    corners = [tuple(_corner(o, px, py)) for o in here]
    assert len(got) == len(corners) == len(want[k]) + 1
    assert np.allclose(sorted(map(tuple, got[:, 1:3])), sorted(corners), atol=0.01)
    if len(mine) > 1:
        moved = _corner(mine[1], px, py)
        assert np.isclose(got[:, 1:3], moved, atol=0.01).all(axis=1).any()
    others = picks[1]
    assert np.allclose(_boxes(sug, others, shape), want[others], atol=0.01)
    images, _ = read_yolo_mark(sug, len(classes))
    assert len(images) == 2  # still a YOLO_mark folder training reads
    assert bpy.ops.famous.save_box_corrections() == {"FINISHED"}  # saving again is fine
    # a file corrected in YOLO_mark meanwhile is never overwritten
    txt = sug / f"slice_{others:05d}.txt"
    txt.write_text(txt.read_text() + "0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(RuntimeError, match="changed outside Blender"):
        bpy.ops.famous.save_box_corrections()
    assert txt.read_text().endswith("0 0.5 0.5 0.1 0.1\n")

    # Train then learns from both folders, continuing the model that suggested
    from famous_addon.ui.train import _train_args

    args = _train_args(s)
    assert args[:2] == [str(first), str(sug)] and args[args.index("--init") + 1] == str(DEMO)
    # a voxel size set in the panel goes along (training chooses the extraction
    # recipes with it); without, training reads the one the folders record
    assert "--voxel-size" not in args and s.voxel_size_nm() is None
    s.voxel_size = (40.0, 6.0, 6.0)
    args = _train_args(s)
    at = args.index("--voxel-size")
    assert [float(v) for v in args[at + 1 : at + 4]] == [40.0, 6.0, 6.0]


def _corner(obj, px: float, py: float) -> np.ndarray:
    """An object's smallest x and y, in slice pixels."""
    xyz = np.array([obj.matrix_world @ v.co for v in obj.data.vertices])
    return np.array([max(xyz[:, 0].min() / px, 0.0), max(xyz[:, 1].min() / py, 0.0)])


def srgb(c: float) -> float:
    """An sRGB component as the linear value Blender stores."""
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def test_save_corrections_without_suggestions_is_an_error(addon):
    with pytest.raises(RuntimeError, match="no suggested slices"):
        addon.ops.famous.save_box_corrections()
