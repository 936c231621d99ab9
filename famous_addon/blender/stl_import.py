"""Manual segmentations (STL) in the scene, and the comparison run from Blender.

Each imported segmentation gets its own collection tree under
``FAMOUS segmentations``: one collection named after the segmentation
("M1") holding one sub-collection per class ("M1 mitochondria"), every object
in the segmentation's colour (M1 red, M2 blue, automatic green by default).
Collections are found again by custom properties, not by name, so Blender's
".001" renaming never confuses them. The outliner's eye icons (or
:func:`set_visible`) show and hide a segmentation or one of its classes.

Reading, checking and voxelising the files is bpy-free
(:mod:`famous_addon.core.compare.stl`, :mod:`famous_addon.core.compare`); this module
only builds the scene and calls those functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import bpy

from ..core.compare.run import run_compare
from ..core.compare.segmentations import colour_for
from ..core.compare.stl import (
    Grid,
    OverlapCheck,
    Transform,
    check_bounds,
    read_stl_segmentation,
)
from ..core.compare.tables import format_table
from ..core.progress import ProgressFn, silent, sub
from . import meshing
from .materials import coloured_material, srgb_to_linear
from .scene import remove_collection_tree

ROOT = "FAMOUS segmentations"
SEG_KEY = "famous_segmentation"
CLASS_KEY = "famous_class"
# The outliner's collection colour tags closest to the paper's red, blue and green.
_COLOUR_TAGS = {"M1": "COLOR_01", "M2": "COLOR_05", "automatic": "COLOR_04"}


@dataclass
class ImportResult:
    """What :func:`import_segmentation` made, and what the user should know."""

    collection: bpy.types.Collection
    objects: int
    classes: dict[str, int]
    warnings: list[str] = field(default_factory=list)
    check: OverlapCheck | None = None


def segmentation_material(name: str, rgb) -> bpy.types.Material:
    """One material per segmentation, in its colour (viewport and renderers)."""
    return coloured_material(f"FAMOUS segmentation {name}", rgb)


def _root(scene: bpy.types.Scene) -> bpy.types.Collection:
    for coll in scene.collection.children:
        if coll.get("famous_root"):
            return coll
    coll = bpy.data.collections.new(ROOT)
    coll["famous_root"] = True
    scene.collection.children.link(coll)
    return coll


def find_segmentation(name: str, scene=None) -> bpy.types.Collection | None:
    """The collection of an imported segmentation, or None."""
    scene = scene or bpy.context.scene
    for root in scene.collection.children:
        if root.get("famous_root"):
            for coll in root.children:
                if coll.get(SEG_KEY) == name and CLASS_KEY not in coll:
                    return coll
    return None


def segmentations(scene=None) -> list[str]:
    """Names of the segmentations imported into the scene."""
    scene = scene or bpy.context.scene
    return [
        c[SEG_KEY]
        for root in scene.collection.children
        if root.get("famous_root")
        for c in root.children
        if c.get(SEG_KEY)
    ]


def class_collections(name: str, scene=None) -> dict[str, bpy.types.Collection]:
    """Class name → sub-collection of one segmentation."""
    coll = find_segmentation(name, scene)
    return {} if coll is None else {c[CLASS_KEY]: c for c in coll.children if CLASS_KEY in c}


def remove_segmentation(name: str, scene=None) -> bool:
    """Delete an imported segmentation with its objects; True if there was one."""
    coll = find_segmentation(name, scene)
    if coll is None:
        return False
    remove_collection_tree(coll)
    return True


def import_segmentation(
    path: str | Path,
    name: str,
    colour=None,
    class_map: Mapping[str, str] | None = None,
    transform: Transform | None = None,
    grid: Grid | None = None,
    scene=None,
    progress: ProgressFn | None = None,
) -> ImportResult:
    """Import an STL file or folder as a named segmentation (replacing one of that name).

    Parameters
    ----------
    path : str or Path
        A folder of STL files (one sub-folder per class, or classes from the
        file names) or one STL file holding several objects.
    name : str
        The segmentation's name ("M1", "M2", ...).
    colour : (r, g, b), optional
        Default from the name (M1 red, M2 blue, automatic green).
    class_map : mapping of str to str, optional
        File-name pattern → class (see :func:`famous_addon.core.compare.stl.class_from_name`).
    transform : Transform, optional
        Scale, axis order and offset to µm.
    grid : Grid, optional
        The stack's grid: when given, the meshes' bounding box is checked
        against it and a better scale suggested (``ImportResult.check``).
    scene : Scene, optional
    progress : callable, optional

    Returns
    -------
    ImportResult
        Broken files are listed in ``warnings``; they never stop the import.
    """
    scene = scene or bpy.context.scene
    progress = progress or silent
    rgb = tuple(colour) if colour is not None else colour_for(name)
    seg = read_stl_segmentation(path, class_map, transform, progress=sub(progress, 0.0, 0.5))
    check = None
    if grid is not None and seg.objects:
        check = check_bounds(seg.bounds_xyz(), grid, transform.scale if transform else 1.0)
    remove_segmentation(name, scene)
    coll = bpy.data.collections.new(name)
    coll[SEG_KEY] = name
    coll["famous_source"] = str(path)
    coll.color_tag = _COLOUR_TAGS.get(name, "COLOR_06")
    _root(scene).children.link(coll)
    mat = segmentation_material(name, rgb)
    subs: dict[str, bpy.types.Collection] = {}
    counts: dict[str, int] = {}
    for i, obj in enumerate(seg.objects):
        cls = obj.class_name
        if cls not in subs:
            subs[cls] = bpy.data.collections.new(f"{name} {cls}")
            subs[cls][SEG_KEY] = name
            subs[cls][CLASS_KEY] = cls
            subs[cls].color_tag = coll.color_tag
            coll.children.link(subs[cls])
        ob = meshing.new_mesh_object(f"{name} {obj.name}", obj.vertices, obj.faces, subs[cls])
        ob.data.materials.append(mat)
        ob.color = (*srgb_to_linear(rgb), 1.0)
        ob[SEG_KEY] = name
        ob[CLASS_KEY] = cls
        ob["famous_source"] = str(obj.source)
        counts[cls] = counts.get(cls, 0) + 1
        progress(0.5 + 0.5 * (i + 1) / len(seg.objects), f"{name}: {obj.name}")
    warnings = list(seg.warnings)
    if check is not None and check.suggested_scale is not None:
        warnings.append(f"{path}: {check.message}")
    return ImportResult(coll, len(seg.objects), counts, warnings, check)


def _layer_collection(layer: bpy.types.LayerCollection, coll: bpy.types.Collection):
    if layer.collection == coll:
        return layer
    for child in layer.children:
        found = _layer_collection(child, coll)
        if found is not None:
            return found
    return None


def layer_collection(name: str, class_name: str | None = None, view_layer=None):
    """The view-layer entry (eye icon) of a segmentation or one of its classes."""
    view_layer = view_layer or bpy.context.view_layer
    coll = class_collections(name).get(class_name) if class_name else find_segmentation(name)
    return None if coll is None else _layer_collection(view_layer.layer_collection, coll)


def set_visible(name: str, visible: bool, class_name: str | None = None, view_layer=None) -> None:
    """Show or hide a segmentation, or one class of it, in the viewport."""
    layer = layer_collection(name, class_name, view_layer)
    if layer is None:
        what = f"{name} {class_name}" if class_name else name
        raise KeyError(f"no imported segmentation {what!r}")
    layer.hide_viewport = not visible


def compare(
    run_dir: str | Path,
    manual: Mapping[str, str | Path],
    out_dir: str | Path,
    iou_threshold: float = 0.5,
    class_map: Mapping[str, str] | None = None,
    transform: Transform | None = None,
    progress: ProgressFn | None = None,
) -> tuple[list[dict], Path]:
    """Compare a run with manual segmentations; rows for the panel and the report path.

    bpy-free apart from being called from the add-on: safe to run in a thread.

    Parameters
    ----------
    run_dir : str or Path
        The run folder (with ``labels.tif``).
    manual : mapping of str to path
        Name → STL folder or label TIFF, e.g. ``{"M1": ..., "M2": ...}``.
    out_dir : str or Path
        Where metrics.csv, report.md/.html and plots/ go.
    iou_threshold : float
    class_map, transform :
        For the STL inputs.
    progress : callable, optional

    Returns
    -------
    rows : list of dict
        ``pair``, ``class``, ``precision``, ``recall``, ``jaccard``, ``f1``,
        ``volume_overlap`` (fractions; NaN where undefined).
    report : Path
        ``report.md``.
    """
    names = ["automatic", *manual]
    comp, paths = run_compare(
        [run_dir, *manual.values()],
        out_dir,
        names=names,
        iou_threshold=iou_threshold,
        class_map=class_map,
        transform=transform,
        progress=progress,
    )
    rows = []
    for p in comp.pairs:
        print(f"{p.name}\n{format_table(p.scores[iou_threshold])}")
        for s in p.scores[iou_threshold]:
            rows.append(
                {
                    "pair": p.name,
                    "class": s.class_name,
                    "precision": s.precision,
                    "recall": s.recall,
                    "jaccard": s.jaccard,
                    "f1": s.f1,
                    "volume_overlap": s.volume_overlap,
                }
            )
    return rows, paths["report_md"]
