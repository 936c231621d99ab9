"""The extension zip as a user installs it: into a clean Blender user config, then the panel.

Blender is started in a process of its own (the bpy wheel) with its user
folders in a temporary directory, installs the zip with its own installer
(``extensions.package_install_files``, as *Install from Disk* does), and the
panel's operators run from the installed copy: detection with the demo model,
meshes, measurements, exporting slices to box and a one-epoch training, in
Blender and, with PyTorch blocked there as in a real Blender, in the Python
the add-on's preferences name. The
zip is built without wheels: the test environment already holds what they
install, and nothing may be downloaded here (``test_blender_build_addon.py``
checks the wheels).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import build_addon  # noqa: E402

pytestmark = pytest.mark.blender

SCRIPT = textwrap.dedent(
    """
    import json, shutil, sys
    from pathlib import Path
    import bpy

    zip_path, phantom, out = (Path(a) for a in sys.argv[1:4])
    done = {}
    bpy.ops.extensions.package_install_files(
        filepath=str(zip_path), repo="user_default", enable_on_install=True
    )
    done["enabled"] = sorted(a.module for a in bpy.context.preferences.addons)
    done["operator_module"] = sys.modules[bpy.types.FAMOUS_OT_run_detection.__module__].__file__
    s = bpy.context.scene.famous
    s.stack = str(phantom / "stack.tif")
    s.classes = str(phantom / "classes.toml")
    s.source = "MODEL"
    s.model = sys.argv[4]
    s.backend = "cpu"
    s.zoom_pass = False
    s.output = str(out / "panel")
    done["detect"] = list(bpy.ops.famous.run_detection())
    done["mesh"] = list(bpy.ops.famous.build_meshes())
    done["measure"] = list(bpy.ops.famous.measure_meshes())
    done["meshes"] = sum(row.count for row in s.mesh_table)
    t = s.train
    t.annotations = str(out / "ann")
    t.fraction = 0.2
    done["export"] = list(bpy.ops.famous.export_annotation_slices())
    for png in sorted((out / "ann").glob("slice_*.png")):
        shutil.copy(phantom / "boxes" / f"{png.stem}.txt", png.with_suffix(".txt"))
    t.model_out = str(out / "model")
    t.epochs = 1
    done["train"] = list(bpy.ops.famous.train())
    done["status"] = s.status

    # a Blender without PyTorch (as Blender ships): Train says what to set, then
    # trains in the Python the add-on's preferences name
    sys.modules["torch"] = None  # import torch now fails, as in Blender
    t.model_out = str(out / "model_elsewhere")
    try:
        bpy.ops.famous.train()
    except RuntimeError as e:
        done["no_torch"] = str(e)
    prefs = bpy.context.preferences.addons["bl_ext.user_default.famous"].preferences
    prefs.train_python = sys.argv[5]
    done["train_elsewhere"] = list(bpy.ops.famous.train())
    done["status_elsewhere"] = s.status
    print("RESULT " + json.dumps(done))
    """
)


def test_installed_zip_detects_meshes_measures_and_trains_from_the_panel(phantom_run, tmp_path):
    pytest.importorskip("bpy")
    pytest.importorskip("torch")
    phantom, _ = phantom_run
    assert (
        build_addon.main(
            [
                "--out",
                str(tmp_path / "dist"),
                "--platform",
                "linux-x64",
                "--python",
                "311",
                "--no-wheels",
            ]
        )
        == 0
    )
    (zip_path,) = (tmp_path / "dist").glob("*.zip")
    user = tmp_path / "user"
    env = {
        **os.environ,
        "BLENDER_USER_CONFIG": str(user / "config"),
        "BLENDER_USER_SCRIPTS": str(user / "scripts"),
        "BLENDER_USER_EXTENSIONS": str(user / "extensions"),
        "BLENDER_USER_DATAFILES": str(user / "datafiles"),
    }
    script = tmp_path / "install_and_use.py"
    script.write_text(SCRIPT)
    model = ROOT / "assets" / "demo_model"
    proc = subprocess.run(
        [sys.executable, str(script), str(zip_path), str(phantom), str(tmp_path), str(model)]
        + [sys.executable],  # the Python for training: this one has FAMOUS and PyTorch
        env=env,
        cwd=tmp_path,  # not the repository: the installed copy must be the one that runs
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    done = json.loads(lines[-1].removeprefix("RESULT "))
    assert "bl_ext.user_default.famous" in done["enabled"]
    assert done["operator_module"].startswith(str(user / "extensions"))
    for step in ("detect", "mesh", "measure", "export", "train"):
        assert done[step] == ["FINISHED"], step
    assert done["meshes"] > 0
    assert (tmp_path / "panel" / "quantification.csv").is_file()
    assert (tmp_path / "model" / "model.weights").is_file()
    # the trained model is the panel's detector now, as after a training in Blender
    assert "model: " in done["status"]
    assert "needs PyTorch" in done["no_torch"] and "Python for training" in done["no_torch"]
    assert done["train_elsewhere"] == ["FINISHED"]
    assert done["status_elsewhere"].startswith(f"model: {tmp_path / 'model_elsewhere'}")
    assert (tmp_path / "model_elsewhere" / "model.weights").is_file()
    report = json.loads((tmp_path / "model_elsewhere" / "report.json").read_text())
    assert report["command"].startswith("famous train ")
