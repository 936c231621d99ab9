"""Boxes where the detector missed an organelle: gaps filled, and following past its ends.

Both extract the slices they change again (:mod:`.extract`) and write them
beside the cache (:func:`~.slicecache.with_slices`); both return the
detections and their organelle labels with the new boxes (score 0) added.
"""

from __future__ import annotations

import numpy as np

from .boxes import Box, boxes_from_array
from .extract import SliceResult, add_boxes, extract_box
from .link import merge_labels, overlap_pairs
from .recipes import mask_iou
from .refine import bridges_to_join
from .slicecache import iter_slices, load_slice, with_slices


def fill_gaps(out, stack, classes, pixel_nm, det, det_labels, max_gap):
    """Boxes, with their masks, on the slices (``max_gap`` at most in a row) an organelle skips.

    Each filled box is interpolated linearly in z between the organelle's
    boxes (their union) on the slices either side, with score 0, and
    extracted with the slice's other boxes so that no pixel goes to two
    organelles. Affected slices are written beside the cache
    (``filled_NNNNN.npz``), which stays as the detector left it. Returns the
    detections and their organelle labels with the filled boxes added.
    """
    added: dict[int, list[tuple[int, Box]]] = {}
    xyxy = np.column_stack([det["xywh"][:, :2], det["xywh"][:, :2] + det["xywh"][:, 2:]])
    kept = np.flatnonzero(det_labels >= 0)
    if not len(kept):
        return det, det_labels
    by_organelle = kept[np.argsort(det_labels[kept], kind="stable")]
    ends = np.flatnonzero(np.diff(det_labels[by_organelle])) + 1
    for idx in np.split(by_organelle, ends):
        o = det_labels[idx[0]]
        zs, boxes = det["slice"][idx], xyxy[idx]
        cls = int(det["cls"][idx[0]])
        for a, b in zip(np.unique(zs)[:-1], np.unique(zs)[1:]):
            if not 1 < b - a <= max_gap + 1:
                continue
            lo, hi = _union(boxes[zs == a]), _union(boxes[zs == b])
            for k in range(a + 1, b):
                x0, y0, x1, y1 = lo + (hi - lo) * (k - a) / (b - a)
                added.setdefault(int(k), []).append(
                    (int(o), Box(cls, x0, y0, x1 - x0, y1 - y0, 0.0))
                )
    # only the filled slices are read, and only their new boxes extracted
    changed = {}
    for k, items in added.items():
        result = add_boxes(
            load_slice(out, k), stack.read(k), [b for _, b in items], classes, pixel_nm
        )
        rows = slice(det["start"][k], det["start"][k + 1])
        changed[k] = (result, np.concatenate([det_labels[rows], [o for o, _ in items]]))
    return with_slices(out, det, det_labels, changed)


# A followed organelle's box: its mask's box on the slice beside, grown by this
# fraction of its longer side so that an organelle that widens is not cut off.
FOLLOW_GROW = 0.25
# ... and a mask outside this range of areas relative to the one beside ends it:
# a cap shrinks, and a box grown step by step must not take in a neighbour.
FOLLOW_AREA = (0.5, 1.5)
# ... and its IoU with the mask beside must reach this quantile of the IoUs of
# the class's masks on consecutive slices where the detector found them
# (with at least CONTINUITY_PAIRS of those; otherwise follow_iou alone), but
# no more than CONTINUITY_CAP: a followed mask comes from a grown box and
# differs from the detector's by its rim even where the organelle goes on unchanged
CONTINUITY_QUANTILE = 0.1
CONTINUITY_PAIRS = 10
CONTINUITY_CAP = 0.8


