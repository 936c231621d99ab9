"""Build the Blender scene from a run folder: one coloured collection per class.

The scene is built in small steps (one organelle each) by :class:`SceneBuilder`,
so the UI can run it from a modal timer and the headless script can run it in
a loop; both call the same code. Everything is built under a temporary root
collection and swapped in only when complete, so a cancelled or failed build
leaves the previous result, and no half-built objects, behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bpy
import numpy as np
import tifffile

from ..core.errors import FamousError
from ..core.progress import ProgressFn
from ..core.runfolder import RunFolder
from ..core.stack import open_stack
from . import meshing
from .materials import class_material, colour_tag
from .measure import MeshStats, mesh_stats

ROOT = "FAMOUS"
BUILDING = "FAMOUS (building)"
PLANE = "FAMOUS stack slice"


@dataclass
class Organelle:
    """One meshed organelle: its object and its measurements."""

    obj: bpy.types.Object
    id: int
    cls: str
    slices: int
    stats: MeshStats


class LabelVoxels:
    """Voxels of one organelle from ``labels.tif``, read slice by slice within its bounds."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            mm = tifffile.memmap(self.path, mode="r")
            # A one-slice stack comes back 2-D.
            self._memmap = mm.reshape(1, *mm.shape) if mm.ndim == 2 else mm
            self._tif = None
        except ValueError:
            # Compressed or tiled files cannot be memory-mapped; read pages instead.
            self._memmap = None
            self._tif = tifffile.TiffFile(self.path)

    @property
    def n_slices(self) -> int:
        """Slices of the label volume."""
        if self._memmap is not None:
            return int(self._memmap.shape[0])
        return len(self._tif.pages)

    def voxels(self, row: dict) -> np.ndarray:
        """(slice, row, column) of the voxels labelled ``row["id"]`` in its bounding box."""
        z0, z1 = row["z_min"], row["z_max"] + 1
        y0, y1 = row["y_min"], row["y_max"] + 1
        x0, x1 = row["x_min"], row["x_max"] + 1
        if self._memmap is not None:
            block = np.asarray(self._memmap[z0:z1, y0:y1, x0:x1])
        else:
            block = np.stack([self._tif.pages[k].asarray()[y0:y1, x0:x1] for k in range(z0, z1)])
        vox = np.argwhere(block == row["id"])
        return vox + np.array([z0, y0, x0])

    def close(self) -> None:
        if self._tif is not None:
            self._tif.close()
        self._memmap = None


def remove_collection_tree(coll: bpy.types.Collection) -> None:
    """Delete a collection, its child collections and every object in them."""
    for child in list(coll.children):
        remove_collection_tree(child)
    for obj in list(coll.objects):
        meshing.remove_object(obj)
    bpy.data.collections.remove(coll)


