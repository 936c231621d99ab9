"""Training data for the detector (needs the ``train`` extra): anchors from the
user's boxes, and random augmented crops of the annotated slices as batches."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ..boxes import Box
from ..errors import FamousError
from .config import PseudoShare
from .evaluate import small_boxes


def kmeans_anchors(
    wh: np.ndarray, k: int, seed: int = 0, iters: int = 100
) -> list[tuple[float, float]]:
    """``k`` anchors (w, h) from box sizes by k-means with 1 - IoU distance, smallest first.

    With fewer distinct boxes than ``k``, the sizes are spread by scaling the
    available ones, so every head still gets anchors.
    """
    wh = np.asarray(wh, np.float64).reshape(-1, 2)
    if len(wh) == 0:
        raise FamousError("no boxes to choose anchors from.")
    rng = np.random.default_rng(seed)
    if len(np.unique(wh, axis=0)) < k:
        scales = np.geomspace(0.5, 2.0, k)
        base = np.exp(np.log(wh).mean(0))
        centers = base[None] * scales[:, None]
    else:
        centers = wh[rng.choice(len(wh), k, replace=False)]
        for _ in range(iters):
            inter = np.minimum(wh[:, None, 0], centers[None, :, 0]) * np.minimum(
                wh[:, None, 1], centers[None, :, 1]
            )
            iou = inter / (wh[:, None].prod(-1) + centers[None].prod(-1) - inter)
            assign = iou.argmax(1)
            new = np.array(
                [
                    np.median(wh[assign == j], 0) if (assign == j).any() else centers[j]
                    for j in range(k)
                ]
            )
            if np.allclose(new, centers):
                break
            centers = new
    order = np.argsort(centers.prod(1))
    return [(float(max(2.0, w)), float(max(2.0, h))) for w, h in centers[order]]


@dataclass
class AugmentConfig:
    """Random crop and augmentation ranges (see :class:`CropSampler`)."""

    scale: tuple[float, float] = (0.5, 1.5)
    contrast: tuple[float, float] = (0.7, 1.3)
    brightness: float = 0.12
    gamma: tuple[float, float] = (0.7, 1.4)
    noise: float = 0.04
    blur_p: float = 0.2
    min_box_px: float = 3.0
    small_focus: float = 0.0
    large_focus: float = 0.0


class CropSampler:
    """Random augmented crops from whole annotated slices.

    A crop keeps every object it cuts, with the box clipped to the crop, so
    the network learns objects cut by a slice or tile border.

    Parameters
    ----------
    images : list of uint8 arrays
        2-D slices, or (Y, X, 3) slices between their neighbours.
    boxes : list of (n, 5) arrays
        class, x0, y0, x1, y1 in image pixels.
    size : int
        Crop (training input) size.
    aug : AugmentConfig
        With ``small_focus`` p > 0, a share p of the crops is centred (within
        its middle half, at zoom >= 1) on a random small box
        (:func:`~.evaluate.small_boxes`): random crops seldom hold the caps of
        round organelles, so a detector learns them least. With
        ``large_focus`` p > 0, a share p of the other crops holds the whole of a
        random large box (longer side over half the crop), zoomed out as far
        as needed: a random crop almost always cuts such a box, so a detector
        trained on small crops learns large organelles only in pieces.

    pseudo : PseudoShare, optional
        The images from ``pseudo.first`` on hold pseudo-boxes (self-training,
        :mod:`~famous_addon.core.selftrain`): they are drawn for a share
        ``pseudo.share`` of the crops and their boxes weigh ``pseudo.weight``.
        With ``pseudo.background``, their rows of class -1 are regions left
        out of the loss (what the first detector saw there but 3-D did not
        confirm) and the rest of them is taught as background; without,
        nothing on them is taught as background (what the first detector
        missed there is unknown, not absent).

    Every draw takes its own random generator, so batches can be made in
    parallel threads and still be the same for the same seed.
    """

    def __init__(
        self,
        images,
        boxes,
        size: int,
        aug: AugmentConfig | None = None,
        pseudo: PseudoShare | None = None,
    ):
        self.images = images
        self.boxes = boxes
        self.size = size
        self.aug = aug or AugmentConfig()
        self.pseudo = pseudo or PseudoShare(first=len(images))
        self.p = _draw_chances(images, self.pseudo)
        self.fill = [float(np.median(im)) for im in images]
        # (image, box) pairs of the small boxes, which small_focus centres crops on
        # (class -1 rows: regions left out of the loss, never a box to focus on)
        pairs = [(i, j) for i, b in enumerate(boxes) for j in range(len(b)) if b[j, 0] >= 0]
        every = np.array([boxes[i][j] for i, j in pairs]).reshape(-1, 5)
        area = (every[:, 3] - every[:, 1]) * (every[:, 4] - every[:, 2])
        self.small = [pair for pair, s in zip(pairs, small_boxes(every[:, 0], area)) if s]
        longer = np.maximum(every[:, 3] - every[:, 1], every[:, 4] - every[:, 2])
        self.large = [pair for pair, n in zip(pairs, longer) if n > size / 2]

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One crop (size x size, x 3 with neighbours; float32 in [0, 1]) and its boxes.

        Boxes are (n, 5): class, cx, cy, w, h.
        """
        x, t, _ = self.draw(rng)
        return x, t

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
        """:meth:`sample`'s crop and boxes, and the index of the image it was cut from."""
        a, size = self.aug, self.size
        i = int(rng.choice(len(self.images), p=self.p))
        img, bx = self.images[i], self.boxes[i]
        rows, cols = img.shape[:2]
        zoom = float(np.exp(rng.uniform(np.log(a.scale[0]), np.log(a.scale[1]))))
        src = size / zoom
        x0 = rng.uniform(0, max(cols - src, 0)) if cols > src else -(src - cols) * rng.uniform()
        y0 = rng.uniform(0, max(rows - src, 0)) if rows > src else -(src - rows) * rng.uniform()
        if self.small and a.small_focus and rng.random() < a.small_focus:
            i, j = self.small[int(rng.integers(len(self.small)))]
            img, bx = self.images[i], self.boxes[i]
            cx, cy = (bx[j, 1] + bx[j, 3]) / 2, (bx[j, 2] + bx[j, 4]) / 2
            # the box anywhere in the middle half of the crop, at zoom >= 1 so it stays visible
            zoom = max(zoom, 1.0)
            src = size / zoom
            x0 = cx - src * rng.uniform(0.25, 0.75)
            y0 = cy - src * rng.uniform(0.25, 0.75)
        elif self.large and a.large_focus and rng.random() < a.large_focus:
            i, j = self.large[int(rng.integers(len(self.large)))]
            img, bx = self.images[i], self.boxes[i]
            bx0, by0, bx1, by1 = bx[j, 1:5]
            # zoomed out until the box fills at most 90 % of the crop, anywhere inside it
            zoom = min(zoom, 0.9 * size / max(bx1 - bx0, by1 - by0))
            src = size / zoom
            x0 = rng.uniform(bx1 - src, bx0)
            y0 = rng.uniform(by1 - src, by0)
        m = np.array([[zoom, 0, -x0 * zoom], [0, zoom, -y0 * zoom]], np.float32)
        interp = cv2.INTER_AREA if zoom < 1 else cv2.INTER_LINEAR
        crop = cv2.warpAffine(
            img,
            m,
            (size, size),
            flags=interp,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=(self.fill[i],) * 3,
        )
        b = bx.astype(np.float64).copy()
        if len(b):
            b[:, [1, 3]] = np.clip((b[:, [1, 3]] - x0) * zoom, 0, size)
            b[:, [2, 4]] = np.clip((b[:, [2, 4]] - y0) * zoom, 0, size)
            w, h = b[:, 3] - b[:, 1], b[:, 4] - b[:, 2]
            keep = (w >= a.min_box_px) & (h >= a.min_box_px)
            keep |= (b[:, 0] < 0) & (w > 0) & (h > 0)  # any part of a left-out region counts
            b = b[keep]
        k = int(rng.integers(4))
        crop = np.rot90(crop, k)
        for _ in range(k):  # rot90 turns counter-clockwise: (x, y) -> (y, size - x)
            b = b[:, [0, 2, 1, 4, 3]].copy() if len(b) else b
            if len(b):
                b[:, [2, 4]] = size - b[:, [4, 2]]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
            if len(b):
                b[:, [1, 3]] = size - b[:, [3, 1]]
        x = np.ascontiguousarray(crop, np.float32) / 255.0
        if rng.random() < a.blur_p:
            x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.5, 1.5))
        x = x ** rng.uniform(*a.gamma)
        x = (x - 0.5) * rng.uniform(*a.contrast) + 0.5 + rng.uniform(-a.brightness, a.brightness)
        x = x + rng.normal(0, rng.uniform(0, a.noise), x.shape)
        x = np.clip(x, 0, 1).astype(np.float32)
        out = np.zeros((len(b), 5), np.float32)
        if len(b):
            out[:, 0] = b[:, 0]
            out[:, 1] = (b[:, 1] + b[:, 3]) / 2
            out[:, 2] = (b[:, 2] + b[:, 4]) / 2
            out[:, 3] = b[:, 3] - b[:, 1]
            out[:, 4] = b[:, 4] - b[:, 2]
        return x, out, i

    def batch(self, n: int, seed: tuple[int, ...]):
        """``n`` crops as tensors, from ``seed``.

        Returns
        -------
        images : tensor (n, channels, s, s)
        targets : tensor (M, 7)
            image index, class, cx, cy, w, h, weight (``pseudo.weight`` for a
            pseudo-box, else 1); (M, 6), without weights, when all images are
            the user's.
        negatives : tensor (n,)
            1 where the crop's background is taught as background, 0 for a
            crop of a pseudo-labelled image (without ``pseudo.background``).
        unknown : tensor (K, 5)
            image index, cx, cy, w, h of the regions left out of the loss.
        """
        rng = np.random.default_rng(seed)
        xs, ts, negatives = [], [], []
        for k in range(n):
            x, t, i = self.draw(rng)
            pseudo = i >= self.pseudo.first
            weight = self.pseudo.weight if pseudo else 1.0
            xs.append(x)
            ts.append(
                np.concatenate(
                    [np.full((len(t), 1), k, np.float32), t, np.full((len(t), 1), weight)], 1
                )
            )
            negatives.append(0.0 if pseudo and not self.pseudo.background else 1.0)
        x = np.stack(xs)
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if x.ndim == 4 else x[:, None]
        rows = np.concatenate(ts).reshape(-1, 7).astype(np.float32)
        left_out = rows[:, 1] < 0
        targets, unknown = rows[~left_out], rows[left_out][:, [0, 2, 3, 4, 5]]
        if self.pseudo.first >= len(self.images):  # all boxes the user's: no weights
            targets = targets[:, :6]
        return (
            torch.from_numpy(x),
            torch.from_numpy(np.ascontiguousarray(targets)),
            torch.tensor(negatives, dtype=torch.float32),
            torch.from_numpy(np.ascontiguousarray(unknown)),
        )


def _draw_chances(images, pseudo: PseudoShare) -> np.ndarray:
    """Each image's chance to be cropped: by area within the user's and the pseudo images."""
    area = np.array([im.size for im in images], np.float64)
    user, extra = area[: pseudo.first], area[pseudo.first :]
    if not len(extra) or pseudo.share <= 0:
        user_part = np.concatenate([user, np.zeros_like(extra)])
        return user_part / user_part.sum()
    return np.concatenate(
        [(1 - pseudo.share) * user / user.sum(), pseudo.share * extra / extra.sum()]
    )


def boxes_array(boxes: list[Box]) -> np.ndarray:
    """Boxes as the ``(n, 5)`` array :class:`CropSampler` takes.

    Parameters
    ----------
    boxes : list of Box

    Returns
    -------
    (n, 5) float64 array
        class, x0, y0, x1, y1 in image pixels.
    """
    return np.array([(b.cls, b.x, b.y, b.x + b.w, b.y + b.h) for b in boxes], np.float64).reshape(
        -1, 5
    )