def follow(out, stack, classes, pixel_nm, det, det_labels, settings, progress):
    """Follow each organelle into the slices where the detector missed it.

    A detector misses an organelle on some slices (a thin mitochondrion
    turning diagonal, its cap at the stack's end), which cuts it short or in
    two and keeps its 3-D IoU under 0.5 (on CDeep3M's validation stack most
    missed mitochondria were found on half their slices). Sweeping up, then
    down the stack, an organelle on slice k - 1 (k + 1) but not on slice k is
    looked for in its box from there, grown by :data:`FOLLOW_GROW`, with its
    class's recipe; the mask, less pixels another organelle has, is kept
    (as a box of score 0) when its IoU with the organelle's mask beside is at
    least ``settings.follow_iou`` and at least the :data:`CONTINUITY_QUANTILE`
    of how the class's masks overlap from slice to slice in this stack
    (:func:`continuity`), and its area within :data:`FOLLOW_AREA` of it, and
    the sweep goes on from it. An organelle followed into another is joined
    to it as a bridge is (``settings.merge_bridges``; the same vetoes:
    :func:`.refine.bridges_to_join`). Changed
    slices are written as ``filled_NNNNN.npz`` (see :func:`fill_gaps`).
    Returns the detections and their organelle labels with the followed
    boxes added, and the IoU each class was followed at.
    """
    n, shape = stack.shape[0], stack.shape[1:]
    cls_of = np.zeros(int(det_labels.max()) + 1, np.int64)
    cls_of[det_labels[det_labels >= 0]] = det["cls"][det_labels >= 0]
    rows = [slice(det["start"][k], det["start"][k + 1]) for k in range(n)]
    # only the slices that change are held, so memory does not grow with the stack
    changed: dict[int, tuple[SliceResult, np.ndarray]] = {}
    pairs = []
    class_iou = np.full(len(classes), settings.follow_iou)
    for c, ious in enumerate(continuity(out, det, det_labels, shape, cls_of, len(classes))):
        if len(ious) >= CONTINUITY_PAIRS:
            usual = min(float(np.quantile(ious, CONTINUITY_QUANTILE)), CONTINUITY_CAP)
            class_iou[c] = max(class_iou[c], usual)
    min_iou = class_iou[cls_of]

    def state(k):
        return changed.get(k) or (load_slice(out, k), det_labels[rows[k]])

    for order in (range(1, n), range(n - 2, -1, -1)):
        if n > 1:
            first = state(order.start - order.step)
            beside = (*_painted(*first, shape, len(cls_of)), first)
        for k in order:
            result, labels = state(k)
            here, here_on = _painted(result, labels, shape, len(cls_of))
            extra, followed, here_on = _follow_into(
                stack, k, beside, (here, here_on), cls_of, classes, pixel_nm, min_iou
            )
            if extra:
                changed[k] = (_appended(result, extra), np.append(labels, followed))
            if order.step == -1 and settings.merge_bridges:
                # the down sweep meets each slice pair after both have their last additions
                p = overlap_pairs(beside[0], here, settings.merge_min_overlap, with_counts=True)
                pairs.append(p[cls_of[p[:, 0]] == cls_of[p[:, 1]]])
            beside = (here, here_on, changed.get(k, (result, labels)))
            done = k if order.step == 1 else 2 * n - 2 - k
            progress(done / max(2 * n - 2, 1), "following organelles past missed slices")
    det, det_labels = with_slices(out, det, det_labels, changed)
    if pairs:
        # joined by the bridge merge's rules: an overlap it refused must not join here
        pairs = bridges_to_join(out, stack, det, det_labels, np.concatenate(pairs), settings)
        # not in place: with no slice changed, det_labels is still the caller's array
        joined = merge_labels(np.arange(len(cls_of)), pairs)
        det_labels = np.where(det_labels >= 0, joined[det_labels], det_labels)
    return det, det_labels, {classes.names[c]: round(float(v), 3) for c, v in enumerate(class_iou)}


def continuity(out, det, det_labels, shape, cls_of, n_classes) -> list[np.ndarray]:
    """Per class, the IoUs of its organelles' masks on each pair of consecutive slices
    where both have one (detected, or filled across a gap).

    On slices about as thin as a pixel an organelle's masks overlap by
    0.8-0.9 from slice to slice (real FIB-SEM, 5 nm: median 0.90, lowest
    tenth 0.67), so a mask that overlaps the one beside by half is something
    else past its end: following at 0.5 carried mitochondria 3-13 slices
    further past their labelled ends. On sections several pixels thick half is how an
    organelle goes on (real SBEM, 40 x 5.9 nm: median 0.72, lowest tenth
    0.51). The stack's own organelles say which.
    """
    m = len(cls_of)
    ious: list[list[np.ndarray]] = [[] for _ in range(n_classes)]
    prev, area_a = None, None
    for _, result, sel in iter_slices(out, det, len(det["start"]) - 1):
        cur = result.paint(shape, det_labels[sel]).ravel()
        # only the painted pixels: whole-slice passes were most of this pass's time
        at = np.flatnonzero(cur != 0)  # through a bool array: see link.label_areas
        here = cur[at]
        area_b = np.bincount(here, minlength=m + 1)
        if prev is not None:
            both = np.bincount(here[prev[at] == here], minlength=m + 1)
            on = np.flatnonzero((area_a[1:] > 0) & (area_b[1:] > 0)) + 1
            iou = both[on] / (area_a[on] + area_b[on] - both[on])
            for c in np.unique(cls_of[on - 1]):
                ious[c].append(iou[cls_of[on - 1] == c])
        prev, area_a = cur, area_b
    return [np.concatenate(v) if v else np.zeros(0) for v in ious]


