"""The panel's "Compare" section: import manual STL segmentations and score the run.

Settings live in ``Scene.famous.compare``; the operators are thin wrappers
around :mod:`famous_addon.blender.stl_import`, which calls the same bpy-free
comparison as ``famous compare`` and ``run_famous.py --compare``.
"""

from __future__ import annotations

import math
from pathlib import Path

import bpy
from bpy.props import EnumProperty

from ..core.errors import FamousError
from ..core.runfolder import RunFolder
from .jobs import BackgroundOperator, report_errors
from .panels import SubPanel
from .properties import abspath

COMPARE_DIR = "compare"


def _run_dir(context) -> Path:
    # The workflow pulls in SciPy and OpenCV: loaded on first use, not at start-up.
    from ..blender.workflow import run_dir

    c = context.scene.famous.compare
    return Path(abspath(c.run)) if c.run else run_dir(context.scene.famous.output_dir())


def _grid(context):
    """The stack's grid from the run folder, when there is one (for the bounds check)."""
    # The STL reader pulls in trimesh: loaded on first use, not at start-up.
    from ..core.compare.stl import Grid

    try:
        run = RunFolder(_run_dir(context))
    except FamousError:  # no output folder or run yet: import without the check
        return None
    return Grid.from_nm(run.shape, run.voxel_size_nm)


class FAMOUS_OT_import_segmentation(bpy.types.Operator):
    """Import the STL folder of M1 or M2 as its own coloured collection tree"""

    bl_idname = "famous.import_segmentation"
    bl_label = "Import STL segmentation"
    bl_options = {"REGISTER", "UNDO"}

    which: EnumProperty(items=[("M1", "M1", ""), ("M2", "M2", "")], default="M1")

    def execute(self, context):
        # The STL import pulls in trimesh and SciPy: loaded on first use, not at start-up.
        from ..blender.stl_import import import_segmentation

        c = context.scene.famous.compare
        path = abspath(c.m1 if self.which == "M1" else c.m2)
        if not path:
            self.report({"ERROR"}, f"no {self.which} folder is set: choose it in Compare.")
            return {"CANCELLED"}
        grid = _grid(context)
        res = report_errors(
            self,
            lambda: import_segmentation(
                path, self.which, class_map=c.mapping(), transform=c.transform(), grid=grid
            ),
        )
        if res is None:
            return {"CANCELLED"}
        for w in res.warnings:
            self.report({"WARNING"}, w)
        context.scene.famous.status = (
            f"{self.which}: {res.objects} objects in {len(res.classes)} classes"
            + (f", {len(res.warnings)} warnings" if res.warnings else "")
        )
        return {"FINISHED"}


def _compare_work(context):
    # The comparison pulls in trimesh and SciPy: loaded on first use, not at start-up.
    from ..blender.stl_import import compare

    c = context.scene.famous.compare
    manual = c.manual()
    if not manual:
        raise FamousError("no manual segmentation is set.", fix="choose an M1 folder in Compare.")
    run = _run_dir(context)
    out = run.parent / COMPARE_DIR
    kwargs = dict(iou_threshold=c.iou, class_map=c.mapping(), transform=c.transform())

    def work(progress):
        return compare(run, manual, out, progress=progress, **kwargs)

    return work


def _show(settings, rows, report) -> None:
    settings.rows.clear()
    for r in rows:
        item = settings.rows.add()
        item.name, item.pair = r["class"], r["pair"]
        for key in ("precision", "recall", "jaccard", "f1", "volume_overlap"):
            setattr(item, key, -1.0 if math.isnan(r[key]) else r[key])
    settings.report = str(report)


class FAMOUS_OT_compare(BackgroundOperator, bpy.types.Operator):
    """Score the run against M1 (and M2): writes OUTPUT/compare/report.md, tables and plots"""

    bl_idname = "famous.compare"
    bl_label = "Compare"

    starting = "comparison starting"
    noun = "comparison"

    def work_for(self, context):
        return _compare_work(context)

    def done(self, context, result):
        _show(context.scene.famous.compare, *result)
        return f"report: {result[1]}"


def _pct(x: float) -> str:
    return "—" if x < 0 else f"{100 * x:.1f}"


class FAMOUS_PT_compare(SubPanel, bpy.types.Panel):
    bl_label = "Compare"
    bl_idname = "FAMOUS_PT_compare"

    def draw(self, context):
        # The STL import pulls in trimesh and SciPy: loaded on first use, not at start-up.
        from ..blender.stl_import import class_collections, layer_collection, segmentations

        c = context.scene.famous.compare
        layout = self.layout
        col = layout.column(align=True)
        col.prop(c, "run")
        for which in ("M1", "M2"):
            row = col.row(align=True)
            row.prop(c, which.lower())
            row.operator("famous.import_segmentation", text="", icon="IMPORT").which = which
        col = layout.column(align=True)
        col.prop(c, "class_map")
        row = col.row(align=True)
        row.prop(c, "scale")
        row.prop(c, "axes")
        col.prop(c, "offset")
        layout.prop(c, "iou")
        layout.operator("famous.compare", icon="ORIENTATION_LOCAL")

        for name in segmentations():
            box = layout.box()
            layer = layer_collection(name)
            if layer is not None:
                box.prop(layer, "hide_viewport", text=name, emboss=False)
            flow = box.grid_flow(columns=3, align=True)
            for cls in class_collections(name):
                sub_layer = layer_collection(name, cls)
                if sub_layer is not None:
                    flow.prop(sub_layer, "hide_viewport", text=cls, emboss=False)

        if len(c.rows):
            pair = None
            box = layout.box()
            for r in c.rows:
                if r.pair != pair:
                    pair = r.pair
                    box.label(text=f"{pair} (%)")
                    grid = box.grid_flow(columns=6, align=True)
                    for text in ("class", "P", "R", "J", "F1", "vol"):
                        grid.label(text=text)
                grid.label(text=r.name)
                for key in ("precision", "recall", "jaccard", "f1", "volume_overlap"):
                    grid.label(text=_pct(getattr(r, key)))
            if c.report:
                box.label(text=f"report: {c.report}")


CLASSES = (FAMOUS_OT_import_segmentation, FAMOUS_OT_compare, FAMOUS_PT_compare)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
