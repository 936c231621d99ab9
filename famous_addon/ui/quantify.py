"""The panel's "Measurements" section: morphometrics of the run, and colour by measurement.

Settings live in ``Scene.famous_quantify``. "Measure organelles" runs
:func:`famous_addon.core.quantify.quantify_run` (the same as
``famous quantify``) on OUTPUT/run in a thread, stores the measurements as
custom properties on the organelle objects and fills the per-class table;
"Colour" paints one class along a colour ramp
(:mod:`famous_addon.blender.colorize`) and the panel shows the ramp's legend.
"""

from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import (
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    FloatVectorProperty,
    IntProperty,
)

from .operators import _Background, _output, _report_errors
from .panels import SubPanel
from .properties import scene_settings_factory

# Blender needs the items of a dynamic enum kept alive by Python.
_ENUM_CACHE: dict[str, list] = {}
LEGEND_STOPS = 5


class FamousMeasureRow(bpy.types.PropertyGroup):
    """One row of the per-class table (``name`` is the class)."""

    count: IntProperty()
    total_um3: FloatProperty()
    median_um3: FloatProperty()
    median_sphericity: FloatProperty()
    median_length_um: FloatProperty()


class FamousLegendStop(bpy.types.PropertyGroup):
    value: FloatProperty()
    color: FloatVectorProperty(subtype="COLOR_GAMMA", size=3, min=0.0, max=1.0)


def _class_items(self, context):
    from ..blender.scene import scene_organelles

    names = sorted({o["class"] for o in scene_organelles()})
    _ENUM_CACHE["class"] = [(n, n, f"Organelles of class {n}") for n in names] or [
        ("NONE", "(no organelles)", "Build meshes first")
    ]
    return _ENUM_CACHE["class"]


def _measurement_items(self, context):
    from ..blender.colorize import numeric_properties
    from ..blender.scene import scene_organelles

    mine = [o for o in scene_organelles() if o["class"] == self.cls]
    names = [n for n in numeric_properties(mine) if n not in ("slices",)]
    _ENUM_CACHE["measurement"] = [(n, n, f"Colour by {n}") for n in names] or [
        ("NONE", "(none)", "Measure organelles first")
    ]
    return _ENUM_CACHE["measurement"]


class FamousQuantifySettings(bpy.types.PropertyGroup):
    cls: EnumProperty(name="Class", items=_class_items, description="Class to colour")
    measurement: EnumProperty(
        name="By", items=_measurement_items, description="Measurement that sets the colour"
    )
    ramp: EnumProperty(
        name="Ramp",
        items=[
            ("viridis", "Viridis", "Dark blue (low) to yellow (high)"),
            ("magma", "Magma", "Black (low) to pale yellow (high)"),
        ],
        default="viridis",
    )
    rows: CollectionProperty(type=FamousMeasureRow)
    legend: CollectionProperty(type=FamousLegendStop)


def _run_dir(context) -> Path:
    from ..blender.workflow import run_dir

    return run_dir(_output(context.scene.famous))


def _measure_work(context):
    from ..blender.export import QUANT_CSV
    from ..core.quantify import quantify_run

    run = _run_dir(context)
    mesh_csv = run.parent / QUANT_CSV

    def work(progress):
        return quantify_run(
            run, progress=progress, mesh_areas=mesh_csv if mesh_csv.is_file() else None
        )

    return work


def _show(context, result) -> str:
    """Put a finished quantification into the scene: object properties and the table."""
    from ..blender.colorize import store_measurements

    settings = context.scene.famous_quantify
    settings.rows.clear()
    for t in result.classes:
        item = settings.rows.add()
        item.name, item.count = t["class"], t["count"]
        item.total_um3 = t["total_volume_um3"]
        item.median_um3 = t["median_volume_um3"] or 0.0
        item.median_sphericity = t["median_sphericity"] or 0.0
        item.median_length_um = t["median_length_um"] or 0.0
    stored = store_measurements(result.rows)
    return f"{stored} objects measured; table: {result.organelles_csv}"


class FAMOUS_OT_measure(_Background, bpy.types.Operator):
    """Shape, size and proximity of every organelle of OUTPUT/run (needs its labels.tif)"""

    bl_idname = "famous.measure"
    bl_label = "Measure organelles"

    _starting = "measuring"
    _noun = "measuring"

    def _work(self, context):
        return _measure_work(context)

    def _done(self, context, result):
        return _show(context, result)


class FAMOUS_OT_colour_by(bpy.types.Operator):
    """Colour the organelles of the class along the ramp by the chosen measurement"""

    bl_idname = "famous.colour_by"
    bl_label = "Colour"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        from ..blender.colorize import colorize

        q = context.scene.famous_quantify
        legend = _report_errors(self, lambda: colorize(q.cls, q.measurement, q.ramp))
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
        from ..blender.colorize import reset_colors

        reset_colors()
        context.scene.famous_quantify.legend.clear()
        return {"FINISHED"}


class FAMOUS_PT_measure(SubPanel, bpy.types.Panel):
    bl_label = "Measurements"
    bl_idname = "FAMOUS_PT_measure"

    def draw(self, context):
        from ..blender.colorize import current_legend

        q = context.scene.famous_quantify
        layout = self.layout
        layout.operator("famous.measure", icon="SPREADSHEET")
        if len(q.rows):
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
    FamousMeasureRow,
    FamousLegendStop,
    FamousQuantifySettings,
    FAMOUS_OT_measure,
    FAMOUS_OT_colour_by,
    FAMOUS_OT_reset_colours,
    FAMOUS_PT_measure,
)


register, unregister = scene_settings_factory(CLASSES, "famous_quantify", FamousQuantifySettings)
