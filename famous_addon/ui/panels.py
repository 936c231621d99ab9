"""The "FAMOUS" tab of the 3D view's sidebar."""

from __future__ import annotations

import bpy


class _SidebarTab:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "FAMOUS"


class SubPanel(_SidebarTab):
    """Mixin for a closed-by-default section under the main FAMOUS panel."""

    bl_parent_id = "FAMOUS_PT_main"
    bl_options = {"DEFAULT_CLOSED"}


class FAMOUS_PT_main(_SidebarTab, bpy.types.Panel):
    bl_label = "FAMOUS"
    bl_idname = "FAMOUS_PT_main"

    def draw(self, context):
        s = context.scene.famous
        layout = self.layout
        col = layout.column(align=True)
        col.prop(s, "stack")
        col.prop(s, "voxel_size")
        col.prop(s, "channel")
        col.prop(s, "classes")
        row = col.row(align=True)
        row.prop(s, "output")
        row.prop(s, "overwrite", toggle=True)

        box = layout.box()
        box.label(text="Detection", icon="VIEWZOOM")
        box.row().prop(s, "source", expand=True)
        if s.source == "MODEL":
            box.prop(s, "model")
            box.prop(s, "backend")
            box.prop(s, "flip_views")
            box.prop(s, "zoom_pass")
        else:
            box.prop(s, "boxes")
        box.operator("famous.run_detection", icon="PLAY")

        box = layout.box()
        box.label(text="Meshes", icon="MESH_ICOSPHERE")
        box.prop(s, "mesher")
        box.operator("famous.build_meshes", icon="MOD_REMESH")
        plane = bpy.data.objects.get("FAMOUS stack slice")
        if plane is not None:
            row = box.row()
            row.prop(s, "slice", slider=True)
            row.label(text=f"of {plane['famous_slices'] - 1}")

        box = layout.box()
        box.label(text="Mesh measurements", icon="SPREADSHEET")
        box.operator("famous.measure_meshes", icon="LINENUMBERS_ON")
        if len(s.mesh_table):
            grid = box.grid_flow(columns=4, align=True)
            for text in ("class", "n", "µm³", "µm²"):
                grid.label(text=text)
            for row in s.mesh_table:
                grid.label(text=row.name)
                grid.label(text=str(row.count))
                grid.label(text=f"{row.volume_um3:.3g}")
                grid.label(text=f"{row.area_um2:.3g}")

        if s.running:
            row = layout.row(align=True)
            row.progress(factor=s.progress, text=s.status or "working")
            row.operator("famous.cancel", text="", icon="CANCEL")
        elif s.status:
            layout.label(text=s.status)


CLASSES = (FAMOUS_PT_main,)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
