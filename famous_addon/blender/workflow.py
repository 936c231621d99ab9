"""The steps the panel's buttons and ``run_famous.py`` share, so both give the same result."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from ..core.errors import FamousError
from ..core.guard import FolderLock
from ..core.pipeline import run_pipeline
from ..core.progress import ProgressFn
from ..core.request import RunRequest
from ..core.runfolder import RUN_JSON, RunFolder
from . import export
from .scene import SceneBuilder, plane_for_run

RUN_DIR = "run"


def run_dir(out: str | Path) -> Path:
    """Where the run folder of an output folder lives."""
    return Path(out) / RUN_DIR


def detect(
    request: RunRequest, progress: ProgressFn | None = None, overwrite: bool = False
) -> Path:
    """Run the bpy-free pipeline into ``OUT/run`` (resuming a run that is there).

    ``request.out`` is the output folder. Labels are always written: the
    volume mesher reads them. With ``overwrite``, a run folder that is there
    (a FAMOUS run: it has ``run.json``) is removed first and the run starts
    afresh; one that another run is writing is refused.
    """
    target = run_dir(request.out)
    if overwrite and (target / RUN_JSON).is_file():
        with FolderLock(target):
            pass  # refused while another run writes it
        shutil.rmtree(target)
    resume = (target / RUN_JSON).is_file()
    run_pipeline(replace(request, out=target, labels=True, resume=resume), progress=progress)
    return target


def builder(run, mesher=None) -> SceneBuilder:
    """A scene builder for a run folder (``mesher`` overrides the classes' own)."""
    return SceneBuilder(run if isinstance(run, RunFolder) else RunFolder(run), mesher=mesher)


def finish_scene(run: RunFolder, stack=None, voxel_size_nm=None) -> None:
    """What follows the meshes: the stack plane for context."""
    plane_for_run(run, stack, voxel_size_nm)


def build(run, mesher=None, stack=None, voxel_size_nm=None, progress=None) -> SceneBuilder:
    """Mesh a run folder into the current scene, then add the stack plane.

    Returns the finished builder: ``.organelles`` and ``.notes`` (what was
    meshed another way or skipped).
    """
    b = builder(run, mesher)
    b.build(progress)
    finish_scene(b.run, stack, voxel_size_nm)
    return b


def check_writable(out: str | Path, overwrite: bool) -> None:
    """Refuse to replace an existing ``famous.blend`` unless asked to."""
    out = Path(out)
    if (out / export.BLEND).exists() and not overwrite:
        raise FamousError(
            f"already holds {export.BLEND}; it is never overwritten.",
            out,
            "add --overwrite, or choose another output folder.",
        )
