"""A seeded synthetic vEM phantom with exact ground truth.

The phantom is a piece of a HeLa-like cell in the look of the paper's
(inverted, TEM-like) FIB-SEM data, in the five classes of the ``fibsem``
preset: mid-grey granular cytoplasm crossed by thin dark ER membranes; a large
dark, textured nucleus with heterochromatin and envelope, cut by a stack edge;
curved dark mitochondria with lighter cristae; light round early endosomes with
a dark rim; dark round late endosomes; lysosomes that are only slightly darker
than the cytoplasm and speckled (axis-aligned ellipsoids, since the paper
segments them as the box's inscribed ellipse). A few organelle pairs touch
(0-1 voxel apart), one mitochondrion is a dumbbell whose two lobes are joined
by a thin bridge on a few middle slices only (the paper's open failure case),
organelles are cut by the x, y and z edges, every slice is shifted by up to
±1 pixel as FIB-SEM misalignment (image and truth alike), then blurred and
made noisy.

All shapes are analytic (ellipsoids; tubes as chains of spheres along smooth
3-D curves) and defined in µm, so one seed gives the same cell at any voxel
size. Slices are rendered one at a time, each a pure function of the
phantom's parameters (shape, seed, voxel size) and the slice index, so a
300 x 2048 x 2048 phantom is written without holding the volume.

:class:`Phantom` renders slices and their truth boxes; :func:`write_phantom`
writes the stack and all ground truth (what ``famous phantom`` writes);
:func:`load_truth` reads the truth labels and table back.

Example
-------
>>> ph = Phantom((24, 192, 192), seed=0, voxel_size_nm=(20, 20, 20))
>>> image, labels = ph.render_slice(12)
>>> boxes = ph.boxes(12, labels)
"""

from __future__ import annotations

import math
import queue
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .boxes import Box
from .errors import FamousError
from .progress import ProgressFn, silent, sub
from .stack import neighbour_indices

EARLY_ENDOSOME, LATE_ENDOSOME, MITOCHONDRIA, LYSOSOME, NUCLEUS = range(5)
CLASS_NAMES = ("early_endosome", "late_endosome", "mitochondria", "lysosome", "nucleus")

DEFAULT_SHAPE = (64, 512, 512)
DEFAULT_VOXEL_NM = (10.0, 10.0, 10.0)

# Organelles per µm³ of stack, chosen so the default 64 x 512 x 512 stack at
# 10 nm (16.8 µm³) holds about 11 mitochondria, 8 early endosomes, 6 late
# endosomes and 6 lysosomes beside the nucleus.
_DEFAULT_VOLUME_UM3 = 0.64 * 5.12 * 5.12
_RATES = {
    MITOCHONDRIA: 11 / _DEFAULT_VOLUME_UM3,
    EARLY_ENDOSOME: 8 / _DEFAULT_VOLUME_UM3,
    LATE_ENDOSOME: 6 / _DEFAULT_VOLUME_UM3,
    LYSOSOME: 6 / _DEFAULT_VOLUME_UM3,
}
_TOUCHING_RATE = 3 / _DEFAULT_VOLUME_UM3
_ER_RATE = 14 / (5.12 * 5.12)  # ER membrane sheets per µm² of slice
_VESICLE_RATE = 150 / _DEFAULT_VOLUME_UM3

# Grey values (0..255) before blur and noise; FIB-SEM data as the paper shows
# it: inverted so that membranes and dense matter are dark.
_CYTOPLASM = 150.0
_NOISE_STD = 11.0
_BLUR_SIGMA_PX = 1.0
# A stained membrane as FIB-SEM shows it (a bilayer is ~7 nm; staining and
# the beam spread it); the truth mask includes it, as an annotator's would.
_MEMBRANE_UM = 0.012
_MIN_GAP_UM = 0.04  # clearance between organelles that are not meant to touch
_MIN_BOX_PX = 9

_TAG_JITTER, _TAG_NOISE = 1, 2
_TAG_FINE, _TAG_MID, _TAG_COARSE, _TAG_CURTAIN = 11, 12, 13, 14


# ----------------------------------------------------------------------------
# Geometry


@dataclass(frozen=True)
class _Grid:
    """Canvas of one slice: the image plus a 1-pixel margin for the jitter."""

    py: float
    px: float
    height: int
    width: int

    def span(self, lo: float, hi: float, axis: int) -> tuple[int, int]:
        """Canvas index range (end exclusive) whose pixel centres may lie in [lo, hi] µm."""
        step, size = (self.py, self.height) if axis == 0 else (self.px, self.width)
        i0 = max(0, math.floor(lo / step) + 1)
        i1 = min(size, math.ceil(hi / step) + 2)
        return i0, i1

    def coords(self, i0: int, i1: int, axis: int) -> np.ndarray:
        step = self.py if axis == 0 else self.px
        return (np.arange(i0, i1, dtype=np.float64) - 1.0) * step


@dataclass(frozen=True)
class Ellipsoid:
    """An axis-aligned ellipsoid: centre and semi-axes in (z, y, x) µm."""

    center: tuple[float, float, float]
    axes: tuple[float, float, float]

    def spheres(self) -> tuple[np.ndarray, np.ndarray]:
        """A bounding sphere (for the overlap test while placing)."""
        return np.asarray([self.center], float), np.asarray([max(self.axes)], float)

    def section(self, z: float, grid: _Grid):
        """``(rows, cols, rho2)`` on slice ``z``; ``rho2 <= 1`` inside; None if missed."""
        (cz, cy, cx), (az, ay, ax) = self.center, self.axes
        dz = z - cz
        if abs(dz) > az:
            return None
        r0, r1 = grid.span(cy - ay, cy + ay, 0)
        c0, c1 = grid.span(cx - ax, cx + ax, 1)
        if r0 >= r1 or c0 >= c1:
            return None
        yy = ((grid.coords(r0, r1, 0) - cy) / ay)[:, None]
        xx = ((grid.coords(c0, c1, 1) - cx) / ax)[None, :]
        return (r0, r1), (c0, c1), yy * yy + xx * xx + (dz / az) ** 2


