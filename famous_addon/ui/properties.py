"""All add-on settings, in one PointerProperty group on the scene (``Scene.famous``).

The main panel's settings are members of :class:`FamousSettings`; each
sub-panel keeps its own in a sub-group (``Scene.famous.train``,
``.compare``, ``.quantify``). The state of the running job (``running``,
``progress``, ``status``, ``cancel``) lives here too and is never saved.
"""

from __future__ import annotations

from pathlib import Path

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

from ..core.classes import PRESETS
from ..core.detector.config import DEFAULT_EPOCHS
from ..core.errors import FamousError

# Blender needs the items of a dynamic enum kept alive by Python.
_ENUM_CACHE: dict[str, list] = {}


def abspath(value: str) -> str | None:
    """A path property as an absolute path (Blender's ``//`` resolved), or None if empty.

    Parameters
    ----------
    value : str
        The property's value; may be relative to the .blend file.

    Returns
    -------
    str or None
    """
    return bpy.path.abspath(value) if value else None


def _slice_changed(self, context):
    # The scene module pulls in SciPy and OpenCV: loaded on first use, not at start-up.
    from ..blender.scene import show_slice
    from ..blender.suggestions import show_suggested

    try:
        show_suggested(show_slice(self.slice))
    except FamousError as exc:
        # An update callback cannot report to the UI; the console shows why.
        print(f"FAMOUS: {exc.message}")


# ---------------------------------------------------------------------------
# Train


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
    epochs: IntProperty(
        name="Epochs", default=DEFAULT_EPOCHS, min=1, description="Passes of 16 batches"
    )
    neighbours: BoolProperty(
        name="Neighbouring slices",
        default=True,
        description="The detector sees each slice between the slices above and below it, "
        "so faint organelle caps show; export the slices with this on before boxing them",
    )
    self_train: BoolProperty(
        name="Self-train on the stack",
        default=True,
        description="After training, run on the stack and train again on the organelles "
        "found in 3-D on slices you did not box (a second training and a run over the "
        "stack; needs the voxel size; kept unless your held-out slices disagree)",
    )
    model_out: StringProperty(
        name="Model folder",
        subtype="DIR_PATH",
        description="Where the trained model goes (cfg, weights, names, thresholds, report)",
    )
    suggest_n: IntProperty(
        name="Slices",
        default=5,
        min=1,
        max=100,
        description="How many slices to suggest for correcting",
    )
    suggest_out: StringProperty(
        name="Suggested",
        subtype="DIR_PATH",
        description="Where the suggested slices go, pre-filled with the model's boxes; once "
        "corrected, Train learns from them with the Annotations, continuing the model",
    )


# ---------------------------------------------------------------------------
# Compare


class FamousCompareRow(bpy.types.PropertyGroup):
    """One row of the comparison summary (``name`` is the class)."""

    pair: StringProperty()
    precision: FloatProperty()
    recall: FloatProperty()
    jaccard: FloatProperty()
    f1: FloatProperty()
    volume_overlap: FloatProperty()


class FamousCompareSettings(bpy.types.PropertyGroup):
    m1: StringProperty(
        name="M1", subtype="DIR_PATH", description="First manual segmentation: STL folder"
    )
    m2: StringProperty(
        name="M2", subtype="DIR_PATH", description="Second manual segmentation (optional)"
    )
    run: StringProperty(
        name="Run",
        subtype="DIR_PATH",
        description="Run folder of the automatic result; empty: OUTPUT/run",
    )
    iou: FloatProperty(
        name="IoU", default=0.5, min=0.01, max=1.0, description="IoU of a matched object"
    )
    scale: FloatProperty(
        name="STL scale",
        default=1.0,
        min=0.0,
        precision=6,
        description="Multiplies STL coordinates (0.001 for meshes exported in nm)",
    )
    axes: StringProperty(
        name="Axes", default="xyz", description="STL axis order and signs, e.g. xzy or x-yz"
    )
    offset: FloatVectorProperty(name="Offset (µm)", size=3, default=(0.0, 0.0, 0.0))
    class_map: StringProperty(
        name="Classes",
        description="File-name patterns to classes, e.g. '*mito*=mitochondria; LE*=late_endosome'"
        "; empty: the sub-folder name",
    )
    report: StringProperty(options={"SKIP_SAVE"})
    rows: CollectionProperty(type=FamousCompareRow)

    def transform(self):
        """The STL transform (scale, axes, offset) the settings describe."""
        # The STL reader pulls in trimesh: loaded on first use, not at Blender's start-up.
        from ..core.compare.stl import Transform

        return Transform(self.scale, self.axes, tuple(self.offset))

    def mapping(self) -> dict[str, str] | None:
        """File-name pattern -> class, from ``class_map``; None when empty."""
        pairs = [p.split("=", 1) for p in self.class_map.split(";") if "=" in p]
        return {k.strip(): v.strip() for k, v in pairs} or None

    def manual(self) -> dict[str, str]:
        """Name -> folder of the manual segmentations that are set."""
        return {n: abspath(v) for n, v in (("M1", self.m1), ("M2", self.m2)) if v}


