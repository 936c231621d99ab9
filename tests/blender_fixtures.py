"""Fixtures for the tests that run on the real bpy wheel."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

PHANTOM_SHAPE = (16, 160, 160)
RUN_FAMOUS = Path(__file__).resolve().parents[1] / "blender_scripts" / "run_famous.py"


@pytest.fixture
def blender():
    """A fresh, empty Blender scene for each test (the real bpy module)."""
    bpy = pytest.importorskip("bpy")
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy


@pytest.fixture
def addon(blender):
    """The add-on registered in a fresh scene, unregistered afterwards."""
    import famous_addon

    famous_addon.register()
    yield blender
    famous_addon.unregister()


@pytest.fixture(scope="session")
def phantom_run(tmp_path_factory):
    """A tiny phantom (16 x 160 x 160, seed 0) and its run folder with labels.

    Returns ``(phantom_dir, run_dir)``.
    """
    from famous_addon.core.phantom.write import write_phantom
    from famous_addon.core.pipeline import run_pipeline
    from famous_addon.core.request import RunRequest

    root = tmp_path_factory.mktemp("blender-phantom")
    phantom = root / "phantom"
    write_phantom(phantom, shape=PHANTOM_SHAPE, seed=0, stl=False)
    run = root / "run"
    run_pipeline(
        RunRequest(
            phantom / "stack.tif",
            phantom / "classes.toml",
            run,
            boxes=phantom / "boxes",
            labels=True,
        )
    )
    return phantom, run


@pytest.fixture(scope="session")
def headless(phantom_run, tmp_path_factory):
    """``run_famous.main`` run once on the phantom's stack and boxes.

    Returns ``(out, args, exit_code)``.
    """
    pytest.importorskip("bpy")
    phantom, _ = phantom_run
    out = tmp_path_factory.mktemp("headless") / "out"
    args = ["--stack", str(phantom / "stack.tif"), "--classes", str(phantom / "classes.toml")]
    args += ["--boxes", str(phantom / "boxes"), "--out", str(out), "--resolution", "160", "90"]
    code = load_run_famous().main(args)
    return out, args, code


def load_run_famous():
    """``blender_scripts/run_famous.py`` as a module."""
    spec = importlib.util.spec_from_file_location("run_famous", RUN_FAMOUS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ellipsoid_surface(n: int, radii, centre=(0.0, 0.0, 0.0), seed: int = 0) -> np.ndarray:
    """``n`` points spread over the surface of an axis-aligned ellipsoid (µm)."""
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v * np.asarray(radii) + np.asarray(centre)


def ellipsoid_voxels(radii_vox, shape) -> np.ndarray:
    """(z, y, x) indices of the voxels of an ellipsoid centred in ``shape``."""
    grid = np.indices(shape).reshape(3, -1).T
    centre = (np.asarray(shape) - 1) / 2
    inside = (((grid - centre) / np.asarray(radii_vox)) ** 2).sum(axis=1) <= 1.0
    return grid[inside]


def panel_on_phantom(addon, phantom, out):
    """The panel's settings for the phantom with its truth boxes, writing to ``out``."""
    s = addon.context.scene.famous
    s.stack = str(phantom / "stack.tif")
    s.classes = str(phantom / "classes.toml")
    s.source = "BOXES"
    s.boxes = str(phantom / "boxes")
    s.output = str(out)
    return s
