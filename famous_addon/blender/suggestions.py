"""Suggested slices in the scene: the pre-filled boxes as outlines, corrected in Blender.

``famous suggest`` (:mod:`famous_addon.core.suggest`) writes the slices to
correct, each with a YOLO ``.txt`` of the model's boxes. Here each box becomes
its own object, an outline (a flat frame) in its class's colour at its
slice's height over the stack plane (1 unit = 1 µm, pixel (row r, col c) at
x = c * px, y = r * py, as the plane and the organelles). A box is corrected
as any object is: deleted (X), moved or scaled in x and y (G, S), added by
duplicating one of its class (Shift+D), also from another suggested slice and
moved to this one's height (G Z). :func:`save_corrections` writes the boxes
back into the slices' ``.txt`` files, ready for training; a file changed
outside Blender since (corrected in YOLO_mark) is never overwritten.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import bpy
import numpy as np

from ..core.annotations import read_names_file
from ..core.boxes import Box, parse_yolo_lines, write_yolo_txt
from ..core.classes import ClassConfig
from ..core.errors import FamousError
from .materials import class_material, srgb_to_linear
from .meshing import vertex_array
from .scene import remove_collection_tree

COLLECTION = "FAMOUS suggested slices"


def _frame(name: str, box: tuple[float, float, float, float], z: float, width: float):
    """A box outline as a flat frame of four quads (``width`` wide, inside the box).

    Faces, not bare edges: solid shading colours faces by their material,
    while it draws loose edges in the theme's wire colour.
    """
    x0, y0, x1, y1 = box
    w = min(width, (x1 - x0) / 3, (y1 - y0) / 3)
    outer = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    inner = [(x0 + w, y0 + w), (x1 - w, y0 + w), (x1 - w, y1 - w), (x0 + w, y1 - w)]
    verts = [(x, y, z) for x, y in outer + inner]
    faces = [(i, (i + 1) % 4, 4 + (i + 1) % 4, 4 + i) for i in range(4)]
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata(verts, [], faces)
    return bpy.data.objects.new(name, mesh)


#: A frame's width in slice pixels: visible on a slice of a few thousand pixels.
FRAME_PX = 3.0
#: Height of a frame above its slice, in slices.
LIFT = 0.1


def draw_suggestions(
    folder: str | Path,
    slices: list[int],
    classes: ClassConfig,
    shape: tuple[int, int],
    voxel_size_nm: tuple[float, float, float],
) -> bpy.types.Collection:
    """The pre-filled boxes of ``slices`` in ``folder`` as outlines, one object a box.

    The collection replaces the one a previous suggestion drew. Each object
    records its slice, class and folder (``famous_slice``, ``famous_class``,
    ``famous_suggestions``), which a duplicate keeps.
    """
    old = bpy.data.collections.get(COLLECTION)
    if old is not None:
        remove_collection_tree(old)
    coll = bpy.data.collections.new(COLLECTION)
    bpy.context.scene.collection.children.link(coll)
    dz, py, px = (v / 1000.0 for v in voxel_size_nm)
    folder = Path(folder)
    for k in slices:
        txt = folder / f"slice_{k:05d}.txt"
        boxes = parse_yolo_lines(txt.read_bytes(), shape, len(classes), txt)
        for i, b in enumerate(boxes):
            spec = classes[b.cls]
            name = f"slice {k} {spec.name} {i + 1}"
            extent = (b.x * px, b.y * py, (b.x + b.w) * px, (b.y + b.h) * py)
            # a little above the plane showing the slice, so the two never fight in depth
            obj = _frame(name, extent, (k + LIFT) * dz, FRAME_PX * px)
            obj.data.materials.append(class_material(spec.name, spec.rgb))
            obj.color = (*srgb_to_linear(spec.rgb), 1.0)
            obj.show_in_front = True
            obj.hide_render = True
            obj["famous_slice"] = int(k)
            obj["famous_class"] = spec.name
            obj["famous_suggestions"] = str(folder)
            coll.objects.link(obj)
    coll["famous_suggestions"] = str(folder)
    coll["famous_slices"] = [int(k) for k in slices]
    coll["famous_shape"] = [int(shape[0]), int(shape[1])]
    coll["famous_voxel_size_nm"] = [float(v) for v in voxel_size_nm]
    coll["famous_drawn"] = {f"{k}": _digest(folder / f"slice_{k:05d}.txt") for k in slices}
    if slices:
        show_suggested(slices[0])
    return coll


def _digest(path: Path) -> str:
    """A file's SHA-256, to tell whether it changed since the boxes were drawn."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _slice_of(obj, slices: np.ndarray, dz: float) -> int:
    """The suggested slice nearest a box object's height."""
    z = float(_world_vertices(obj)[:, 2].mean())
    return int(slices[np.argmin(np.abs(slices * dz - z))])


