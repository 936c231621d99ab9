"""Two organelles in one box: a mask that spans two organelles of the slice beside is cut in two.

A detector sometimes boxes two organelles lying side by side as one (on real
FIB-SEM, touching mitochondria on most of the slices they share), and the
box's mask then holds both. Algorithm 4 and the bridge merge join whatever
such a mask overlaps, so the two come out as one organelle. Here, sweeping
up, then down the stack, a mask that covers most of two organelles of the
slice beside is split between them: a watershed on the slice's grey values,
seeded by their pixels, finds where the two meet. The cut is kept only where
the image separates them there: grey values along the cut at least
``separation`` of the way from the organelle's grey to the background's
around it. A dumbbell's bridge is organelle all through, so it stays one
organelle; two organelles a pixel apart show the lighter (or darker) line
between them. The parts take the two organelles' labels and the sweep goes on
from them, so a run of slices boxed together is cut slice after slice.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

from .boxes import Box, boxes_from_array
from .classes import ClassConfig
from .extract import SliceResult, basins
from .progress import ProgressFn
from .recipes import disk
from .slicecache import load_slice, with_slices
from .stack import Stack

# each organelle beside must lie this much inside the mask, and hold this many pixels there
COVERED = 0.5
MIN_PIXELS = 20


def split_spanning(
    out: Path,
    stack: Stack,
    classes: ClassConfig,
    det: dict,
    det_labels: np.ndarray,
    separation: float,
    min_span: int,
    progress: ProgressFn,
):
    """Cut the masks that span two organelles of the slice beside (see the module).

    Only organelles on ``min_span`` slices or more seed a cut: a detector's
    flicker inside a large organelle must not cut it. Returns the detections
    and their organelle labels with each cut mask replaced by its two parts
    (boxes around them, the original score); changed slices are written
    beside the cache (:func:`~.slicecache.with_slices`).
    """
    n, shape = stack.shape[0], stack.shape[1:]
    rows = [slice(det["start"][k], det["start"][k + 1]) for k in range(n)]
    cls_of = np.zeros(int(det_labels.max()) + 2, np.int64)
    cls_of[det_labels[det_labels >= 0] + 1] = det["cls"][det_labels >= 0]
    # seeds: organelles of the right class and long enough (painted values: label + 1)
    pairs = np.unique(np.column_stack([det_labels + 1, det["slice"]]), axis=0)
    spans = np.bincount(pairs[:, 0], minlength=len(cls_of))
    seeds = np.stack([spans >= min_span, cls_of])
    m = seeds.shape[1]
    changed: dict[int, tuple[SliceResult, np.ndarray]] = {}

    def state(k):
        return changed.get(k) or (load_slice(out, k), det_labels[rows[k]])

    for order in (range(1, n), range(n - 2, -1, -1)):
        # the slice beside, painted once: each slice is read and painted once a sweep
        beside = state(order.start - order.step) if n > 1 else None
        painted_beside = beside[0].paint_areas(shape, beside[1], m) if beside else None
        for k in order:
            result, labels = state(k)
            if len(labels):
                cut = _cut_slice(
                    stack, k, result, labels, painted_beside, seeds, classes, separation
                )
                if cut is not None:
                    changed[k] = cut
                    result, labels = cut
            painted_beside = result.paint_areas(shape, labels, m)
            done = k if order.step == 1 else 2 * n - 2 - k
            progress(done / max(2 * n - 2, 1), "separating organelles boxed together")
    return with_slices(out, det, det_labels, changed)


def _cut_slice(stack, k, result, labels, beside, seeds, classes, separation):
    """Slice ``k`` with its spanning masks cut, or None where none is.

    ``beside``: the slice beside, painted, and its areas (:meth:`SliceResult.paint_areas`).
    """
    painted, area = beside
    if np.count_nonzero(area[1:]) < 2:
        return None  # a cut needs two organelles beside
    image = None
    boxes, new_bounds, masks, new_labels = [], [], [], []
    for i, box in enumerate(boxes_from_array(result.boxes)):
        mask = result.mask(i)
        x0, y0, x1, y1 = (int(v) for v in result.bounds[i])
        pair = _two_beside(painted[y0:y1, x0:x1], mask, area, seeds, box.cls)
        parts = None
        if pair is not None:
            image = stack.read(k) if image is None else image
            recipe = classes[box.cls].extract
            parts = _split(image, (x0, y0, x1, y1), mask, painted, pair, recipe, separation)
        if parts is None:
            boxes.append(box)
            new_bounds.append((x0, y0, x1, y1))
            masks.append(mask)
            new_labels.append(labels[i])
            continue
        for part, label in zip(parts, pair):
            ys, xs = np.nonzero(part)
            b = (x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1)
            boxes.append(Box(box.cls, b[0], b[1], b[2] - b[0], b[3] - b[1], box.score))
            new_bounds.append(b)
            masks.append(part[b[1] - y0 : b[3] - y0, b[0] - x0 : b[2] - x0])
            new_labels.append(label - 1)
    if len(boxes) == len(result):
        return None
    return SliceResult.of(boxes, new_bounds, masks), np.array(new_labels, np.int64)


def _two_beside(beside, mask, area, seeds, cls) -> tuple[int, int] | None:
    """The two largest organelles of the slice beside (painted labels) that lie mostly
    inside ``mask``, are of class ``cls`` and may seed a cut (``seeds``: long enough,
    class), or None."""
    if mask.sum() < 2 * MIN_PIXELS:
        return None
    inside = np.bincount(beside[mask], minlength=len(area))
    inside[0] = 0
    ok = (inside >= MIN_PIXELS) & (inside >= COVERED * area) & seeds[0].astype(bool)
    ok &= seeds[1] == cls
    found = np.flatnonzero(ok)
    if len(found) < 2:
        return None
    a, b = found[np.argsort(-inside[found], kind="stable")[:2]]
    return int(a), int(b)


def _split(image, bounds, mask, painted, pair, recipe, separation):
    """The two parts of ``mask`` grown from the organelles ``pair`` beside, or None where
    the image does not separate them along the cut (see :func:`cut_parts`)."""
    found = cut_parts(image, bounds, mask, painted, pair, recipe.polarity)
    if found is None or found[2] < separation:
        return None
    return found[:2]


def cut_parts(image, bounds, mask, painted, pair, polarity: str = "dark"):
    """A mask cut between two organelles of the slice beside, and how clearly the image cuts it.

    Parameters
    ----------
    image : 2-D array
        The slice.
    bounds : (x0, y0, x1, y1)
        Where ``mask`` lies on the slice.
    mask : 2-D bool array
        The mask to cut.
    painted : 2-D int array
        The slice beside, painted with organelle labels + 1.
    pair : (int, int)
        The two painted values that seed the parts.
    polarity : {"dark", "light"}
        The organelles' polarity.

    Returns
    -------
    (part_one, part_two, separation) or None
        The parts (shaped as ``mask``) and where the grey values along the cut
        lie between the organelle's (0) and the background's around it (1);
        None where a part would be too small or there is no background to
        compare with.
    """
    x0, y0, x1, y1 = bounds
    pad = 3
    rows, cols = image.shape
    X0, Y0, X1, Y1 = max(x0 - pad, 0), max(y0 - pad, 0), min(x1 + pad, cols), min(y1 + pad, rows)
    grey = basins(image, (X0, Y0, X1, Y1), polarity)
    big = np.zeros(grey.shape, bool)
    big[y0 - Y0 : y1 - Y0, x0 - X0 : x1 - X0] = mask
    seeds = np.zeros(grey.shape, np.int32)
    window = painted[Y0:Y1, X0:X1]
    for n, label in enumerate(pair, 1):
        seeds[big & (window == label)] = n
    parts = watershed(grey, seeds, mask=big)
    if (big & (parts == 0)).any():
        # pieces of the mask no seed reaches go to the nearer part, so no pixel is lost
        _, (iy, ix) = ndimage.distance_transform_edt(parts == 0, return_indices=True)
        parts = np.where(big & (parts == 0), parts[iy, ix], parts)
    one, two = parts == 1, parts == 2
    if one.sum() < MIN_PIXELS or two.sum() < MIN_PIXELS:
        return None
    # the cut: pixels of either part beside the other
    near_two = cv2.dilate(two.astype(np.uint8), disk(1)).astype(bool)
    near_one = cv2.dilate(one.astype(np.uint8), disk(1)).astype(bool)
    cut = (one & near_two) | (two & near_one)
    crop = (slice(y0 - Y0, y1 - Y0), slice(x0 - X0, x1 - X0))
    if not cut.any():
        return one[crop], two[crop], 1.0  # the parts do not touch: the mask was two pieces
    ring = cv2.dilate(big.astype(np.uint8), disk(pad)).astype(bool) & ~big
    if not ring.any() or not (big & ~cut).any():
        return None
    inside, outside = float(np.median(grey[big & ~cut])), float(np.median(grey[ring]))
    if outside <= inside:
        return None
    # across the cut its lightest grey (darkest, for light organelles): the line between
    peak = cv2.dilate(grey, np.ones((3, 3), np.uint8))
    return one[crop], two[crop], (float(np.median(peak[cut])) - inside) / (outside - inside)
