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
from .jobs import BackgroundOperator
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
        annotations = _annotations(t)
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

        config = TrainConfig(neighbours=t.neighbours)
        command = f"famous train {shlex.join(args)}  # from Blender"

        def train(folder, pseudo=None, mix=None, progress=None):
            return train_model(
                annotations, classes, folder, epochs, width, progress, config=config,
                command=command, pseudo=pseudo, mix=mix,
            )  # fmt: skip

        # read here, in Blender's thread: the work runs in another
        voxel = settings.voxel_size_nm()
        stack = None
        if t.self_train:
            # the stack module (OpenCV) loads on first use, not at Blender's start-up
            from ..core.stack import open_stack

            stack = open_stack(settings.stack_path(), voxel, settings.channel_index())

        def work(progress):
            if stack is None:
                return out, train(out, progress=progress)
            # the self-training module pulls in the pipeline, loaded only when asked for
            from ..core.selftrain import self_train

            return out, self_train(annotations, stack, classes, out, train, None, progress, voxel)

        return work

    def done(self, context, result):
        out, report = result
        settings = context.scene.famous
        settings.model, settings.source = str(out), "MODEL"
        return f"model: {out} (held-out mAP@0.5 {report['metrics']['mAP50']:.2f})"


def _train_args(settings) -> list[str]:
    """``famous train``'s arguments for the panel's settings."""
    t = settings.train
    args = [
        str(_annotations(t)),
        "--classes",
        settings.classes_arg(),
        "--out",
        abspath(t.model_out),
    ]
    args += ["--epochs", str(t.epochs), "--width", t.width]
    args += ["--neighbours"] if t.neighbours else []
    if t.self_train:
        args += ["--stack", settings.stack_path()]
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


CLASSES = (FAMOUS_OT_export_annotation_slices, FAMOUS_OT_train, FAMOUS_PT_train)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