def show_suggested(k: int) -> None:
    """Show the boxes of suggested slice ``k`` only; on any other slice, all of them.

    The stack plane shows one slice at a time; the boxes of the others would
    float above or below it.
    """
    coll = bpy.data.collections.get(COLLECTION)
    if coll is None or "famous_slices" not in coll:
        return
    slices = np.array([int(j) for j in coll["famous_slices"]])
    dz = coll["famous_voxel_size_nm"][0] / 1000.0
    # a list first: changing visibility invalidates the collection's cached object list
    for obj in list(coll.all_objects):
        if obj.type == "MESH" and len(obj.data.vertices):
            obj.hide_viewport = k in slices and _slice_of(obj, slices, dz) != k


def save_corrections() -> dict[int, int]:
    """Write the boxes as they are now in the scene into their slices' ``.txt`` files.

    A box's extent is its object's extent in x and y (moved, scaled or
    duplicated as the user left it), clipped to the slice; its slice is the
    suggested slice nearest its height; a slice whose boxes were all deleted
    gets an empty file ("boxed, nothing there"). A file that changed since it
    was drawn or last saved (corrected in YOLO_mark meanwhile) is an error,
    and nothing is written. Returns {slice: boxes written}.
    """
    coll = bpy.data.collections.get(COLLECTION)
    if coll is None or "famous_suggestions" not in coll:
        raise FamousError("there are no suggested slices in the scene.", fix="press Suggest first.")
    folder = Path(coll["famous_suggestions"])
    shape = tuple(coll["famous_shape"])
    dz, py, px = (v / 1000.0 for v in coll["famous_voxel_size_nm"])
    names = read_names_file(folder) or []
    slices = np.array([int(k) for k in coll["famous_slices"]])
    boxes: dict[int, list[Box]] = {int(k): [] for k in slices}
    for obj in coll.all_objects:
        name = obj.get("famous_class")
        if name not in names or obj.type != "MESH" or not len(obj.data.vertices):
            continue
        xyz = _world_vertices(obj)
        # the suggested slice at the box's height: a box duplicated from another
        # suggested slice and moved up or down belongs where it now lies
        k = _slice_of(obj, slices, dz)
        x0, y0 = xyz[:, 0].min() / px, xyz[:, 1].min() / py
        x1, y1 = xyz[:, 0].max() / px, xyz[:, 1].max() / py
        boxes[k].append(Box(names.index(name), x0, y0, x1 - x0, y1 - y0))
    drawn = dict(coll.get("famous_drawn", {}))
    for k in boxes:
        txt = folder / f"slice_{k:05d}.txt"
        if txt.is_file() and drawn.get(f"{k}") != _digest(txt):
            raise FamousError(
                "changed outside Blender since Suggest drew its boxes; saving would lose that.",
                txt,
                "press Suggest slices again with another Suggested folder, or keep that file.",
            )
    for k, bs in boxes.items():
        txt = folder / f"slice_{k:05d}.txt"
        write_yolo_txt(txt, bs, shape)
        drawn[f"{k}"] = _digest(txt)
    coll["famous_drawn"] = drawn
    return {k: len(bs) for k, bs in boxes.items()}


def _world_vertices(obj) -> np.ndarray:
    """An object's mesh vertices in world coordinates, (n, 3)."""
    m = np.array(obj.matrix_world)
    return vertex_array(obj) @ m[:3, :3].T + m[:3, 3]
