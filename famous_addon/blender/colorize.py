"""Colour the organelles of a class by a measurement, and keep measurements on the objects.

Measurements from ``organelles.csv`` (:mod:`famous_addon.core.quantify`) are
stored as custom properties on each organelle object (``<class>_<id>`` under
the ``FAMOUS`` collection), so they show in the Object properties and the
spreadsheet. Colouring gives each object of a class its own material coloured
along a ramp; the class material on the mesh is left untouched, so
:func:`reset_colors` brings the class colours back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import bpy
import numpy as np

from ..core.errors import FamousError
from ..core.fileio import read_csv
from .materials import coloured_material
from .scene import scene_organelles

# Colour ramps as sRGB stops (from matplotlib's colormaps, which Blender does
# not ship). Both are perceptually uniform with monotonic lightness, so the
# order of the values reads from light to dark at a glance.
RAMPS = {
    "viridis": (
        (0.267, 0.005, 0.329),
        (0.230, 0.322, 0.546),
        (0.128, 0.567, 0.551),
        (0.369, 0.789, 0.383),
        (0.993, 0.906, 0.144),
    ),
    "magma": (
        (0.001, 0.000, 0.014),
        (0.317, 0.071, 0.485),
        (0.716, 0.215, 0.475),
        (0.987, 0.535, 0.382),
        (0.987, 0.991, 0.750),
    ),
}
MISSING_RGB = (0.5, 0.5, 0.5)
LEGEND_KEY = "famous_colour_legend"
MATERIAL_PREFIX = "FAMOUS colour "
# Properties the scene builder owns; measurements never overwrite them.
_RESERVED = {"id", "class", "slices", "volume_um3", "area_um2"}


def ramp_rgb(t: float, ramp: str = "viridis") -> tuple[float, float, float]:
    """sRGB colour at ``t`` in 0..1 along a ramp (linear between its stops)."""
    stops = np.asarray(RAMPS[ramp])
    x = np.linspace(0.0, 1.0, len(stops))
    t = float(np.clip(t, 0.0, 1.0))
    return tuple(float(np.interp(t, x, stops[:, i])) for i in range(3))


def _number(text):
    if text in ("", None):
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() and "." not in str(text) else value


def store_measurements(rows: Iterable[dict], objects=None) -> int:
    """Write each organelle's numeric measurements as custom properties on its object.

    Parameters
    ----------
    rows : iterable of dict
        Rows of ``organelles.csv`` (values may be strings); matched to objects
        by ``id``.
    objects : iterable of Object, optional
        Defaults to the organelles under the ``FAMOUS`` collection.

    Returns
    -------
    int
        Number of objects updated.
    """
    by_id = {int(r["id"]): r for r in rows}
    done = 0
    for obj in objects if objects is not None else scene_organelles():
        row = by_id.get(int(obj.get("id", -1)))
        if row is None:
            continue
        for key, text in row.items():
            value = _number(text)
            if key not in _RESERVED and value is not None:
                obj[key] = value
        done += 1
    return done


def load_measurements(csv_path: str | Path, objects=None) -> int:
    """:func:`store_measurements` from an ``organelles.csv`` file."""
    path = Path(csv_path)
    if not path.is_file():
        raise FamousError(
            "no quantification table here.", path, "run Quantify (famous quantify RUN) first."
        )
    return store_measurements(read_csv(path), objects)


def numeric_properties(objects) -> list[str]:
    """Names of the numeric custom properties the objects carry (for a menu)."""
    names = set()
    for obj in objects:
        names.update(k for k in obj.keys() if isinstance(obj[k], int | float) and k != "id")
    return sorted(names)


@dataclass
class Legend:
    """What a colouring shows: the readout the panel draws."""

    cls: str
    measurement: str
    vmin: float
    vmax: float
    ramp: str
    coloured: int
    missing: int

    def stops(self, n: int = 5) -> list[tuple[float, tuple[float, float, float]]]:
        """``n`` (value, sRGB colour) pairs from the minimum to the maximum."""
        return [
            (self.vmin + (self.vmax - self.vmin) * t, ramp_rgb(t, self.ramp))
            for t in np.linspace(0.0, 1.0, n)
        ]


def _object_material(obj, rgb) -> bpy.types.Material:
    mat = coloured_material(MATERIAL_PREFIX + obj.name, rgb)
    if not obj.material_slots:
        obj.data.materials.append(None)
    for slot in obj.material_slots:
        # An object-linked slot overrides the shared class material for this
        # object only; the mesh keeps the class material underneath.
        slot.link = "OBJECT"
        slot.material = mat
    return mat


def colorize(cls: str, measurement: str, ramp: str = "viridis", objects=None) -> Legend:
    """Colour the organelles of one class by a measurement.

    Parameters
    ----------
    cls : str
        Class name (the objects' ``class`` property).
    measurement : str
        Custom property to colour by (e.g. ``volume_um3``, ``sphericity``,
        ``length_um``).
    ramp : str
        A key of ``RAMPS``.
    objects : iterable of Object, optional
        Defaults to the organelles under the ``FAMOUS`` collection.

    Returns
    -------
    Legend
        Value range and counts; also stored on the scene as
        ``scene["famous_colour_legend"]`` for the panel.
    """
    if ramp not in RAMPS:
        raise FamousError(f"unknown colour ramp {ramp!r}.", fix=f"use one of {', '.join(RAMPS)}.")
    pool = list(objects) if objects is not None else scene_organelles()
    mine = [o for o in pool if o.get("class") == cls]
    if not mine:
        raise FamousError(
            f"no organelles of class {cls!r} in the scene.",
            fix="build the scene from a run first, or pick another class.",
        )
    values = [o.get(measurement) for o in mine]
    have = [float(v) for v in values if isinstance(v, int | float)]
    if not have:
        raise FamousError(
            f"no {cls} organelle has a {measurement!r} value.",
            fix="run Quantify first, or pick a measurement listed for this class.",
        )
    vmin, vmax = min(have), max(have)
    span = vmax - vmin
    for obj, value in zip(mine, values):
        if isinstance(value, int | float):
            t = (float(value) - vmin) / span if span > 0 else 0.5
            rgb = ramp_rgb(t, ramp)
        else:
            rgb = MISSING_RGB
        _object_material(obj, rgb)
    legend = Legend(cls, measurement, vmin, vmax, ramp, len(have), len(mine) - len(have))
    bpy.context.scene[LEGEND_KEY] = {
        "class": cls,
        "measurement": measurement,
        "min": vmin,
        "max": vmax,
        "ramp": ramp,
        "coloured": legend.coloured,
        "missing": legend.missing,
    }
    return legend


def current_legend() -> Legend | None:
    """The legend of the last colouring in this scene, if any."""
    data = bpy.context.scene.get(LEGEND_KEY)
    if not data:
        return None
    return Legend(
        data["class"],
        data["measurement"],
        float(data["min"]),
        float(data["max"]),
        data["ramp"],
        int(data["coloured"]),
        int(data["missing"]),
    )


def reset_colors(cls: str | None = None, objects=None) -> int:
    """Give the organelles (of one class, or all) their class colour back."""
    pool = list(objects) if objects is not None else scene_organelles()
    done = 0
    for obj in pool:
        if cls is not None and obj.get("class") != cls:
            continue
        mat = bpy.data.materials.get(MATERIAL_PREFIX + obj.name)
        for slot in obj.material_slots:
            if slot.link == "OBJECT":
                slot.material = None
                slot.link = "DATA"
        if mat is not None and mat.users == 0:
            bpy.data.materials.remove(mat)
        done += 1
    legend = bpy.context.scene.get(LEGEND_KEY)
    if legend and (cls is None or legend.get("class") == cls):
        del bpy.context.scene[LEGEND_KEY]
    return done
