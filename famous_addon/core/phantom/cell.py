"""The phantom cell: a seeded volume that renders its slices and their truth.

:class:`Phantom` places the organelles once (:mod:`.placement`) and renders
any slice on demand (:mod:`.render`), each a pure function of the phantom's
parameters (shape, seed, voxel size) and the slice index, so a
300 x 2048 x 2048 phantom is written without holding the volume. Its truth
boxes are drawn as an annotator would: one per visible piece of an organelle.
"""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np
from scipy import ndimage

from ..boxes import Box
from ..errors import FamousError
from ..stack import neighbour_indices
from .geometry import Grid
from .organelles import Organelle
from .placement import place_cell
from .render import acquire, draw_sample
from .texture import TAG_JITTER, TAG_NOISE, TAG_PLACE, Texture

DEFAULT_SHAPE = (64, 512, 512)
DEFAULT_VOXEL_NM = (10.0, 10.0, 10.0)
_MIN_BOX_PX = 9
MIN_EXTENT_UM = 1.5  # the smallest phantom slice, in µm (width and height)


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
        # the nucleus and a dumbbell mitochondrion (about 1.2 µm long) must fit side by side;
        # 1.5 µm placed them for every seed tried (1.4 µm failed for some)
        if min(self.extent_um[1:]) < MIN_EXTENT_UM:
            least = int(np.ceil(MIN_EXTENT_UM * 1000 / min(voxel[1:])))
            raise FamousError(
                f"a phantom of {shape[1]} x {shape[2]} pixels of {voxel[1]} x {voxel[2]} nm is "
                f"{self.extent_um[1]:.2f} x {self.extent_um[2]:.2f} µm, too small for a cell.",
                fix=f"make it at least {MIN_EXTENT_UM} µm wide and high: at least {least} "
                f"pixels at {min(voxel[1:]):g} nm (e.g. --shape {shape[0]} {least} {least}), "
                "or larger pixels.",
            )
        self.grid = Grid(self.spacing_um[1], self.spacing_um[2], shape[1] + 2, shape[2] + 2)
        layout = place_cell(np.random.default_rng([self.seed, TAG_PLACE]), shape, self.spacing_um)
        self.objects: list[Organelle] = layout.objects
        self._er, self._vesicles = layout.er, layout.vesicles
        if len(self.objects) > np.iinfo(np.uint16).max:
            raise FamousError(
                f"the phantom has {len(self.objects)} organelles, more than uint16 labels hold.",
                fix="make a smaller phantom.",
            )
        self.jitter = np.stack([self._jitter(k) for k in range(shape[0])]).astype(int)
        zr = np.array([o.z_range for o in self.objects])
        self._zlo, self._zhi = zr[:, 0], zr[:, 1]
        self._texture = Texture(self.seed, self.grid)

    def _jitter(self, k: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, TAG_JITTER, k])
        return rng.choice([-1, 0, 1], size=2, p=[0.25, 0.5, 0.25])

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
        z = k * self.spacing_um[0]
        canvas, labels = draw_sample(
            self._texture, self.objects_on_slice(k), self._er, self._vesicles, z
        )
        if not noise:
            return acquire(canvas, labels, self.jitter[k])
        rng = np.random.default_rng([self.seed, TAG_NOISE, k])
        return acquire(canvas, labels, self.jitter[k], rng, self._texture.curtain(z))

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
