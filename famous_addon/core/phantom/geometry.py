"""Analytic shapes of the phantom, in µm, and their sections on a slice.

Organelles are ellipsoids, or tubes built as chains of spheres along smooth
3-D curves; all are defined in (z, y, x) µm, so one seed gives the same cell
at any voxel size. :class:`Grid` is the pixel canvas a slice is drawn on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """Canvas of one slice: the image plus a 1-pixel margin for the jitter.

    Canvas pixel ``(i, j)`` has its centre at ``((i - 1) * py, (j - 1) * px)``
    µm, so image pixel ``(0, 0)`` sits at the origin.

    Attributes
    ----------
    py, px : float
        Pixel height and width in µm.
    height, width : int
        Canvas size in pixels (the image's plus 2).
    """

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
        """µm positions of the pixel centres ``i0 .. i1 - 1`` along ``axis`` (0 rows, 1 columns)."""
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

    def section(self, z: float, grid: Grid):
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

    def section(self, z: float, grid: Grid, inset: float = 0.0):
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
