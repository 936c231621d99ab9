"""The panel's "Quantify" section: morphometrics of the run's labels, and colour by a value.

Settings live in ``Scene.famous.quantify``. "Quantify" runs
:func:`famous_addon.core.quantify.run.quantify_run` (the same as
``famous quantify``) on OUTPUT/run's labels in a thread, stores the values as
custom properties on the organelle objects and fills the per-class table;
"Colour" paints one class along a colour ramp
(:mod:`famous_addon.blender.colorize`) and the panel shows the ramp's legend.
Measuring the meshes themselves (volume, area) is the main panel's
"Measure meshes" (:mod:`famous_addon.blender.measure`).
"""

from __future__ import annotations

import bpy

from .jobs import BackgroundOperator, report_errors
from .panels import SubPanel

LEGEND_STOPS = 5


def _quantify_work(context):
    # Quantification and the scene pull in SciPy: loaded on first use, not at start-up.
    from ..blender.measure import MEASURE_CSV
    from ..blender.workflow import run_dir
    from ..core.quantify.run import quantify_run

    run = run_dir(context.scene.famous.output_dir())
    mesh_csv = run.parent / MEASURE_CSV

    def work(progress):
        return quantify_run(
            run, progress=progress, mesh_areas=mesh_csv if mesh_csv.is_file() else None
        )

    return work


def _show(context, result) -> str:
    """Put a finished quantification into the scene: object properties and the table."""
    # The scene module pulls in SciPy and OpenCV: loaded on first use, not at start-up.
    from ..blender.colorize import store_measurements

    settings = context.scene.famous.quantify
    settings.rows.clear()
    for t in result.classes:
        item = settings.rows.add()
        item.name, item.count = t["class"], t["count"]
        item.total_um3 = t["total_volume_um3"]
        item.median_um3 = t["median_volume_um3"] or 0.0
        item.median_sphericity = t["median_sphericity"] or 0.0
        item.median_length_um = t["median_length_um"] or 0.0
    stored = store_measurements(result.rows)
    return f"{stored} objects quantified; table: {result.organelles_csv}"


class FAMOUS_OT_quantify_run(BackgroundOperator, bpy.types.Operator):
    """Shape, size and proximity of every organelle of OUTPUT/run (from its labels.tif)"""

    bl_idname = "famous.quantify_run"
    bl_label = "Quantify"

    starting = "quantifying"
    noun = "quantifying"

    def work_for(self, context):
        return _quantify_work(context)

    def done(self, context, result):
        return _show(context, result)


class FAMOUS_OT_colour_by(bpy.types.Operator):
    """Colour the organelles of the class along the ramp by the chosen measurement"""

    bl_idname = "famous.colour_by"
    bl_label = "Colour"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        # The scene module pulls in SciPy and OpenCV: loaded on first use, not at start-up.
        from ..blender.colorize import colorize

        q = context.scene.famous.quantify
        legend = report_errors(self, lambda: colorize(q.cls, q.measurement, q.ramp))
        if legend is None:
            return {"CANCELLED"}
        q.legend.clear()
        for value, rgb in legend.stops(LEGEND_STOPS):
            stop = q.legend.add()
            stop.value, stop.color = value, rgb
        if legend.missing:
            self.report({"WARNING"}, f"{legend.missing} {q.cls} objects have no {q.measurement}")
        return {"FINISHED"}


class FAMOUS_OT_reset_colours(bpy.types.Operator):
    """Give every organelle its class colour back"""

    bl_idname = "famous.reset_colours"
    bl_label = "Class colours"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        # The scene module pulls in SciPy and OpenCV: loaded on first use, not at start-up.
        from ..blender.colorize import reset_colors

        reset_colors()
        context.scene.famous.quantify.legend.clear()
        return {"FINISHED"}


def _draw_table(layout, q) -> None:
    grid = layout.box().grid_flow(columns=5, align=True)
    for text in ("class", "n", "Σ µm³", "sphericity", "length µm"):
        grid.label(text=text)
    for r in q.rows:
        grid.label(text=r.name)
        grid.label(text=str(r.count))
        grid.label(text=f"{r.total_um3:.3g}")
        grid.label(text=f"{r.median_sphericity:.2f}" if r.count else "—")
        grid.label(text=f"{r.median_length_um:.2f}" if r.median_length_um else "—")
    layout.label(text="median per class")


class FAMOUS_PT_quantify(SubPanel, bpy.types.Panel):
    bl_label = "Quantify"
    bl_idname = "FAMOUS_PT_quantify"

    def draw(self, context):
        # The scene module pulls in SciPy and OpenCV: loaded on first use, not at start-up.
        from ..blender.colorize import current_legend

        q = context.scene.famous.quantify
        layout = self.layout
        layout.operator("famous.quantify_run", icon="SPREADSHEET")
        if len(q.rows):
            _draw_table(layout, q)

        col = layout.column(align=True)
        col.prop(q, "cls")
        col.prop(q, "measurement")
        col.prop(q, "ramp")
        row = layout.row(align=True)
        row.operator("famous.colour_by", icon="COLOR")
        row.operator("famous.reset_colours", icon="LOOP_BACK")
        legend = current_legend()
        if legend is not None and len(q.legend):
            box = layout.box()
            box.label(text=f"{legend.cls}: {legend.measurement}")
            for stop in reversed(q.legend):
                row = box.row(align=True)
                row.prop(stop, "color", text="")
                row.label(text=f"{stop.value:.4g}")
            if legend.missing:
                box.label(text=f"grey: {legend.missing} without a value")


CLASSES = (
    FAMOUS_OT_quantify_run,
    FAMOUS_OT_colour_by,
    FAMOUS_OT_reset_colours,
    FAMOUS_PT_quantify,
)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
