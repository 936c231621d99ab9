"""The add-on: registration, and its operators against the headless script."""

import pytest
from blender_fixtures import panel_on_phantom

from famous_addon.core.errors import Cancelled
from famous_addon.core.fileio import read_csv

pytestmark = pytest.mark.blender


def test_register_and_unregister(blender):
    import famous_addon

    for _ in range(2):
        famous_addon.register()
        assert hasattr(blender.types.Scene, "famous")
        assert blender.context.scene.famous.classes == "fibsem"
        for op in (
            "run_detection",
            "build_meshes",
            "measure_meshes",
            "quantify_run",
            "cancel",
            "train",
        ):
            assert hasattr(blender.types, f"FAMOUS_OT_{op}")
        assert hasattr(blender.types, "FAMOUS_PT_main")
        famous_addon.unregister()
        assert not hasattr(blender.types.Scene, "famous")
        assert not hasattr(blender.types, "FAMOUS_PT_main")


def test_operators_match_the_headless_script(addon, phantom_run, headless, tmp_path):
    s = panel_on_phantom(addon, phantom_run[0], tmp_path / "ui")
    assert addon.ops.famous.run_detection() == {"FINISHED"}
    assert addon.ops.famous.build_meshes() == {"FINISHED"}
    assert addon.ops.famous.measure_meshes() == {"FINISHED"}
    ui_rows = read_csv(tmp_path / "ui" / "quantification.csv")
    assert sum(row.count for row in s.mesh_table) == len(ui_rows) > 0
    plane = addon.data.objects["FAMOUS stack slice"]
    s.slice = 7  # the panel's slider scrubs the plane through z
    assert plane.location.z == pytest.approx(7 * 0.010)
    assert plane["famous_slice"] == 7

    cli_out, _, code = headless
    assert code == 0
    assert read_csv(cli_out / "quantification.csv") == ui_rows


def test_panel_detection_with_the_demo_model_and_flip_views(addon, phantom_run, tmp_path):
    import json
    from pathlib import Path

    phantom, _ = phantom_run
    s = addon.context.scene.famous
    assert s.flip_views == "MODEL" and s.zoom_pass
    s.stack = str(phantom / "stack.tif")
    s.classes = str(phantom / "classes.toml")
    s.source = "MODEL"
    s.model = str(Path(__file__).resolve().parents[1] / "assets" / "demo_model")
    s.backend = "cpu"
    s.flip_views = "2"
    s.zoom_pass = False
    s.output = str(tmp_path / "ui")
    assert addon.ops.famous.run_detection() == {"FINISHED"}
    run = json.loads((tmp_path / "ui" / "run" / "run.json").read_text())
    assert run["boxes"]["flip_views"] == 2 and run["boxes"]["backend"] == "cpu"
    assert "zoom_pass" not in run["boxes"]  # the demo model's, turned off in the panel
    assert run["n_detections"] > 0


def test_operator_errors_are_reports(addon, tmp_path):
    s = addon.context.scene.famous
    s.output = str(tmp_path / "empty")
    # No run folder there: a report (RuntimeError from bpy.ops), not a Python traceback.
    with pytest.raises(RuntimeError, match="not a FAMOUS run folder"):
        addon.ops.famous.build_meshes()
    with pytest.raises(RuntimeError, match="no stack is set"):
        addon.ops.famous.run_detection()
    assert not s.running


def test_background_job_progress_and_cancel():
    import threading

    from famous_addon.ui.jobs import BackgroundJob

    gate, reached = threading.Event(), threading.Event()

    def work(progress):
        progress(0.5, "half")
        reached.set()
        gate.wait(10)
        progress(0.9, "never reached after cancel")
        return "finished"

    job = BackgroundJob(work).start()
    assert reached.wait(10)
    job.cancel()
    gate.set()
    job.join(10)
    assert job.state == "cancelled" and job.fraction == 0.5

    done = BackgroundJob(lambda progress: "ok").start()
    done.join(10)
    assert (done.state, done.result) == ("done", "ok")