@dataclass(frozen=True)
class Tube:
    """A tube: spheres of ``radii`` along the centre line ``points`` (n, 3) in (z, y, x) µm.

    ``arc`` is the arc length (µm) of each sphere along the line and
    ``tangents`` the unit direction there; mitochondria use them to lay their
    cristae across the tube.
    """

    points: np.ndarray
    radii: np.ndarray
    arc: np.ndarray
    tangents: np.ndarray

    @classmethod
    def along(cls, points: np.ndarray, radius, spacing: float) -> Tube:
        """Resample a poly-line at ``spacing`` µm and put a sphere on every point.

        Parameters
        ----------
        points : ndarray (m, 3)
            The centre line, (z, y, x) µm.
        radius : float or callable
            Sphere radius in µm, or a function of the relative position
            ``t`` (0..1 along the line) giving it.
        spacing : float
            Distance between spheres; a third of the radius keeps the surface
            within 2 % of the radius of a smooth tube.
        """
        points = np.asarray(points, float)
        seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
        cum = np.concatenate([[0.0], np.cumsum(seg)])
        n = max(2, int(math.ceil(cum[-1] / spacing)) + 1)
        s = np.linspace(0.0, cum[-1], n)
        pts = np.stack([np.interp(s, cum, points[:, a]) for a in range(3)], axis=1)
        tan = np.gradient(pts, axis=0)
        tan /= np.maximum(np.linalg.norm(tan, axis=1, keepdims=True), 1e-12)
        t = s / max(cum[-1], 1e-12)
        radii = np.broadcast_to(np.asarray(radius(t) if callable(radius) else radius, float), (n,))
        return cls(pts, radii.copy(), s, tan)

    @property
    def lo(self) -> np.ndarray:
        return (self.points - self.radii[:, None]).min(axis=0)

    @property
    def hi(self) -> np.ndarray:
        return (self.points + self.radii[:, None]).max(axis=0)

    def spheres(self) -> tuple[np.ndarray, np.ndarray]:
        return self.points, self.radii

    def section(self, z: float, grid: _Grid, inset: float = 0.0):
        """The tube on slice ``z``, or None where it misses the slice.

        Returns ``(rows, cols, idx, core)``: ``idx`` is the index of a sphere
        covering each pixel (-1 outside), ``core`` the same for the spheres
        shrunk by ``inset`` (the interior, inside the membrane).
        """
        dz = z - self.points[:, 0]
        sel = np.flatnonzero(np.abs(dz) < self.radii)
        if sel.size == 0:
            return None
        rho2 = self.radii[sel] ** 2 - dz[sel] ** 2
        inner = np.maximum(self.radii[sel] - inset, 0.0)
        core2 = np.where(np.abs(dz[sel]) < inner, inner**2 - dz[sel] ** 2, -1.0)
        rho = np.sqrt(rho2)
        cy, cx = self.points[sel, 1], self.points[sel, 2]
        r0, r1 = grid.span((cy - rho).min(), (cy + rho).max(), 0)
        c0, c1 = grid.span((cx - rho).min(), (cx + rho).max(), 1)
        if r0 >= r1 or c0 >= c1:
            return None
        idx = np.full((r1 - r0, c1 - c0), -1, np.int32)
        core = idx.copy()
        ys, xs = grid.coords(r0, r1, 0), grid.coords(c0, c1, 1)
        # each disc's own row/column range, relative to the section's box
        a0 = np.clip(np.floor((cy - rho) / grid.py).astype(int) + 1 - r0, 0, r1 - r0)
        a1 = np.clip(np.ceil((cy + rho) / grid.py).astype(int) + 2 - r0, 0, r1 - r0)
        b0 = np.clip(np.floor((cx - rho) / grid.px).astype(int) + 1 - c0, 0, c1 - c0)
        b1 = np.clip(np.ceil((cx + rho) / grid.px).astype(int) + 2 - c0, 0, c1 - c0)
        for n, i in enumerate(sel):
            dy = ys[a0[n] : a1[n], None] - cy[n]
            dx = xs[None, b0[n] : b1[n]] - cx[n]
            d2 = dy * dy + dx * dx
            box = (slice(a0[n], a1[n]), slice(b0[n], b1[n]))
            idx[box][d2 <= rho2[n]] = i
            core[box][d2 <= core2[n]] = i
        return (r0, r1), (c0, c1), idx, core


@dataclass
class Organelle:
    """One ground-truth organelle of the phantom.

    Attributes
    ----------
    id : int
        Its value in the truth label volume (1..N).
    cls : int
        Class index in the ``fibsem`` preset's order.
    name : str
        Class name.
    kind : str
        ``"nucleus"``, ``"tube"`` (mitochondrion), ``"dumbbell"`` (the
        mitochondrion with a thin bridge), ``"ellipsoid"``.
    parts : list
        Its :class:`Ellipsoid` / :class:`Tube` parts, in µm.
    touching : int or None
        Id of the organelle it was placed 0-1 voxel from, if any.
    look : dict
        Appearance parameters (brightness offset, cristae period and phase).
    """

    id: int
    cls: int
    name: str
    kind: str
    parts: list
    touching: int | None = None
    look: dict = field(default_factory=dict)

    @property
    def z_range(self) -> tuple[float, float]:
        lo, hi = [], []
        for p in self.parts:
            if isinstance(p, Tube):
                lo.append(p.lo[0])
                hi.append(p.hi[0])
            else:
                lo.append(p.center[0] - p.axes[0])
                hi.append(p.center[0] + p.axes[0])
        return min(lo), max(hi)


# ----------------------------------------------------------------------------
# Placement


