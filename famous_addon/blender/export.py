"""Write a built scene's results: STL meshes, mesh measurements, render, .blend."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from pathlib import Path

import bpy
import numpy as np
from mathutils import Vector

from ..core.errors import FamousError
from ..core.figure import LegendEntry, annotate, length_label, nice_length
from ..core.fileio import atomic_path, atomic_write_bytes
from ..core.guard import inside
from .materials import linear_to_srgb
from .measure import MEASURE_CSV, measure_meshes, write_measurements
from .scene import PLANE, scene_organelles

BLEND = "famous.blend"
RENDER = "render.png"
MESH_DIR = "meshes"
CAMERA = "FAMOUS camera"


def export_stls(folder: Path) -> list[Path]:
    """Write ``folder/<class>/<class>_<id>.stl`` (binary, µm) for every organelle.

    Each is the organelle's evaluated mesh (modifiers applied) in world
    coordinates, triangulated as Blender draws it. Written from the mesh data
    rather than by Blender's STL operator, which logs two lines an organelle.
    STLs of an earlier result in ``folder`` that this one lacks are removed,
    so the folder always matches ``quantification.csv``.
    """
    import trimesh  # bundled; loaded when meshes are written, not with the add-on

    written = []
    for obj in scene_organelles():
        path = inside(folder, obj["class"], f"{obj['class']}_{obj['id']}.stl")
        surface = trimesh.Trimesh(*world_triangles(obj), process=False)
        atomic_write_bytes(path, trimesh.exchange.stl.export_stl(surface))
        written.append(path)
    for stale in set(Path(folder).glob("*/*.stl")) - set(written):
        stale.unlink()
    return written


def world_triangles(obj) -> tuple[np.ndarray, np.ndarray]:
    """An object's evaluated mesh (modifiers applied) as world vertices (n, 3) and
    triangles (m, 3), as Blender draws it."""
    evaluated = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
    mesh = evaluated.to_mesh()
    try:
        mesh.calc_loop_triangles()
        verts = np.empty(len(mesh.vertices) * 3)
        mesh.vertices.foreach_get("co", verts)
        tris = np.empty(len(mesh.loop_triangles) * 3, np.int64)
        mesh.loop_triangles.foreach_get("vertices", tris)
    finally:
        evaluated.to_mesh_clear()
    world = np.array(obj.matrix_world)
    return verts.reshape(-1, 3) @ world[:3, :3].T + world[:3, 3], tris.reshape(-1, 3)


def render_png(path: Path, resolution=(1280, 720), scene=None, title: str = "") -> Path:
    """Render the organelles (Workbench, class colours) with a camera framed on them.

    The picture gets ``title`` (top left), a legend of the classes with their
    organelle counts (top right) and a scale bar in µm, true at the centre of
    the organelles (the view is in perspective), bottom left.
    """
    scene = scene or bpy.context.scene
    objs = scene_organelles()
    plane = bpy.data.objects.get(PLANE)
    framed = objs or ([plane] if plane is not None else [])
    if not framed:
        raise FamousError("there is nothing to render.", fix="build the meshes first.")
    scene.render.resolution_x, scene.render.resolution_y = resolution
    scene.render.resolution_percentage = 100
    corners = np.array([o.matrix_world @ Vector(c) for o in framed for c in o.bound_box])
    centre = Vector((corners.min(axis=0) + corners.max(axis=0)) / 2)
    cam = bpy.data.objects.get(CAMERA)
    if cam is None:
        cam = bpy.data.objects.new(CAMERA, bpy.data.cameras.new(CAMERA))
        scene.collection.objects.link(cam)
    scene.camera = cam
    # A three-quarter view from above, then Blender's own fit of the corners.
    cam.rotation_euler = Vector((-0.55, 0.75, -0.65)).to_track_quat("-Z", "Y").to_euler()
    cam.location = centre
    depsgraph = bpy.context.evaluated_depsgraph_get()
    fitted, _ = cam.camera_fit_coords(depsgraph, corners.astype(np.float32).ravel())
    back = (Vector(fitted) - centre) * 0.1
    cam.location = Vector(fitted) + back
    span = float(np.linalg.norm(corners.max(axis=0) - corners.min(axis=0)))
    cam.data.clip_start = span / 1000
    cam.data.clip_end = span * 100
    scene.camera = cam
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.display.shading.light = "STUDIO"
    scene.display.shading.color_type = "TEXTURE"
    scene.display.shading.show_cavity = True
    if scene.world is None:
        scene.world = bpy.data.worlds.new(CAMERA)
    scene.world.color = (0.02, 0.02, 0.025)
    scene.render.image_settings.file_format = "PNG"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    scene.render.filepath = str(tmp)
    with _quiet():
        bpy.ops.render.render(write_still=True)
    # Pillow (bundled for matplotlib) loads only when a render is written
    from PIL import Image

    with Image.open(tmp) as img:
        pixels = np.asarray(img)
    length = nice_length(float(max(np.ptp(corners[:, 0]), np.ptp(corners[:, 1]))))
    figure = annotate(
        pixels, _legend(objs), _bar_px(scene, cam, centre, length), length_label(length), title
    )
    Image.fromarray(figure).save(tmp)
    os.replace(tmp, path)
    return path


def _legend(objs) -> list[LegendEntry]:
    """Each class's colour (its class material, as picked) and organelle count."""
    counts: dict[str, int] = {}
    for o in objs:
        counts[o["class"]] = counts.get(o["class"], 0) + 1
    entries = []
    for cls, n in counts.items():
        mat = bpy.data.materials.get(f"FAMOUS {cls}")
        rgb = linear_to_srgb(mat.diffuse_color[:3]) if mat is not None else (0.5, 0.5, 0.5)
        entries.append(LegendEntry(cls, rgb, n))
    return entries


