"""The panel's Train section: export slices to box, train, and detect with the result."""

import json
import shutil

import cv2
import numpy as np
import pytest

pytestmark = pytest.mark.blender


def test_export_box_and_train_from_the_panel(addon, phantom_run, tmp_path):
    pytest.importorskip("torch")
    phantom, _ = phantom_run
    s = addon.context.scene.famous
    t = s.train
    s.stack = str(phantom / "stack.tif")
    s.classes = str(phantom / "classes.toml")
    t.annotations = str(tmp_path / "ann")
    t.fraction = 0.2
    assert addon.ops.famous.export_annotation_slices() == {"FINISHED"}
    pngs = sorted((tmp_path / "ann").glob("slice_*.png"))
    assert len(pngs) == 3  # 20 % of 16 slices
    # the panel's default: each slice also between its neighbours, for training
    assert t.neighbours and len(list((tmp_path / "ann" / "neighbours").glob("*.png"))) == 3
    names = (tmp_path / "ann" / "obj.names").read_text().split()
    assert names[:2] == ["early_endosome", "late_endosome"]
    first = pngs[0]
    k = int(first.stem.split("_")[1])
    stack_slice = cv2.imread(str(first), cv2.IMREAD_UNCHANGED)
    import tifffile

    assert np.array_equal(stack_slice, tifffile.imread(phantom / "stack.tif", key=k))
    # exporting again would overwrite the user's boxes: refused, in the UI
    with pytest.raises(RuntimeError, match="never overwrites annotations"):
        addon.ops.famous.export_annotation_slices()

    # the user boxes the slices (here: the phantom's own boxes), then trains
    for png in pngs:
        shutil.copy(phantom / "boxes" / f"{png.stem}.txt", png.with_suffix(".txt"))
    with pytest.raises(RuntimeError, match="no model folder is set"):
        addon.ops.famous.train()
    t.model_out = str(tmp_path / "model")
    t.epochs = 1
    # the panel's default: self-training on the stack (below); first the boxes alone
    assert t.self_train
    t.self_train = False
    assert addon.ops.famous.train() == {"FINISHED"}
    assert s.source == "MODEL" and s.model == str(tmp_path / "model")
    assert s.status.startswith("model: ") and "mAP@0.5" in s.status
    net = cv2.dnn.readNetFromDarknet(
        str(tmp_path / "model" / "model.cfg"), str(tmp_path / "model" / "model.weights")
    )
    assert not net.empty()
    assert "channels=3" in (tmp_path / "model" / "model.cfg").read_text()
    # the export recorded the stack's voxel size, so training also chose each boxed
    # class's extraction recipe on the boxes, for `famous run --model`
    assert (tmp_path / "ann" / "source.json").is_file()
    report = json.loads((tmp_path / "model" / "report.json").read_text())
    assert report["extraction_calibration"] and set(report["extraction_calibration"]) <= set(names)

    # self-training on the panel's stack: a second round on pseudo-boxes, in report.json
    t.self_train, t.model_out = True, str(tmp_path / "model2")
    assert addon.ops.famous.train() == {"FINISHED"}
    report = json.loads((tmp_path / "model2" / "report.json").read_text())
    assert [r["round"] for r in report["self_training"]["rounds"]] == [0, 1]
    assert list((tmp_path / "model2" / "self-training" / "round-1" / "pseudo").glob("*.png"))
    assert s.model == str(tmp_path / "model2")
    # a stack without a voxel size cannot be run for pseudo-boxes: the boxes alone, said so
    bare = tmp_path / "bare.tif"
    tifffile.imwrite(bare, tifffile.imread(phantom / "stack.tif"))
    s.stack, s.voxel_size, t.model_out = str(bare), (0, 0, 0), str(tmp_path / "model3")
    assert addon.ops.famous.train() == {"FINISHED"}
    assert "self_training" not in json.loads((tmp_path / "model3" / "report.json").read_text())
    assert "not self-trained: the stack has no voxel size" in s.status


def test_training_in_another_python_reports_its_error_and_stops_on_cancel(addon, tmp_path):
    """A Blender without PyTorch trains in the preferences' Python (famous train there)."""
    import sys

    from famous_addon.core.errors import Cancelled, FamousError
    from famous_addon.ui.train import train_elsewhere

    with pytest.raises(FamousError, match="needs PyTorch.*Python for training"):
        train_elsewhere("", [], str(tmp_path))
    with pytest.raises(FamousError, match="no such Python"):
        train_elsewhere(str(tmp_path / "python"), [], str(tmp_path))
    # famous train's own error, as its last line
    args = [str(tmp_path / "none"), "--classes", "fibsem", "--out", str(tmp_path / "m")]
    work = train_elsewhere(sys.executable, args, str(tmp_path / "m"))
    with pytest.raises(FamousError, match=r"failed: .*none"):
        work(None)
    # cancelled at the first progress report: the process is stopped, nothing is trained
    (tmp_path / "ann").mkdir()
    args = [str(tmp_path / "ann"), "--classes", "fibsem", "--out", str(tmp_path / "m2")]
    work = train_elsewhere(sys.executable, args, str(tmp_path / "m2"))
    calls = []

    def progress(done, text):
        calls.append((done, text))
        raise Cancelled()

    with pytest.raises(Cancelled):
        work(progress)
    assert calls and "training in" in calls[0][1]
    assert not (tmp_path / "m2" / "model.weights").exists()
