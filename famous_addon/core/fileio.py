"""Writing files so that a crash never leaves a half-written one behind.

Every writer goes through a temporary file in the same folder and an
``os.replace``. This module is the ground floor of :mod:`famous_addon.core`:
it imports nothing from the package, so every stage can use it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np


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


def remove_leftovers(folder: Path) -> list[Path]:
    """Remove the temporary files of writers that were killed mid-write in ``folder``.

    Only names this module makes (``.NAME.RANDOM.tmp`` and ``.STEM.RANDOM.tmp.SUFFIX``)
    are touched; the caller makes sure that no writer is at work there.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob(".*.tmp*") if p.is_file() and ".tmp" in p.name[1:]]
    for path in found:
        path.unlink(missing_ok=True)
    return found


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
    """``np.savez_compressed`` at zlib level 1, written atomically.

    NumPy's level 6 took 0.9 s for a 40-slice run's 35 MB of point clouds,
    level 1 0.2 s for a file 19 % larger; ``np.load`` reads both.
    """
    with atomic_path(Path(path), suffix=".npz") as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for name, value in arrays.items():
                with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, np.asanyarray(value), allow_pickle=False)
