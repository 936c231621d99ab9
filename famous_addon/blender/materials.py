"""Coloured materials: the one place that gives a material its colour.

A class's organelles, an imported manual segmentation and an organelle
coloured by a measurement all get their colour here, so the viewport
(Solid, Workbench) and the renderers (Eevee, Cycles) show the same colour.
Colours come in as sRGB, as a hex code or a colour picker writes them, and
go into Blender as the scene-linear values it stores: set as they are, sRGB
values render muted (#d62728 came out as #ac5d5b).
"""

from __future__ import annotations

from collections.abc import Sequence

import bpy
import numpy as np

# Blender's outliner colour tags and roughly how its default theme shows them (sRGB)
COLOUR_TAGS = {
    "COLOR_01": (0.89, 0.22, 0.22),  # red
    "COLOR_02": (0.94, 0.59, 0.20),  # orange
    "COLOR_03": (0.91, 0.85, 0.25),  # yellow
    "COLOR_04": (0.30, 0.77, 0.33),  # green
    "COLOR_05": (0.22, 0.55, 0.89),  # blue
    "COLOR_06": (0.62, 0.42, 0.87),  # violet
    "COLOR_07": (0.91, 0.50, 0.76),  # pink
    "COLOR_08": (0.56, 0.40, 0.30),  # brown
}


def srgb_to_linear(rgb: Sequence[float]) -> tuple[float, float, float]:
    """Scene-linear values of an sRGB colour (0..1 each)."""
    c = np.asarray(rgb, dtype=float)
    return tuple(np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).tolist())


def linear_to_srgb(rgb: Sequence[float]) -> tuple[float, float, float]:
    """The sRGB colour (0..1 each) of scene-linear values: a material's colour as picked."""
    c = np.clip(np.asarray(rgb, dtype=float), 0.0, 1.0)
    return tuple(np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055).tolist())


def colour_tag(rgb: Sequence[float]) -> str:
    """The outliner colour tag nearest an sRGB colour (``COLOR_01`` .. ``COLOR_08``)."""
    c = np.asarray(rgb, dtype=float)
    return min(COLOUR_TAGS, key=lambda tag: float(np.sum((np.asarray(COLOUR_TAGS[tag]) - c) ** 2)))


def coloured_material(name: str, rgb: Sequence[float]) -> bpy.types.Material:
    """The material called ``name`` (made if missing), coloured ``rgb``.

    Parameters
    ----------
    name : str
        Material name; an existing material of that name is recoloured.
    rgb : sequence of 3 floats
        sRGB colour, 0..1 (a hex code's values over 255).

    Returns
    -------
    Material
        With ``diffuse_color`` (viewport, Workbench) and, where it has one,
        its Principled BSDF's Base Color (Eevee, Cycles) set to ``rgb`` in
        scene-linear values.
    """
    linear = (*srgb_to_linear(rgb), 1.0)
    mat = bpy.data.materials.get(name) or bpy.data.materials.new(name)
    mat.diffuse_color = linear
    if mat.node_tree is None:
        # Blender 4.2-4.5 give a new material its Principled BSDF only when asked;
        # Blender 5 gives every material one
        mat.use_nodes = True
    if mat.node_tree is not None:
        bsdf = mat.node_tree.nodes.get("Principled BSDF")
        if bsdf is not None:
            bsdf.inputs["Base Color"].default_value = linear
    return mat


def class_material(name: str, rgb: Sequence[float]) -> bpy.types.Material:
    """The material of a class (``FAMOUS <class>``), in the class's colour."""
    return coloured_material(f"FAMOUS {name}", rgb)
