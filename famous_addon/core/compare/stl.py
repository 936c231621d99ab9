"""Manual segmentations as STL meshes: reading, classes, units, voxelisation.

Amira, Fiji and most tools export one STL per object, one STL per class or one
STL holding many objects. This module reads any of these with trimesh (ASCII
and binary), gives every object a class (from its sub-folder or a file-name
pattern), applies the unit/axis transform, checks that the meshes land on the
stack, and voxelises every object onto one grid so it can be compared voxel by
voxel with another segmentation.

Voxelisation is ray parity: along each row of voxel centres the crossings with
the surface are counted and a centre is inside after an odd number of them.
That is exact for closed meshes. An open mesh is first repaired with trimesh;
if it stays open, rays along all three axes vote (two of three decide), which
tolerates holes a few voxels across.

Nothing here raises on a broken file: each one gives a warning that names the
file, says what was wrong and what was done, and the rest are used.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trimesh
from scipy import ndimage
from skimage.measure import marching_cubes

from ..errors import FamousError
from ..fileio import atomic_write_bytes
from ..guard import inside
from ..progress import ProgressFn, silent

# Rays pass this far (in voxels) beside the voxel centres so that they never
# graze a mesh edge or vertex exactly (which would count a crossing twice).
_RAY_JITTER = (1.2345e-4, 2.3456e-4)
_STL_SUFFIX = ".stl"
# The units meshes are exported in besides µm, as the factor to µm. One file of
# a segmentation may be in nm while the others are in µm, so each file is
# judged on its own (:func:`file_unit`).
UNIT_FACTORS = {"nm": 1e-3, "Å": 1e-4, "mm": 1e3, "m": 1e6}
# A file rescaled into the stack must span at least this many voxels: shrinking
# any far-off mesh by 1000 lands it somewhere, but not as a plausible object.
_MIN_UNIT_VOXELS = 3


@dataclass(frozen=True)
class Grid:
    """A voxel grid: voxel (k, r, c) is centred at x = c·dx, y = r·dy, z = k·dz (µm).

    Attributes
    ----------
    shape : (Z, Y, X)
    voxel_size_um : (dz, dy, dx)
    """

    shape: tuple[int, int, int]
    voxel_size_um: tuple[float, float, float]

    @classmethod
    def from_nm(cls, shape, voxel_size_nm) -> Grid:
        """The grid of a stack with ``voxel_size_nm`` (z, y, x)."""
        return cls(tuple(int(s) for s in shape), tuple(float(v) / 1000.0 for v in voxel_size_nm))

    @property
    def voxel_volume_um3(self) -> float:
        return float(np.prod(self.voxel_size_um))

    def bounds_xyz(self) -> np.ndarray:
        """World box covered by the voxels, ``[[x0, y0, z0], [x1, y1, z1]]`` (µm)."""
        vs = np.array(self.voxel_size_um[::-1])
        n = np.array(self.shape[::-1], float)
        return np.stack([-0.5 * vs, (n - 0.5) * vs])

    def resampled(self, voxel_size_um) -> Grid:
        """A grid over the same extent with another voxel size."""
        extent = np.array(self.shape) * np.array(self.voxel_size_um)
        vs = tuple(float(v) for v in voxel_size_um)
        shape = tuple(max(1, int(math.ceil(e / v - 1e-9))) for e, v in zip(extent, vs))
        return Grid(shape, vs)


@dataclass(frozen=True)
class Transform:
    """How STL coordinates become µm: ``world = axes(points) * scale + offset``.

    Attributes
    ----------
    scale : float
        Multiplier, e.g. 0.001 for meshes exported in nm.
    axes : str
        Which input axis feeds output x, y and z, with an optional sign, e.g.
        ``"xyz"`` (unchanged), ``"xzy"`` (swap y and z), ``"x-yz"`` (flip y).
    offset : (x, y, z)
        Added after scaling (µm); use it to move flipped meshes back.
    """

    scale: float = 1.0
    axes: str = "xyz"
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """The 3x3 linear part and the offset."""
        tokens = re.findall(r"[+-]?[xyz]", self.axes.replace(" ", "").replace(",", "").lower())
        if len(tokens) != 3 or "".join(sorted(t[-1] for t in tokens)) != "xyz":
            raise FamousError(
                f"axis order {self.axes!r} is not a permutation of x, y, z.",
                None,
                "give three axes, each once, optionally signed, e.g. 'xyz', 'xzy' or 'x-yz'.",
            )
        m = np.zeros((3, 3))
        for row, tok in enumerate(tokens):
            m[row, "xyz".index(tok[-1])] = -1.0 if tok.startswith("-") else 1.0
        return m * float(self.scale), np.asarray(self.offset, float)

    def apply(self, points: np.ndarray) -> np.ndarray:
        m, off = self.matrix()
        return points @ m.T + off


@dataclass
class MeshObject:
    """One object of a segmentation as a triangle mesh in µm (x, y, z)."""

    name: str
    class_name: str
    vertices: np.ndarray
    faces: np.ndarray
    source: Path
    watertight: bool
    notes: list[str] = field(default_factory=list)

    def trimesh(self) -> trimesh.Trimesh:
        return trimesh.Trimesh(self.vertices, self.faces, process=False)


@dataclass
class StlSegmentation:
    """All objects read from one STL file or folder, plus per-file warnings."""

    path: Path
    objects: list[MeshObject]
    warnings: list[str] = field(default_factory=list)

    def bounds_xyz(self) -> np.ndarray | None:
        """``[[x0, y0, z0], [x1, y1, z1]]`` over all objects, or None if empty."""
        if not self.objects:
            return None
        lo = np.min([o.vertices.min(axis=0) for o in self.objects], axis=0)
        hi = np.max([o.vertices.max(axis=0) for o in self.objects], axis=0)
        return np.stack([lo, hi])


def class_from_name(rel_path: Path, class_map: Mapping[str, str] | None = None) -> str:
    """The class of an STL file from its relative path.

    Parameters
    ----------
    rel_path : Path
        Path of the file relative to the imported folder.
    class_map : mapping of str to str, optional
        Glob pattern (``fnmatch``, case-insensitive) → class name, tried in
        order against the relative path and the file name, e.g.
        ``{"*mito*": "mitochondria", "LE_*": "late_endosome"}``.

    Returns
    -------
    str
        The first matching pattern's class; else the sub-folder name; else the
        file stem without a trailing number (``lysosome_12.stl`` → ``lysosome``).

    Examples
    --------
    >>> class_from_name(Path("Mito_003.stl"), {"mito*": "mitochondria"})
    'mitochondria'
    >>> class_from_name(Path("lysosome/obj1.stl"))
    'lysosome'
    >>> class_from_name(Path("late endosome 12.stl"))
    'late endosome'
    """
    rel = rel_path.as_posix().lower()
    for pattern, cls in (class_map or {}).items():
        pat = pattern.lower()
        if fnmatch.fnmatchcase(rel, pat) or fnmatch.fnmatchcase(rel_path.name.lower(), pat):
            return cls
    if len(rel_path.parts) > 1:
        return rel_path.parts[-2]
    stem = re.sub(r"[\s_\-.#]*\d+$", "", rel_path.stem)
    return stem or rel_path.stem


def _bodies(path: Path) -> list[trimesh.Trimesh]:
    """Every mesh in an STL file (ASCII files may hold several solids), unprocessed."""
    loaded = trimesh.load(str(path), file_type="stl", process=False)
    if isinstance(loaded, trimesh.Scene):
        return [g for g in loaded.geometry.values() if isinstance(g, trimesh.Trimesh)]
    return [loaded]


def _prepare(mesh: trimesh.Trimesh, where: str, warnings: list[str]) -> trimesh.Trimesh | None:
    """Merge duplicate vertices (STL stores each triangle's own) and drop bad triangles."""
    verts = np.asarray(mesh.vertices, float)
    faces = np.asarray(mesh.faces, np.int64)
    finite = np.isfinite(verts).all(axis=1)
    if not finite.all():
        faces = faces[finite[faces].all(axis=1)]
        warnings.append(f"{where}: dropped triangles with non-finite coordinates")
    if faces.size == 0:
        return None
    mesh = trimesh.Trimesh(verts, faces, process=True)
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.remove_unreferenced_vertices()
    return mesh if len(mesh.faces) else None


def _close(mesh: trimesh.Trimesh, where: str, notes: list[str]) -> trimesh.Trimesh:
    """Try to close an open mesh; say what was done."""
    if mesh.is_watertight:
        return mesh
    trimesh.repair.fill_holes(mesh)
    trimesh.repair.fix_normals(mesh)
    if mesh.is_watertight:
        notes.append(f"{where}: open mesh closed by filling its holes")
    else:
        notes.append(f"{where}: open or non-manifold mesh; voxelised by a three-axis ray vote")
    return mesh


def find_stl_files(path: Path) -> list[Path]:
    """STL files of a folder (recursively, sorted) or the file itself."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FamousError(
            "does not exist.",
            path,
            "give an STL file or a folder of STL files (sub-folder per class).",
        )
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() == _STL_SUFFIX)
    if not files:
        raise FamousError(
            "holds no .stl files.", path, "give a folder with STL files (one sub-folder per class)."
        )
    return files


def _read_file(
    f: Path, rel: Path, cls: str, split: bool, transform: Transform, warnings: list[str]
) -> list[MeshObject]:
    """The objects of one STL file (its bodies when ``split``, else one object).

    Problems are appended to ``warnings``; a file that cannot be used gives no
    object.
    """
    try:
        bodies = _bodies(f)
    except Exception as exc:  # trimesh raises many types on bad bytes
        warnings.append(f"{f}: could not be read as STL ({exc}); skipped")
        return []
    if not bodies or sum(len(b.faces) for b in bodies) == 0:
        warnings.append(f"{f}: empty or not an STL file (no triangles); skipped")
        return []
    if not split and len(bodies) > 1:
        bodies = [trimesh.util.concatenate(bodies)]
    prepared = [_prepare(b, str(f), warnings) for b in bodies]
    prepared = [b for b in prepared if b is not None]
    if not prepared:
        warnings.append(f"{f}: no valid triangles; skipped")
        return []
    pieces = [p for b in prepared for p in (b.split(only_watertight=False) if split else [b])]
    objects = []
    for j, mesh in enumerate(pieces):
        name = rel.with_suffix("").as_posix() + (f"#{j + 1}" if len(pieces) > 1 else "")
        notes: list[str] = []
        mesh = _close(mesh, f"{f} [{name}]", notes)
        warnings.extend(notes)
        objects.append(
            MeshObject(
                name=name,
                class_name=cls,
                vertices=transform.apply(np.asarray(mesh.vertices, float)),
                faces=np.asarray(mesh.faces, np.int64),
                source=f,
                watertight=bool(mesh.is_watertight),
                notes=notes,
            )
        )
    return objects


def read_stl_segmentation(
    path: str | Path,
    class_map: Mapping[str, str] | None = None,
    transform: Transform | None = None,
    split_bodies: bool | None = None,
    progress: ProgressFn | None = None,
) -> StlSegmentation:
    """Read a segmentation from STL: a folder (sub-folder per class) or one file.

    Parameters
    ----------
    path : str or Path
        An STL file (objects = its connected bodies) or a folder searched
        recursively for ``*.stl``.
    class_map : mapping of str to str, optional
        File-name pattern → class, see :func:`class_from_name`.
    transform : Transform, optional
        Units and axes; default leaves coordinates as they are (µm).
    split_bodies : bool, optional
        Split each file into its connected bodies. Default: split a file when
        it is the only file of its class and its name does not end in a number
        (one STL per class, or one multi-object STL); keep numbered or
        per-object files whole (an object may have disconnected parts).
    progress : callable, optional
        ``progress(fraction, message)``.

    Returns
    -------
    StlSegmentation
        Objects in file order and one warning per broken file or mesh.
    """
    progress = progress or silent
    root = Path(path)
    files = find_stl_files(root)
    transform = transform or Transform()
    base = root if root.is_dir() else root.parent
    rels = [f.relative_to(base) for f in files]
    classes = [class_from_name(r, class_map) for r in rels]
    per_class: dict[str, int] = {}
    for c in classes:
        per_class[c] = per_class.get(c, 0) + 1
    objects: list[MeshObject] = []
    warnings: list[str] = []
    for i, (f, rel, cls) in enumerate(zip(files, rels, classes)):
        progress(i / len(files), f"reading {rel}")
        if split_bodies is None:
            split = per_class[cls] == 1 and not re.search(r"\d$", f.stem)
        else:
            split = split_bodies
        objects += _read_file(f, rel, cls, split, transform, warnings)
    progress(1.0, "STL files read")
    return StlSegmentation(root, objects, warnings)


@dataclass
class OverlapCheck:
    """How well the meshes' bounding box overlaps the stack's."""

    fraction: float
    suggested_scale: float | None
    message: str


def _box_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of box ``a``'s volume that lies inside box ``b`` (flat axes count as 1)."""
    size = np.maximum(a[1] - a[0], 0.0)
    inter = np.clip(np.minimum(a[1], b[1]) - np.maximum(a[0], b[0]), 0.0, None)
    flat = size <= 0
    inside_flat = (a[0] >= b[0]) & (a[1] <= b[1])
    ratio = np.where(flat, inside_flat.astype(float), inter / np.where(flat, 1.0, size))
    return float(np.prod(ratio))


def check_bounds(
    mesh_bounds: np.ndarray, grid: Grid, current_scale: float = 1.0, min_fraction: float = 0.5
) -> OverlapCheck:
    """Warn when meshes miss the stack (the usual unit mistake) and suggest a scale.

    Parameters
    ----------
    mesh_bounds : ndarray, shape (2, 3)
        ``[[x0, y0, z0], [x1, y1, z1]]`` of the imported meshes (µm, after the
        current transform).
    grid : Grid
        The stack's grid.
    current_scale : float
        The scale already applied, so the suggestion is the total scale to use.
    min_fraction : float
        Below this fraction of the meshes' box inside the stack, warn.

    Returns
    -------
    OverlapCheck
        ``suggested_scale`` is None when the meshes fit or nothing fits better.
    """
    stack = grid.bounds_xyz()
    frac = _box_overlap(mesh_bounds, stack)
    if frac >= min_fraction:
        return OverlapCheck(frac, None, f"{100 * frac:.0f}% of the meshes' box lies in the stack")
    # Candidates: powers of ten (nm, mm, ...) and voxel units (exported in pixels).
    candidates = [10.0**e for e in range(-9, 10) if e != 0]
    candidates += [float(v) for v in set(grid.voxel_size_um)]
    fits = {f: _box_overlap(mesh_bounds * f, stack) for f in candidates}
    best_frac = max(fits.values())
    # Shrinking any box far enough puts it inside; of the scales that fit about
    # as well as the best, the one closest to 1 is the plausible unit change.
    best = min(
        (f for f, g in fits.items() if g >= best_frac - 0.01), key=lambda f: abs(math.log10(f))
    )
    if best_frac <= frac:
        msg = (
            f"only {100 * frac:.0f}% of the meshes' box lies in the stack and no change of "
            "scale helps; check the axis order and offset."
        )
        return OverlapCheck(frac, None, msg)
    total = best * current_scale
    msg = (
        f"only {100 * frac:.0f}% of the meshes' box lies in the stack; with scale {total:g} "
        f"{100 * best_frac:.0f}% would (were the meshes exported in other units?)"
    )
    return OverlapCheck(frac, total, msg)


def file_unit(bounds: np.ndarray, grid: Grid, offset=(0.0, 0.0, 0.0)) -> tuple[str, float] | None:
    """The unit one file's meshes were exported in, when it is not µm.

    A file is taken as it is when its meshes' box lies on the stack (at least
    5 % of it inside) and spans a few voxels. Otherwise each unit of
    :data:`UNIT_FACTORS` is tried, and the one closest to µm that puts at least
    90 % of the box inside the stack, spanning at least a few voxels, is the
    file's unit. A file partly on the stack is never rescaled (its axes or
    offset are the likelier mistake; :func:`check_bounds` says so).

    Parameters
    ----------
    bounds : ndarray, shape (2, 3)
        ``[[x0, y0, z0], [x1, y1, z1]]`` of the file's meshes (µm as read).
    grid : Grid
        The stack's grid.
    offset : (x, y, z)
        The offset already added (:class:`Transform`); a unit change scales
        the coordinates before it.

    Returns
    -------
    (str, float) or None
        The unit's name and its factor to µm, or None to keep the file as it is.
    """
    stack = grid.bounds_xyz()
    min_extent = _MIN_UNIT_VOXELS * min(grid.voxel_size_um)
    off = np.asarray(offset, float)

    def fit(factor: float) -> float:
        box = (bounds - off) * factor + off
        return _box_overlap(box, stack) if np.ptp(box, axis=0).max() >= min_extent else 0.0

    if fit(1.0) >= 0.05:
        return None
    fitting = [(name, f) for name, f in UNIT_FACTORS.items() if fit(f) >= 0.9]
    return min(fitting, key=lambda u: abs(math.log10(u[1])), default=None)


def fit_units_per_file(seg: StlSegmentation, grid: Grid, offset=(0.0, 0.0, 0.0)) -> list[str]:
    """Rescale, in place, each file of ``seg`` exported in other units than µm.

    Each file is judged on its own (:func:`file_unit`), so one class exported
    in nm among classes in µm lands on the stack with the others.

    Returns
    -------
    list of str
        One note per rescaled file, naming it, its unit and the factor.
    """
    by_file: dict[Path, list[MeshObject]] = {}
    for obj in seg.objects:
        by_file.setdefault(obj.source, []).append(obj)
    off = np.asarray(offset, float)
    notes = []
    for source, objs in by_file.items():
        verts = np.concatenate([o.vertices for o in objs])
        unit = file_unit(np.stack([verts.min(axis=0), verts.max(axis=0)]), grid, off)
        if unit is None:
            continue
        name, factor = unit
        for obj in objs:
            obj.vertices = (obj.vertices - off) * factor + off
        notes.append(
            f"{source}: read as {name} and rescaled by {factor:g} "
            "(as given, its meshes missed the stack)"
        )
    return notes


def _crossings(tri: np.ndarray, axis: int, extent: tuple[int, int, int]):
    """Where rays along ``axis`` through voxel centres cross the triangles.

    ``tri`` is (n, 3, 3) in local voxel coordinates (z, y, x order). Returns
    the ray's two other coordinates and the crossing position along it.
    """
    u_ax, v_ax = [a for a in range(3) if a != axis]
    pu, pv, pw = tri[:, :, u_ax], tri[:, :, v_ax], tri[:, :, axis]
    ju, jv = _RAY_JITTER
    u0 = np.maximum(np.ceil(pu.min(1) - ju), 0).astype(np.int64)
    u1 = np.minimum(np.floor(pu.max(1) - ju), extent[u_ax] - 1).astype(np.int64)
    v0 = np.maximum(np.ceil(pv.min(1) - jv), 0).astype(np.int64)
    v1 = np.minimum(np.floor(pv.max(1) - jv), extent[v_ax] - 1).astype(np.int64)
    nu = np.maximum(u1 - u0 + 1, 0)
    nv = np.maximum(v1 - v0 + 1, 0)
    count = nu * nv
    total = int(count.sum())
    if total == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0)
    t = np.repeat(np.arange(tri.shape[0]), count)
    local = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
    u = u0[t] + local // nv[t]
    v = v0[t] + local % nv[t]
    qu, qv = u + ju, v + jv
    au, bu, cu = pu[t, 0], pu[t, 1], pu[t, 2]
    av, bv, cv = pv[t, 0], pv[t, 1], pv[t, 2]
    d = (bu - au) * (cv - av) - (bv - av) * (cu - au)
    ok = d != 0
    d = np.where(ok, d, 1.0)
    la = ((bu - qu) * (cv - qv) - (bv - qv) * (cu - qu)) / d
    lb = ((cu - qu) * (av - qv) - (cv - qv) * (au - qu)) / d
    lc = 1.0 - la - lb
    hit = ok & (la >= 0) & (lb >= 0) & (lc >= 0)
    w = la * pw[t, 0] + lb * pw[t, 1] + lc * pw[t, 2]
    return u[hit], v[hit], w[hit]