class SceneBuilder:
    """Mesh every organelle of a run folder into per-class collections.

    Parameters
    ----------
    run : RunFolder or path
    mesher : {"hull", "volume"}, optional
        Overrides every class's own mesher.
    settings : meshing.HullSettings, optional
    scene : Scene, optional
        Defaults to the current scene.

    Use :meth:`steps` (a generator, one organelle per step) from a modal
    timer, or :meth:`build` to run to the end; :meth:`abort` removes what a
    stopped build made.
    """

    def __init__(self, run, mesher=None, settings=None, scene=None):
        self.run = run if isinstance(run, RunFolder) else RunFolder(run)
        if mesher not in (None, "hull", "volume"):
            raise FamousError(f"unknown mesher {mesher!r}.", fix="use hull or volume.")
        self.mesher = mesher
        self.settings = settings or meshing.HullSettings()
        self.scene = scene or bpy.context.scene
        self.config = self.run.classes()
        self.organelles: list[Organelle] = []
        self.notes: list[str] = []
        self._root: bpy.types.Collection | None = None
        self._labels: LabelVoxels | None = None

    def mesher_of(self, cls: str) -> str:
        return self.mesher or self.config[self.config.index(cls)].mesh.mesher

    def steps(self) -> Iterator[tuple[float, str]]:
        """Build step by step, yielding ``(fraction, message)`` after each organelle."""
        rows = self.run.organelles()
        needs_labels = any(self.mesher_of(r["class"]) == "volume" for r in rows)
        if needs_labels and self.run.labels_path is None:
            raise FamousError(
                "the volume mesher needs the run's labels.tif, which this run lacks.",
                self.run.path,
                "run the pipeline again with --labels, or mesh with --mesher hull.",
            )
        if self.run.labels_path is not None:
            self._labels = LabelVoxels(self.run.labels_path)
        clouds = self.run.pointclouds()
        old = bpy.data.collections.get(BUILDING)
        if old is not None:
            remove_collection_tree(old)
        self._root = bpy.data.collections.new(BUILDING)
        self.scene.collection.children.link(self._root)
        colls = {}
        for spec in self.config:
            coll = bpy.data.collections.new(f"{spec.name} (building)")
            self._root.children.link(coll)
            coll["famous_class"] = spec.name
            coll.color_tag = colour_tag(spec.rgb)
            colls[spec.name] = (coll, class_material(spec.name, spec.rgb))
        yield 0.0, f"meshing {len(rows)} organelles"
        for i, row in enumerate(rows):
            coll, mat = colls[row["class"]]
            name = f"{row['class']}_{row['id']}"
            obj = self._mesh(row, name, clouds, coll)
            if obj is None:
                yield (i + 1) / len(rows), f"skipped {name}"
                continue
            # The volume mesher's geometry-nodes output carries an empty material
            # slot that its faces use; replace it rather than adding a second slot.
            obj.data.materials.clear()
            obj.data.materials.append(mat)
            stats = mesh_stats(obj)
            obj["id"] = int(row["id"])
            obj["class"] = row["class"]
            obj["slices"] = int(row["n_slices"])
            obj["volume_um3"] = stats.volume_um3
            obj["area_um2"] = stats.area_um2
            obj["mesher"] = obj.get("mesher", self.mesher_of(row["class"]))
            self.organelles.append(
                Organelle(obj, int(row["id"]), row["class"], row["n_slices"], stats)
            )
            yield (i + 1) / len(rows), f"meshed {name}"
        self._finish()

    def _mesh(self, row, name, clouds, coll) -> bpy.types.Object | None:
        """One organelle's mesh; a hull that cannot be made falls back to the volume mesher.

        Organelles seen on a single slice have flat point clouds and no
        convex hull; their voxels still mesh. Without labels they are skipped
        and listed in :attr:`notes`.
        """
        if self.mesher_of(row["class"]) == "volume":
            return self._volume_mesh(row, name, coll)
        points, normals = clouds.get(row["id"])
        shape = self.config[self.config.index(row["class"])].mesh.shape
        try:
            return meshing.hull_mesh(name, points, normals, shape, self.settings, coll)
        except FamousError as exc:
            if self._labels is None:
                self.notes.append(f"{exc.what} Skipped (no labels.tif to mesh its voxels).")
                return None
            self.notes.append(f"{exc.what} Meshed from its voxels instead.")
            obj = self._volume_mesh(row, name, coll)
            obj["mesher"] = "volume"
            return obj

    def _volume_mesh(self, row, name, coll) -> bpy.types.Object:
        """The organelle meshed from its voxels (the stack's ends cut it flat)."""
        vox, n = self._labels.voxels(row), self._labels.n_slices
        return meshing.volume_mesh(name, vox, self.run.voxel_size_nm, coll, n_slices=n)

    def _finish(self) -> None:
        """Swap the finished build in for the previous result."""
        old = bpy.data.collections.get(ROOT)
        if old is not None:
            remove_collection_tree(old)
        self._root.name = ROOT
        for coll in self._root.children:
            coll.name = coll["famous_class"]
        self._close_labels()

    def abort(self) -> None:
        """Remove everything this build made so far."""
        if self._root is not None and self._root.name == BUILDING:
            remove_collection_tree(self._root)
        self._root = None
        self.organelles = []
        self.notes = []
        self._close_labels()

    def _close_labels(self) -> None:
        if self._labels is not None:
            self._labels.close()
            self._labels = None

    def build(self, progress: ProgressFn | None = None) -> list[Organelle]:
        """Run every step; on any error or cancel, undo the partial build and re-raise."""
        try:
            for fraction, message in self.steps():
                if progress is not None:
                    progress(fraction, message)
        except BaseException:
            self.abort()
            raise
        return self.organelles


def scene_organelles() -> list[bpy.types.Object]:
    """The organelle objects under the FAMOUS collection, by class then id."""
    root = bpy.data.collections.get(ROOT)
    if root is None:
        return []
    objs = [o for c in root.children for o in c.objects if "id" in o]
    return sorted(objs, key=lambda o: (o["class"], o["id"]))


# ---------------------------------------------------------------------------
# The stack as an image plane


_open_stacks: dict[str, object] = {}


