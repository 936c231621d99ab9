"""Organelle meshes from point clouds or mask voxels, with Blender's own tools.

Two meshers, chosen per class (``ClassSpec.mesh.mesher``):

``hull``
    The paper's "Surface reconstruction" (Figure 22, elements 3-8): convex hull
    of the cleaned points, OpenVDB voxel remesh, fit to the points (scale, or
    shrinkwrap then scale), drop the points left outside as noise, hull of the
    kept points, denser remesh, shrinkwrap onto the points, smooth. Each step
    is its own function so it can be run and looked at on its own.
``volume``
    The organelle's mask voxels as points, Geometry Nodes "Points to Volume"
    then "Volume to Mesh" (OpenVDB), lightly smoothed. Keeps concavities a
    convex hull loses.

A Shrinkwrap onto a vertices-only target does nothing (NEAREST_SURFACEPOINT,
PROJECT) or collapses vertices into zero-area faces (NEAREST_VERTEX), so the
hull mesher projects onto a faced target built from the points: one small
square per point in its tangent plane (a "splat" surface).

All modifiers are applied through the evaluated depsgraph
(``bpy.data.meshes.new_from_object``), which needs no operator context and is
about twice as fast as ``bpy.ops.object.modifier_apply``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import bmesh
import bpy
import numpy as np
from mathutils import Matrix, Vector
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree
from skimage.measure import marching_cubes

from ..core.errors import FamousError
from ..core.mesh_cells import coarsen, shape_field, thick_sections
from ..core.quantify.surface import zero_level

HULL_STEPS = ("hull", "remesh", "fit", "clean", "hull2", "remesh2", "project", "smooth")
VOLUME_GROUP = "FAMOUS volume mesher"
# In voxel units. With the grid aligned on the voxel centres, a radius of one
# voxel marks each voxel's own cell; a threshold of 0.4 (not 0.5) offsets the
# corner cutting of marching cubes. Two light smoothing passes then take the
# voxel steps off the surface. Measured on voxelised spheres (r = 6, 12) and
# ellipsoids (radii 2.5-20 voxels): mesh volume within -2.5..+0.7 % of the
# voxel count; a sphere of radius 3 voxels comes out 8 % small.
VOLUME_RADIUS = 1.0
VOLUME_THRESHOLD = 0.4
VOLUME_SMOOTH_ITERATIONS = 2
# Above this many voxels an organelle is meshed on merged cells: meshing time
# grows with the voxel count (about 4 µs per voxel) while the surface gains
# nothing visible from more than ~100k cells.
VOLUME_MAX_VOXELS = 100_000


@dataclass(frozen=True)
class HullSettings:
    """Parameters of the hull mesher.

    Attributes
    ----------
    min_vertices, max_vertices : int
        The final mesh gets about as many vertices as the organelle has
        points, within this range; the voxel size of the final remesh follows
        from the hull's area.
    rough_factor : float
        The rough remesh's voxels are this many times larger.
    project_limit : float
        How far (a fraction of the organelle's largest extent) a vertex may
        move when projected onto the points.
    min_cells : int
        Remesh voxels across the smallest extent at least, so flat organelles
        do not vanish in the remesh.
    min_scale, max_scale : float
        Range of the scale-up of the rough mesh (the paper's 1-3 %).
    cover_quantile : float
        Fraction of the points the scaled rough mesh should enclose; the rest
        (beyond ``max_scale``) is dropped as noise.
    neighbours : int
        Neighbours used for a splat's size and, when no normal is known, its plane.
    smooth_factor, smooth_iterations : float, int
        The final Smooth modifier.
    """

    min_vertices: int = 1000
    max_vertices: int = 5000
    rough_factor: float = 1.5
    project_limit: float = 0.25
    min_cells: int = 6
    min_scale: float = 0.01
    max_scale: float = 0.03
    cover_quantile: float = 0.95
    neighbours: int = 8
    smooth_factor: float = 0.5
    smooth_iterations: int = 2


# ---------------------------------------------------------------------------
# Small building blocks


def new_mesh_object(
    name: str,
    vertices: np.ndarray,
    faces: np.ndarray | None = None,
    collection: bpy.types.Collection | None = None,
) -> bpy.types.Object:
    """A mesh object from vertex positions and (optionally) equal-sized faces.

    Parameters
    ----------
    name : str
    vertices : (n, 3) float array
    faces : (m, k) int array, optional
        Vertex indices of ``m`` faces with ``k`` corners each.
    collection : Collection, optional
        Where to link the object; the scene's master collection by default.
        Modifiers are only evaluated for objects in the view layer.
    """
    me = bpy.data.meshes.new(name)
    verts = np.ascontiguousarray(vertices, dtype=np.float32).reshape(-1, 3)
    me.vertices.add(len(verts))
    me.vertices.foreach_set("co", verts.ravel())
    if faces is not None and len(faces):
        faces = np.ascontiguousarray(faces, dtype=np.int32)
        n, k = faces.shape
        me.loops.add(n * k)
        me.loops.foreach_set("vertex_index", faces.ravel())
        me.polygons.add(n)
        me.polygons.foreach_set("loop_start", np.arange(0, n * k, k, dtype=np.int32))
        me.polygons.foreach_set("loop_total", np.full(n, k, np.int32))
    me.update(calc_edges=True)
    obj = bpy.data.objects.new(name, me)
    (collection or bpy.context.scene.collection).objects.link(obj)
    return obj


def vertex_array(obj: bpy.types.Object) -> np.ndarray:
    """Vertex positions of a mesh object as an (n, 3) float array (object space)."""
    co = np.empty(len(obj.data.vertices) * 3, np.float32)
    obj.data.vertices.foreach_get("co", co)
    return co.reshape(-1, 3).astype(np.float64)


def remove_object(obj: bpy.types.Object) -> None:
    """Delete an object and its mesh data."""
    data = obj.data
    bpy.data.objects.remove(obj)
    if data is not None and data.users == 0:
        bpy.data.meshes.remove(data)


def apply_modifiers(obj: bpy.types.Object) -> bpy.types.Object:
    """Bake the object's modifier stack into its mesh (no operator context needed)."""
    depsgraph = bpy.context.evaluated_depsgraph_get()
    mesh = bpy.data.meshes.new_from_object(obj.evaluated_get(depsgraph))
    old = obj.data
    obj.modifiers.clear()
    obj.data = mesh
    mesh.name = old.name
    if old.users == 0:
        bpy.data.meshes.remove(old)
    return obj


def _set_mesh(obj: bpy.types.Object, bm: bmesh.types.BMesh) -> None:
    bm.to_mesh(obj.data)
    obj.data.update()


# ---------------------------------------------------------------------------
# Hull mesher steps (paper Figure 22)


def points_object(name: str, points: np.ndarray, collection=None) -> bpy.types.Object:
    """The point cloud as a vertices-only mesh object (Figure 22, elements 1-2)."""
    return new_mesh_object(name, points, collection=collection)


def convex_hull(name: str, points: np.ndarray, collection=None) -> bpy.types.Object:
    """Convex hull of the points as a closed triangle mesh (element 3).

    Raises
    ------
    FamousError
        When the points span no volume (fewer than 4, or all in one plane).
    """
    obj = new_mesh_object(name, points, collection=collection)
    bm = bmesh.new()
    bm.from_mesh(obj.data)
    result = bmesh.ops.convex_hull(bm, input=bm.verts)
    # Points inside the hull stay as loose vertices; a closed mesh must not keep them.
    loose = {*result["geom_interior"], *result["geom_unused"]}
    bmesh.ops.delete(bm, geom=[g for g in loose if isinstance(g, bmesh.types.BMVert)])
    n_faces, volume = len(bm.faces), bm.calc_volume()
    _set_mesh(obj, bm)
    bm.free()
    if n_faces < 4 or volume <= 0:
        remove_object(obj)
        raise FamousError(
            f"{name}: its {len(points)} points span no volume, so it has no convex hull.",
            fix="mesh it with the volume mesher, or drop organelles seen on one slice only.",
        )
    return obj


def remesh(obj: bpy.types.Object, voxel_size: float) -> bpy.types.Object:
    """OpenVDB voxel remesh (Remesh modifier, VOXEL mode), applied (elements 4, 7)."""
    mod = obj.modifiers.new("remesh", "REMESH")
    mod.mode = "VOXEL"
    mod.voxel_size = float(voxel_size)
    mod.use_smooth_shade = True
    apply_modifiers(obj)
    if len(obj.data.polygons) < 4:
        raise FamousError(
            f"{obj.name}: too thin for a {voxel_size:.3g} µm voxel remesh.",
            fix="mesh it with the volume mesher.",
        )
    return obj


def splat_target(
    name: str, points: np.ndarray, normals: np.ndarray | None, neighbours: int = 8, collection=None
) -> bpy.types.Object:
    """A faced stand-in for the point cloud: one square per point in its tangent plane.

    The square lies across the point's normal (or, where the normal is zero,
    across the direction of least spread of its neighbours) and is as wide as
    the distance to its ``neighbours``-th neighbour, and at least as tall as
    half the gap between slices, so the squares overlap into one surface.
    """
    pts = np.asarray(points, dtype=np.float64)
    k = int(min(neighbours, len(pts) - 1))
    dist, idx = cKDTree(pts).query(pts, k=k + 1)
    nrm = np.zeros_like(pts) if normals is None else np.asarray(normals, dtype=np.float64)
    unknown = np.linalg.norm(nrm, axis=1) < 0.5
    if unknown.any():
        nb = pts[idx[unknown]]
        centred = nb - nb.mean(axis=1, keepdims=True)
        _, vecs = np.linalg.eigh(np.einsum("nki,nkj->nij", centred, centred))
        nrm[unknown] = vecs[:, :, 0]
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    helper = np.where(np.abs(nrm[:, 2:3]) < 0.9, [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]])
    t1 = np.cross(nrm, helper)
    t1 /= np.linalg.norm(t1, axis=1, keepdims=True)
    t2 = np.cross(nrm, t1)
    # Points from slices sit on a few z levels; squares must bridge the gaps.
    levels = np.unique(pts[:, 2])
    on_slices = 1 < len(levels) < len(pts) / 4
    slice_gap = float(np.median(np.diff(levels))) if on_slices else 0.0
    half = np.maximum(dist[:, -1], 0.6 * slice_gap)[:, None]
    corners = np.stack(
        [pts + half * t1, pts + half * t2, pts - half * t1, pts - half * t2], axis=1
    ).reshape(-1, 3)
    faces = np.arange(len(corners), dtype=np.int32).reshape(-1, 4)
    return new_mesh_object(name, corners, faces, collection)


def shrinkwrap(obj: bpy.types.Object, target: bpy.types.Object, limit: float) -> bpy.types.Object:
    """Project every vertex along its normal onto the target surface, applied.

    Both directions, at most ``limit`` away; a vertex whose normal meets no
    splat stays where it is. Moving to the nearest surface point instead
    would drag the flat top and bottom of an organelle (outlines only, no
    points on its caps) sideways onto its rim.
    """
    mod = obj.modifiers.new("shrinkwrap", "SHRINKWRAP")
    mod.wrap_method = "PROJECT"
    mod.use_negative_direction = True
    mod.use_positive_direction = True
    mod.cull_face = "OFF"
    mod.project_limit = float(limit)
    mod.target = target
    return apply_modifiers(obj)


def outward_distance(obj: bpy.types.Object, points: np.ndarray) -> np.ndarray:
    """Signed distance of each point from the closed mesh, positive outside.

    Measured to the tangent plane of the nearest vertex (vertex normal), which
    on a remeshed mesh (vertices one voxel apart) is close to the true
    distance and, unlike a BVH query per point, vectorises.
    """
    mesh = obj.data
    co = vertex_array(obj)
    nrm = np.empty(len(co) * 3, np.float32)
    mesh.vertex_normals.foreach_get("vector", nrm)
    nrm = nrm.reshape(-1, 3)
    _, idx = cKDTree(co).query(points)
    return np.einsum("ij,ij->i", points - co[idx], nrm[idx])


def cover_scale(
    obj: bpy.types.Object, points: np.ndarray, settings: HullSettings = HullSettings()
) -> float:
    """The scale (1 + 1..3 %) that lets the rough mesh enclose most of the points.

    For each point outside, the scale about the centroid that would reach it
    is ``1 + d / r`` (``d`` its distance outside, ``r`` its distance from the
    centre); the ``cover_quantile`` of these, clipped to the 1-3 % range.
    """
    centre = points.mean(axis=0)
    d = outward_distance(obj, points)
    r = np.maximum(np.linalg.norm(points - centre, axis=1), 1e-9)
    need = np.quantile(np.maximum(d, 0.0) / r, settings.cover_quantile)
    return 1.0 + float(np.clip(need, settings.min_scale, settings.max_scale))


def scale_about(obj: bpy.types.Object, factor: float, centre: np.ndarray) -> bpy.types.Object:
    """Scale the mesh's vertices about a point."""
    c = Matrix.Translation(Vector(centre))
    obj.data.transform(c @ Matrix.Scale(factor, 4) @ c.inverted())
    obj.data.update()
    return obj


def smooth(obj: bpy.types.Object, factor: float = 0.5, iterations: int = 2) -> bpy.types.Object:
    """Smooth modifier, applied (element 8)."""
    mod = obj.modifiers.new("smooth", "SMOOTH")
    mod.factor = factor
    mod.iterations = iterations
    return apply_modifiers(obj)


def remesh_sizes(
    points: np.ndarray, hull: bpy.types.Object, settings: HullSettings
) -> tuple[float, float]:
    """Rough and fine remesh voxel sizes.

    A remesh of voxel size ``h`` puts about ``area / h**2`` vertices on the
    surface; the fine size gives about one vertex per point (within the
    settings' range), and ``min_cells`` voxels across the organelle's
    thinnest extent where that costs at most 16 times more vertices, but is
    never below half the median spacing of the points.
    """
    areas = np.empty(len(hull.data.polygons), np.float32)
    hull.data.polygons.foreach_get("area", areas)
    target = np.clip(len(points), settings.min_vertices, settings.max_vertices)
    by_area = float(np.sqrt(areas.sum() / target))
    thin = float(np.ptp(points, axis=0).min()) / settings.min_cells
    # Thin organelles get finer voxels, but at most 16x the vertices: thinner
    # ones than that fail in the remesh and are meshed from their voxels.
    fine = max(min(by_area, thin), by_area / 4)
    # Nor finer than half the points' spacing: the data has no smaller detail.
    spacing = float(np.median(cKDTree(points).query(points, k=2)[0][:, 1]))
    fine = max(fine, spacing / 2)
    return settings.rough_factor * fine, fine


def hull_mesh(
    name: str,
    points: np.ndarray,
    normals: np.ndarray | None = None,
    shape: str = "project",
    settings: HullSettings = HullSettings(),
    collection=None,
    stop_after: str | None = None,
) -> bpy.types.Object:
    """Mesh one organelle from its cleaned point cloud (paper Figure 22).

    Parameters
    ----------
    name : str
        Name of the resulting object.
    points : (n, 3) float array
        Outlier-cleaned points in µm.
    normals : (n, 3) float array, optional
        Unit normals (zero where unknown).
    shape : {"uniform", "project"}
        ``uniform``: points lie at a near-constant distance from the centre,
        the rough mesh is only scaled; ``project``: shrinkwrapped onto the
        points first, then scaled.
    settings : HullSettings
    collection : Collection, optional
    stop_after : str, optional
        One of :data:`HULL_STEPS`: return the mesh as it is after that step.

    Returns
    -------
    Object
        A closed manifold mesh object named ``name``.
    """
    points = _hull_points(name, points, stop_after)
    run = _HullRun(name, points, normals, settings, collection)
    try:
        for step in run.steps(shape):
            if step == stop_after:
                return run.shown(step)
        return run.obj
    except BaseException:
        run.discard()
        raise
    finally:
        run.close()


def _hull_points(name: str, points, stop_after: str | None) -> np.ndarray:
    """The points as a float array, once the request is known to be meshable."""
    if stop_after is not None and stop_after not in HULL_STEPS:
        raise FamousError(
            f"unknown step {stop_after!r}.", fix=f"use one of {', '.join(HULL_STEPS)}."
        )
    points = np.asarray(points, dtype=np.float64)
    if len(points) < 4:
        raise FamousError(
            f"{name}: only {len(points)} points, a closed mesh needs at least 4.",
            fix="mesh it with the volume mesher, or lower the outlier threshold.",
        )
    return points


class _HullRun:
    """One run of the hull mesher, advanced one step of :data:`HULL_STEPS` at a time.

    ``obj`` is the mesh being shaped, ``target`` the splat surface it is
    projected onto, ``first_hull`` a copy of the first hull's mesh, reused
    when the clean-up finds no noise, and ``keep`` the points the clean-up kept.
    """

    def __init__(self, name, points, normals, settings: HullSettings, collection):
        self.name, self.points, self.normals = name, points, normals
        self.settings, self.collection = settings, collection
        self.target = splat_target(
            name + ".target", points, normals, settings.neighbours, collection
        )
        self.obj: bpy.types.Object | None = None
        self.first_hull: bpy.types.Mesh | None = None
        self.keep: np.ndarray | None = None

    def steps(self, shape: str) -> Iterator[str]:
        """Run the steps in order, yielding each one's name when it is done."""
        points, settings = self.points, self.settings
        self.obj = convex_hull(self.name, points, self.collection)
        rough_size, fine_size = remesh_sizes(points, self.obj, settings)
        limit = settings.project_limit * float(np.ptp(points, axis=0).max())
        yield "hull"
        self.first_hull = self.obj.data.copy()
        remesh(self.obj, rough_size)
        yield "remesh"
        if shape == "project":
            shrinkwrap(self.obj, self.target, limit)
        scale_about(self.obj, cover_scale(self.obj, points, settings), points.mean(axis=0))
        yield "fit"
        self._clean()
        yield "clean"
        self._second_hull()
        yield "hull2"
        remesh(self.obj, fine_size)
        yield "remesh2"
        shrinkwrap(self.obj, self.target, limit)
        yield "project"
        smooth(self.obj, settings.smooth_factor, settings.smooth_iterations)
        yield "smooth"

    def _clean(self) -> None:
        """Keep the points inside the fitted rough mesh; the rest is noise."""
        self.keep = outward_distance(self.obj, self.points) <= 0
        remove_object(self.obj)
        self.obj = None

    def _second_hull(self) -> None:
        """The hull of the kept points, projected onto a target of the kept points."""
        keep = self.keep
        if keep.sum() < 4:
            raise FamousError(f"{self.name}: the clean-up left fewer than 4 points.")
        first_hull, self.first_hull = self.first_hull, None
        if keep.all():
            # Nothing was noise: the hull and the target of all points still hold.
            self.obj = bpy.data.objects.new(self.name, first_hull)
            (self.collection or bpy.context.scene.collection).objects.link(self.obj)
            return
        bpy.data.meshes.remove(first_hull)
        remove_object(self.target)
        self.target = None
        normals = None if self.normals is None else np.asarray(self.normals)[keep]
        self.target = splat_target(
            self.name + ".target",
            self.points[keep],
            normals,
            self.settings.neighbours,
            self.collection,
        )
        self.obj = convex_hull(self.name, self.points[keep], self.collection)

    def shown(self, step: str) -> bpy.types.Object:
        """The object to show when stopping after ``step``: after "clean", the kept points."""
        if step != "clean":
            return self.obj
        return points_object(self.name, self.points[self.keep], self.collection)

    def discard(self) -> None:
        """Remove the half-made mesh after an error."""
        if self.obj is not None:
            remove_object(self.obj)
            self.obj = None

    def close(self) -> None:
        """Remove the helpers: the target and an unused copy of the first hull."""
        if self.first_hull is not None:
            bpy.data.meshes.remove(self.first_hull)
            self.first_hull = None
        if self.target is not None:
            remove_object(self.target)
            self.target = None


# ---------------------------------------------------------------------------
# Volume mesher


def volume_node_group() -> bpy.types.NodeTree:
    """The shared Geometry Nodes group: Points to Volume -> Volume to Mesh.

    Works in voxel units (grid spacing 1, points on integer positions); the
    caller scales the result to µm, which also handles anisotropic voxels.
    Blender 5 and later only (see :func:`_marching_cubes_object`).
    """
    group = bpy.data.node_groups.get(VOLUME_GROUP)
    if group is not None:
        return group
    group = bpy.data.node_groups.new(VOLUME_GROUP, "GeometryNodeTree")
    group.interface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    group.interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    nodes, links = group.nodes, group.links
    gin, gout = nodes.new("NodeGroupInput"), nodes.new("NodeGroupOutput")
    to_volume = nodes.new("GeometryNodePointsToVolume")
    to_mesh = nodes.new("GeometryNodeVolumeToMesh")
    to_volume.inputs["Resolution Mode"].default_value = "Size"
    to_volume.inputs["Voxel Size"].default_value = 1.0
    to_volume.inputs["Radius"].default_value = VOLUME_RADIUS
    to_mesh.inputs["Threshold"].default_value = VOLUME_THRESHOLD
    links.new(gin.outputs[0], to_volume.inputs["Points"])
    links.new(to_volume.outputs[0], to_mesh.inputs["Volume"])
    links.new(to_mesh.outputs[0], gout.inputs[0])
    for i, node in enumerate((gin, to_volume, to_mesh, gout)):
        node.location = (220 * i, 0)
    return group


def _marching_cubes_object(name: str, cells: np.ndarray, collection) -> bpy.types.Object:
    """The surface of the cells (marching cubes at half-way), in cell units (x, y, z).

    Blender 4.2-4.5's Points to Volume fills every voxel a point's radius
    touches, so its surface lies about half a voxel outside the cells (+15 % in
    volume on an ellipsoid of 19 x 63 x 83 voxels, at any threshold); Blender 5
    rasterises a distance field that Volume to Mesh cuts at the cells' edge.
    """
    lo = cells.min(axis=0) - 3
    grid = np.zeros(tuple(cells.max(axis=0) - lo + 4), np.float32)
    grid[tuple((cells - lo).T)] = 1.0
    # a little blur: on a 0/1 grid, cells touching at an edge only give edges of four
    # faces (not manifold)
    verts, faces, _, _ = marching_cubes(gaussian_filter(grid, 0.5), level=0.5)
    return new_mesh_object(name, (verts + lo)[:, ::-1], faces, collection=collection)


def volume_mesh(
    name: str,
    voxels_zyx: np.ndarray,
    voxel_size_nm,
    collection=None,
    max_voxels: int = VOLUME_MAX_VOXELS,
    interpolate: bool = True,
    n_slices: int | None = None,
) -> bpy.types.Object:
    """Mesh one organelle from its mask voxels.

    Sections thicker than 1.5 pixels: the organelle's shape interpolated
    between them (:func:`~..core.mesh_cells.shape_field`), and its surface
    taken as measurements take theirs (:func:`~..core.quantify.surface.zero_level`:
    smoothed, marching cubes). Otherwise the voxels as points, Points
    to Volume -> Volume to Mesh; organelles of more than ``max_voxels``
    voxels on coarser cells (:func:`~..core.mesh_cells.coarsen`).

    Parameters
    ----------
    name : str
    voxels_zyx : (n, 3) int array
        (slice, row, column) of the organelle's voxels.
    voxel_size_nm : (z, y, x)
    collection : Collection, optional
    max_voxels : int
    interpolate : bool
        ``False`` meshes each section as a slab (no interpolation between sections).
    n_slices : int, optional
        The stack's slices: an organelle on the first or last is cut flat there.

    Returns
    -------
    Object
        A closed mesh in µm, placed as in docs/design.md (x = column * px_x, ...).
    """
    if len(voxels_zyx) == 0:
        raise FamousError(f"{name}: the organelle has no voxels in the label volume.")
    if interpolate and thick_sections(voxel_size_nm):
        field, cell_nm, origin_nm = shape_field(voxels_zyx, voxel_size_nm, max_voxels, n_slices)
        # the voxels' volume in cells, against which zero_level checks its smoothing
        volume = len(voxels_zyx) * np.prod(voxel_size_nm) / np.prod(cell_nm)
        verts, faces = zero_level(field, (1.0, 1.0, 1.0), volume)
        obj = new_mesh_object(name, verts[:, ::-1], faces, collection=collection)
        return _to_um(obj, cell_nm, origin_nm)
    cells, factors = coarsen(voxels_zyx, voxel_size_nm, max_voxels)
    size = np.asarray(voxel_size_nm, dtype=float)
    cell_nm, origin_nm = factors * size, (factors - 1) / 2 * size  # a cell's centre
    if bpy.app.version >= (5, 0, 0):
        obj = new_mesh_object(name, cells[:, ::-1].astype(np.float32), collection=collection)
        mod = obj.modifiers.new("volume", "NODES")
        mod.node_group = volume_node_group()
        apply_modifiers(obj)
    else:
        obj = _marching_cubes_object(name, cells, collection)
    # Smoothed in cell units, before the scaling to µm, so anisotropic voxels
    # are smoothed alike along every axis.
    smooth(obj, 0.5, VOLUME_SMOOTH_ITERATIONS)
    return _to_um(obj, cell_nm, origin_nm)


def _to_um(obj: bpy.types.Object, cell_nm, origin_nm) -> bpy.types.Object:
    """A mesh in cell units placed in µm: cell index * cell size + origin, per axis."""
    step, offset = cell_nm[::-1] / 1000.0, origin_nm[::-1] / 1000.0
    obj.data.transform(Matrix.Translation(Vector(offset)) @ Matrix.Diagonal((*step, 1.0)))
    obj.data.update()
    return obj
