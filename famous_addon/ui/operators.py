"""Thin operators: collect the panel's settings and call the same functions as
``blender_scripts/run_famous.py`` (``famous_addon.blender.workflow``).

Each long operator has two paths: ``execute`` runs to the end (scripts,
background mode) and ``invoke`` keeps the UI alive (detection in a thread,
meshing one organelle per timer tick) with progress in the panel and ESC or
the Cancel button to stop. Known errors become reports, never tracebacks.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import bpy

from ..core.classes import PRESETS
from ..core.errors import Cancelled, FamousError
from .jobs import BackgroundJob

TIMER_S = 0.1


def _path(value: str) -> str | None:
    return bpy.path.abspath(value) if value else None


def _output(settings) -> Path:
    out = _path(settings.output)
    if not out:
        raise FamousError("no output folder is set.", fix="choose an Output folder in the panel.")
    return Path(out)


def _report(op, exc: Exception) -> None:
    """Show an error as an operator report (the console keeps a bug's traceback)."""
    if isinstance(exc, FamousError):
        op.report({"ERROR"}, exc.message)
    elif isinstance(exc, Cancelled):
        op.report({"WARNING"}, "cancelled")
    else:
        traceback.print_exception(exc)
        op.report({"ERROR"}, f"unexpected error: {exc}")


def _report_errors(op, fn):
    """Run ``fn``; turn errors into operator reports. Returns fn's result or None."""
    try:
        return fn()
    except Exception as exc:
        _report(op, exc)
        return None


def _classes_arg(settings) -> str:
    """The panel's class config: a preset name as it is, a file as an absolute path."""
    if not settings.classes:
        raise FamousError("no class config is set.", fix="give a .toml, obj.names, or fibsem.")
    return settings.classes if settings.classes in PRESETS else _path(settings.classes)


def _stack_path(settings) -> str:
    """The panel's image stack, as an absolute path."""
    stack = _path(settings.stack)
    if not stack:
        raise FamousError("no stack is set.", fix="choose the image Stack in the panel.")
    return stack


def _detect_work(settings):
    """The detection call with the panel's settings, as a ``work(progress)`` function."""
    from ..blender import workflow

    stack = _stack_path(settings)
    src = _path(settings.model if settings.source == "MODEL" else settings.boxes)
    if not src:
        raise FamousError(
            f"no {'model' if settings.source == 'MODEL' else 'boxes'} folder is set.",
            fix="choose it in the panel, or switch 'Boxes from'.",
        )
    classes = _classes_arg(settings)
    out = _output(settings)
    kwargs = dict(
        boxes=src if settings.source == "BOXES" else None,
        model=src if settings.source == "MODEL" else None,
        backend=settings.backend,
        flip_views=None if settings.flip_views == "MODEL" else int(settings.flip_views),
        zoom_pass=settings.zoom_pass,
        voxel_size_nm=settings.voxel_size_nm(),
    )

    def work(progress):
        return workflow.detect(stack, classes, out, progress=progress, **kwargs)

    return work


def _redraw(context):
    for window in context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


class _Modal:
    """Timer and status bookkeeping shared by the modal operators."""

    _timer = None

    def _start(self, context, status):
        settings = context.scene.famous
        settings.running, settings.progress, settings.status = True, 0.0, status
        wm = context.window_manager
        self._timer = wm.event_timer_add(TIMER_S, window=context.window)
        wm.modal_handler_add(self)

    def _stop(self, context, status):
        context.window_manager.event_timer_remove(self._timer)
        settings = context.scene.famous
        settings.running, settings.status = False, status
        _redraw(context)

    @staticmethod
    def _cancel_requested(context, event):
        return event.type == "ESC" or context.window_manager.get("famous_cancel", False)


class _Background(_Modal):
    """An operator whose work runs in a thread (``invoke``) or to the end (``execute``).

    Subclasses give ``_work(context)``, which checks the settings and returns
    ``work(progress)``, and ``_done(context, result)``, which shows the result
    and returns the status line.
    """

    _starting = "starting"
    _noun = "work"
    _cancel_hint = ""

    @classmethod
    def poll(cls, context):
        return not context.scene.famous.running

    def execute(self, context):
        result = _report_errors(self, lambda: self._work(context)(None))
        if result is None:
            return {"CANCELLED"}
        context.scene.famous.status = self._done(context, result)
        return {"FINISHED"}

    def invoke(self, context, event):
        work = _report_errors(self, lambda: self._work(context))
        if work is None:
            return {"CANCELLED"}
        context.window_manager["famous_cancel"] = False
        self._job = BackgroundJob(work).start()
        self._start(context, self._starting)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        job, settings = self._job, context.scene.famous
        if self._cancel_requested(context, event):
            job.cancel()
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        settings.progress, settings.status = job.fraction, job.message
        _redraw(context)
        if job.state == "running":
            return {"PASS_THROUGH"}
        if job.state == "done":
            self._stop(context, self._done(context, job.result))
            return {"FINISHED"}
        if job.state == "cancelled":
            self._stop(context, f"{self._noun} cancelled{self._cancel_hint}")
            self.report({"WARNING"}, f"{self._noun} cancelled")
        else:
            self._stop(context, f"{self._noun} failed")
            self.report({"ERROR"}, job.error)
        return {"CANCELLED"}


class FAMOUS_OT_run_detection(_Background, bpy.types.Operator):
    """Find and link the organelles of the stack (writes OUTPUT/run)"""

    bl_idname = "famous.run_detection"
    bl_label = "Run detection"
    _starting = "detection starting"
    _noun = "detection"
    _cancel_hint = "; Run detection again resumes it"

    def _work(self, context):
        return _detect_work(context.scene.famous)

    def _done(self, context, result):
        return f"run folder: {result}"


def _builder(settings):
    from ..blender import workflow

    return workflow.builder(workflow.run_dir(_output(settings)), settings.mesher_override())


def _finish_build(settings, builder):
    from ..blender import workflow

    workflow.finish_scene(builder.run, _path(settings.stack), settings.voxel_size_nm())
    plane = bpy.data.objects.get("FAMOUS stack slice")
    if plane is not None:
        settings["slice"] = plane["famous_slice"]
    for note in builder.notes:
        print(f"FAMOUS: {note}")
    extra = f", {len(builder.notes)} notes in the system console" if builder.notes else ""
    return f"{len(builder.organelles)} organelles meshed{extra}"


class FAMOUS_OT_build_meshes(_Modal, bpy.types.Operator):
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

        status = _report_errors(self, build)
        if status is None:
            return {"CANCELLED"}
        settings.status = status
        return {"FINISHED"}

    def invoke(self, context, event):
        self._builder = _report_errors(self, lambda: _builder(context.scene.famous))
        if self._builder is None:
            return {"CANCELLED"}
        self._steps = self._builder.steps()
        context.window_manager["famous_cancel"] = False
        self._start(context, "meshing")
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        settings = context.scene.famous
        if self._cancel_requested(context, event):
            self._builder.abort()
            self._stop(context, "meshing cancelled; nothing was kept")
            self.report({"WARNING"}, "meshing cancelled")
            return {"CANCELLED"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        try:
            settings.progress, settings.status = next(self._steps)
            _redraw(context)
            return {"RUNNING_MODAL"}
        except StopIteration:
            status = _report_errors(self, lambda: _finish_build(settings, self._builder))
            self._stop(context, status or "stack plane failed")
            return {"FINISHED"}
        except Exception as exc:
            self._builder.abort()
            self._stop(context, "meshing failed")
            _report(self, exc)
            return {"CANCELLED"}


class FAMOUS_OT_quantify(bpy.types.Operator):
    """Volume and surface area of every organelle; writes OUTPUT/quantification.csv"""

    bl_idname = "famous.quantify"
    bl_label = "Quantify"

    def execute(self, context):
        from ..blender import export
        from ..blender.scene import quantify_scene

        settings = context.scene.famous

        def quantify():
            rows = quantify_scene()
            if not rows:
                raise FamousError("there are no organelle meshes.", fix="Build meshes first.")
            out = _output(settings)
            export.write_quantification(out / export.QUANT_CSV, rows)
            settings.table.clear()
            for row in rows:
                item = settings.table.get(row["class"]) or settings.table.add()
                item.name = row["class"]
                item.count += 1
                item.volume_um3 += float(row["volume_um3"])
                item.area_um2 += float(row["area_um2"])
            return out / export.QUANT_CSV

        path = _report_errors(self, quantify)
        if path is None:
            return {"CANCELLED"}
        settings.status = f"table written: {path}"
        return {"FINISHED"}


class FAMOUS_OT_cancel(bpy.types.Operator):
    """Stop the running detection or meshing"""

    bl_idname = "famous.cancel"
    bl_label = "Cancel"

    def execute(self, context):
        context.window_manager["famous_cancel"] = True
        return {"FINISHED"}


CLASSES = (FAMOUS_OT_run_detection, FAMOUS_OT_build_meshes, FAMOUS_OT_quantify, FAMOUS_OT_cancel)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