def _stack(path: str, voxel_size_nm, channel: int | None = None):
    key = f"{path}|{tuple(voxel_size_nm)}|{channel}"
    if key not in _open_stacks:
        _open_stacks[key] = open_stack(path, tuple(voxel_size_nm), channel)
    return _open_stacks[key]


def stack_plane(
    stack_path: str | Path, voxel_size_nm, index: int | None = None, channel: int | None = None
) -> bpy.types.Object:
    """A textured plane showing one slice of the stack at its height (1 unit = 1 µm).

    The plane covers x = 0..X * px_x, y = 0..Y * px_y, so pixel (row r, col c)
    sits at x = c * px_x, y = r * px_y as everywhere else. Use
    :func:`show_slice` to move it through z. ``channel``: the one shown of a
    multi-channel TIFF.
    """
    stack = _stack(str(stack_path), voxel_size_nm, channel)
    nz, ny, nx = stack.shape
    dz, py, px = (v / 1000.0 for v in stack.voxel_size_nm)
    obj = bpy.data.objects.get(PLANE)
    if obj is None:
        verts = np.array([[0, 0, 0], [nx * px, 0, 0], [nx * px, ny * py, 0], [0, ny * py, 0]])
        obj = meshing.new_mesh_object(PLANE, verts, np.array([[0, 1, 2, 3]]))
        uv = obj.data.uv_layers.new(name="UVMap")
        uv.data.foreach_set("uv", np.array([0, 0, 1, 0, 1, 1, 0, 1], np.float32))
        obj.data.materials.append(_plane_material(nx, ny))
        obj.hide_select = True
    obj["famous_stack"] = str(stack_path)
    obj["famous_voxel_size_nm"] = list(stack.voxel_size_nm)
    obj["famous_channel"] = -1 if channel is None else int(channel)
    obj["famous_slices"] = nz
    # The first slice by default: under the cell, it hides none of the organelles.
    show_slice(0 if index is None else index)
    return obj


def plane_for_run(run: RunFolder, stack_path=None, voxel_size_nm=None) -> bpy.types.Object | None:
    """The stack plane for a run: its own input stack unless another is given.

    Returns None when the stack file is no longer where the run found it.
    """
    path = stack_path or run.info["input"]["path"]
    if not path or not Path(path).exists():
        return None
    # the channel the run segmented (a multi-channel TIFF), recorded in run.json
    channel = run.info["input"].get("channel")
    return stack_plane(path, voxel_size_nm or run.voxel_size_nm, channel=channel)


def _plane_material(nx: int, ny: int) -> bpy.types.Material:
    image = bpy.data.images.get(PLANE) or bpy.data.images.new(PLANE, nx, ny, alpha=False)
    if tuple(image.size) != (nx, ny):
        image.scale(nx, ny)
    image.colorspace_settings.name = "Non-Color"
    mat = bpy.data.materials.get(PLANE) or bpy.data.materials.new(PLANE)
    if mat.node_tree is None:
        mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    nodes.clear()
    tex = nodes.new("ShaderNodeTexImage")
    tex.image = image
    tex.interpolation = "Closest"
    emit = nodes.new("ShaderNodeEmission")
    out = nodes.new("ShaderNodeOutputMaterial")
    links.new(tex.outputs["Color"], emit.inputs["Color"])
    links.new(emit.outputs["Emission"], out.inputs["Surface"])
    nodes.active = tex
    return mat


def show_slice(index: int) -> int:
    """Show slice ``index`` (clipped to the stack) on the plane; returns the index shown."""
    obj = bpy.data.objects.get(PLANE)
    if obj is None:
        return index
    channel = obj.get("famous_channel", -1)
    stack = _stack(
        obj["famous_stack"], obj["famous_voxel_size_nm"], None if channel < 0 else channel
    )
    k = int(min(max(index, 0), len(stack) - 1))
    grey = stack.read(k).astype(np.float32) / 255.0
    rgba = np.empty(grey.shape + (4,), np.float32)
    rgba[..., :3] = grey[..., None]
    rgba[..., 3] = 1.0
    # Blender stores images bottom row first; row r of the slice goes to v = r / Y,
    # which the plane's UVs put at y = r * px_y.
    image = bpy.data.images[PLANE]
    image.pixels.foreach_set(rgba.ravel())
    image.update()
    # Pixels set from Python live only in memory; packing keeps the slice in the .blend.
    image.pack()
    obj.location.z = k * stack.voxel_size_nm[0] / 1000.0
    obj["famous_slice"] = k
    return k
