"""The panel's "Train" section: export slices to box, then train the detector.

Settings live in ``Scene.famous.train``. The operators call the same
functions as ``famous annotate-pick`` and ``famous train``
(:func:`~famous_addon.core.annotations.export_for_annotation`,
:func:`~famous_addon.core.detector.train.train_model`, with *Self-train on the
stack* :func:`~famous_addon.core.selftrain.self_train`) in a background thread, with
progress (epoch, loss, ETA) and cancel; a cancelled training resumes from its
checkpoint when Train is pressed again. In a Blender without PyTorch, Train
runs ``famous train`` in the Python the add-on's preferences name
(:func:`train_elsewhere`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import threading
import time
from pathlib import Path

import bpy

from ..core.classes import load_classes
from ..core.detector.config import TrainConfig, require_torch
from ..core.errors import FamousError
from .jobs import BackgroundOperator, report_errors
from .panels import SubPanel
from .preferences import train_python
from .properties import abspath


def _annotations(t) -> Path:
    folder = abspath(t.annotations)
    if not folder:
        raise FamousError(
            "no annotation folder is set.", fix="choose the Annotations folder under Train."
        )
    return Path(folder)


class FAMOUS_OT_export_annotation_slices(BackgroundOperator, bpy.types.Operator):
    """Write ~1% of the stack's slices as PNGs (with obj.names) to box with YOLO_mark"""

    bl_idname = "famous.export_annotation_slices"
    bl_label = "Export slices to box"

    starting = "exporting slices"
    noun = "export"

    def work_for(self, context):
        # OpenCV: loaded on first use, not at Blender's start-up.
        from ..core.annotations import export_for_annotation
        from ..core.stack import open_stack

        settings = context.scene.famous
        t = settings.train
        stack = open_stack(
            settings.stack_path(), settings.voxel_size_nm(), settings.channel_index()
        )
        classes = load_classes(settings.classes_arg())
        out = _annotations(t)

        def work(progress):
            picks = export_for_annotation(
                stack, classes, out, t.fraction, progress=progress, neighbours=t.neighbours
            )
            return out, picks

        return work

    def done(self, context, result):
        out, picks = result
        return f"{len(picks)} slices in {out}: box them with YOLO_mark, then Train"


class FAMOUS_OT_train(BackgroundOperator, bpy.types.Operator):
    """Train the YOLOv4-tiny detector on the boxed slices; the model then runs detection"""

    bl_idname = "famous.train"
    bl_label = "Train detector"

    starting = "training starting"
    noun = "training"
    cancel_hint = "; Train again resumes it"

    def work_for(self, context):
        settings = context.scene.famous
        t = settings.train
        classes = load_classes(settings.classes_arg())
        out = abspath(t.model_out)
        if not out:
            raise FamousError("no model folder is set.", fix="choose the Model folder under Train.")
        epochs, width = t.epochs, t.width
        args = _train_args(settings)
        try:
            require_torch()
        except FamousError:
            return train_elsewhere(train_python(context), args, out)
        # torch: the optional train extra, loaded only when training (after the check above)
        from ..core.detector.train import train_model

        folders, init = _training_folders(settings)
        config = TrainConfig(neighbours=t.neighbours, init=init)
        command = f"famous train {shlex.join(args)}  # from Blender"
        annotations = folders[0]
        if len(folders) > 1:
            # OpenCV (the annotations module): loaded on first use, not at Blender's start-up
            from ..core.annotations import MERGED_DIR, merge_folders

            annotations = merge_folders(folders, Path(out) / MERGED_DIR)

        # OpenCV (the annotations module): loaded on first use, not at Blender's start-up
        from ..core.annotations import slices_pixel_nm

        # read here, in Blender's thread: the work runs in another
        voxel = settings.voxel_size_nm()

        def train(folder, pseudo=None, mix=None, progress=None):
            return train_model(
                annotations, classes, folder, epochs, width, progress, config=config,
                command=command, pseudo=pseudo, mix=mix, pixel_nm=pixel_nm,
            )  # fmt: skip

        stack = None
        if t.self_train:
            # the stack module (OpenCV) loads on first use, not at Blender's start-up
            from ..core.stack import open_stack

            stack = open_stack(settings.stack_path(), voxel, settings.channel_index())
            # its runs need the voxel size: without one, the boxes alone (done() says so)
            stack = stack if stack.voxel_size_nm else None
        # the panel's pixel size, else the export's: each class's extraction recipe is
        # chosen on the boxes too (self-training does that itself, for its runs)
        pixel_nm = None if stack is not None else slices_pixel_nm(folders, voxel)

        def work(progress):
            if stack is None:
                return out, train(out, progress=progress)
            # the self-training module pulls in the pipeline, loaded only when asked for
            from ..core.selftrain import self_train

            return out, self_train(annotations, stack, classes, out, train, None, progress, voxel)

        return work

    def done(self, context, result):
        from ..core.calibrate import inset_lines  # extraction's modules, loaded when needed

        out, report = result
        settings = context.scene.famous
        settings.model, settings.source = str(out), "MODEL"
        message = f"model: {out} (held-out mAP@0.5 {report['metrics']['mAP50']:.2f})"
        if settings.train.self_train and "self_training" not in report:
            message += "; not self-trained: the stack has no voxel size (set it above)"
        return "; ".join([message, *inset_lines(report.get("extraction_calibration"))])