def _bar_px(scene, cam, centre, length: float) -> float:
    """Pixels that ``length`` (scene units, µm) spans across the view at ``centre``."""
    # Blender's own helpers; imported here like the rest of this function's work
    from bpy_extras.object_utils import world_to_camera_view

    bpy.context.view_layer.update()  # the camera's matrix after it was moved
    right = cam.matrix_world.to_3x3() @ Vector((1.0, 0.0, 0.0))
    a = world_to_camera_view(scene, cam, centre - right * (length / 2))
    b = world_to_camera_view(scene, cam, centre + right * (length / 2))
    return float(
        np.hypot((b.x - a.x) * scene.render.resolution_x, (b.y - a.y) * scene.render.resolution_y)
    )


@contextlib.contextmanager
def _quiet():
    """Blender's own lines on the terminal silenced while it renders or saves.

    Rendering without a display prints EGL errors that change nothing in the
    picture, and rendering and saving each print where they wrote a temporary
    file: noise between the progress bar's lines. A failure still raises.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        # its reports go through Python's sys.stdout, which need not be fd 1
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            with contextlib.redirect_stderr(sink):
                yield
    finally:
        # Blender prints through C's and Python's buffers: out before the fds return
        sys.stdout.flush()
        sys.stderr.flush()
        _flush_c_stdio()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def _flush_c_stdio() -> None:
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):
        pass  # no C library to reach (Windows): its lines may then show


def save_blend(path: Path) -> Path:
    """Save the current file as ``path`` atomically (never half-written)."""
    path = Path(path)
    with atomic_path(path, suffix=".blend") as tmp:
        # Saving over an existing file makes Blender keep it as a .blend1 backup.
        tmp.unlink()
        with _quiet():
            bpy.ops.wm.save_as_mainfile(filepath=str(tmp), copy=True, compress=True)
    return path


def write_outputs(
    out: Path, resolution=(1280, 720), render: bool = True, title: str = ""
) -> dict[str, Path]:
    """Write ``famous.blend``, ``quantification.csv``, ``meshes/`` and ``render.png`` to ``out``.

    ``title`` heads the render (see :func:`render_png`).
    The caller checks beforehand that an existing ``famous.blend`` may be replaced.
    """
    out = Path(out)
    paths = {"csv": out / MEASURE_CSV, "meshes": out / MESH_DIR, "blend": out / BLEND}
    write_measurements(paths["csv"], measure_meshes(scene_organelles()))
    export_stls(paths["meshes"])
    if render:
        paths["render"] = render_png(out / RENDER, resolution, title=title)
    save_blend(paths["blend"])
    return paths
