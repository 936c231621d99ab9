"""Instance label TIFFs: reading them, and exporting them for Fiji, napari and Amira."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile

from ..errors import FamousError
from ..fileio import atomic_path


def read_labels(path: str | Path) -> np.ndarray:
    """Read an instance label volume (ZYX integers) from a TIFF file."""
    path = Path(path)
    try:
        labels = tifffile.imread(path)
    except (OSError, ValueError, tifffile.TiffFileError) as exc:
        raise FamousError(
            f"cannot read the label volume ({exc}).", path, "give a TIFF of instance labels."
        ) from exc
    labels = np.squeeze(labels)
    if labels.ndim == 2:
        labels = labels[None]
    if labels.ndim != 3 or not np.issubdtype(labels.dtype, np.integer):
        raise FamousError(
            f"is a {labels.ndim}-D {labels.dtype} image; a 3-D integer label volume is needed.",
            path,
            "export one id per organelle as a (Z, Y, X) uint16 or uint32 stack.",
        )
    return labels


def export_labels(path: str | Path, labels, voxel_size_nm: Sequence[float]) -> Path:
    """Write instance labels that Fiji, napari and Amira open with the voxel size.

    Parameters
    ----------
    path : str or Path
        Output ``.tif`` file (written atomically).
    labels : ndarray of int, shape (Z, Y, X), or sequence of 2-D slices
        The labels; a sequence (anything with ``len`` and indexing, e.g. a
        memory map) is written slice by slice without loading the whole volume.
    voxel_size_nm : sequence of 3 floats
        Voxel size (z, y, x) in nm.

    Returns
    -------
    Path
        The file written.

    Notes
    -----
    Ids up to 65535 are written as uint16 in an ImageJ hyperstack (``unit``
    µm, ``spacing`` = slice thickness, X/Y resolution in pixels per µm).
    ImageJ has no 32-bit integer type, so more ids are written as uint32
    OME-TIFF with ``PhysicalSizeX/Y/Z`` in µm (Fiji opens it with
    Bio-Formats). Never 64-bit, never extra axes.
    """
    path = Path(path)
    z, y, x = (float(v) / 1000.0 for v in voxel_size_nm)
    n = len(labels)
    first = np.asarray(labels[0])
    top = max(int(np.asarray(labels[k]).max()) for k in range(n))
    if top > np.iinfo(np.uint32).max or min(int(np.asarray(labels[k]).min()) for k in range(n)) < 0:
        raise FamousError(
            f"label ids must lie in 0..{np.iinfo(np.uint32).max}.",
            path,
            "renumber the organelles from 1 (skimage.segmentation.relabel_sequential).",
        )
    dtype = np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32
    shape = (n, *first.shape)

    def slices():
        for k in range(n):
            yield np.asarray(labels[k]).astype(dtype, copy=False)

    with atomic_path(path) as tmp:
        if dtype == np.uint16:
            tifffile.imwrite(
                tmp,
                slices(),
                shape=shape,
                dtype=dtype,
                imagej=True,
                resolution=(1.0 / x, 1.0 / y),
                metadata={"axes": "ZYX", "spacing": z, "unit": "um"},
            )
        else:
            tifffile.imwrite(
                tmp,
                slices(),
                shape=shape,
                dtype=dtype,
                ome=True,
                resolution=(1.0 / x, 1.0 / y),
                resolutionunit="MICROMETER",
                metadata={
                    "axes": "ZYX",
                    "PhysicalSizeX": x,
                    "PhysicalSizeXUnit": "µm",
                    "PhysicalSizeY": y,
                    "PhysicalSizeYUnit": "µm",
                    "PhysicalSizeZ": z,
                    "PhysicalSizeZUnit": "µm",
                },
            )
    return path