def _parity(tri: np.ndarray, axis: int, extent: tuple[int, int, int]) -> np.ndarray:
    """Voxel centres inside the surface by crossing parity along ``axis``."""
    u, v, w = _crossings(tri, axis, extent)
    u_ax, v_ax = [a for a in range(3) if a != axis]
    n_w = extent[axis]
    # A crossing at w toggles every centre from ceil(w) on; crossings before
    # the box start toggle from 0, those past its end toggle nothing inside.
    toggles = np.zeros((extent[u_ax], extent[v_ax], n_w + 1), np.uint8)
    idx = np.clip(np.ceil(w), 0, n_w).astype(np.int64)
    np.add.at(toggles, (u, v, idx), 1)
    # uint8 sums wrap at 256, which keeps the parity bit.
    inside = (np.cumsum(toggles, axis=2, dtype=np.uint8)[:, :, :n_w] & 1).astype(bool)
    order = np.argsort([u_ax, v_ax, axis])
    return inside.transpose(order)


def voxelise_mesh(obj: MeshObject, grid: Grid) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """The voxels of one object: a box of the grid and a mask inside it.

    Returns
    -------
    (box, mask) or None
        ``box`` is a tuple of slices (z, y, x) into the grid; None when the
        object's box misses the grid.
    """
    vs = np.array(grid.voxel_size_um)
    # Local voxel coordinates in (z, y, x) order: centre of voxel k at k.
    pts = obj.vertices[:, ::-1] / vs
    lo = np.maximum(np.floor(pts.min(axis=0)).astype(np.int64), 0)
    hi = np.minimum(np.ceil(pts.max(axis=0)).astype(np.int64) + 1, np.array(grid.shape))
    if np.any(hi <= lo):
        return None
    extent = tuple(int(e) for e in hi - lo)
    tri = (pts - lo)[obj.faces]
    if obj.watertight:
        mask = _parity(tri, 2, extent)
    else:
        votes = sum(_parity(tri, ax, extent).astype(np.uint8) for ax in range(3))
        mask = votes >= 2
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    return box, mask


