"""Seeded smooth noise for the phantom's texture, and the tags of its random streams.

Every random draw of the phantom after placement comes from a generator
seeded by ``(seed, tag, index)``, so a slice is a pure function of the
phantom's parameters and its index, whatever was rendered before it. The tags
are kept here, side by side, so no two streams share one.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .geometry import Grid

# Seed stream tags: placement, slice jitter, detector noise, and the noise lattices.
TAG_PLACE, TAG_JITTER, TAG_NOISE = 0, 1, 2
TAG_FINE, TAG_MID, TAG_COARSE, TAG_CURTAIN = 11, 12, 13, 14


def _catmull_rom(t: float) -> np.ndarray:
    return np.array(
        [
            (-(t**3) + 2 * t**2 - t) / 2,
            (3 * t**3 - 5 * t**2 + 2) / 2,
            (-3 * t**3 + 4 * t**2 + t) / 2,
            (t**3 - t**2) / 2,
        ]
    )


class Texture:
    """Smooth 3-D noise fields of one phantom on its slice canvas.

    Parameters
    ----------
    seed : int
        The phantom's seed.
    grid : Grid
        The slice canvas the fields cover.
    """

    def __init__(self, seed: int, grid: Grid):
        self.seed = seed
        self.grid = grid
        self._planes: dict = {}

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

    def noise(self, tag: int, z: float, scale_um: float) -> np.ndarray:
        """Smooth 3-D noise (about unit variance) of feature size ``scale_um`` on the canvas.

        Parameters
        ----------
        tag : int
            Seed stream of the field (``TAG_FINE``, ``TAG_MID``, ``TAG_COARSE``).
        z : float
            Slice position in µm.
        scale_um : float
            Feature size (lattice spacing) in µm, in z as in x-y.

        Returns
        -------
        ndarray (height, width) float32
        """
        g = self.grid
        shape = (
            int(math.ceil(g.height * g.py / scale_um)) + 2,
            int(math.ceil(g.width * g.px / scale_um)) + 2,
        )
        plane = self._lattice(tag, z, scale_um, shape)
        out = cv2.resize(plane, (g.width, g.height), interpolation=cv2.INTER_CUBIC)
        return out * 1.5  # cubic upsampling leaves about 2/3 of the lattice's spread

    def curtain(self, z: float) -> np.ndarray:
        """Smooth noise along x only (feature 40 nm), drifting with z over ~0.3 µm.

        Returns
        -------
        ndarray (width,) float32
            One value per canvas column.
        """
        g = self.grid
        n = int(math.ceil(g.width * g.px / 0.04)) + 2
        line = self._lattice(TAG_CURTAIN, z, 0.3, (1, n))
        return 1.5 * cv2.resize(line, (g.width, 1), interpolation=cv2.INTER_CUBIC)[0]