# ---------------------------------------------------------------------------
# Quantify (the run's labels) and colour by a value


class FamousQuantifyRow(bpy.types.PropertyGroup):
    """One row of the per-class Quantify table (``name`` is the class)."""

    count: IntProperty()
    total_um3: FloatProperty()
    median_um3: FloatProperty()
    median_sphericity: FloatProperty()
    median_length_um: FloatProperty()


class FamousLegendStop(bpy.types.PropertyGroup):
    value: FloatProperty()
    color: FloatVectorProperty(subtype="COLOR_GAMMA", size=3, min=0.0, max=1.0)


def _class_items(self, context):
    # The scene module pulls in SciPy and OpenCV: loaded on first use, not at start-up.
    from ..blender.scene import scene_organelles

    names = sorted({o["class"] for o in scene_organelles()})
    _ENUM_CACHE["class"] = [(n, n, f"Organelles of class {n}") for n in names] or [
        ("NONE", "(no organelles)", "Build meshes first")
    ]
    return _ENUM_CACHE["class"]


def _measurement_items(self, context):
    # The scene module pulls in SciPy and OpenCV: loaded on first use, not at start-up.
    from ..blender.colorize import numeric_properties
    from ..blender.scene import scene_organelles

    mine = [o for o in scene_organelles() if o["class"] == self.cls]
    names = [n for n in numeric_properties(mine) if n not in ("slices",)]
    _ENUM_CACHE["measurement"] = [(n, n, f"Colour by {n}") for n in names] or [
        ("NONE", "(none)", "Quantify first")
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
    rows: CollectionProperty(type=FamousQuantifyRow)
    legend: CollectionProperty(type=FamousLegendStop)


# ---------------------------------------------------------------------------
# The main panel


class FamousMeshRow(bpy.types.PropertyGroup):
    """One row of the per-class mesh measurement table (``name`` is the class)."""

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
    channel: IntProperty(
        name="Channel",
        default=-1,
        min=-1,
        description="The channel of a multi-channel TIFF (hyperstack) to segment, from 0; "
        "-1: the stack has one",
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
    overwrite: BoolProperty(
        name="Overwrite",
        description="Run detection replaces the run folder in Output (off: it continues the "
        "run there, and refuses one made with other settings)",
        default=False,
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
    cancel: BoolProperty(default=False, options={"SKIP_SAVE"})
    progress: FloatProperty(min=0.0, max=1.0, subtype="FACTOR", options={"SKIP_SAVE"})
    status: StringProperty(options={"SKIP_SAVE"})
    mesh_table: CollectionProperty(type=FamousMeshRow)
    train: PointerProperty(type=FamousTrainSettings)
    compare: PointerProperty(type=FamousCompareSettings)
    quantify: PointerProperty(type=FamousQuantifySettings)

    def channel_index(self):
        """The channel to read, or None for a one-channel stack."""
        return None if self.channel < 0 else int(self.channel)

    def voxel_size_nm(self):
        """The voxel size, or None to use the stack's metadata."""
        return tuple(self.voxel_size) if all(v > 0 for v in self.voxel_size) else None

    def mesher_override(self):
        return None if self.mesher == "CLASS" else self.mesher.lower()

    def output_dir(self) -> Path:
        """The output folder, as an absolute path; FamousError when none is set."""
        out = abspath(self.output)
        if not out:
            raise FamousError(
                "no output folder is set.", fix="choose an Output folder in the panel."
            )
        return Path(out)

    def stack_path(self) -> str:
        """The image stack, as an absolute path; FamousError when none is set."""
        stack = abspath(self.stack)
        if not stack:
            raise FamousError("no stack is set.", fix="choose the image Stack in the panel.")
        return stack

    def classes_arg(self) -> str:
        """The class config: a preset name as it is, a file as an absolute path."""
        if not self.classes:
            raise FamousError("no class config is set.", fix="give a .toml, obj.names, or fibsem.")
        return self.classes if self.classes in PRESETS else abspath(self.classes)


# Sub-groups register before the group that points to them.
CLASSES = (
    FamousTrainSettings,
    FamousCompareRow,
    FamousCompareSettings,
    FamousQuantifyRow,
    FamousLegendStop,
    FamousQuantifySettings,
    FamousMeshRow,
    FamousSettings,
)
_register_classes, _unregister_classes = bpy.utils.register_classes_factory(CLASSES)


def register():
    _register_classes()
    bpy.types.Scene.famous = PointerProperty(type=FamousSettings)


def unregister():
    del bpy.types.Scene.famous
    _unregister_classes()