def voxelise(
    objects: list[MeshObject],
    grid: Grid,
    out=None,
    progress: ProgressFn | None = None,
) -> tuple[np.ndarray, dict[int, str], list[str]]:
    """Voxelise objects onto one grid as instance labels 1..n (file order).

    Parameters
    ----------
    objects : list of MeshObject
    grid : Grid
    out : array_like, optional
        Zero-filled integer array of ``grid.shape`` to write into (e.g. a
        ``tifffile.memmap``); default a new ``uint16``/``uint32`` array.
    progress : callable, optional
        ``progress(fraction, message)``.

    Returns
    -------
    labels : array
        ``out`` or the new array.
    classes : dict of int to str
        Class per id.
    notes : list of str
        Objects outside the grid, smaller than a voxel, or overlapping others.
    """
    progress = progress or silent
    if out is None:
        dtype = np.uint16 if len(objects) < 2**16 else np.uint32
        out = np.zeros(grid.shape, dtype)
    classes: dict[int, str] = {}
    notes: list[str] = []
    clashes = 0
    for i, obj in enumerate(objects, start=1):
        progress((i - 1) / max(len(objects), 1), f"voxelising {obj.name}")
        classes[i] = obj.class_name
        res = voxelise_mesh(obj, grid)
        if res is None:
            notes.append(f"{obj.source} [{obj.name}]: lies outside the stack; no voxels")
            continue
        box, mask = res
        if not mask.any():
            # Smaller than a voxel: keep it countable by its centre voxel.
            centre = np.round(obj.vertices.mean(axis=0)[::-1] / np.array(grid.voxel_size_um))
            k = tuple(int(c) - s.start for c, s in zip(centre, box))
            if all(0 <= kk < n for kk, n in zip(k, mask.shape)):
                mask[k] = True
                notes.append(f"{obj.source} [{obj.name}]: smaller than a voxel; one voxel kept")
            else:
                notes.append(f"{obj.source} [{obj.name}]: no voxel centre inside; no voxels")
                continue
        region = np.asarray(out[box])
        clashes += int(np.count_nonzero(region[mask]))
        region[mask] = i
        out[box] = region
    if clashes:
        notes.append(f"{clashes} voxels lie in two objects; each went to the object read later")
    progress(1.0, "voxelised")
    return out, classes, notes


