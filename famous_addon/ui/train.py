"""The panel's "Train" section: export slices to box, then train the detector.

Settings live in ``Scene.famous_train``. The operators call the same
functions as ``famous annotate-pick`` and ``famous train``
(:func:`~famous_addon.core.annotations.export_for_annotation`,
:func:`~famous_addon.core.train.train_model`) in a background thread, with
progress (epoch, loss, ETA) and cancel; a cancelled training resumes from its
checkpoint when Train is pressed again.
"""

from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty

from ..core.errors import FamousError
from .operators import _Background, _classes_arg, _path, _stack_path
from .panels import SubPanel
from .properties import scene_settings_factory


class FamousTrainSettings(bpy.types.PropertyGroup):
    annotations: StringProperty(
        name="Annotations",
        subtype="DIR_PATH",
        description="YOLO_mark folder: slices exported here are boxed with YOLO_mark, "
        "then trained on",
    )
    fraction: FloatProperty(
        name="Slices",
        default=0.01,
        min=0.001,
        max=1.0,
        subtype="FACTOR",
        description="Share of the stack's slices to export for boxing (the paper boxes ~1%)",
    )
    width: EnumProperty(
        name="Width",
        items=[
            ("slim", "Slim", "Half-width YOLOv4-tiny: trains in minutes on a laptop CPU"),
            ("tiny", "Tiny", "Standard YOLOv4-tiny widths"),
        ],
        default="slim",
    )
    epochs: IntProperty(name="Epochs", default=60, min=1, description="Passes of 16 batches")
    neighbours: BoolProperty(
        name="Neighbouring slices",
        default=True,
        description="The detector sees each slice between the slices above and below it, "
        "so faint organelle caps show; export the slices with this on before boxing them",
    )
    model_out: StringProperty(
        name="Model folder",
        subtype="DIR_PATH",
        description="Where the trained model goes (cfg, weights, names, thresholds, report)",
    )


def _classes(settings):
    from ..core.classes import load_classes

    return load_classes(_classes_arg(settings))


def _annotations(t) -> Path:
    folder = _path(t.annotations)
    if not folder:
        raise FamousError(
            "no annotation folder is set.", fix="choose the Annotations folder under Train."
        )
    return Path(folder)


class FAMOUS_OT_export_annotation_slices(_Background, bpy.types.Operator):
    """Write ~1% of the stack's slices as PNGs (with obj.names) to box with YOLO_mark"""

    bl_idname = "famous.export_annotation_slices"
    bl_label = "Export slices to box"

    _starting = "exporting slices"
    _noun = "export"

    def _work(self, context):
        from ..core.annotations import export_for_annotation
        from ..core.stack import open_stack

        settings, t = context.scene.famous, context.scene.famous_train
        stack = open_stack(_stack_path(settings), settings.voxel_size_nm())
        classes = _classes(settings)
        out = _annotations(t)

        def work(progress):
            picks = export_for_annotation(
                stack, classes, out, t.fraction, progress=progress, neighbours=t.neighbours
            )
            return out, picks

        return work

    def _done(self, context, result):
        out, picks = result
        return f"{len(picks)} slices in {out}: box them with YOLO_mark, then Train"


class FAMOUS_OT_train(_Background, bpy.types.Operator):
    """Train the YOLOv4-tiny detector on the boxed slices; the model then runs detection"""

    bl_idname = "famous.train"
    bl_label = "Train detector"

    _starting = "training starting"
    _noun = "training"
    _cancel_hint = "; Train again resumes it"

    def _work(self, context):
        from ..core.train import TrainConfig, require_torch, train_model

        settings, t = context.scene.famous, context.scene.famous_train
        require_torch()
        classes = _classes(settings)
        annotations = _annotations(t)
        out = _path(t.model_out)
        if not out:
            raise FamousError("no model folder is set.", fix="choose the Model folder under Train.")
        epochs, width = t.epochs, t.width
        config = TrainConfig(neighbours=t.neighbours)
        command = (
            f"famous train {annotations} --classes {settings.classes} --out {out} "
            f"--epochs {epochs} --width {width}{' --neighbours' if t.neighbours else ''}"
            "  # from Blender"
        )

        def work(progress):
            report = train_model(
                annotations, classes, out, epochs, width, progress, config=config, command=command
            )
            return out, report

        return work

    def _done(self, context, result):
        out, report = result
        settings = context.scene.famous
        settings.model, settings.source = str(out), "MODEL"
        return f"model: {out} (held-out mAP@0.5 {report['metrics']['mAP50']:.2f})"


class FAMOUS_PT_train(SubPanel, bpy.types.Panel):
    bl_label = "Train"
    bl_idname = "FAMOUS_PT_train"

    def draw(self, context):
        t = context.scene.famous_train
        layout = self.layout
        layout.prop(t, "annotations")
        row = layout.row(align=True)
        row.prop(t, "fraction")
        row.operator("famous.export_annotation_slices", text="Export", icon="EXPORT")
        layout.prop(t, "neighbours")
        col = layout.column(align=True)
        col.row(align=True).prop(t, "width", expand=True)
        col.prop(t, "epochs")
        col.prop(t, "model_out")
        layout.operator("famous.train", icon="OUTLINER_OB_ARMATURE")


CLASSES = (
    FamousTrainSettings,
    FAMOUS_OT_export_annotation_slices,
    FAMOUS_OT_train,
    FAMOUS_PT_train,
)


register, unregister = scene_settings_factory(CLASSES, "famous_train", FamousTrainSettings)
