"""Coloured materials: the one place that gives a material its colour.

A class's organelles, an imported manual segmentation and an organelle
coloured by a measurement all get their colour here, so the viewport
(Solid, Workbench) and the renderers (Eevee, Cycles) show the same colour.
"""

from __future__ import annotations

from collections.abc import Sequence

import bpy


def coloured_material(name: str, rgb: Sequence[float]) -> bpy.types.Material:
    """The material called ``name`` (made if missing), coloured ``rgb``.

    Parameters
    ----------
    name : str
        Material name; an existing material of that name is recoloured.
    rgb : sequence of 3 floats
        Scene-linear colour, 0..1.

    Returns
    -------
    Material
        With ``diffuse_color`` (viewport, Workbench) and, where it has one,
        its Principled BSDF's Base Color (Eevee, Cycles) set to ``rgb``.
    """
    mat = bpy.data.materials.get(name) or bpy.data.materials.new(name)
    mat.diffuse_color = (*rgb, 1.0)
    # Blender 5 gives every new material a node tree with a Principled BSDF.
    if mat.node_tree is not None:
        bsdf = mat.node_tree.nodes.get("Principled BSDF")
        if bsdf is not None:
            bsdf.inputs["Base Color"].default_value = (*rgb, 1.0)
    return mat


def class_material(name: str, rgb: Sequence[float]) -> bpy.types.Material:
    """The material of a class (``FAMOUS <class>``), in the class's colour."""
    return coloured_material(f"FAMOUS {name}", rgb)