def write_object_stls(
    folder: str | Path,
    labels: np.ndarray,
    classes: Mapping[int, str],
    voxel_size_um: tuple[float, float, float],
    progress: ProgressFn | None = None,
) -> list[Path]:
    """One closed STL per object as ``folder/<class>/<class>_<id>.stl`` (µm, x y z).

    The surface is the marching-cubes iso-surface at 0.5 of the object's
    mask, so :func:`voxelise` on the same grid gives the mask back.

    Parameters
    ----------
    folder : str or Path
    labels : ndarray, shape (Z, Y, X)
        Instance labels.
    classes : mapping of int to str
    voxel_size_um : (dz, dy, dx)
    progress : callable, optional

    Returns
    -------
    list of Path
    """
    progress = progress or silent
    spacing = np.asarray(voxel_size_um, float)
    boxes = ndimage.find_objects(labels)
    written = []
    for i, box in enumerate(boxes, start=1):
        if box is None or i not in classes:
            continue
        mask = np.pad(labels[box] == i, 1).astype(np.float32)
        verts, faces, _, _ = marching_cubes(mask, 0.5, spacing=tuple(spacing))
        verts += (np.array([s.start for s in box], float) - 1.0) * spacing
        mesh = trimesh.Trimesh(verts[:, ::-1], faces, process=False)
        cls = classes[i]
        path = inside(folder, cls, f"{cls}_{i}.stl")
        atomic_write_bytes(path, trimesh.exchange.stl.export_stl(mesh))
        written.append(path)
        progress(i / len(boxes), f"STL {path.name}")
    return written