def _suggested(t) -> Path | None:
    """The suggested slices' folder, where it holds boxed (pre-filled or corrected) slices."""
    folder = abspath(t.suggest_out)
    if not folder or not Path(folder).is_dir():
        return None
    return Path(folder) if any(Path(folder).glob("slice_*.txt")) else None


def _training_folders(settings) -> tuple[list[Path], str]:
    """The folders Train learns from, and the model it continues ("" for a fresh one).

    With corrected suggested slices, training continues the model that
    suggested them (``famous train ANNOTATIONS SUGGESTED --init MODEL``).
    """
    t = settings.train
    suggested = _suggested(t)
    if suggested is None:
        return [_annotations(t)], ""
    return [_annotations(t), suggested], abspath(settings.model) or ""


def _train_args(settings) -> list[str]:
    """``famous train``'s arguments for the panel's settings."""
    t = settings.train
    folders, init = _training_folders(settings)
    args = [
        *(str(f) for f in folders),
        "--classes",
        settings.classes_arg(),
        "--out",
        abspath(t.model_out),
    ]
    args += ["--init", init] if init else []
    args += ["--epochs", str(t.epochs), "--width", t.width]
    args += ["--neighbours"] if t.neighbours else []
    args += ["--stack", settings.stack_path()] if t.self_train else ["--no-self-train"]
    voxel = settings.voxel_size_nm()
    args += ["--voxel-size", *(str(v) for v in voxel)] if voxel else []
    return args


# a progress bar's percentage in famous train's output
_PERCENT = re.compile(rb"(\d+)%\|")


def train_elsewhere(python: str, args: list[str], out: str):
    """Work that runs ``famous train ARGS`` in ``python`` and returns ``(out, report)``.

    For a Blender without PyTorch (see :mod:`.preferences`). Its progress bar's
    percentage is the job's progress; cancelling stops the process, and
    training again resumes from its checkpoint, as in Blender.
    """
    if not python:
        raise FamousError(
            "training needs PyTorch, which this Blender does not have.",
            fix="set 'Python for training' in Preferences > Add-ons > FAMOUS to a Python with "
            "FAMOUS and PyTorch (e.g. the .venv/bin/python `make` builds), or run `famous train`.",
        )
    if not Path(python).is_file():
        raise FamousError(
            f"{python}: no such Python.",
            fix="set 'Python for training' in Preferences > Add-ons > FAMOUS to a Python file.",
        )
    # its own environment, not Blender's Python paths
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    argv = [python, "-m", "famous_addon.cli", "train", *args]

    def work(progress):
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        output = bytearray()
        reader = threading.Thread(target=_read_into, args=(proc.stdout, output), daemon=True)
        reader.start()
        try:
            while proc.poll() is None:
                if progress is not None:  # None: run from a script (execute)
                    found = _PERCENT.findall(bytes(output[-4096:]))
                    done = int(found[-1]) / 100 if found else 0.0
                    progress(done, f"training in {python}")
                time.sleep(0.25)
        except BaseException:
            proc.terminate()  # cancelled (or Blender is closing): the checkpoint stays
            proc.wait()
            raise
        reader.join(timeout=10)
        if proc.returncode != 0:
            lines = bytes(output).decode(errors="replace").replace("\r", "\n").splitlines()
            last = next((ln for ln in reversed(lines) if ln.strip()), f"exit {proc.returncode}")
            raise FamousError(
                f"training in {python} failed: {last.strip()}",
                fix="fix what it says, or check that this Python has FAMOUS and PyTorch.",
            )
        return out, json.loads((Path(out) / "report.json").read_text())

    return work