def _follow_into(stack, k, beside, here, cls_of, classes, pixel_nm, min_iou):
    """The organelles on the slice beside that slice ``k`` lacks, sought there.

    ``beside`` is the slice beside, painted, which organelles it holds
    (:func:`_painted`) and its (result, labels); ``here``, painted and which it
    holds, of slice k, gets each organelle found; ``min_iou`` is per organelle
    (0-based). Returns the found (box, clipped bounds, mask), their organelle
    labels (0-based) and which organelles ``here`` now holds: the next slice's
    ``beside``, not counted again.
    """
    beside, beside_on, (beside_result, beside_labels) = beside
    here, here_on = here
    missing = np.flatnonzero(beside_on & ~here_on)
    if not len(missing):
        return [], [], here_on
    image = stack.read(k)
    extra, followed = [], []
    for o in missing:
        x0, y0, x1, y1 = _extent(beside, beside_result.bounds[beside_labels == o - 1], o)
        cls = int(cls_of[o - 1])
        hit = _follow_one(
            image,
            beside[y0:y1, x0:x1] == o,
            (x0, y0, x1, y1),
            here,
            cls,
            classes[cls].extract,
            pixel_nm,
            min_iou[o - 1],
        )
        if hit is None:
            continue
        _, (bx0, by0, bx1, by1), mask = hit
        here[by0:by1, bx0:bx1][mask] = o
        here_on[o] = True
        extra.append(hit)
        followed.append(o - 1)
    return extra, followed, here_on


def _extent(painted: np.ndarray, bounds: np.ndarray, value: int) -> tuple[int, int, int, int]:
    """The box (x0, y0, x1, y1) around the pixels of ``value`` in ``painted``.

    Sought inside the union of ``bounds``, those of the masks painted with it
    (``ndimage.find_objects`` of whole slices was a fifth of following's time).
    """
    x0, y0 = bounds[:, :2].min(axis=0)
    x1, y1 = bounds[:, 2:].max(axis=0)
    inside = painted[y0:y1, x0:x1] == value
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    return int(x0 + cols[0]), int(y0 + rows[0]), int(x0 + cols[-1] + 1), int(y0 + rows[-1] + 1)


def _painted(result: SliceResult, labels: np.ndarray, shape, m: int):
    """A slice painted, and which of organelles 1..m it holds (bool, index 0 False)."""
    # counted, not np.unique (a sort per slice was most of following's time)
    painted, areas = result.paint_areas(shape, labels, m + 1)
    return painted, areas > 0


def _follow_one(image, prev, bounds, here, cls, recipe, pixel_nm, min_iou):
    """An organelle (mask ``prev`` in ``bounds`` of the slice beside) looked for on ``image``.

    ``here`` is the slice's painted labels. Returns the organelle's box,
    clipped bounds and mask there, or None where it is not found.
    """
    x0, y0, x1, y1 = bounds
    g = FOLLOW_GROW * max(x1 - x0, y1 - y0)
    box = Box(cls, x0 - g, y0 - g, x1 - x0 + 2 * g, y1 - y0 + 2 * g, 0.0)
    found, mask = extract_box(image, box, recipe, pixel_nm)
    fx0, fy0, fx1, fy1 = found
    mask &= here[fy0:fy1, fx0:fx1] == 0
    lo, hi = FOLLOW_AREA
    before = np.count_nonzero(prev)
    if not lo * before <= np.count_nonzero(mask) <= hi * before:
        return None
    if mask_iou(mask, found, prev, bounds) < min_iou:
        return None
    return box, found, mask


def _appended(result: SliceResult, extra: list[tuple[Box, tuple, np.ndarray]]) -> SliceResult:
    """``result`` with more detections: (box, clipped bounds, mask) each."""
    return SliceResult.of(
        boxes_from_array(result.boxes) + [b for b, _, _ in extra],
        [*result.bounds.reshape(-1, 4).tolist(), *(bnd for _, bnd, _ in extra)],
        [result.mask(i) for i in range(len(result))] + [m for _, _, m in extra],
    )


def _union(xyxy: np.ndarray) -> np.ndarray:
    """The box around ``(n, 4)`` x0 y0 x1 y1 boxes."""
    return np.concatenate([xyxy[:, :2].min(axis=0), xyxy[:, 2:].max(axis=0)])
