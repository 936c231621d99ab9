"""All add-on settings, in one PointerProperty group on the scene (``Scene.famous``)."""

from __future__ import annotations

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    FloatVectorProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)


def _slice_changed(self, context):
    from ..blender.scene import show_slice
    from ..core.errors import FamousError

    try:
        show_slice(self.slice)
    except FamousError as exc:
        # An update callback cannot report to the UI; the console shows why.
        print(f"FAMOUS: {exc.message}")


class FamousClassRow(bpy.types.PropertyGroup):
    """One row of the Quantify table."""

    count: IntProperty()
    volume_um3: FloatProperty()
    area_um2: FloatProperty()


class FamousSettings(bpy.types.PropertyGroup):
    stack: StringProperty(
        name="Stack", subtype="FILE_PATH", description="Multi-page TIFF, folder of slices or MRC"
    )
    voxel_size: FloatVectorProperty(
        name="Voxel size (nm)",
        size=3,
        min=0.0,
        default=(0.0, 0.0, 0.0),
        description="z, y, x in nm; all zero: take it from the stack's metadata",
    )
    classes: StringProperty(
        name="Classes",
        default="fibsem",
        description="Class config: a .toml, an obj.names file, or the preset fibsem / yeast",
    )
    source: EnumProperty(
        name="Boxes from",
        items=[
            ("MODEL", "Detector", "A trained detector model folder"),
            ("BOXES", "YOLO files", "A folder of per-slice YOLO .txt box files"),
        ],
        default="MODEL",
    )
    model: StringProperty(name="Model", subtype="DIR_PATH", description="Detector model folder")
    boxes: StringProperty(name="Boxes", subtype="DIR_PATH", description="Folder of YOLO .txt")
    backend: EnumProperty(
        name="Backend",
        items=[(b, b, f"OpenCV DNN backend {b}") for b in ("auto", "cpu", "cuda", "cuda_fp16")],
        default="auto",
    )
    flip_views: EnumProperty(
        name="Flip views",
        description="Also detect on mirrored slices and fuse the boxes (twice or four times "
        "the detection time)",
        items=[
            ("MODEL", "Model's setting", "As the model's thresholds.json says"),
            ("1", "Off", "The slice as it is"),
            ("2", "2 views", "And mirrored left-right"),
            ("4", "4 views", "And mirrored up-down, and both"),
        ],
        default="MODEL",
    )
    zoom_pass: BoolProperty(
        name="Small-object pass",
        description="Also look for small organelles on the slice enlarged, where the model's "
        "thresholds.json asks for it (about twice the detection time)",
        default=True,
    )
    output: StringProperty(
        name="Output", subtype="DIR_PATH", description="Folder for the run folder and results"
    )
    mesher: EnumProperty(
        name="Mesher",
        items=[
            ("CLASS", "Per class", "Each class's own mesher from the class config"),
            ("HULL", "Hull", "Convex hull, remesh, shrinkwrap (the paper's method)"),
            ("VOLUME", "Volume", "Mask voxels -> Points to Volume -> Volume to Mesh"),
        ],
        default="CLASS",
    )
    slice: IntProperty(
        name="Slice", min=0, default=0, update=_slice_changed, description="Stack slice shown"
    )
    running: BoolProperty(default=False, options={"SKIP_SAVE"})
    progress: FloatProperty(min=0.0, max=1.0, subtype="FACTOR", options={"SKIP_SAVE"})
    status: StringProperty(options={"SKIP_SAVE"})
    table: CollectionProperty(type=FamousClassRow)

    def voxel_size_nm(self):
        """The voxel size, or None to use the stack's metadata."""
        return tuple(self.voxel_size) if all(v > 0 for v in self.voxel_size) else None

    def mesher_override(self):
        return None if self.mesher == "CLASS" else self.mesher.lower()


CLASSES = (FamousClassRow, FamousSettings)


def scene_settings_factory(classes, attribute: str, group):
    """``register, unregister`` for ``classes`` plus ``Scene.<attribute>`` of type ``group``.

    Each section of the panel keeps its settings in its own pointer property
    on the scene, registered after its classes and removed before them.
    """
    register_classes, unregister_classes = bpy.utils.register_classes_factory(classes)

    def register():
        register_classes()
        setattr(bpy.types.Scene, attribute, PointerProperty(type=group))

    def unregister():
        delattr(bpy.types.Scene, attribute)
        unregister_classes()

    return register, unregister


register, unregister = scene_settings_factory(CLASSES, "famous", FamousSettings)
