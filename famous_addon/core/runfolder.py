"""The run folder: what the bpy-free stages write and the Blender stages read.

Layout::

    RUN/run.json            config, versions, input, voxel size, timings, counts
    RUN/detections.csv      slice, class, x, y, w, h, score, organelle_id (score 0:
                            a box filled in where the organelle skips slices)
    RUN/organelles.csv      id, class, z_min, z_max, n_slices, y/x bounds, voxels,
                            volume_um3, n_points
    RUN/pointclouds.npz     ids, classes, offsets, points (µm, x y z), normals
    RUN/labels.tif          instance labels (on request)
    RUN/cache/slice_*.npz   per-slice results, so a killed run resumes
    RUN/cache/filled_*.npz  the slices with filled-in boxes (remade by every run)

Every file is written atomically (temporary file in the same folder, then
``os.replace``), so a crash never leaves a half-written file behind.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import FamousError

RUN_JSON = "run.json"
DETECTIONS_CSV = "detections.csv"
ORGANELLES_CSV = "organelles.csv"
POINTCLOUDS_NPZ = "pointclouds.npz"
LABELS_TIF = "labels.tif"
CACHE_DIR = "cache"

ORGANELLE_COLUMNS = (
    "id",
    "class",
    "z_min",
    "z_max",
    "n_slices",
    "y_min",
    "y_max",
    "x_min",
    "x_max",
    "voxels",
    "volume_um3",
    "n_points",
)
DETECTION_COLUMNS = ("slice", "class", "x", "y", "w", "h", "score", "organelle_id")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by the owner only; outputs get the permissions
# any other file the user writes would get.
_FILE_MODE = 0o666 & ~_umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class atomic_path:
    """Context manager giving a temporary path that replaces ``path`` on success.

    For writers that want a file name rather than bytes (tifffile, numpy)::

        with atomic_path(run / "labels.tif") as tmp:
            tifffile.imwrite(tmp, ...)
    """

    def __init__(self, path: Path, suffix: str | None = None):
        self.path = Path(path)
        self.suffix = suffix if suffix is not None else self.path.suffix

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.stem}.", suffix=".tmp" + self.suffix, dir=self.path.parent
        )
        os.close(fd)
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            os.chmod(self.tmp, _FILE_MODE)
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
        return False


def write_json(path: Path, data: dict) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=2, default=_json_default).encode())


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def write_csv(path: Path, columns: Iterable[str], rows: Iterable[dict | tuple]) -> None:
    """Write a CSV with a header row, atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    columns = list(columns)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row[c] for c in columns] if isinstance(row, dict) else row)
    atomic_write_bytes(path, buf.getvalue().encode())


def read_csv(path: Path) -> list[dict]:
    """Read a CSV written by :func:`write_csv` into a list of dicts (strings)."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def save_npz(path: Path, **arrays) -> None:
    with atomic_path(Path(path), suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


@dataclass
class PointClouds:
    """Point clouds of all organelles, stored flat with offsets.

    ``points[offsets[i]:offsets[i + 1]]`` belong to organelle ``ids[i]``.
    Points are (x, y, z) in µm; normals are unit vectors (zero where unknown).
    """

    ids: np.ndarray
    classes: np.ndarray
    offsets: np.ndarray
    points: np.ndarray
    normals: np.ndarray

    def get(self, organelle_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Points and normals of one organelle."""
        hit = np.flatnonzero(self.ids == organelle_id)
        if hit.size == 0:
            raise KeyError(organelle_id)
        i = int(hit[0])
        s = slice(int(self.offsets[i]), int(self.offsets[i + 1]))
        return self.points[s], self.normals[s]

    def save(self, path: Path) -> None:
        save_npz(
            path,
            ids=self.ids,
            classes=self.classes,
            offsets=self.offsets,
            points=self.points,
            normals=self.normals,
        )

    @classmethod
    def load(cls, path: Path) -> PointClouds:
        with np.load(path) as z:
            return cls(**{k: z[k] for k in ("ids", "classes", "offsets", "points", "normals")})


class RunFolder:
    """Read access to a finished run folder (what Blender and ``compare`` use)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / RUN_JSON).is_file():
            raise FamousError(
                f"is not a FAMOUS run folder (no {RUN_JSON}).",
                self.path,
                "give the --out folder of a finished `famous run`.",
            )
        self.info = json.loads((self.path / RUN_JSON).read_text())
        if self.info.get("status") != "complete":
            raise FamousError(
                "this run did not finish.",
                self.path,
                "run `famous run ... --resume` with the same --out folder to complete it.",
            )

    @property
    def voxel_size_nm(self) -> tuple[float, float, float]:
        return tuple(self.info["input"]["voxel_size_nm"])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.info["input"]["shape"])

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.info["classes"]["class"]]

    def classes(self):
        """The run's :class:`~famous_addon.core.classes.ClassConfig`."""
        from .classes import parse_config

        return parse_config(self.info["classes"], self.path / RUN_JSON)

    def organelles(self) -> list[dict]:
        rows = read_csv(self.path / ORGANELLES_CSV)
        for r in rows:
            for k in ORGANELLE_COLUMNS:
                if k == "class":
                    continue
                r[k] = float(r[k]) if k == "volume_um3" else int(r[k])
        return rows

    def pointclouds(self) -> PointClouds:
        return PointClouds.load(self.path / POINTCLOUDS_NPZ)

    @property
    def labels_path(self) -> Path | None:
        p = self.path / LABELS_TIF
        return p if p.is_file() else None