def _read_into(stream, output: bytearray, keep: int = 1 << 16) -> None:
    """Append a process's output to ``output``, keeping its last ``keep`` bytes (a
    progress bar redraws itself for hours)."""
    for chunk in iter(lambda: stream.read1(4096), b""):
        output.extend(chunk)
        if len(output) > 2 * keep:
            del output[:-keep]


class FAMOUS_OT_suggest_slices(BackgroundOperator, bpy.types.Operator):
    """Find the slices where the model's 3-D result is least sure, show them with the model's
    boxes and export them pre-filled, to correct instead of boxing from scratch"""

    bl_idname = "famous.suggest_slices"
    bl_label = "Suggest slices"

    starting = "suggesting slices"
    noun = "suggestion"

    def work_for(self, context):
        # OpenCV and the pipeline: loaded on first use, not at Blender's start-up
        from ..core.stack import open_stack
        from ..core.suggest import model_classes, suggest

        settings = context.scene.famous
        t = settings.train
        model = abspath(settings.model)
        if not model:
            raise FamousError(
                "no model is set.", fix="train one, or choose the Model under Detect."
            )
        out = abspath(t.suggest_out)
        if not out:
            raise FamousError(
                "no folder for the suggested slices is set.", fix="choose Suggested under Train."
            )
        stack = open_stack(
            settings.stack_path(), settings.voxel_size_nm(), settings.channel_index()
        )
        voxel = stack.require_voxel_size()
        classes = model_classes(model)
        folder = abspath(t.annotations)
        boxed = [Path(folder)] if folder and Path(folder).is_dir() else []
        n = t.suggest_n

        def work(progress):
            picks = suggest(model, stack, out, n, None, boxed, progress)
            return out, picks, classes, stack.shape[1:], voxel

        return work

    def done(self, context, result):
        # the scene modules pull in OpenCV: loaded on first use, not at Blender's start-up
        from ..blender.scene import stack_plane
        from ..blender.suggestions import draw_suggestions

        out, picks, classes, shape, voxel = result
        settings = context.scene.famous
        draw_suggestions(out, [p.slice for p in picks], classes, shape, voxel)
        if picks:
            plane = stack_plane(
                settings.stack_path(), voxel, picks[0].slice, settings.channel_index()
            )
            settings["slice"] = plane["famous_slice"]
        where = ", ".join(str(p.slice) for p in picks)
        return (
            f"slices {where} pre-filled in {out}: fix their boxes here or in YOLO_mark, "
            "Save corrections, then Train"
        )


class FAMOUS_OT_save_box_corrections(bpy.types.Operator):
    """Write the suggested slices' boxes as they are now in the scene (moved, scaled,
    deleted, duplicated) into their YOLO files, for training"""

    bl_idname = "famous.save_box_corrections"
    bl_label = "Save corrections"

    def execute(self, context):
        # the scene modules pull in OpenCV: loaded on first use, not at Blender's start-up
        from ..blender.suggestions import save_corrections

        written = report_errors(self, save_corrections)
        if written is None:
            return {"CANCELLED"}
        n = sum(written.values())
        context.scene.famous.status = f"{n} boxes saved on {len(written)} suggested slices"
        self.report({"INFO"}, context.scene.famous.status)
        return {"FINISHED"}


class FAMOUS_PT_train(SubPanel, bpy.types.Panel):
    bl_label = "Train"
    bl_idname = "FAMOUS_PT_train"

    def draw(self, context):
        t = context.scene.famous.train
        layout = self.layout
        layout.prop(t, "annotations")
        row = layout.row(align=True)
        row.prop(t, "fraction")
        row.operator("famous.export_annotation_slices", text="Export", icon="EXPORT")
        layout.prop(t, "neighbours")
        layout.prop(t, "self_train")
        col = layout.column(align=True)
        col.row(align=True).prop(t, "width", expand=True)
        col.prop(t, "epochs")
        col.prop(t, "model_out")
        layout.operator("famous.train", icon="OUTLINER_OB_ARMATURE")
        box = layout.box()
        box.label(text="Correct, don't draw")
        box.prop(t, "suggest_out")
        row = box.row(align=True)
        row.prop(t, "suggest_n")
        row.operator("famous.suggest_slices", icon="VIEWZOOM")
        box.operator("famous.save_box_corrections", icon="FILE_TICK")


CLASSES = (
    FAMOUS_OT_export_annotation_slices,
    FAMOUS_OT_train,
    FAMOUS_OT_suggest_slices,
    FAMOUS_OT_save_box_corrections,
    FAMOUS_PT_train,
)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
