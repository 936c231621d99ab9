"""Where the phantom's organelles go: one seeded run of rejection sampling.

:func:`place_cell` lays out, in µm and in this order, a large nucleus cut by a
side wall; the dumbbell mitochondrion whose lobes are joined by a thin bridge
on a few middle slices (the paper's open failure case); one organelle cut by
each of the y = 0, x = X and z = 0 walls; touching pairs (0-1 voxel apart); the
remaining mitochondria and endosomes; unlabelled ER membrane sheets; and small
transport vesicles. Every draw comes from the one generator passed in, so the
order of the steps (and of the draws within them) is part of the phantom: a
change there makes another cell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import FamousError
from .geometry import Ellipsoid, Tube
from .organelles import (
    CLASS_NAMES,
    EARLY_ENDOSOME,
    LATE_ENDOSOME,
    LYSOSOME,
    MITOCHONDRIA,
    NUCLEUS,
    Organelle,
)

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
_MIN_GAP_UM = 0.04  # clearance between organelles that are not meant to touch


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


@dataclass
class Layout:
    """What :func:`place_cell` lays out.

    Attributes
    ----------
    objects : list of Organelle
        The organelles, ``objects[i].id == i + 1``.
    er : list of dict
        ER membrane sheets (no label): ``points`` (n, 2) µm in (y, x), the
        ``z`` range where they show, ``z0``, their ``drift`` per µm of z,
        ``double`` (two parallel membranes) and the in-plane ``normal``.
    vesicles : ndarray (n, 5)
        Transport vesicles (no label): centre (z, y, x), radius (µm) and
        whether it is dense-cored.
    """

    objects: list[Organelle]
    er: list[dict]
    vesicles: np.ndarray


def place_cell(
    rng: np.random.Generator, shape: tuple[int, int, int], spacing_um: np.ndarray
) -> Layout:
    """Lay out the phantom's organelles, ER and vesicles.

    Parameters
    ----------
    rng : numpy.random.Generator
        The phantom's placement generator; the layout is a pure function of
        its state, ``shape`` and ``spacing_um``.
    shape : (Z, Y, X)
        Stack shape in voxels.
    spacing_um : ndarray (3,)
        Voxel size in µm, (z, y, x).

    Returns
    -------
    Layout

    Raises
    ------
    FamousError
        The stack is too small to hold the dumbbell mitochondrion.
    """
    cell = _Cell(_Candidates(rng, shape, spacing_um))
    cell.place_nucleus()
    cell.place_dumbbell()
    placed = {c: 0 for c in _RATES}
    placed[MITOCHONDRIA] = 1
    cell.place_edge_cuts(placed)
    cell.place_touching_pairs(placed)
    cell.place_the_rest(placed)
    er = cell.place_er()
    vesicles = cell.place_vesicles()
    return Layout(cell.objects, er, vesicles)


class _Candidates:
    """The seeded draws of one candidate organelle: its shape (in µm) and its look.

    Each method draws from the run's one generator; a candidate that does not
    fit is drawn again, so the number of tries is part of the phantom too.
    """

    def __init__(self, rng: np.random.Generator, shape, spacing_um: np.ndarray):
        self.rng = rng
        self.shape = shape
        self.spacing_um = spacing_um
        self.extent_um = np.asarray(shape) * spacing_um
        self.makers = {
            EARLY_ENDOSOME: self.sphere_like(0.1, 0.25),
            LATE_ENDOSOME: self.sphere_like(0.1, 0.22),
            LYSOSOME: self.sphere_like(0.15, 0.25, axis_aligned_spread=0.2),
        }

    def look(self, extra=None) -> dict:
        d = {"offset": float(self.rng.uniform(-8, 8))}
        d.update(extra or {})
        return d

    def mito_look(self) -> dict:
        rng = self.rng
        # period and phase are drawn before look's offset
        return self.look(
            {"period": float(rng.uniform(0.07, 0.1)), "phase": float(rng.uniform(0, 2 * np.pi))}
        )

    def centre(self, margin=0.0) -> np.ndarray:
        rng = self.rng
        ez, ey, ex = self.extent_um
        # a slice narrower than twice the margin: the object sits in the middle, cut by the
        # border (so small phantoms work)
        my, mx = min(margin, ey / 2), min(margin, ex / 2)
        return np.array(
            [
                rng.uniform(0, ez),
                rng.uniform(my, ey - my),
                rng.uniform(mx, ex - mx),
            ]
        )

    def dumbbell(self) -> list[Tube]:
        """Two lobes in line, joined by a thin bridge in the middle slice plane.

        The bridge lies in that plane, so it shows on a few slices only.
        """
        rng = self.rng
        zc = (self.shape[0] // 2) * self.spacing_um[0]
        lobe, r, gap, rb = rng.uniform(0.4, 0.6), rng.uniform(0.13, 0.16), 0.15, 0.04
        span = gap / 2 + lobe + r
        c = self.centre(margin=span + 0.05)
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

    def mitochondrion(self) -> list[Tube]:
        rng = self.rng
        ey, ex = self.extent_um[1:]
        length = min(rng.uniform(1.0, 2.5), 0.7 * min(ey, ex))
        r = rng.uniform(0.125, 0.175)
        c = self.centre()
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

    def sphere_like(self, lo, hi, squash=0.1, axis_aligned_spread=0.0):
        rng = self.rng

        def make():
            r = rng.uniform(lo, hi)
            ax = r * (1 + rng.uniform(-squash, squash, 3))
            if axis_aligned_spread:
                ax[1:] = r * rng.uniform(1 - axis_aligned_spread, 1 + axis_aligned_spread, 2)
            return [Ellipsoid(tuple(self.centre()), tuple(ax))]

        return make


class _Cell:
    """One placement run: the organelles placed so far, and the steps of :func:`place_cell`.

    The steps are the ``place_*`` methods, run in the order they are listed.
    """

    def __init__(self, draw: _Candidates):
        self.draw = draw
        self.rng = draw.rng
        self.shape = draw.shape
        self.spacing_um = draw.spacing_um
        self.extent_um = draw.extent_um
        self.volume = float(np.prod(self.extent_um))
        self.objects: list[Organelle] = []
        self.placer: _Placer | None = None

    def new(self, cls: int, kind: str, parts, **kw) -> Organelle:
        o = Organelle(len(self.objects) + 1, cls, CLASS_NAMES[cls], kind, list(parts), **kw)
        self.objects.append(o)
        return o

    def try_place(self, make, cls, kind, tries=300, look_fn=None) -> Organelle | None:
        for _ in range(tries):
            parts = make()
            if parts is not None and self.placer.free(parts):
                o = self.new(cls, kind, parts, look=(look_fn or self.draw.look)())
                self.placer.add(parts)
                return o
        return None

    # -- the steps, in order ---------------------------------------------------

    def place_nucleus(self) -> None:
        """A big ellipsoid whose centre lies just outside one side wall."""
        rng = self.rng
        ez, ey, ex = self.extent_um
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
        self.new(NUCLEUS, "nucleus", [nucleus], look={"offset": rng.uniform(-5, 5)})
        self.placer = _Placer(nucleus)

    def place_dumbbell(self) -> None:
        dumb = self.try_place(
            self.draw.dumbbell, MITOCHONDRIA, "dumbbell", tries=2000, look_fn=self.draw.mito_look
        )
        if dumb is None:
            raise FamousError(
                f"could not place the dumbbell mitochondrion in a {self.shape} phantom.",
                fix="make the phantom larger.",
            )

    def place_edge_cuts(self, placed: dict) -> None:
        """Edge cuts by construction: one organelle straddles each of the y=0, x=X, z=0 walls."""
        ex = self.extent_um[2]
        for cls, axis, value in (
            (EARLY_ENDOSOME, 1, 0.0),
            (LYSOSOME, 2, ex),
            (LATE_ENDOSOME, 0, 0.0),
        ):

            def at_edge(cls=cls, axis=axis, value=value):
                parts = self.draw.makers[cls]()
                c = np.array(parts[0].center)
                c[axis] = value
                return [Ellipsoid(tuple(c), parts[0].axes)]

            if self.try_place(at_edge, cls, "ellipsoid") is not None:
                placed[cls] += 1

    def place_touching_pairs(self, placed: dict) -> None:
        """Touching pairs, 0-1 pixel apart.

        B is put beyond A's extreme point in an in-plane direction d (along x
        or y for two ellipsoids, along a mitochondrion's end), its own extreme
        point 0-1 pixel further on. The plane between those points separates A
        and B, so they touch without overlapping.
        """
        rng, placer, makers = self.rng, self.placer, self.draw.makers
        pairs = [
            (EARLY_ENDOSOME, LATE_ENDOSOME),
            (LATE_ENDOSOME, LYSOSOME),
            (MITOCHONDRIA, EARLY_ENDOSOME),
            (EARLY_ENDOSOME, LYSOSOME),
            (MITOCHONDRIA, LATE_ENDOSOME),
        ]
        n_pairs = max(1, int(round(_TOUCHING_RATE * self.volume)))
        for i in range(n_pairs):
            ca, cb = pairs[i % len(pairs)]
            for _ in range(300):
                pa = self.draw.mitochondrion() if ca == MITOCHONDRIA else makers[ca]()
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
                look = self.draw.mito_look() if ca == MITOCHONDRIA else self.draw.look()
                oa = self.new(ca, kind, pa, look=look)
                placer.add(pa)
                ob = self.new(cb, "ellipsoid", [pb], touching=oa.id, look=self.draw.look())
                placer.add([pb])
                oa.touching = ob.id
                placed[ca] += 1
                placed[cb] += 1
                break

    def place_the_rest(self, placed: dict) -> None:
        """Mitochondria and endosomes up to the class rates (at least 2 mitochondria)."""
        counts = {c: max(1, int(round(rate * self.volume))) for c, rate in _RATES.items()}
        counts[MITOCHONDRIA] = max(2, counts[MITOCHONDRIA])
        for cls in (MITOCHONDRIA, EARLY_ENDOSOME, LATE_ENDOSOME, LYSOSOME):
            for _ in range(max(0, counts[cls] - placed[cls])):
                if cls == MITOCHONDRIA:
                    self.try_place(
                        self.draw.mitochondrion, cls, "tube", look_fn=self.draw.mito_look
                    )
                else:
                    self.try_place(self.draw.makers[cls], cls, "ellipsoid")

    def place_er(self) -> list[dict]:
        """ER: thin dark membrane sheets, unlabelled.

        Each is a curve in x-y that drifts with z, seen on a limited z range.
        """
        rng = self.rng
        ey, ex = self.extent_um[1:]
        er = []
        for _ in range(max(1, int(round(_ER_RATE * ey * ex)))):
            length = rng.uniform(0.6, 2.0)
            c = self.draw.centre()
            th = rng.uniform(0, 2 * np.pi)
            u = np.array([math.sin(th), math.cos(th)])
            v = np.array([math.cos(th), -math.sin(th)])
            p0, p2 = c[1:] - u * length / 2, c[1:] + u * length / 2
            p1 = c[1:] + v * rng.uniform(-0.4, 0.4) * length
            pts = _bezier(np.r_[0, p0], np.r_[0, p1], np.r_[0, p2], 24)[:, 1:]
            er.append(
                {
                    "points": pts,
                    "z": (c[0] - rng.uniform(0.2, 0.6), c[0] + rng.uniform(0.2, 0.6)),
                    "z0": c[0],
                    "drift": rng.uniform(-0.3, 0.3, 2),
                    "double": bool(rng.random() < 0.5),
                    "normal": v,
                }
            )
        return er

    def place_vesicles(self) -> np.ndarray:
        """Small transport vesicles (50-100 nm), clear or dense-cored.

        The unlabelled clutter of real cytoplasm, kept clear of the organelles.
        """
        rng = self.rng
        vesicles = []
        for _ in range(int(round(_VESICLE_RATE * self.volume))):
            for _ in range(20):
                v = Ellipsoid(tuple(self.draw.centre()), (rng.uniform(0.025, 0.05),) * 3)
                if self.placer.free([v]):
                    self.placer.add([v])
                    vesicles.append((*v.center, v.axes[0], rng.random() < 0.3))
                    break
        return np.array(vesicles, float).reshape(-1, 5)
