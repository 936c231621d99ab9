"""Atomic writes and the run folder reader."""

import json

import numpy as np
import pytest

from famous_addon.core import fileio
from famous_addon.core import runfolder as rf
from famous_addon.core.errors import FamousError


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with fileio.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]
    fileio.atomic_write_bytes(target, b"new")
    assert target.read_text() == "new"


def test_pointclouds_round_trip(tmp_path):
    pc = rf.PointClouds(
        ids=np.array([3, 7]),
        classes=np.array([0, 2]),
        offsets=np.array([0, 2, 5]),
        points=np.arange(15, dtype=np.float32).reshape(5, 3),
        normals=np.zeros((5, 3), np.float32),
    )
    pc.save(tmp_path / "p.npz")
    again = rf.PointClouds.load(tmp_path / "p.npz")
    pts, _ = again.get(7)
    np.testing.assert_array_equal(pts, pc.points[2:5])
    with pytest.raises(KeyError):
        again.get(99)


def test_reader_refuses_non_runs_and_unfinished_runs(tmp_path):
    with pytest.raises(FamousError, match="not a FAMOUS run folder"):
        rf.RunFolder(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"status": "running"}))
    with pytest.raises(FamousError, match="--resume"):
        rf.RunFolder(tmp_path)


def test_outputs_get_normal_file_permissions(tmp_path):
    import os

    fileio.atomic_write_bytes(tmp_path / "a.csv", b"x")
    with fileio.atomic_path(tmp_path / "b.tif") as tmp:
        tmp.write_bytes(b"y")
    mask = os.umask(0)
    os.umask(mask)
    for name in ("a.csv", "b.tif"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask
