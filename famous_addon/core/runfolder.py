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

Every file is written atomically (:mod:`.fileio`), so a crash never leaves a
half-written file behind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .classes import ClassConfig, parse_config
from .errors import FamousError
from .fileio import read_csv, save_npz
from .guard import decode_text

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


def read_run_json(folder: Path) -> dict:
    """A run folder's ``run.json`` as a dict, or a FamousError when it is not one."""
    path = Path(folder) / RUN_JSON
    fix = "give the --out folder of a `famous run`; a damaged run.json cannot be repaired."
    try:
        info = json.loads(decode_text(path.read_bytes(), path, "run.json", fix))
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise FamousError(f"is not valid JSON ({exc}).", path, fix) from None
    if not isinstance(info, dict):
        raise FamousError("is not a FAMOUS run.json (not a JSON object).", path, fix)
    return info


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
        self.info = read_run_json(self.path)
        if self.info.get("status") != "complete":
            failed = self.info.get("status") == "failed"
            raise FamousError(
                f"this run failed ({self.info.get('error')})"
                if failed
                else "this run did not finish.",
                self.path,
                "run `famous run ... --resume` with the same --out folder to complete it"
                + (" once the input is fixed." if failed else "."),
            )

    @property
    def voxel_size_nm(self) -> tuple[float, float, float]:
        return tuple(self.info["input"]["voxel_size_nm"])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.info["input"]["shape"])

    @property
    def class_names(self) -> list[str]:
        """The class names, checked (they name exported files) as :meth:`classes` checks them."""
        return self.classes().names

    def classes(self) -> ClassConfig:
        """The run's class configuration."""
        return parse_config(self.info.get("classes"), self.path / RUN_JSON)

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
