"""blender_scripts/run_famous.py on the phantom, in-process with the bpy wheel."""

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import trimesh
from blender_fixtures import RUN_FAMOUS, load_run_famous

from famous_addon.core.classes import load_classes
from famous_addon.core.fileio import read_csv

pytestmark = pytest.mark.blender


def test_outputs_match_each_other(blender, headless):
    out, _, code = headless
    assert code == 0
    rows = read_csv(out / "quantification.csv")
    assert rows and list(rows[0]) == [
        "id",
        "class",
        "volume_um3",
        "area_um2",
        "vertices",
        "manifold",
    ]
    stls = sorted(p.relative_to(out / "meshes") for p in (out / "meshes").rglob("*.stl"))
    assert stls == sorted(Path(r["class"]) / f"{r['class']}_{r['id']}.stl" for r in rows)
    organelles = read_csv(out / "run" / "organelles.csv")
    assert sorted(int(r["id"]) for r in rows) == sorted(int(r["id"]) for r in organelles)
    for r in rows:
        assert r["manifold"] == "True"
        mesh = trimesh.load(out / "meshes" / r["class"] / f"{r['class']}_{r['id']}.stl")
        assert mesh.is_watertight
        # STL splits the quads into triangles its own way; volumes agree to 0.1 %.
        assert mesh.volume == pytest.approx(float(r["volume_um3"]), rel=1e-3)
    # The .blend holds the same objects in per-class collections.
    blender.ops.wm.open_mainfile(filepath=str(out / "famous.blend"))
    root = blender.data.collections["FAMOUS"]
    in_blend = sorted((c.name, o.name) for c in root.children for o in c.objects)
    assert in_blend == sorted((r["class"], f"{r['class']}_{r['id']}") for r in rows)
    # Each class meshed with its own mesher from the class config.
    config = load_classes(headless[1][3])
    for obj in root.all_objects:
        assert obj["mesher"] == config[config.index(obj["class"])].mesh.mesher
    assert not list(out.glob(".*")), "no temporary files are left behind"
    image = cv2.imread(str(out / "render.png"))
    assert image.shape == (90, 160, 3)
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 20
    # the legend: a swatch in each meshed class's colour exactly as its hex code says
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB).reshape(-1, 3).astype(int)
    for spec in config:
        if any(r["class"] == spec.name for r in rows):
            hex_rgb = np.array([int(spec.color[i : i + 2], 16) for i in (1, 3, 5)])
            assert (np.abs(rgb - hex_rgb).max(axis=1) <= 1).sum() >= 20, spec.name


def test_never_overwrites_without_flag(headless, capsys):
    out, args, _ = headless
    before = (out / "famous.blend").stat().st_mtime_ns
    assert load_run_famous().main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "famous.blend").stat().st_mtime_ns == before


def test_overwrite_with_the_volume_mesher(blender, headless, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(headless[0], out)
    before = read_csv(out / "quantification.csv")
    args = ["--run", str(out / "run"), "--out", str(out), "--mesher", "volume", "--overwrite"]
    assert load_run_famous().main([*args, "--resolution", "64", "36"]) == 0
    rows = read_csv(out / "quantification.csv")
    assert [r["id"] for r in rows] == [r["id"] for r in before]
    assert [r["volume_um3"] for r in rows] != [r["volume_um3"] for r in before]
    stls = sorted(p.relative_to(out / "meshes") for p in (out / "meshes").rglob("*.stl"))
    assert stls == sorted(Path(r["class"]) / f"{r['class']}_{r['id']}.stl" for r in rows)
    blender.ops.wm.open_mainfile(filepath=str(out / "famous.blend"))
    assert {o.get("mesher") for o in blender.data.collections["FAMOUS"].all_objects} == {"volume"}


def test_bad_arguments_are_explained(tmp_path, capsys):
    script = load_run_famous()
    assert script.main(["--run", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "run folder" in err
    assert script.main(["--boxes", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "--stack and --classes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        script.main(["--out", str(tmp_path)])
    assert exc.value.code == 2


def test_help_and_argv_after_double_dash():
    done = subprocess.run(
        [sys.executable, str(RUN_FAMOUS), "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "--mesher" in done.stdout
    script = load_run_famous()
    assert script.script_argv(["blender", "-b", "-P", "x.py", "--", "--out", "o"]) == ["--out", "o"]
    assert script.script_argv(["run_famous.py", "--out", "o"]) == ["--out", "o"]


def test_render_demo_from_the_saved_result(blender, headless, tmp_path, capsys):
    import importlib.util

    path = RUN_FAMOUS.with_name("render_demo.py")
    spec = importlib.util.spec_from_file_location("render_demo", path)
    render_demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render_demo)
    out, _, _ = headless
    png = tmp_path / "demo.png"
    args = ["--blend", str(out / "famous.blend"), "--out", str(png), "--resolution", "96", "54"]
    assert render_demo.main(args) == 0
    assert cv2.imread(str(png)).shape == (54, 96, 3)
    assert render_demo.main(["--blend", str(tmp_path / "none.blend"), "--out", str(png)]) == 2
    assert "none.blend" in capsys.readouterr().err


def test_writing_outputs_leaves_the_terminal_to_the_progress_bar(
    blender, headless, tmp_path, capfd
):
    from famous_addon.blender import export

    blender.ops.wm.open_mainfile(filepath=str(headless[0] / "famous.blend"))
    capfd.readouterr()
    paths = export.write_outputs(tmp_path / "out", (64, 36), title="quiet")
    assert paths["render"].is_file() and paths["blend"].is_file()
    said = capfd.readouterr()
    for noise in ("Info:", "Timer", "EGL", "Saved"):
        assert noise not in said.out + said.err, noise
