"""Pixel extraction: every box of a slice to its organelle's pixels (the per-slice stage).

:data:`RECIPES` maps the name a class config uses in ``extract.method`` to its
recipe (:mod:`.recipes`: the paper's Algorithms 1-3 and the refined recipe;
:mod:`.learned`: a pixel classifier trained on the annotated boxes).
:func:`segment_slice` applies them to all boxes of a slice and then gives
pixels claimed by two overlapping boxes to one of them; it is a pure function
of (slice, boxes, classes, pixel size), and its :class:`SliceResult` is what
the run folder's cache holds. :mod:`.calibrate` picks a recipe per class from
annotated boxes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
from skimage.segmentation import watershed

from .boxes import Box, boxes_from_array, boxes_to_array
from .classes import ClassConfig, ExtractRecipe
from .learned import learned_recipe
from .link import label_areas
from .recipes import box_context, ellipse_recipe, otsu_recipe, paper_recipe, refined_recipe

RecipeFn = Callable[..., np.ndarray]
RECIPES: dict[str, RecipeFn] = {
    "paper": paper_recipe,
    "otsu": otsu_recipe,
    "ellipse": ellipse_recipe,
    "refined": refined_recipe,
    "learned": learned_recipe,
}


def extract_box(
    image: np.ndarray, box: Box, recipe: ExtractRecipe, pixel_nm: float
) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """The organelle's pixels inside one box.

    Parameters
    ----------
    image : 2-D array
        The slice (uint8 from :class:`~famous_addon.core.stack.Stack`; other
        dtypes are accepted).
    box : Box
        The detection, in slice pixels; it may reach past the slice.
    recipe : ExtractRecipe
        The class's recipe.
    pixel_nm : float
        In-plane pixel size, to turn the recipe's kernel sizes into pixels.

    Returns
    -------
    bounds : (x0, y0, x1, y1)
        The box clipped to the image (end exclusive).
    mask : 2-D bool array
        The organelle's pixels in box coordinates (shape ``(y1 - y0, x1 - x0)``).
    """
    x0, y0, x1, y1 = box.pixel_bounds(image.shape)
    roi = image[y0:y1, x0:x1]
    if roi.size == 0:
        return (x0, y0, x1, y1), np.zeros(roi.shape, bool)
    context = box_context(image, box, recipe.context_fraction)
    return (x0, y0, x1, y1), RECIPES[recipe.method](roi, recipe, pixel_nm, context)


@dataclass
class SliceResult:
    """All extracted masks of one slice, stored flat so it caches compactly.

    ``bounds[i]`` is ``(x0, y0, x1, y1)`` of detection ``i``; its mask is
    ``masks[offsets[i]:offsets[i + 1]]`` reshaped to ``(y1 - y0, x1 - x0)``.
    """

    boxes: np.ndarray  # (n, 6): cls, x, y, w, h, score
    bounds: np.ndarray  # (n, 4) int32
    offsets: np.ndarray  # (n + 1,) int64
    masks: np.ndarray  # packed bool
    _areas: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.boxes)

    def mask(self, i: int) -> np.ndarray:
        x0, y0, x1, y1 = self.bounds[i]
        flat = self.masks[self.offsets[i] : self.offsets[i + 1]]
        return flat.reshape(y1 - y0, x1 - x0)

    def areas(self) -> np.ndarray:
        """Mask pixel counts per detection (computed once: the masks do not change)."""
        if self._areas is None:
            # a count per mask, not np.add.reduceat (it fails on an empty last mask) nor a
            # cumulative sum of all masks (an int64 copy of them, on every call)
            o, flat = self.offsets, self.masks
            self._areas = np.array(
                [np.count_nonzero(flat[o[i] : o[i + 1]]) for i in range(len(o) - 1)], np.int64
            )
        return self._areas

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "boxes": self.boxes,
            "bounds": self.bounds,
            "offsets": self.offsets,
            "masks": np.packbits(self.masks),
            "n_mask": np.array(self.masks.size),
        }

    @classmethod
    def of(cls, boxes: list[Box], bounds: list, masks: list[np.ndarray]) -> SliceResult:
        """A slice's boxes with their clipped bounds and masks (box coordinates)."""
        flats = [m.ravel() for m in masks]
        offsets = np.zeros(len(flats) + 1, np.int64)
        offsets[1:] = np.cumsum([f.size for f in flats])
        return cls(
            boxes=boxes_to_array(boxes),
            bounds=np.array(bounds, np.int32).reshape(-1, 4),
            offsets=offsets,
            masks=np.concatenate(flats) if flats else np.zeros(0, bool),
        )

    @classmethod
    def from_arrays(cls, a) -> SliceResult:
        masks = np.unpackbits(a["masks"], count=int(a["n_mask"])).astype(bool)
        return cls(a["boxes"], a["bounds"], a["offsets"], masks)

    def paint(self, shape: tuple[int, int], det_labels: np.ndarray) -> np.ndarray:
        """Label image of the slice: ``det_labels[i] + 1`` on detection i's mask.

        Larger masks are painted first so that a small organelle inside a large
        box (a vesicle on the nucleus) stays visible; ``det_labels[i] < 0``
        leaves detection i out.
        """
        img = np.zeros(shape, np.int32)
        for i in np.argsort(-self.areas(), kind="stable"):
            if det_labels[i] < 0:
                continue
            x0, y0, x1, y1 = self.bounds[i]
            view = img[y0:y1, x0:x1]
            view[self.mask(i)] = det_labels[i] + 1
        return img

    def paint_areas(
        self, shape: tuple[int, int], det_labels: np.ndarray, minlength: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`paint`, and the pixels of each painted value as
        :func:`~.link.label_areas` counts them (the same array).

        Extraction gives each pixel to one box, so on most slices no pixel is
        painted twice and the masks' own areas add up to the counts: a count of
        the painted pixels checks that, a fifth of the time of counting them per
        label (linking paints each slice several times).
        """
        img = self.paint(shape, det_labels)
        kept = det_labels >= 0
        areas = self.areas()[kept]
        if np.count_nonzero(img) != areas.sum():
            return img, label_areas(img, minlength)
        counts = np.bincount(det_labels[kept] + 1, areas, minlength).astype(np.int64)
        # as long as label_areas's: up to the highest value painted, at least minlength
        on = np.flatnonzero(counts)
        return img, counts[: max(minlength, on[-1] + 1 if len(on) else 0)]


def _depth(box: Box, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """How deep each pixel of the window lies inside ``box``: 1 at its centre, 0 at its edge."""
    xs = np.arange(x0, x1) + 0.5
    ys = np.arange(y0, y1) + 0.5
    dx = np.minimum(xs - box.x, box.x + box.w - xs) / max(box.w / 2.0, 0.5)
    dy = np.minimum(ys - box.y, box.y + box.h - ys) / max(box.h / 2.0, 0.5)
    return np.minimum(dy[:, None], dx[None, :])


def _deeper_in(bi: Box, bj: Box, win) -> np.ndarray:
    """Where in the window ``win`` a pixel lies deeper in box ``bi`` than in ``bj``
    (relative to their sizes), the higher score on a tie."""
    di, dj = _depth(bi, *win), _depth(bj, *win)
    return (di > dj) | ((di == dj) & (bi.score >= bj.score))


def _pairs(g: np.ndarray) -> list[tuple[int, int, tuple[int, int, int, int]]]:
    """Pairs of boxes whose bounds intersect, with the intersection."""
    ix0 = np.maximum(g[:, None, 0], g[None, :, 0])
    iy0 = np.maximum(g[:, None, 1], g[None, :, 1])
    ix1 = np.minimum(g[:, None, 2], g[None, :, 2])
    iy1 = np.minimum(g[:, None, 3], g[None, :, 3])
    hit = np.triu((ix1 > ix0) & (iy1 > iy0), 1)
    return [
        (int(i), int(j), (int(ix0[i, j]), int(iy0[i, j]), int(ix1[i, j]), int(iy1[i, j])))
        for i, j in zip(*np.nonzero(hit))
    ]


def _window(mask: np.ndarray, bnd, win) -> np.ndarray:
    """A mask (in box ``bnd`` coordinates) on the window ``win``, False outside its box."""
    x0, y0, x1, y1 = win
    out = np.zeros((y1 - y0, x1 - x0), bool)
    ax0, ay0 = max(x0, bnd[0]), max(y0, bnd[1])
    ax1, ay1 = min(x1, bnd[2]), min(y1, bnd[3])
    if ax1 > ax0 and ay1 > ay0:
        out[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0] = mask[
            ay0 - bnd[1] : ay1 - bnd[1], ax0 - bnd[0] : ax1 - bnd[0]
        ]
    return out


def _unwindow(mask: np.ndarray, bnd, win, values: np.ndarray) -> None:
    """Write a window's values back into a box mask (the inverse of :func:`_window`)."""
    x0, y0, x1, y1 = win
    ax0, ay0 = max(x0, bnd[0]), max(y0, bnd[1])
    ax1, ay1 = min(x1, bnd[2]), min(y1, bnd[3])
    if ax1 > ax0 and ay1 > ay0:
        mask[ay0 - bnd[1] : ay1 - bnd[1], ax0 - bnd[0] : ax1 - bnd[0]] = values[
            ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0
        ]


def resolve_overlaps(
    boxes: list[Box],
    bounds: list,
    masks: list[np.ndarray],
    image: np.ndarray | None = None,
    classes: ClassConfig | None = None,
) -> None:
    """Give every pixel to at most one organelle, in place.

    Where two boxes overlap, a pixel both masks claim goes to the box it lies
    deeper in (relative to the box size), the higher score on a tie. For two
    boxes of the same class, a pixel only box A's mask claims but which lies
    deeper in box B, whose own recipe rejected it, is removed from A too: it
    is the gap between two neighbours that A leaked into.

    With the slice (``image``, and ``classes`` for each class's polarity), two
    same-class boxes that overlap each other and no other box of their class
    are neighbours boxed side by side: their masks are divided along the
    image (:func:`_divide`). The depth rule cuts them along a line set by
    the boxes alone; where a detector's box reached over the neighbour, its
    mask took a wedge of the neighbour, and that wedge joined the two
    mitochondria in 3-D (lucchi, docs/results.md, session 32). Where a box
    overlaps two or more others (:func:`_side_by_side`), each pair would be
    divided seeing only its own two boxes, and a seed outside one box may lie
    in a third; dividing every pair along the image lost objects on both
    development sets, so the depth rule divides those.

    Giving pixels away can cut a mask in pieces; a piece under
    :data:`SLIVER_FRACTION` of the mask's largest is dropped (on real SBEM such
    slivers, a few pixels each, were up to a third of a detector's false
    objects in 3-D).
    """
    if len(boxes) < 2:
        return
    b = np.asarray(bounds, np.int64).reshape(-1, 4)
    pairs = _pairs(b)
    beside = _side_by_side(boxes, b, pairs) if image is not None else set()
    cut = set()
    for i, j, win in pairs:
        bi, bj = boxes[i], boxes[j]
        mi, mj = _window(masks[i], b[i], win), _window(masks[j], b[j], win)
        # A box whose recipe found nothing gives no evidence against its neighbour.
        if not (mi.any() or mj.any()) or not (masks[i].any() and masks[j].any()):
            continue
        if (i, j) in beside and mi.any() and mj.any():
            if _divide(image, classes[bi.cls].extract.polarity, boxes, b, masks, i, j):
                cut.update((i, j))
                continue
        i_wins = _deeper_in(bi, bj, win)
        if bi.cls == bj.cls:
            mi &= i_wins
            mj &= ~i_wins
        else:
            both = mi & mj
            mi &= ~(both & ~i_wins)
            mj &= ~(both & i_wins)
        _unwindow(masks[i], b[i], win, mi)
        _unwindow(masks[j], b[j], win, mj)
        cut.update((i, j))
    for i in cut:
        masks[i] &= ~_slivers(masks[i])


# Two boxes overlap in earnest where they share this fraction of the smaller box.
SHARED_FRACTION = 0.1


def _side_by_side(boxes: list[Box], b: np.ndarray, pairs) -> set[tuple[int, int]]:
    """The same-class pairs whose boxes overlap each other in earnest and no other box
    of their class (see :data:`SHARED_FRACTION`)."""
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    found = [
        (i, j)
        for i, j, (x0, y0, x1, y1) in pairs
        if boxes[i].cls == boxes[j].cls
        and (x1 - x0) * (y1 - y0) >= SHARED_FRACTION * min(area[i], area[j])
    ]
    count = np.bincount(np.array(found, np.int64).ravel(), minlength=len(boxes))
    return {(i, j) for i, j in found if count[i] == 1 and count[j] == 1}


def _divide(image, polarity, boxes, b, masks, i, j) -> bool:
    """Divide the masks of boxes ``i`` and ``j`` along the image, in place.

    Each mask's largest piece outside the other's box seeds a watershed of
    the smoothed slice over the two masks, so that the line between them
    follows the membrane or gap between two neighbours. A pixel stays in the
    mask whose seed floods it, and only where that mask claimed it; pieces
    no seed reaches go by the depth rule. Returns False, changing nothing,
    where a mask has no pixel outside the other's box.
    """
    win = (
        min(b[i][0], b[j][0]),
        min(b[i][1], b[j][1]),
        max(b[i][2], b[j][2]),
        max(b[i][3], b[j][3]),
    )
    x0, y0, x1, y1 = (int(v) for v in win)
    mi, mj = _window(masks[i], b[i], win), _window(masks[j], b[j], win)
    markers = np.zeros(mi.shape, np.int32)
    for n, (mask, other) in enumerate(((mi, b[j]), (mj, b[i])), 1):
        outside = mask.copy()
        outside[other[1] - y0 : other[3] - y0, other[0] - x0 : other[2] - x0] = False
        seed = _largest(outside)
        if seed is None:
            return False
        markers[seed] = n
    grey = basins(image, (x0, y0, x1, y1), polarity)
    either = mi | mj
    flooded = watershed(grey, markers, mask=either)
    left = either & (flooded == 0)
    if left.any():
        flooded[left] = np.where(_deeper_in(boxes[i], boxes[j], win)[left], 1, 2)
    _unwindow(masks[i], b[i], win, mi & (flooded == 1))
    _unwindow(masks[j], b[j], win, mj & (flooded == 2))
    return True


def basins(image: np.ndarray, window, polarity: str) -> np.ndarray:
    """The slice's grey values in ``window`` (x0, y0, x1, y1), smoothed by a pixel, for
    a watershed whose basins are the organelles: dark ones, or light ones turned dark."""
    x0, y0, x1, y1 = window
    grey = cv2.GaussianBlur(image[y0:y1, x0:x1].astype(np.float32), (0, 0), 1.0)
    return grey if polarity == "dark" else -grey


def _largest(mask: np.ndarray) -> np.ndarray | None:
    """The largest 8-connected piece of ``mask``, or None where it is empty."""
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n < 2:
        return None
    return lab == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


# A piece of a mask smaller than this fraction of its largest piece is a sliver.
SLIVER_FRACTION = 0.1


def _slivers(mask: np.ndarray) -> np.ndarray:
    """The 8-connected pieces of a mask under :data:`SLIVER_FRACTION` of its largest."""
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 2:
        return np.zeros(mask.shape, bool)
    area = stats[:, cv2.CC_STAT_AREA]
    small = area < SLIVER_FRACTION * area[1:].max()
    small[0] = False  # the background
    return small[lab]


# A box straddles two neighbours where this share of its mask lies in theirs, each
# holding at least STRADDLE_PART of it, and one of them lies at most STRADDLE_OWN
# inside its mask; the two may share at most STRADDLE_APART of the smaller one.
STRADDLE_MADE_OF = 0.6
STRADDLE_PART = 0.15
STRADDLE_OWN = 0.6
STRADDLE_APART = 0.2


def straddling(boxes: list[Box], bounds: list, masks: list[np.ndarray]) -> set[int]:
    """The boxes a detector put over the facing parts of two neighbours, each boxed too.

    Beside the boxes of two organelles lying side by side, a detector
    sometimes returns a third over the near half of one and the near half of
    the other. Its mask is made of their pixels (and the membranes between
    them), and it joins the two in 3-D: on lucchi, two mitochondria 5-8 px
    apart through 41 slices were one organelle, with such boxes on 15 of
    those slices (t30 and t43, docs/results.md, session 41). A box is dropped where
    :data:`STRADDLE_MADE_OF` of its mask lies in the masks of two other boxes
    of its class (each holding :data:`STRADDLE_PART` of it) that are two
    organelles (sharing at most :data:`STRADDLE_APART` of the smaller), one
    of which lies mostly outside its mask (at most :data:`STRADDLE_OWN`
    inside). A box around a whole organelle that the detector also boxed in
    two pieces holds both pieces, so it stays; so does a box around two
    neighbours, which :mod:`.separate` cuts in 3-D. Masks are the recipes'
    own, before :func:`resolve_overlaps`.
    """
    b = np.asarray(bounds, np.int64).reshape(-1, 4)
    area = np.array([int(np.count_nonzero(m)) for m in masks])
    shared: dict[int, dict[int, int]] = {}  # i -> {j: pixels of i's mask in j's}
    for i, j, win in _pairs(b):
        if boxes[i].cls != boxes[j].cls or not (area[i] and area[j]):
            continue
        n = int(np.count_nonzero(_window(masks[i], b[i], win) & _window(masks[j], b[j], win)))
        if n:
            shared.setdefault(i, {})[j] = n
            shared.setdefault(j, {})[i] = n
    drop: set[int] = set()
    for i, parts in shared.items():
        held = [j for j, n in parts.items() if n >= STRADDLE_PART * area[i] and j not in drop]
        if len(held) < 2:
            continue
        j1, j2 = sorted(held, key=lambda j: -parts[j])[:2]
        if min(parts[j1] / area[j1], parts[j2] / area[j2]) > STRADDLE_OWN:
            continue
        made_of = _window(masks[j1], b[j1], b[i]) | _window(masks[j2], b[j2], b[i])
        if np.count_nonzero(masks[i] & made_of) < STRADDLE_MADE_OF * area[i]:
            continue
        between = shared.get(j1, {}).get(j2, 0)
        if between <= STRADDLE_APART * min(area[j1], area[j2]):
            drop.add(i)
    return drop


def add_boxes(
    result: SliceResult,
    image: np.ndarray,
    boxes: list[Box],
    classes: ClassConfig,
    pixel_nm: float,
) -> SliceResult:
    """A slice's result with ``boxes`` extracted and added, as :func:`segment_slice` would.

    Only the new boxes are extracted; the slice's masks are reconciled with
    them (:func:`resolve_overlaps`). The masks of ``result`` are already
    reconciled with each other, and reconciling them again changes nothing,
    so this gives what extracting the whole slice again gives (but for a
    sliver dropped before, which stays dropped) for the new boxes' cost: gap
    filling extracted some 250 boxes of a 2048 px slice to add one.
    """
    old = boxes_from_array(result.boxes)
    bounds = [tuple(int(v) for v in result.bounds[i]) for i in range(len(result))]
    masks = [result.mask(i).copy() for i in range(len(result))]
    for b in boxes:
        bnd, m = extract_box(image, b, classes[b.cls].extract, pixel_nm)
        bounds.append(bnd)
        masks.append(m)
    every = old + list(boxes)
    resolve_overlaps(every, bounds, masks, image, classes)
    return SliceResult.of(every, bounds, masks)


def segment_slice(
    image: np.ndarray,
    boxes: list[Box],
    classes: ClassConfig,
    pixel_nm: float,
    resolve: bool = True,
    detected: bool = False,
) -> SliceResult:
    """Extract every box of a slice with its class's recipe (the per-slice stage).

    Boxes with an empty mask are kept (with an empty mask) so that detections
    and masks stay aligned. With ``detected`` (a detector's boxes, not the
    user's), a box over the facing parts of two neighbours is left out of the
    result, box and mask (:func:`straddling`). With ``resolve`` (default)
    overlapping boxes are reconciled afterwards (:func:`resolve_overlaps`) so
    that no pixel belongs to two organelles.
    """
    bounds, masks = [], []
    for b in boxes:
        bnd, m = extract_box(image, b, classes[b.cls].extract, pixel_nm)
        bounds.append(bnd)
        masks.append(m)
    if detected and len(boxes) > 2:
        drop = straddling(boxes, bounds, masks)
        if drop:
            keep = [i for i in range(len(boxes)) if i not in drop]
            boxes = [boxes[i] for i in keep]
            bounds = [bounds[i] for i in keep]
            masks = [masks[i] for i in keep]
    if resolve:
        resolve_overlaps(boxes, bounds, masks, image, classes)
    return SliceResult.of(boxes, bounds, masks)