def test_cancelled_detection_leaves_a_resumable_run(phantom_run, tmp_path):
    from famous_addon.blender import workflow
    from famous_addon.core.request import RunRequest
    from famous_addon.ui.jobs import BackgroundJob

    phantom, _ = phantom_run
    request = RunRequest(
        phantom / "stack.tif", phantom / "classes.toml", tmp_path, boxes=phantom / "boxes"
    )
    calls = []

    def work(progress):
        def stop_midway(fraction, message):
            calls.append(fraction)
            if fraction > 0.3:
                raise Cancelled()
            progress(fraction, message)

        return workflow.detect(request, progress=stop_midway)

    job = BackgroundJob(work).start()
    job.join(60)
    assert job.state == "cancelled"
    finished = BackgroundJob(lambda p: workflow.detect(request, progress=p)).start()
    finished.join(60)
    assert finished.state == "done", finished.error
    assert (tmp_path / "run" / "labels.tif").is_file()


def test_a_hyperstack_needs_the_panels_channel_and_the_plane_shows_it(addon, phantom_run, tmp_path):
    import json

    import numpy as np
    import tifffile

    phantom, _ = phantom_run
    stack = tifffile.imread(phantom / "stack.tif")
    both = np.stack([stack, 255 - stack], axis=1)  # ZCYX: the stack and its negative
    hyper = tmp_path / "hyper.tif"
    tifffile.imwrite(hyper, both, imagej=True, metadata={"axes": "ZCYX", "spacing": 0.01},
                     resolution=(1 / 0.005, 1 / 0.005))  # fmt: skip
    s = addon.context.scene.famous
    s.stack, s.voxel_size = str(hyper), (10.0, 5.0, 5.0)
    s.classes = str(phantom / "classes.toml")
    s.source, s.boxes = "BOXES", str(phantom / "boxes")
    s.output = str(tmp_path / "ui")
    assert s.channel == -1
    with pytest.raises(RuntimeError, match="hyperstack with 2 channels"):
        addon.ops.famous.run_detection()
    s.channel = 1
    assert addon.ops.famous.run_detection() == {"FINISHED"}
    run = json.loads((tmp_path / "ui" / "run" / "run.json").read_text())
    assert run["input"]["channel"] == 1
    assert addon.ops.famous.build_meshes() == {"FINISHED"}
    plane = addon.data.objects["FAMOUS stack slice"]
    assert plane["famous_channel"] == 1
    # the plane shows channel 1, the negative: its pixels are 255 - the stack's
    from famous_addon.blender import scene

    assert scene.show_slice(3) == 3
    pixels = np.empty(stack.shape[1] * stack.shape[2] * 4, np.float32)
    addon.data.images[scene.PLANE].pixels.foreach_get(pixels)
    grey = pixels.reshape(stack.shape[1], stack.shape[2], 4)[..., 0]
    np.testing.assert_allclose(grey * 255, 255 - stack[3], atol=0.6)


def test_panel_errors_name_panel_fields_and_overwrite_replaces_the_run(
    addon, phantom_run, tmp_path
):
    import json
    from pathlib import Path

    s = panel_on_phantom(addon, phantom_run[0], tmp_path / "ui")
    assert addon.ops.famous.run_detection() == {"FINISHED"}
    # other settings into the same Output: the run there cannot be resumed
    s.source = "MODEL"
    s.model = str(Path(__file__).resolve().parents[1] / "assets" / "demo_model")
    s.backend = "cpu"
    with pytest.raises(RuntimeError) as refused:
        addon.ops.famous.run_detection()
    message = str(refused.value)
    assert "Overwrite" in message and "Output" in message and "--" not in message
    run = json.loads((tmp_path / "ui" / "run" / "run.json").read_text())
    assert run["boxes"]["kind"] != "yolo_darknet_opencv", "the earlier run is untouched"
    s.overwrite = True
    assert addon.ops.famous.run_detection() == {"FINISHED"}
    run = json.loads((tmp_path / "ui" / "run" / "run.json").read_text())
    assert run["boxes"]["kind"] == "yolo_darknet_opencv" and run["status"] == "complete"


def test_every_core_fix_the_panel_shows_is_in_panel_words():
    from famous_addon.ui.jobs import for_panel

    fixes = [
        "choose another --out folder for this input.",
        "add --resume to continue it, or choose another --out folder.",
        "choose a new or empty --out folder.",
        "wait for it to finish (or stop it), or choose another --out folder.",
        "add --overwrite, or choose another output folder.",
        "run the pipeline again with --labels, or mesh with --mesher hull.",
    ]
    for fix in fixes:
        assert "--" not in for_panel(fix), fix