class _Placer:
    """Rejection sampling of organelles that keep clear of each other and the nucleus.

    Organelles are covered by spheres; a candidate is free when none of its
    spheres comes within ``gap`` of a placed one. Placed spheres are binned in
    a grid of ``cell`` µm, so a candidate meets only its neighbours and
    placing thousands of organelles (a 300 x 2048 x 2048 phantom) stays quick.
    """

    def __init__(self, nucleus: Ellipsoid | None, cell: float = 0.5):
        self.nucleus = nucleus
        self.cell = cell
        self.bins: dict[tuple[int, int, int], list[int]] = {}
        self.n = 0
        self.centers = np.zeros((1024, 3))
        self.radii = np.zeros(1024)
        self.rmax = 0.0

    def _near(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        i0 = np.floor(lo / self.cell).astype(int)
        i1 = np.floor(hi / self.cell).astype(int)
        found: list[int] = []
        for a in range(i0[0], i1[0] + 1):
            for b in range(i0[1], i1[1] + 1):
                for c in range(i0[2], i1[2] + 1):
                    found.extend(self.bins.get((a, b, c), ()))
        return np.asarray(found, dtype=int)

    def free(self, parts, gap: float = _MIN_GAP_UM) -> bool:
        for p in parts:
            c, r = p.spheres()
            if self.nucleus is not None:
                n = self.nucleus
                d = (c - np.asarray(n.center)) / (np.asarray(n.axes) + r[:, None] + 1.5 * gap)
                if np.any((d * d).sum(axis=1) < 1.0):
                    return False
            reach = r.max() + self.rmax + gap
            near = self._near(c.min(axis=0) - reach, c.max(axis=0) + reach)
            if near.size:
                dist = np.linalg.norm(c[:, None, :] - self.centers[None, near, :], axis=2)
                if np.any(dist < r[:, None] + self.radii[None, near] + gap):
                    return False
        return True

    def add(self, parts) -> None:
        for p in parts:
            c, r = p.spheres()
            end = self.n + len(r)
            if end > len(self.radii):
                size = max(end, 2 * len(self.radii))
                self.centers = np.resize(self.centers, (size, 3))
                self.radii = np.resize(self.radii, size)
            self.centers[self.n : end], self.radii[self.n : end] = c, r
            for i, key in enumerate(map(tuple, np.floor(c / self.cell).astype(int)), self.n):
                self.bins.setdefault(key, []).append(i)
            self.n = end
            self.rmax = max(self.rmax, float(r.max()))


def _support_offset(axes, d: np.ndarray) -> np.ndarray:
    """From an axis-aligned ellipsoid's centre to its extreme point in direction ``d``."""
    a2d = np.asarray(axes) ** 2 * d
    return a2d / np.sqrt(a2d @ d)


def _bezier(p0, p1, p2, n: int = 24) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


# ----------------------------------------------------------------------------
# Texture


def _catmull_rom(t: float) -> np.ndarray:
    return np.array(
        [
            (-(t**3) + 2 * t**2 - t) / 2,
            (3 * t**3 - 5 * t**2 + 2) / 2,
            (-3 * t**3 + 4 * t**2 + t) / 2,
            (t**3 - t**2) / 2,
        ]
    )


# ----------------------------------------------------------------------------
# The phantom


class Phantom:
    """A seeded synthetic FIB-SEM cell volume with ground truth.

    Parameters
    ----------
    shape : (Z, Y, X)
        Stack shape in voxels.
    seed : int
        Everything (placement, texture, jitter, noise) follows from it.
    voxel_size_nm : (z, y, x)
        Voxel size in nm. Shapes are defined in µm, so an anisotropic phantom
        holds the same cell with fewer slices.

    Attributes
    ----------
    objects : list of :class:`Organelle`
        The organelles, ``objects[i].id == i + 1``.
    jitter : ndarray (Z, 2) int
        The (row, column) shift of each slice's content.
    """

    def __init__(
        self,
        shape: tuple[int, int, int] = DEFAULT_SHAPE,
        seed: int = 0,
        voxel_size_nm: tuple[float, float, float] = DEFAULT_VOXEL_NM,
    ):
        shape = tuple(int(s) for s in shape)
        voxel = tuple(float(v) for v in voxel_size_nm)
        if len(shape) != 3 or min(shape) < 1:
            raise FamousError(f"phantom shape {shape} is not (Z, Y, X) with positive sizes.")
        if len(voxel) != 3 or min(voxel) <= 0:
            raise FamousError(f"voxel size {voxel} nm is not (z, y, x) with positive sizes.")
        self.shape = shape
        self.seed = int(seed)
        self.voxel_size_nm = voxel
        self.spacing_um = np.asarray(voxel) / 1000.0
        self.extent_um = np.asarray(shape) * self.spacing_um
        if min(self.extent_um[1:]) < 1.0:
            raise FamousError(
                f"a phantom of {shape[1]} x {shape[2]} pixels of {voxel[1]} x {voxel[2]} nm is "
                f"{self.extent_um[1]:.2f} x {self.extent_um[2]:.2f} µm, too small for a cell.",
                fix="make it at least 1 µm wide and high (more pixels or larger pixels).",
            )
        self.grid = _Grid(self.spacing_um[1], self.spacing_um[2], shape[1] + 2, shape[2] + 2)
        self.objects: list[Organelle] = []
        self._er: list[dict] = []
        self._place(np.random.default_rng([self.seed, 0]))
        if len(self.objects) > np.iinfo(np.uint16).max:
            raise FamousError(
                f"the phantom has {len(self.objects)} organelles, more than uint16 labels hold.",
                fix="make a smaller phantom.",
            )
        self.jitter = np.stack([self._jitter(k) for k in range(shape[0])]).astype(int)
        zr = np.array([o.z_range for o in self.objects])
        self._zlo, self._zhi = zr[:, 0], zr[:, 1]
        self._planes: dict = {}

    # -- placement -------------------------------------------------------------

    def _jitter(self, k: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, _TAG_JITTER, k])
        return rng.choice([-1, 0, 1], size=2, p=[0.25, 0.5, 0.25])

    def _new(self, cls: int, kind: str, parts, **kw) -> Organelle:
        o = Organelle(len(self.objects) + 1, cls, CLASS_NAMES[cls], kind, list(parts), **kw)
        self.objects.append(o)
        return o

    def _place(self, rng: np.random.Generator) -> None:
        ez, ey, ex = self.extent_um
        volume = float(np.prod(self.extent_um))
        # Nucleus: a big ellipsoid whose centre lies just outside one side wall.
        a = float(np.clip(0.42 * min(ey, ex), 0.8, 5.0))
        axes = np.array([max(0.75 * a, 0.6 * ez), 1.1 * a, a])
        side = int(rng.integers(4))
        along = rng.uniform(0.35, 0.65)
        cy, cx = {
            0: (along * ey, -0.3 * axes[2]),
            1: (along * ey, ex + 0.3 * axes[2]),
            2: (-0.3 * axes[1], along * ex),
            3: (ey + 0.3 * axes[1], along * ex),
        }[side]
        if side >= 2:  # keep the long axis along the wall it is cut by
            axes[1], axes[2] = axes[2], axes[1]
        nucleus = Ellipsoid((0.5 * ez, cy, cx), tuple(axes))
        self._new(NUCLEUS, "nucleus", [nucleus], look={"offset": rng.uniform(-5, 5)})
        placer = _Placer(nucleus)

        def look(extra=None):
            d = {"offset": float(rng.uniform(-8, 8))}
            d.update(extra or {})
            return d

        def mito_look():
            return look(
                {"period": float(rng.uniform(0.07, 0.1)), "phase": float(rng.uniform(0, 2 * np.pi))}
            )

        def try_place(make, cls, kind, tries=300, **kw):
            for _ in range(tries):
                parts = make()
                if parts is not None and placer.free(parts):
                    o = self._new(cls, kind, parts, look=kw.get("look_fn", look)())
                    placer.add(parts)
                    return o
            return None

        def centre(margin=0.0):
            return np.array(
                [
                    rng.uniform(0, ez),
                    rng.uniform(margin, ey - margin),
                    rng.uniform(margin, ex - margin),
                ]
            )

        # The dumbbell: two lobes in line, joined by a thin bridge that lies
        # in the middle slice plane, so it shows on a few slices only.
        zc = (self.shape[0] // 2) * self.spacing_um[0]

        def dumbbell():
            lobe, r, gap, rb = rng.uniform(0.4, 0.6), rng.uniform(0.13, 0.16), 0.15, 0.04
            span = gap / 2 + lobe + r
            c = centre(margin=span + 0.05)
            c[0] = zc
            th = rng.uniform(0, 2 * np.pi)
            u = np.array([0.0, math.sin(th), math.cos(th)])
            v = np.array([0.0, math.cos(th), -math.sin(th)])
            bend = rng.uniform(-0.08, 0.08)
            a = [c - u * (gap / 2 + r), c - u * (gap / 2 + r + lobe / 2) + v * bend, c - u * span]
            b = [c + u * (gap / 2 + r), c + u * (gap / 2 + r + lobe / 2) + v * bend, c + u * span]
            taper = lambda t: r * (1 - 0.25 * t**2)  # noqa: E731 - lobes narrow towards the tips
            spacing = r / 3
            return [
                Tube.along(_bezier(*map(np.asarray, a)), taper, spacing),
                Tube.along(_bezier(*map(np.asarray, b)), taper, spacing),
                Tube.along(np.array([c - u * (gap / 2 + r), c + u * (gap / 2 + r)]), rb, rb / 3),
            ]

        dumb = try_place(dumbbell, MITOCHONDRIA, "dumbbell", tries=2000, look_fn=mito_look)
        if dumb is None:
            raise FamousError(
                f"could not place the dumbbell mitochondrion in a {self.shape} phantom.",
                fix="make the phantom larger.",
            )

        def mitochondrion():
            length = min(rng.uniform(1.0, 2.5), 0.7 * min(ey, ex))
            r = rng.uniform(0.125, 0.175)
            c = centre()
            th = rng.uniform(0, 2 * np.pi)
            el = float(np.clip(rng.normal(0, 0.15), -0.4, 0.4))
            u = np.array([math.sin(el), math.cos(el) * math.sin(th), math.cos(el) * math.cos(th)])
            v = np.array([0.0, math.cos(th), -math.sin(th)])
            bend = rng.uniform(-0.3, 0.3) * length
            p0, p2 = c - u * length / 2, c + u * length / 2
            p1 = c + v * bend + np.array([rng.uniform(-0.1, 0.1), 0, 0])
            wobble = rng.uniform(0, 2 * np.pi)
            radius = lambda t: r * (1 + 0.08 * np.sin(6 * t + wobble) - 0.2 * (2 * t - 1) ** 6)  # noqa: E731
            return [Tube.along(_bezier(p0, p1, p2, 32), radius, r / 3)]

        def sphere_like(lo, hi, squash=0.1, axis_aligned_spread=0.0):
            def make():
                r = rng.uniform(lo, hi)
                ax = r * (1 + rng.uniform(-squash, squash, 3))
                if axis_aligned_spread:
                    ax[1:] = r * rng.uniform(1 - axis_aligned_spread, 1 + axis_aligned_spread, 2)
                return [Ellipsoid(tuple(centre()), tuple(ax))]

            return make

        makers = {
            EARLY_ENDOSOME: sphere_like(0.1, 0.25),
            LATE_ENDOSOME: sphere_like(0.1, 0.22),
            LYSOSOME: sphere_like(0.15, 0.25, axis_aligned_spread=0.2),
        }
        counts = {c: max(1, int(round(rate * volume))) for c, rate in _RATES.items()}
        counts[MITOCHONDRIA] = max(2, counts[MITOCHONDRIA])
        placed = {c: 0 for c in _RATES}
        placed[MITOCHONDRIA] = 1

        # Edge cuts by construction: one organelle straddles each of the
        # y = 0 and x = X walls and the z = 0 wall.
        for cls, axis, value in (
            (EARLY_ENDOSOME, 1, 0.0),
            (LYSOSOME, 2, ex),
            (LATE_ENDOSOME, 0, 0.0),
        ):

            def at_edge(cls=cls, axis=axis, value=value):
                parts = makers[cls]()
                c = np.array(parts[0].center)
                c[axis] = value
                return [Ellipsoid(tuple(c), parts[0].axes)]

            if try_place(at_edge, cls, "ellipsoid") is not None:
                placed[cls] += 1

        # Touching pairs: B is put beyond A's extreme point in an in-plane
        # direction d (along x or y for two ellipsoids, along a
        # mitochondrion's end), its own extreme point 0-1 pixel further on.
        # The plane between those points separates A and B, so they touch
        # without overlapping.
        pairs = [
            (EARLY_ENDOSOME, LATE_ENDOSOME),
            (LATE_ENDOSOME, LYSOSOME),
            (MITOCHONDRIA, EARLY_ENDOSOME),
            (EARLY_ENDOSOME, LYSOSOME),
            (MITOCHONDRIA, LATE_ENDOSOME),
        ]
        n_pairs = max(1, int(round(_TOUCHING_RATE * volume)))
        for i in range(n_pairs):
            ca, cb = pairs[i % len(pairs)]
            for _ in range(300):
                pa = mitochondrion() if ca == MITOCHONDRIA else makers[ca]()
                pb = makers[cb]()[0]
                if ca == MITOCHONDRIA:
                    tube = pa[0]
                    d = tube.tangents[-1] if rng.random() < 0.5 else -tube.tangents[0]
                    d = np.array([0.0, d[1], d[2]]) / max(np.hypot(d[1], d[2]), 1e-9)
                    j = int(np.argmax(tube.points @ d + tube.radii))
                    tip = tube.points[j] + tube.radii[j] * d
                else:
                    d = np.zeros(3)
                    d[rng.integers(1, 3)] = rng.choice([-1.0, 1.0])
                    tip = np.asarray(pa[0].center) + _support_offset(pa[0].axes, d)
                gap = rng.uniform(0.0, 1.0) * self.spacing_um[2]
                c = tip + gap * d + _support_offset(pb.axes, d)
                pb = Ellipsoid(tuple(c), pb.axes)
                inside = np.all(c >= 0) and np.all(c <= self.extent_um)
                if not (inside and placer.free(pa) and placer.free([pb])):
                    continue
                kind = "tube" if ca == MITOCHONDRIA else "ellipsoid"
                oa = self._new(ca, kind, pa, look=mito_look() if ca == MITOCHONDRIA else look())
                placer.add(pa)
                ob = self._new(cb, "ellipsoid", [pb], touching=oa.id, look=look())
                placer.add([pb])
                oa.touching = ob.id
                placed[ca] += 1
                placed[cb] += 1
                break

        for cls in (MITOCHONDRIA, EARLY_ENDOSOME, LATE_ENDOSOME, LYSOSOME):
            for _ in range(max(0, counts[cls] - placed[cls])):
                if cls == MITOCHONDRIA:
                    try_place(mitochondrion, cls, "tube", look_fn=mito_look)
                else:
                    try_place(makers[cls], cls, "ellipsoid")

        # ER: thin dark membrane sheets, a curve in x-y that drifts with z,
        # seen on a limited z range. They carry no label.
        for _ in range(max(1, int(round(_ER_RATE * ey * ex)))):
            length = rng.uniform(0.6, 2.0)
            c = centre()
            th = rng.uniform(0, 2 * np.pi)
            u = np.array([math.sin(th), math.cos(th)])
            v = np.array([math.cos(th), -math.sin(th)])
            p0, p2 = c[1:] - u * length / 2, c[1:] + u * length / 2
            p1 = c[1:] + v * rng.uniform(-0.4, 0.4) * length
            pts = _bezier(np.r_[0, p0], np.r_[0, p1], np.r_[0, p2], 24)[:, 1:]
            self._er.append(
                {
                    "points": pts,
                    "z": (c[0] - rng.uniform(0.2, 0.6), c[0] + rng.uniform(0.2, 0.6)),
                    "z0": c[0],
                    "drift": rng.uniform(-0.3, 0.3, 2),
                    "double": bool(rng.random() < 0.5),
                    "normal": v,
                }
            )

        # Small transport vesicles (50-100 nm), clear or dense-cored: the
        # unlabelled clutter of real cytoplasm, kept clear of the organelles.
        vesicles = []
        for _ in range(int(round(_VESICLE_RATE * volume))):
            for _ in range(20):
                v = Ellipsoid(tuple(centre()), (rng.uniform(0.025, 0.05),) * 3)
                if placer.free([v]):
                    placer.add([v])
                    vesicles.append((*v.center, v.axes[0], rng.random() < 0.3))
                    break
        self._vesicles = np.array(vesicles, float).reshape(-1, 5)

    # -- texture ---------------------------------------------------------------

    def _lattice(self, tag: int, z: float, scale_um: float, shape: tuple[int, int]):
        """Lattice planes of spacing ``scale_um`` blended at ``z`` (Catmull-Rom in z).

        Planes are seeded by (seed, tag, plane index), so a slice's noise does
        not depend on which slices were rendered before; the few planes near
        the last ``z`` of each tag are kept, since neighbouring slices share them.
        """
        t = z / scale_um
        j0 = math.floor(t)
        w = _catmull_rom(t - j0)
        keep = {(tag, j) for j in range(j0 - 1, j0 + 3)}
        for key in list(self._planes):
            if key[0] == tag and key not in keep:
                self._planes.pop(key, None)
        out = np.zeros(shape, np.float32)
        for (_, j), wi in zip(sorted(keep), w):
            plane = self._planes.get((tag, j))
            if plane is None:
                rng = np.random.default_rng([self.seed, tag, j + (1 << 20)])
                plane = self._planes[(tag, j)] = rng.standard_normal(shape, dtype=np.float32)
            out += np.float32(wi) * plane
        return out / np.float32(np.sqrt((w * w).sum()))

    def _noise(self, tag: int, z: float, scale_um: float) -> np.ndarray:
        """Smooth 3-D noise (about unit variance) of feature size ``scale_um`` on the canvas."""
        g = self.grid
        shape = (
            int(math.ceil(g.height * g.py / scale_um)) + 2,
            int(math.ceil(g.width * g.px / scale_um)) + 2,
        )
        plane = self._lattice(tag, z, scale_um, shape)
        out = cv2.resize(plane, (g.width, g.height), interpolation=cv2.INTER_CUBIC)
        return out * 1.5  # cubic upsampling leaves about 2/3 of the lattice's spread

    def _curtain(self, z: float) -> np.ndarray:
        """Smooth noise along x only (feature 40 nm), drifting with z over ~0.3 µm."""
        g = self.grid
        n = int(math.ceil(g.width * g.px / 0.04)) + 2
        line = self._lattice(_TAG_CURTAIN, z, 0.3, (1, n))
        return 1.5 * cv2.resize(line, (g.width, 1), interpolation=cv2.INTER_CUBIC)[0]

    # -- rendering -------------------------------------------------------------

    def objects_on_slice(self, k: int) -> list[Organelle]:
        """The organelles whose z range includes slice ``k`` (some may miss the image)."""
        z = k * self.spacing_um[0]
        hit = np.flatnonzero((self._zlo <= z) & (self._zhi >= z))
        return [self.objects[i] for i in hit]

    def render_with_neighbours(self, k: int) -> np.ndarray:
        """Slices ``k - 1``, ``k``, ``k + 1`` as one (Y, X, 3) uint8 image.

        What :meth:`~.stack.Stack.read_with_neighbours` reads from the written
        stack, for a detector trained with ``--neighbours``.
        """
        ks = neighbour_indices(k, self.shape[0])
        return np.dstack([self.render_slice(j)[0] for j in ks])

    def render_slice(self, k: int, noise: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Render slice ``k``.

        Parameters
        ----------
        k : int
            Slice index, 0-based.
        noise : bool
            Add the detector noise, the slice's brightness drift and the FIB
            curtain streaks; without them the image is the blurred sample
            alone (for figures and tests).

        Returns
        -------
        image : ndarray (Y, X) uint8
            The FIB-SEM-like grey image (blurred, noisy).
        labels : ndarray (Y, X) uint16
            Ground-truth organelle ids (0 = no organelle).
        """
        if not 0 <= k < self.shape[0]:
            raise FamousError(f"slice {k} is outside the phantom's {self.shape[0]} slices.")
        g = self.grid
        z = k * self.spacing_um[0]
        fields = {
            "fine": self._noise(_TAG_FINE, z, 0.02),
            "mid": self._noise(_TAG_MID, z, 0.08),
        }
        coarse = self._noise(_TAG_COARSE, z, 0.6)
        img = (_CYTOPLASM + 7.0 * coarse + 6.0 * fields["mid"] + 5.0 * fields["fine"]).astype(
            np.float32
        )
        # ribosome-like dark grains
        img[fields["fine"] < -1.7] -= 22.0
        self._draw_er(img, z)
        self._draw_vesicles(img, z)
        lab = np.zeros((g.height, g.width), np.uint16)
        for o in self.objects_on_slice(k):
            self._draw(o, z, img, lab, fields)
        img = cv2.GaussianBlur(img, (0, 0), _BLUR_SIGMA_PX)
        dy, dx = self.jitter[k]
        Y, X = self.shape[1:]
        rows = slice(1 - dy, 1 - dy + Y)
        cols = slice(1 - dx, 1 - dx + X)
        img, lab = img[rows, cols], lab[rows, cols].copy()
        if noise:
            # detector noise, a small brightness drift from slice to slice and
            # the faint vertical streaks ("curtains") of FIB milling
            rng = np.random.default_rng([self.seed, _TAG_NOISE, k])
            img = img + _NOISE_STD * rng.standard_normal(img.shape, dtype=np.float32)
            img += rng.normal(0.0, 1.5) + 2.5 * self._curtain(z)[None, 1 - dx : 1 - dx + X]
        return np.clip(np.rint(img), 0, 255).astype(np.uint8), lab

    def _draw_er(self, img: np.ndarray, z: float) -> None:
        g = self.grid
        mask = np.zeros(img.shape, np.uint8)
        thick = max(1, int(round(0.02 / g.px)))
        for er in self._er:
            if not er["z"][0] <= z <= er["z"][1]:
                continue
            pts = er["points"] + er["drift"] * (z - er["z0"])
            lines = [pts]
            if er["double"]:
                lines.append(pts + er["normal"] * 0.045)
            for line in lines:
                # canvas (col, row) with 4 fractional bits for sub-pixel lines
                xy = np.stack([line[:, 1] / g.px + 1, line[:, 0] / g.py + 1], axis=1)
                cv2.polylines(
                    mask, [np.rint(xy * 16).astype(np.int32)], False, 255, thick, cv2.LINE_AA, 4
                )
        img -= mask.astype(np.float32) * (55.0 / 255.0)

    def _draw_vesicles(self, img: np.ndarray, z: float) -> None:
        ves = self._vesicles
        for cz, cy, cx, r, dense in ves[np.abs(ves[:, 0] - z) < ves[:, 3]]:
            sec = Ellipsoid((cz, cy, cx), (r, r, r)).section(z, self.grid)
            if sec is None:
                continue
            (r0, r1), (c0, c1), rho2 = sec
            depth = (1.0 - np.sqrt(np.minimum(rho2, 1.0))) * r
            val = np.where(depth < _MEMBRANE_UM, 80.0, 95.0 if dense else 185.0)
            sub = img[r0:r1, c0:c1]
            sub[rho2 <= 1.0] = val[rho2 <= 1.0]

    def _paste(self, o, rows, cols, inside, values, img, lab) -> None:
        (r0, r1), (c0, c1) = rows, cols
        sub = lab[r0:r1, c0:c1]
        m = inside & ((sub == 0) | (sub == o.id))
        sub[m] = o.id
        img[r0:r1, c0:c1][m] = values[m]

    def _draw(self, o: Organelle, z: float, img, lab, fields) -> None:
        g = self.grid
        off = o.look.get("offset", 0.0)
        for part in o.parts:
            if isinstance(part, Tube):
                sec = part.section(z, g, inset=0.025)
                if sec is None:
                    continue
                rows, cols, idx, core = sec
                (r0, r1), (c0, c1) = rows, cols
                fine = fields["fine"][r0:r1, c0:c1]
                mid = fields["mid"][r0:r1, c0:c1]
                inside = idx >= 0
                val = np.full(idx.shape, 78.0 + off, np.float32) + 6.0 * mid + 4.0 * fine
                # arc length along the tube's axis, so that cristae cross it
                ii = np.where(core >= 0, core, 0)
                dy = g.coords(r0, r1, 0)[:, None] - part.points[ii, 1]
                dx = g.coords(c0, c1, 1)[None, :] - part.points[ii, 2]
                s = part.arc[ii] + dy * part.tangents[ii, 1] + dx * part.tangents[ii, 2]
                wave = np.cos(2 * np.pi * s / o.look["period"] + o.look["phase"] + 0.8 * mid)
                cristae = (core >= 0) & (wave + 0.3 * fine > 0.45)
                val[cristae] = 128.0 + off + 6.0 * fine[cristae]
                val[inside & (core < 0)] = 52.0 + off
                self._paste(o, rows, cols, inside, val, img, lab)
            else:
                sec = part.section(z, g)
                if sec is None:
                    continue
                rows, cols, rho2 = sec
                (r0, r1), (c0, c1) = rows, cols
                inside = rho2 <= 1.0
                if not inside.any():
                    continue
                fine = fields["fine"][r0:r1, c0:c1]
                mid = fields["mid"][r0:r1, c0:c1]
                # depth below the surface, µm (exact for spheres, close for ellipsoids)
                depth = (1.0 - np.sqrt(rho2)) * min(part.axes[1:])
                val = self._look(o.cls, depth, fine, mid, off)
                self._paste(o, rows, cols, inside, val, img, lab)

    @staticmethod
    def _look(cls: int, depth, fine, mid, off) -> np.ndarray:
        if cls == NUCLEUS:
            val = 98.0 + off + 12.0 * mid + 6.0 * fine
            hetero = (depth < 0.15) & (mid > -0.4)
            val = np.where(hetero, 72.0 + off + 6.0 * fine, val)
            val = np.where(depth < 1.5 * _MEMBRANE_UM, 55.0, val)
            return val.astype(np.float32)
        if cls == EARLY_ENDOSOME:
            val = 200.0 + off + 6.0 * fine
            return np.where(depth < _MEMBRANE_UM, 70.0, val).astype(np.float32)
        if cls == LATE_ENDOSOME:
            val = 84.0 + off + 8.0 * mid + 5.0 * fine
            val = np.where(mid > 1.0, val + 28.0, val)  # intraluminal vesicles
            return np.where(depth < _MEMBRANE_UM, 60.0, val).astype(np.float32)
        if cls == LYSOSOME:
            val = 136.0 + 0.5 * off + 14.0 * fine
            val = np.where(fine < -1.0, val - 28.0, val)
            return np.where(depth < _MEMBRANE_UM, 124.0, val).astype(np.float32)
        raise ValueError(cls)

    # -- ground truth ----------------------------------------------------------

    def boxes(self, k: int, labels: np.ndarray, min_px: int = _MIN_BOX_PX) -> list[Box]:
        """Ground-truth boxes of slice ``k``, as an annotator would draw them.

        One box per 8-connected component of each organelle on the slice,
        ignoring components smaller than ``min_px`` pixels.

        Parameters
        ----------
        k : int
            Slice index (only used for the error message).
        labels : ndarray (Y, X)
            The slice's truth labels from :meth:`render_slice`.
        min_px : int
            Smallest component that gets a box.
        """
        return [box for _, box in self.boxes_with_ids(k, labels, min_px)]

    def boxes_with_ids(
        self, k: int, labels: np.ndarray, min_px: int = _MIN_BOX_PX
    ) -> list[tuple[int, Box]]:
        """:meth:`boxes` with the organelle id of each box: ``[(id, box), ...]``."""
        from scipy import ndimage

        if labels.shape != self.shape[1:]:
            raise FamousError(
                f"labels of slice {k} have shape {labels.shape}, not {self.shape[1:]}."
            )
        out = []
        for i, sl in enumerate(ndimage.find_objects(labels)):
            if sl is None:
                continue
            o = self.objects[i]
            m = (labels[sl] == o.id).astype(np.uint8)
            n, _, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
            y0, x0 = sl[0].start, sl[1].start
            for x, y, w, h, area in stats[1:n]:
                if area >= min_px:
                    box = Box(o.cls, float(x0 + x), float(y0 + y), float(w), float(h))
                    out.append((o.id, box))
        return out

    def iter_slices(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield ``(k, image, labels)`` for every slice, in order."""
        for k in range(self.shape[0]):
            image, labels = self.render_slice(k)
            yield k, image, labels

    def render_volume(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole stack in memory (for small phantoms and tests)."""
        images = np.zeros(self.shape, np.uint8)
        labels = np.zeros(self.shape, np.uint16)
        for k, im, lab in self.iter_slices():
            images[k], labels[k] = im, lab
        return images, labels

    def truth_rows(self, voxels: np.ndarray, n_boxes: np.ndarray) -> list[dict]:
        """``truth.csv`` rows given per-id voxel and box counts (index = id).

        Organelles with no voxel in the stack are left out; ``n_boxes`` tells
        which ones an annotator would never box (0: only specks are visible).
        """
        vox_um3 = float(np.prod(self.spacing_um))
        return [
            {
                "id": o.id,
                "class": o.name,
                "kind": o.kind,
                "touching": o.touching or "",
                "voxels": int(voxels[o.id]),
                "volume_um3": round(float(voxels[o.id]) * vox_um3, 6),
                "n_boxes": int(n_boxes[o.id]),
            }
            for o in self.objects
            if voxels[o.id] > 0
        ]


# ----------------------------------------------------------------------------
# Writing


TRUTH_COLUMNS = ("id", "class", "kind", "touching", "voxels", "volume_um3", "n_boxes")
STL_MAX_BYTES = 256 * 1024**2


class _TiffSink:
    """Write a Z-stack slice by slice as an ImageJ hyperstack, from a background thread.

    tifffile writes a correct ImageJ Z-stack only from one call with an
    iterator of pages; a thread per file lets one render loop feed two files.
    """

    def __init__(self, path: Path, shape, dtype, voxel_nm):
        from .fileio import atomic_path

        self._atomic = atomic_path(path)
        self._tmp = self._atomic.__enter__()
        self._queue: queue.Queue = queue.Queue(maxsize=4)
        self._done = threading.Event()
        self._error: BaseException | None = None
        dz, dy, dx = (v / 1000.0 for v in voxel_nm)
        kwargs = dict(
            shape=tuple(shape),
            dtype=dtype,
            imagej=True,
            resolution=(1.0 / dx, 1.0 / dy),
            metadata={"spacing": dz, "unit": "um", "axes": "ZYX"},
        )
        self._thread = threading.Thread(target=self._run, args=(kwargs,), daemon=True)
        self._thread.start()

    def _pages(self):
        while True:
            page = self._queue.get()
            if page is None:
                return
            yield page

    def _run(self, kwargs) -> None:
        import tifffile

        try:
            tifffile.imwrite(self._tmp, data=self._pages(), **kwargs)
        except BaseException as exc:  # reported to the caller in close()
            self._error = exc
        finally:
            self._done.set()

    def put(self, page: np.ndarray | None) -> None:
        """Queue a page (``None`` ends the stack); dropped once the writer has stopped."""
        while not self._done.is_set():
            try:
                self._queue.put(page, timeout=0.1)
                return
            except queue.Full:
                continue

    def close(self, ok: bool) -> None:
        """Finish the file; ``ok=False`` (the caller failed) removes it."""
        self.put(None)
        self._thread.join()
        if ok and self._error is None:
            self._atomic.__exit__(None, None, None)
            return
        self._atomic.__exit__(RuntimeError, None, None)
        if ok:
            raise self._error


def _annotated_slices(n_slices: int, fraction: float) -> list[int]:
    n = min(n_slices, max(2, int(round(fraction * n_slices))))
    return sorted({int((i + 0.5) * n_slices / n) for i in range(n)})


def _prepare_out(out: Path) -> Path:
    """Make ``out`` ready: new, empty, or an earlier phantom (whose folders are cleared)."""
    if out.exists() and not out.is_dir():
        raise FamousError("is a file, not a folder.", out, "give a folder for the phantom.")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "truth.csv").is_file():
            raise FamousError(
                "is not empty and holds no earlier phantom; its files would be mixed with the "
                "phantom's.",
                out,
                "give a new or empty folder.",
            )
        # stale per-slice files of a deeper earlier phantom would outlive it
        for name in ("boxes", "annotations", "truth_stl"):
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_phantom(
    out: str | Path,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    seed: int = 0,
    voxel_size_nm: tuple[float, float, float] = DEFAULT_VOXEL_NM,
    annotate_fraction: float = 0.01,
    stl: bool = True,
    progress: ProgressFn | None = None,
) -> dict:
    """Write a phantom and its ground truth to the folder ``out``.

    Writes ``stack.tif`` (uint8) and ``truth_labels.tif`` (uint16), both
    ImageJ Z-stacks with the voxel size, written slice by slice;
    ``truth.csv`` (id, class, kind, touching, voxels, volume_um3, n_boxes);
    ``classes.toml`` (the ``fibsem`` preset); ``boxes/slice_NNNNN.txt`` (YOLO
    boxes of every slice, empty when it has none); ``annotations/`` (YOLO_mark
    layout for ``annotate_fraction`` of the slices, at least 2: 8-bit PNGs,
    their YOLO txt, ``obj.names``, ``train.txt`` listing the PNG names
    relative to that folder, and ``neighbours/``);
    ``truth_stl/<class>/<class>_<id>.stl`` (one marching-cubes surface per
    organelle in µm, x y z), when ``stl`` is true and the label volume fits
    in 256 MB.

    Parameters
    ----------
    out : str or Path
        Output folder: new, empty, or an earlier phantom's (then replaced).
    shape : (Z, Y, X)
        Stack shape in voxels.
    seed : int
        Seed of everything in the phantom.
    voxel_size_nm : (z, y, x)
        Voxel size in nm, written to both TIFFs' ImageJ metadata.
    annotate_fraction : float
        Fraction of the slices (evenly spread, at least 2) written to
        ``annotations/``.
    stl : bool
        Write ``truth_stl/`` (needs the label volume in memory).
    progress : callable, optional
        ``progress(fraction, message)``; may raise
        :class:`~famous_addon.core.errors.Cancelled`, which leaves no TIFF.

    Returns
    -------
    dict
        ``out``, ``shape``, ``voxel_size_nm``, ``seed``, ``counts`` (organelles per
        class), ``boxes`` (total), ``annotated_slices``, ``stl`` (files
        written) and ``notes``.
    """
    from .annotations import write_neighbours
    from .boxes import write_yolo_txt
    from .classes import preset, save_classes
    from .fileio import atomic_write_bytes, write_csv
    from .stack import open_stack

    if not 0.0 <= annotate_fraction <= 1.0:
        raise FamousError(
            f"annotate_fraction {annotate_fraction} is not a fraction of the slices.",
            fix="give a number between 0 and 1 (0.01 annotates 1% of the slices).",
        )
    progress = progress or silent
    ph = Phantom(shape, seed, voxel_size_nm)
    out = _prepare_out(Path(out))
    Z, Y, X = ph.shape
    notes = []
    keep_volume = stl and Z * Y * X * 2 <= STL_MAX_BYTES
    if stl and not keep_volume:
        notes.append(
            f"truth_stl/ skipped: the {Z}x{Y}x{X} label volume is over "
            f"{STL_MAX_BYTES // 1024**2} MB (meshing holds it in memory)."
        )
    volume = np.zeros(ph.shape, np.uint16) if keep_volume else None
    annotated = _annotated_slices(Z, annotate_fraction)
    ann_dir = out / "annotations"
    voxels = np.zeros(len(ph.objects) + 1, np.int64)
    box_counts = np.zeros(len(ph.objects) + 1, np.int64)
    n_boxes = 0
    render_progress = sub(progress, 0.0, 0.85 if keep_volume else 1.0)
    sinks = [
        _TiffSink(out / "stack.tif", ph.shape, np.uint8, ph.voxel_size_nm),
        _TiffSink(out / "truth_labels.tif", ph.shape, np.uint16, ph.voxel_size_nm),
    ]
    ok = False
    try:
        for k, image, labels in ph.iter_slices():
            sinks[0].put(image)
            sinks[1].put(labels)
            voxels += np.bincount(labels.ravel(), minlength=voxels.size)
            found = ph.boxes_with_ids(k, labels)
            boxes = [box for _, box in found]
            np.add.at(box_counts, [i for i, _ in found], 1)
            n_boxes += len(boxes)
            write_yolo_txt(out / "boxes" / f"slice_{k:05d}.txt", boxes, (Y, X))
            if k in annotated:
                name = f"slice_{k:05d}"
                _, png = cv2.imencode(".png", image)
                atomic_write_bytes(ann_dir / f"{name}.png", png.tobytes())
                write_yolo_txt(ann_dir / f"{name}.txt", boxes, (Y, X))
            if volume is not None:
                volume[k] = labels
            render_progress((k + 1) / Z, f"phantom slice {k + 1}/{Z}")
        ok = True
    finally:
        for s in sinks:
            s.close(ok)
    write_neighbours(ann_dir, open_stack(out / "stack.tif"), annotated)
    atomic_write_bytes(ann_dir / "obj.names", "".join(n + "\n" for n in CLASS_NAMES).encode())
    atomic_write_bytes(
        ann_dir / "train.txt", "".join(f"slice_{k:05d}.png\n" for k in annotated).encode()
    )
    save_classes(preset("fibsem"), out / "classes.toml")
    rows = ph.truth_rows(voxels, box_counts)
    write_csv(out / "truth.csv", TRUTH_COLUMNS, rows)
    stl_files = []
    if volume is not None:
        stl_files = write_truth_stls(
            out / "truth_stl", volume, ph, progress=sub(progress, 0.85, 1.0)
        )
    progress(1.0, "phantom written")
    counts = {n: 0 for n in CLASS_NAMES}
    for r in rows:
        counts[r["class"]] += 1
    return {
        "out": str(out),
        "shape": list(ph.shape),
        "voxel_size_nm": list(ph.voxel_size_nm),
        "seed": ph.seed,
        "counts": counts,
        "boxes": n_boxes,
        "annotated_slices": annotated,
        "stl": len(stl_files),
        "notes": notes,
    }


def organelle_mesh(mask: np.ndarray, offset_vox, spacing_um):
    """A closed surface of a binary mask, vertices in µm as (x, y, z).

    Parameters
    ----------
    mask : ndarray (z, y, x) bool
        The organelle's voxels; padded here so the surface is closed.
    offset_vox : (z, y, x)
        Index of ``mask[0, 0, 0]`` in the stack.
    spacing_um : (z, y, x)
        Voxel size in µm.

    Returns
    -------
    trimesh.Trimesh
    """
    import trimesh
    from skimage.measure import marching_cubes

    padded = np.pad(mask.astype(np.float32), 1)
    verts, faces, _, _ = marching_cubes(padded, 0.5, spacing=tuple(spacing_um))
    verts += (np.asarray(offset_vox, float) - 1.0) * np.asarray(spacing_um)
    return trimesh.Trimesh(verts[:, ::-1], faces, process=False)


def write_truth_stls(
    folder: Path, labels: np.ndarray, phantom: Phantom, progress: ProgressFn | None = None
) -> list[Path]:
    """One binary STL per organelle of ``labels`` under ``folder/<class>/<class>_<id>.stl``.

    Parameters
    ----------
    folder : Path
        The ``truth_stl`` folder.
    labels : ndarray (Z, Y, X)
        Truth labels of ``phantom`` (all slices).
    phantom : Phantom
        For the class names and voxel size.
    progress : callable, optional
        ``progress(fraction, message)``.

    Returns
    -------
    list of Path
        The files written.
    """
    from scipy import ndimage

    from .fileio import atomic_write_bytes

    progress = progress or silent
    written = []
    slices = ndimage.find_objects(labels)
    for i, sl in enumerate(slices):
        if sl is None:
            continue
        o = phantom.objects[i]
        mesh = organelle_mesh(labels[sl] == o.id, [s.start for s in sl], phantom.spacing_um)
        path = Path(folder) / o.name / f"{o.name}_{o.id}.stl"
        atomic_write_bytes(path, mesh.export(file_type="stl"))
        written.append(path)
        progress((i + 1) / len(slices), f"truth STL {o.name}_{o.id}")
    return written


def load_truth(out: str | Path) -> tuple[np.ndarray, list[dict]]:
    """Read a written phantom's truth: the label volume and the ``truth.csv`` rows.

    Parameters
    ----------
    out : str or Path
        A folder written by :func:`write_phantom`.

    Returns
    -------
    labels : ndarray (Z, Y, X) uint16
    rows : list of dict
        ``truth.csv`` rows; ``id``, ``voxels`` and ``n_boxes`` as int,
        ``volume_um3`` as float.
    """
    import tifffile

    from .fileio import read_csv

    out = Path(out)
    for name in ("truth_labels.tif", "truth.csv"):
        if not (out / name).is_file():
            raise FamousError(f"has no {name}.", out, "give a folder written by `famous phantom`.")
    labels = tifffile.imread(out / "truth_labels.tif")
    rows = read_csv(out / "truth.csv")
    for r in rows:
        r["id"], r["voxels"], r["n_boxes"] = int(r["id"]), int(r["voxels"]), int(r["n_boxes"])
        r["volume_um3"] = float(r["volume_um3"])
    return labels, rows
