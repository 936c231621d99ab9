"""Per-class statistics (``classes.csv``) and the add-on's mesh areas.

Per class: count, count touching the border, total, mean, median and
quartile volume, volume fraction of the stack and of the ``cell`` class
(where one exists), density (count per µm³ of stack and of cell), median and
quartiles of surface, sphericity, elongation and length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import FamousError
from ..fileio import read_csv

CELL_CLASS = "cell"
CLASSES_CSV = "classes.csv"
PLOTS_DIR = "plots"


def remove_measurements(folder: Path) -> list[Path]:
    """Remove what :func:`~.run.quantify_run` wrote beside a run's tables.

    A resumed run rewrites ``organelles.csv`` and ``labels.tif``; a
    ``classes.csv`` and plots measured on the old labels would then sit beside
    them and describe another segmentation. Only the files quantify writes
    (``classes.csv``, ``plots/*.png``) are removed.
    """
    folder = Path(folder)
    found = [folder / CLASSES_CSV, *sorted((folder / PLOTS_DIR).glob("*.png"))]
    found = [p for p in found if p.is_file()]
    for path in found:
        path.unlink()
    plots = folder / PLOTS_DIR
    if plots.is_dir() and not any(plots.iterdir()):
        plots.rmdir()
    return found


# The mesh table the Blender add-on writes; its areas are merged as area_mesh_um2.
QUANTIFICATION_CSV = "quantification.csv"


CLASS_STAT_COLUMNS = ("surface_um2", "sphericity", "elongation", "length_um")


def _quartiles(values: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return None, None, None
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return float(q1), float(med), float(q3)


def class_table(
    rows: Sequence[dict],
    class_names: Sequence[str],
    shape: Sequence[int],
    voxel_size_nm: Sequence[float],
    cell_class: str = CELL_CLASS,
) -> list[dict]:
    """Per-class statistics from the per-organelle rows.

    Parameters
    ----------
    rows : sequence of dict
        Output of :func:`~.morphometry.measure_labels`.
    class_names : sequence of str
        Classes to report (a class with no organelle gets count 0).
    shape : sequence of 3 ints
        Stack shape (Z, Y, X).
    voxel_size_nm : sequence of 3 floats
        Voxel size (z, y, x) in nm.
    cell_class : str
        Name of the class whose total volume is "the cell" (fractions and
        densities per cell volume are reported where it has organelles).

    Returns
    -------
    list of dict
        One row per class; see ``classes.csv`` in the module notes.
    """
    stack_um3 = float(np.prod(shape) * np.prod(np.asarray(voxel_size_nm) / 1000.0))
    cell_um3 = sum(r["volume_um3"] for r in rows if r["class"] == cell_class) or None
    table = []
    for c in class_names:
        mine = [r for r in rows if r["class"] == c]
        vols = [r["volume_um3"] for r in mine]
        total = float(sum(vols))
        q1, med, q3 = _quartiles(vols)
        entry = {
            "class": c,
            "count": len(mine),
            "count_touching_border": sum(r["touches_border"] for r in mine),
            "total_volume_um3": total,
            "mean_volume_um3": total / len(mine) if mine else None,
            "median_volume_um3": med,
            "q1_volume_um3": q1,
            "q3_volume_um3": q3,
            "volume_fraction_stack": total / stack_um3,
            "volume_fraction_cell": total / cell_um3 if cell_um3 else None,
            "density_per_um3_stack": len(mine) / stack_um3,
            "density_per_um3_cell": len(mine) / cell_um3 if cell_um3 else None,
        }
        for col in CLASS_STAT_COLUMNS:
            q1, med, q3 = _quartiles([r.get(col) for r in mine])
            entry[f"median_{col}"], entry[f"q1_{col}"], entry[f"q3_{col}"] = med, q1, q3
        table.append(entry)
    return table


def class_table_columns() -> list[str]:
    """Column order of ``classes.csv``."""
    cols = [
        "class",
        "count",
        "count_touching_border",
        "total_volume_um3",
        "mean_volume_um3",
        "median_volume_um3",
        "q1_volume_um3",
        "q3_volume_um3",
        "volume_fraction_stack",
        "volume_fraction_cell",
        "density_per_um3_stack",
        "density_per_um3_cell",
    ]
    for col in CLASS_STAT_COLUMNS:
        cols += [f"median_{col}", f"q1_{col}", f"q3_{col}"]
    return cols


def merge_mesh_areas(rows: Sequence[dict], csv_path: str | Path) -> bool:
    """Add ``area_mesh_um2`` (the Blender meshes' areas) to organelle rows.

    Parameters
    ----------
    rows : sequence of dict
        Organelle rows with an ``id``; updated in place (blank where the
        organelle has no mesh).
    csv_path : str or Path
        ``quantification.csv`` written by the add-on, with columns ``id`` and
        ``area_um2`` (or ``area_mesh_um2``).

    Returns
    -------
    bool
        False (rows untouched) when the file does not exist.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        return False
    mesh_rows = read_csv(csv_path)
    column = next(
        (c for c in ("area_mesh_um2", "area_um2") if mesh_rows and c in mesh_rows[0]), None
    )
    if mesh_rows and (column is None or "id" not in mesh_rows[0]):
        raise FamousError(
            "has no id and area_um2 columns.",
            csv_path,
            "re-export the quantification from the Blender add-on, or delete the file.",
        )
    areas = {int(r["id"]): float(r[column]) for r in mesh_rows if r[column] not in ("", None)}
    for row in rows:
        row["area_mesh_um2"] = areas.get(int(row["id"]))
    return True


def format_cell(value):
    """A value as written to a CSV cell.

    Floats get 6 significant digits (blank for NaN and infinity), numpy
    integers become Python ints, None is blank and anything else is kept.
    """
    if isinstance(value, float | np.floating):
        return "" if not math.isfinite(value) else f"{float(value):.6g}"
    if isinstance(value, np.integer):
        return int(value)
    return "" if value is None else value
