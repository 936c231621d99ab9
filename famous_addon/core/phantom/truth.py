"""The phantom's ground truth on disk: the ``truth.csv`` table, one STL per organelle, reading back.

``truth.csv`` has one row per organelle with a voxel in the stack (see
:data:`TRUTH_COLUMNS`); ``truth_stl/<class>/<class>_<id>.stl`` holds its
marching-cubes surface in µm, (x, y, z).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
import trimesh
from scipy import ndimage
from skimage.measure import marching_cubes

from ..errors import FamousError
from ..fileio import atomic_write_bytes, read_csv
from ..progress import ProgressFn, silent
from .cell import Phantom

TRUTH_COLUMNS = ("id", "class", "kind", "touching", "voxels", "volume_um3", "n_boxes")


def organelle_mesh(mask: np.ndarray, offset_vox, spacing_um):
    """A closed surface of a binary mask, vertices in µm as (x, y, z).

    Parameters
    ----------
    mask : ndarray (z, y, x) bool
        The organelle's voxels; padded here so the surface is closed.
    offset_vox : (z, y, x)
        Index of ``mask[0, 0, 0]`` in the stack.
    spacing_um : (z, y, x)
        Voxel size in µm.

    Returns
    -------
    trimesh.Trimesh
    """
    padded = np.pad(mask.astype(np.float32), 1)
    verts, faces, _, _ = marching_cubes(padded, 0.5, spacing=tuple(spacing_um))
    verts += (np.asarray(offset_vox, float) - 1.0) * np.asarray(spacing_um)
    return trimesh.Trimesh(verts[:, ::-1], faces, process=False)


def write_truth_stls(
    folder: Path, labels: np.ndarray, phantom: Phantom, progress: ProgressFn | None = None
) -> list[Path]:
    """One binary STL per organelle of ``labels`` under ``folder/<class>/<class>_<id>.stl``.

    Parameters
    ----------
    folder : Path
        The ``truth_stl`` folder.
    labels : ndarray (Z, Y, X)
        Truth labels of ``phantom`` (all slices).
    phantom : Phantom
        For the class names and voxel size.
    progress : callable, optional
        ``progress(fraction, message)``.

    Returns
    -------
    list of Path
        The files written.
    """
    progress = progress or silent
    written = []
    slices = ndimage.find_objects(labels)
    for i, sl in enumerate(slices):
        if sl is None:
            continue
        o = phantom.objects[i]
        mesh = organelle_mesh(labels[sl] == o.id, [s.start for s in sl], phantom.spacing_um)
        path = Path(folder) / o.name / f"{o.name}_{o.id}.stl"
        atomic_write_bytes(path, mesh.export(file_type="stl"))
        written.append(path)
        progress((i + 1) / len(slices), f"truth STL {o.name}_{o.id}")
    return written


def load_truth(out: str | Path) -> tuple[np.ndarray, list[dict]]:
    """Read a written phantom's truth: the label volume and the ``truth.csv`` rows.

    Parameters
    ----------
    out : str or Path
        A folder written by :func:`write_phantom`.

    Returns
    -------
    labels : ndarray (Z, Y, X) uint16
    rows : list of dict
        ``truth.csv`` rows; ``id``, ``voxels`` and ``n_boxes`` as int,
        ``volume_um3`` as float.
    """
    out = Path(out)
    for name in ("truth_labels.tif", "truth.csv"):
        if not (out / name).is_file():
            raise FamousError(f"has no {name}.", out, "give a folder written by `famous phantom`.")
    labels = tifffile.imread(out / "truth_labels.tif")
    rows = read_csv(out / "truth.csv")
    for r in rows:
        r["id"], r["voxels"], r["n_boxes"] = int(r["id"]), int(r["voxels"]), int(r["n_boxes"])
        r["volume_um3"] = float(r["volume_um3"])
    return labels, rows
