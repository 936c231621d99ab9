"""Thin operators: collect the panel's settings and call the same functions as
``blender_scripts/run_famous.py`` (``famous_addon.blender.workflow``).

Each long operator has two paths: ``execute`` runs to the end (scripts,
background mode) and ``invoke`` keeps the UI alive (detection in a thread,
meshing one organelle per timer tick) with progress in the panel and ESC or
the Cancel button to stop. Known errors become reports, never tracebacks.
"""

from __future__ import annotations

from pathlib import Path

import bpy

from ..core.errors import FamousError
from .jobs import BackgroundOperator, ModalTimer, redraw_view3d, report_errors, report_exception
from .properties import abspath


def _detect_work(settings):
    """The detection call with the panel's settings, as a ``work(progress)`` function."""
    # the pipeline (OpenCV, SciPy) loads on first use, not at Blender's start-up
    from ..blender import workflow
    from ..core.request import RunRequest

    stack = settings.stack_path()
    src = abspath(settings.model if settings.source == "MODEL" else settings.boxes)
    if not src:
        raise FamousError(
            f"no {'model' if settings.source == 'MODEL' else 'boxes'} folder is set.",
            fix="choose it in the panel, or switch 'Boxes from'.",
        )
    request = RunRequest(
        stack,
        settings.classes_arg(),
        settings.output_dir(),
        boxes=src if settings.source == "BOXES" else None,
        model=src if settings.source == "MODEL" else None,
        backend=settings.backend,
        flip_views=None if settings.flip_views == "MODEL" else int(settings.flip_views),
        zoom_pass=settings.zoom_pass,
        voxel_size_nm=settings.voxel_size_nm(),
        channel=settings.channel_index(),
    )

    overwrite = settings.overwrite

    def work(progress):
        return workflow.detect(request, progress=progress, overwrite=overwrite)

    return work


class FAMOUS_OT_run_detection(BackgroundOperator, bpy.types.Operator):
    """Find and link the organelles of the stack (writes OUTPUT/run)"""

    bl_idname = "famous.run_detection"
    bl_label = "Run detection"
    starting = "detection starting"
    noun = "detection"
    cancel_hint = "; Run detection again resumes it"

    def work_for(self, context):
        return _detect_work(context.scene.famous)

    def done(self, context, result):
        return f"run folder: {result}"


def _builder(settings):
    # The scene builder pulls in SciPy and OpenCV: loaded on first use, not at start-up.
    from ..blender import workflow

    return workflow.builder(workflow.run_dir(settings.output_dir()), settings.mesher_override())


def _finish_build(settings, builder):
    # The scene builder pulls in SciPy and OpenCV: loaded on first use, not at start-up.
    from ..blender import workflow
    from ..blender.scene import PLANE

    workflow.finish_scene(builder.run, abspath(settings.stack), settings.voxel_size_nm())
    plane = bpy.data.objects.get(PLANE)
    if plane is not None:
        settings["slice"] = plane["famous_slice"]
    for note in builder.notes:
        print(f"FAMOUS: {note}")
    extra = f", {len(builder.notes)} notes in the system console" if builder.notes else ""
    return f"{len(builder.organelles)} organelles meshed{extra}"


class FAMOUS_OT_build_meshes(ModalTimer, bpy.types.Operator):
    """Mesh every organelle of OUTPUT/run into one collection per class"""

    bl_idname = "famous.build_meshes"
    bl_label = "Build meshes"

    @classmethod
    def poll(cls, context):
        return not context.scene.famous.running

    def execute(self, context):
        settings = context.scene.famous

        def build():
            builder = _builder(settings)
            builder.build()
            return _finish_build(settings, builder)

        status = report_errors(self, build)
        if status is None:
            return {"CANCELLED"}
        settings.status = status
        return {"FINISHED"}

    def invoke(self, context, event):
        self._builder = report_errors(self, lambda: _builder(context.scene.famous))
        if self._builder is None:
            return {"CANCELLED"}
        self._steps = self._builder.steps()
        self.start_modal(context, "meshing")
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        settings = context.scene.famous
        if self.cancel_requested(context, event):
            self._builder.abort()
            self.stop_modal(context, "meshing cancelled; nothing was kept")
            self.report({"WARNING"}, "meshing cancelled")
            return {"CANCELLED"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        try:
            settings.progress, settings.status = next(self._steps)
            redraw_view3d(context)
            return {"RUNNING_MODAL"}
        except StopIteration:
            status = report_errors(self, lambda: _finish_build(settings, self._builder))
            self.stop_modal(context, status or "stack plane failed")
            return {"FINISHED"}
        except Exception as exc:
            self._builder.abort()
            self.stop_modal(context, "meshing failed")
            report_exception(self, exc)
            return {"CANCELLED"}


def _measure_meshes(settings) -> Path:
    """Measure the organelle meshes, write the table and fill the panel's; the table's path."""
    # The scene module pulls in SciPy and OpenCV: loaded on first use, not at start-up.
    from ..blender.measure import MEASURE_CSV, measure_meshes, write_measurements
    from ..blender.scene import scene_organelles

    rows = measure_meshes(scene_organelles())
    if not rows:
        raise FamousError("there are no organelle meshes.", fix="Build meshes first.")
    path = settings.output_dir() / MEASURE_CSV
    write_measurements(path, rows)
    settings.mesh_table.clear()
    for row in rows:
        item = settings.mesh_table.get(row["class"]) or settings.mesh_table.add()
        item.name = row["class"]
        item.count += 1
        item.volume_um3 += float(row["volume_um3"])
        item.area_um2 += float(row["area_um2"])
    return path


class FAMOUS_OT_measure_meshes(bpy.types.Operator):
    """Volume and surface area of every organelle mesh; writes OUTPUT/quantification.csv"""

    bl_idname = "famous.measure_meshes"
    bl_label = "Measure meshes"

    def execute(self, context):
        settings = context.scene.famous
        path = report_errors(self, lambda: _measure_meshes(settings))
        if path is None:
            return {"CANCELLED"}
        settings.status = f"table written: {path}"
        return {"FINISHED"}


class FAMOUS_OT_cancel(bpy.types.Operator):
    """Stop the running detection or meshing"""

    bl_idname = "famous.cancel"
    bl_label = "Cancel"

    def execute(self, context):
        context.scene.famous.cancel = True
        return {"FINISHED"}


CLASSES = (
    FAMOUS_OT_run_detection,
    FAMOUS_OT_build_meshes,
    FAMOUS_OT_measure_meshes,
    FAMOUS_OT_cancel,
)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
