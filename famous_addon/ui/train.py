"""The panel's "Train" section: export slices to box, then train the detector.

Settings live in ``Scene.famous.train``. The operators call the same
functions as ``famous annotate-pick`` and ``famous train``
(:func:`~famous_addon.core.annotations.export_for_annotation`,
:func:`~famous_addon.core.detector.train.train_model`, with *Self-train on the
stack* :func:`~famous_addon.core.selftrain.self_train`) in a background thread, with
progress (epoch, loss, ETA) and cancel; a cancelled training resumes from its
checkpoint when Train is pressed again.
"""

from __future__ import annotations

from pathlib import Path

import bpy

from ..core.classes import load_classes
from ..core.detector.config import TrainConfig, require_torch
from ..core.errors import FamousError
from .jobs import BackgroundOperator
from .panels import SubPanel
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
        require_torch()
        # torch: the optional train extra, loaded only when training (after the check above)
        from ..core.detector.train import train_model

        classes = load_classes(settings.classes_arg())
        annotations = _annotations(t)
        out = abspath(t.model_out)
        if not out:
            raise FamousError("no model folder is set.", fix="choose the Model folder under Train.")
        epochs, width = t.epochs, t.width
        config = TrainConfig(neighbours=t.neighbours)
        command = (
            f"famous train {annotations} --classes {settings.classes} --out {out} "
            f"--epochs {epochs} --width {width}{' --neighbours' if t.neighbours else ''}"
            f"{f' --stack {settings.stack}' if t.self_train else ''}  # from Blender"
        )

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
