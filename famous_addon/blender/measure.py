"""Measure the organelle meshes in Blender: volume, surface area, vertices, manifoldness.

"Measure" is the mesh side. Quantifying the run's labels (shape, size and
proximity from ``labels.tif``: ``famous quantify``, the panel's Quantify) is
:mod:`famous_addon.core.quantify`, which reads this module's table for the
mesh surface areas.

The table keeps the file name ``quantification.csv`` that the headless script
(``blender_scripts/run_famous.py``) has always written.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import bmesh
import bpy
import numpy as np

from ..core.fileio import write_csv

MEASURE_CSV = "quantification.csv"
MEASURE_COLUMNS = ("id", "class", "volume_um3", "area_um2", "vertices", "manifold")


@dataclass(frozen=True)
class MeshStats:
    """Measurements of a final mesh (µm, since 1 Blender unit = 1 µm)."""

    volume_um3: float
    area_um2: float
    vertices: int
    faces: int
    manifold: bool
    zero_area_faces: int


def mesh_stats(obj: bpy.types.Object) -> MeshStats:
    """Volume, area, size and manifoldness of a mesh in world units (µm)."""
    bm = bmesh.new()
    bm.from_mesh(obj.data)
    bm.transform(obj.matrix_world)
    areas = np.array([f.calc_area() for f in bm.faces])
    manifold = (
        len(bm.faces) > 0
        and all(e.is_manifold for e in bm.edges)
        and all(v.is_manifold for v in bm.verts)
    )
    longest = max((e.calc_length() for e in bm.edges), default=0.0)
    stats = MeshStats(
        volume_um3=float(bm.calc_volume(signed=False)),
        area_um2=float(areas.sum()),
        vertices=len(bm.verts),
        faces=len(bm.faces),
        manifold=bool(manifold),
        zero_area_faces=int((areas <= 1e-12 * max(longest, 1e-9) ** 2).sum()),
    )
    bm.free()
    return stats


def measurement_row(oid: int, cls: str, stats: MeshStats) -> dict:
    """One row of ``quantification.csv`` (:data:`MEASURE_COLUMNS`)."""
    return {
        "id": oid,
        "class": cls,
        "volume_um3": f"{stats.volume_um3:.6g}",
        "area_um2": f"{stats.area_um2:.6g}",
        "vertices": stats.vertices,
        "manifold": stats.manifold,
    }


def measure_meshes(objects: Iterable[bpy.types.Object]) -> list[dict]:
    """One row per organelle object, measured on its current mesh.

    Parameters
    ----------
    objects : iterable of Object
        Organelle objects carrying ``id`` and ``class`` properties, e.g.
        :func:`famous_addon.blender.scene.scene_organelles`.
    """
    return [measurement_row(int(obj["id"]), obj["class"], mesh_stats(obj)) for obj in objects]


def write_measurements(path: Path, rows: list[dict]) -> None:
    """``quantification.csv``: id, class, volume_um3, area_um2, vertices, manifold."""
    write_csv(path, MEASURE_COLUMNS, rows)
