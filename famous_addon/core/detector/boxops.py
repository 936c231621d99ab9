"""Box operations on ``(n, 4)`` x0 y0 x1 y1 arrays: overlaps, score thresholds,
suppression, fusion of views, merging of boxes cut by tile borders, scaling.

Slices larger than the network input are cut into tiles that overlap by at
least the largest expected object; boxes cut by a tile border are merged with
the matching box of the neighbouring tile (:func:`merge_cut_boxes`), then
class-wise NMS and a containment suppression (a box mostly inside a larger box
of the same class is a piece of it) run over the whole slice (:func:`suppress`).
"""

from __future__ import annotations

import numpy as np

from ..boxes import Box

# a box with this much of its area inside a larger same-class box is a piece of it
CONTAINMENT = 0.7


def boxes_xyxy(boxes: list[Box]) -> np.ndarray:
    """Boxes as an ``(n, 4)`` float64 array of x0, y0, x1, y1.

    Parameters
    ----------
    boxes : list of Box

    Returns
    -------
    (n, 4) float64 array; ``(0, 4)`` for no boxes.
    """
    return np.array([(b.x, b.y, b.x + b.w, b.y + b.h) for b in boxes], np.float64).reshape(-1, 4)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intersection over union and over the smaller box for ``(n, 4)`` x0 y0 x1 y1 arrays.

    Parameters
    ----------
    a : (n, 4) array
    b : (m, 4) array

    Returns
    -------
    iou : (n, m) array
        Intersection over union of each pair.
    ios : (n, m) array
        Intersection over the smaller box's area: 1 when one box lies inside the other.
    """
    ix = np.clip(
        np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None
    )
    iy = np.clip(
        np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None
    )
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    smaller = np.minimum(area_a[:, None], area_b[None, :])
    return inter / np.maximum(union, 1e-9), inter / np.maximum(smaller, 1e-9)


def suppress(
    xyxy: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    nms_iou: float,
    containment: list[float | None],
    pieces: np.ndarray | None = None,
) -> np.ndarray:
    """Class-wise NMS plus containment suppression; returns the kept indices.

    Boxes are visited by decreasing score. A box is dropped when a kept box of
    its class overlaps it with IoU >= ``nms_iou`` or contains it (intersection
    >= the class's ``containment`` of its own area). A box that contains one
    kept, smaller box and scores at least half as high replaces it (whatever
    their IoU), so a whole mitochondrion wins over a confident piece of it; a
    box containing several kept boxes is dropped, since it more likely spans
    neighbours than one object.

    Parameters
    ----------
    containment : list of (float or None)
        Per class; None: no containment rule for the class, except for ``pieces``.
    pieces : (n,) bool, optional
        Boxes cut by a tile border: parts of an object some other tile sees
        whole, so one inside a larger box (by :data:`CONTAINMENT`) always goes.
    """
    pieces = np.zeros(len(xyxy), bool) if pieces is None else pieces
    keep_all = []
    for c in np.unique(classes):
        idx = np.flatnonzero(classes == c)
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        kept = _suppress_class(xyxy[idx], scores[idx], pieces[idx], nms_iou, containment[c])
        keep_all.extend(idx[kept].tolist())
    return np.array(sorted(keep_all), dtype=int)


def _suppress_class(box, s, piece, nms_iou: float, contain: float | None) -> np.ndarray:
    """:func:`suppress` for one class's boxes, sorted by decreasing score: the kept rows.

    Only boxes that overlap can suppress each other (IoU and containment are
    0 otherwise), so each box is compared with the kept boxes among its
    overlapping neighbours: a 2048 px slice has a few thousand candidates a
    class, and comparing each with every kept box took a third of its time
    around the network's forwards.
    """
    n = len(box)
    area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
    ptr, nbr, iou_n, ios_n = _neighbours(box, everyone=nms_iou <= 0)
    kept = np.zeros(n, bool)
    for i in range(n):
        lo, hi = ptr[i], ptr[i + 1]
        on = kept[nbr[lo:hi]]
        k, iou, ios = nbr[lo:hi][on], iou_n[lo:hi][on], ios_n[lo:hi][on]
        smaller_piece = np.where(area[i] > area[k], piece[k], piece[i])
        limit = np.where(smaller_piece, CONTAINMENT, np.inf)
        if contain is not None:
            limit = np.minimum(limit, contain)
        nested = ios >= limit
        is_inside = nested & (area[k] < area[i])
        if ((iou >= nms_iou) | nested)[~is_inside].any():
            continue
        inside = k[is_inside]
        if not len(inside):
            kept[i] = True
        elif len(inside) == 1 and s[i] >= 0.5 * s[inside[0]]:
            kept[inside[0]] = False
            kept[i] = True
    return np.flatnonzero(kept)


def _neighbours(box: np.ndarray, everyone: bool = False):
    """Each box's overlapping boxes (all others with ``everyone``), as CSR lists.

    Returns
    -------
    ptr : (n + 1,) int array
        Box i's neighbours are ``nbr[ptr[i]:ptr[i + 1]]``.
    nbr : int array
    iou, ios : float arrays
        IoU and intersection over the smaller box of each pair (:func:`iou_matrix`).
    """
    n = len(box)
    if everyone:
        a, b = np.nonzero(~np.eye(n, dtype=bool))
    else:
        # pairs whose x ranges overlap, found on the boxes sorted by their left edge
        order = np.argsort(box[:, 0], kind="stable")
        left = box[order, 0]
        ends = np.searchsorted(left, box[order, 2], side="left")
        count = np.maximum(ends - np.arange(n) - 1, 0)
        first = np.repeat(np.arange(n), count)
        step = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
        a, b = order[first], order[first + 1 + step]
        both = (box[a, 1] < box[b, 3]) & (box[b, 1] < box[a, 3])
        a, b = np.concatenate([a[both], b[both]]), np.concatenate([b[both], a[both]])
    iw = np.minimum(box[a, 2], box[b, 2]) - np.maximum(box[a, 0], box[b, 0])
    ih = np.minimum(box[a, 3], box[b, 3]) - np.maximum(box[a, 1], box[b, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
    union = area[a] + area[b] - inter
    iou = inter / np.maximum(union, 1e-9)
    ios = inter / np.maximum(np.minimum(area[a], area[b]), 1e-9)
    by = np.argsort(a, kind="stable")
    ptr = np.concatenate([[0], np.cumsum(np.bincount(a, minlength=n))])
    return ptr, b[by], iou[by], ios[by]


def fuse_views(views: list[tuple[np.ndarray, np.ndarray, np.ndarray]], iou: float = 0.55):
    """Fuse the boxes of several views of one slice (weighted box fusion).

    Boxes are visited by decreasing score; each joins the same-class cluster
    whose fused box it overlaps most (IoU >= ``iou``), unless that cluster
    already holds a box of its view. A cluster's box is the score-weighted
    mean of its members; its score is their sum over the number of views, so
    a box that only one view sees loses confidence and the box edges average
    out.

    Parameters
    ----------
    views : list of (xyxy (n, 4), scores (n,), classes (n,))

    Returns
    -------
    xyxy, scores, classes
    """
    xyxy = np.concatenate([v[0] for v in views]).reshape(-1, 4).astype(np.float64)
    scores = np.concatenate([v[1] for v in views]).astype(np.float64)
    classes = np.concatenate([v[2] for v in views]).astype(int)
    view_of = np.concatenate([np.full(len(v[1]), k) for k, v in enumerate(views)])
    out_xyxy, out_scores, out_classes = [], [], []
    for c in np.unique(classes):
        idx = np.flatnonzero(classes == c)
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        weight, weighted, members = [], [], []
        for i in idx:
            if weight:
                fused = np.array(weighted) / np.array(weight)[:, None]
                overlap = iou_matrix(xyxy[i][None], fused)[0][0]
                overlap[[view_of[i] in m for m in members]] = -1
                j = int(np.argmax(overlap))
                if overlap[j] >= iou:
                    weight[j] += scores[i]
                    weighted[j] = weighted[j] + scores[i] * xyxy[i]
                    members[j].add(view_of[i])
                    continue
            weight.append(scores[i])
            weighted.append(scores[i] * xyxy[i])
            members.append({view_of[i]})
        out_xyxy.extend(np.array(weighted) / np.array(weight)[:, None])
        out_scores.extend(np.array(weight) / len(views))
        out_classes.extend([c] * len(weight))
    return (
        np.array(out_xyxy, np.float64).reshape(-1, 4),
        np.array(out_scores, np.float64),
        np.array(out_classes, int),
    )


def merge_cut_boxes(
    xyxy: np.ndarray, classes: np.ndarray, tile_ids: np.ndarray, cut: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Join boxes cut by a tile border with the same object's box from a neighbouring tile.

    Parameters
    ----------
    xyxy : (n, 4) float
        Boxes in slice pixels.
    classes, tile_ids : (n,) int
    cut : (n, 4) bool
        Whether the box touches its tile's left, top, right, bottom border
        where that border is inside the slice.

    Returns
    -------
    xyxy : (n, 4)
        Each box replaced by the union of its group.
    group : (n,) int
        Group id per box; boxes of one group are one object.

    Two same-class boxes of different tiles are one object when one is cut on
    a side and the other on the opposite side (an object longer than the tile
    overlap, seen in parts), they overlap, and along the axis perpendicular to
    the cut their extents agree (interval IoU >= 0.5). A cut box whose object
    lies whole in another tile needs no merging: containment suppression
    drops it as a piece of the whole box.
    """
    n = len(xyxy)
    parent = np.arange(n)

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def agree(lo_a, hi_a, lo_b, hi_b):
        inter = np.minimum(hi_a, hi_b) - np.maximum(lo_a, lo_b)
        return inter / (np.maximum(hi_a, hi_b) - np.minimum(lo_a, lo_b)) >= 0.5

    cut_before = np.flatnonzero(cut[:, 0] | cut[:, 1])  # on the left or top
    for i in np.flatnonzero(cut[:, 2] | cut[:, 3]):  # cut on the right or bottom
        a = xyxy[i]
        j = cut_before[(classes[cut_before] == classes[i]) & (tile_ids[cut_before] != tile_ids[i])]
        b = xyxy[j]
        overlap = (np.minimum(a[2], b[:, 2]) > np.maximum(a[0], b[:, 0])) & (
            np.minimum(a[3], b[:, 3]) > np.maximum(a[1], b[:, 1])
        )
        horizontal = cut[i, 2] & cut[j, 0] & agree(a[1], a[3], b[:, 1], b[:, 3])
        vertical = cut[i, 3] & cut[j, 1] & agree(a[0], a[2], b[:, 0], b[:, 2])
        for k in j[overlap & (horizontal | vertical)]:
            parent[find(i)] = find(k)
    group = np.array([find(i) for i in range(n)], dtype=int)
    lo = np.full((n, 2), np.inf)
    hi = np.full((n, 2), -np.inf)
    np.minimum.at(lo, group, xyxy[:, :2])
    np.maximum.at(hi, group, xyxy[:, 2:])
    return np.concatenate([lo[group], hi[group]], axis=1), group


def above_threshold(
    xyxy: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    thr: np.ndarray,
    shape: tuple[int, int],
    edge_factor: float,
    margin: float = 2.0,
) -> np.ndarray:
    """Which boxes reach their class's score threshold.

    Boxes within ``margin`` pixels of the border of a ``shape`` slice need
    only ``edge_factor`` times the threshold (see
    :attr:`~.settings.DetectSettings.edge_score_factor`).
    """
    rows, cols = shape
    at_border = (
        (xyxy[:, 0] <= margin)
        | (xyxy[:, 1] <= margin)
        | (xyxy[:, 2] >= cols - margin)
        | (xyxy[:, 3] >= rows - margin)
    )
    return scores >= thr[classes] * np.where(at_border, edge_factor, 1.0)


def scale_boxes(xyxy: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Boxes ``(n, 4)`` x0 y0 x1 y1 scaled about their centres by ``(n, 2)`` factors (w, h)."""
    centre = (xyxy[:, :2] + xyxy[:, 2:]) / 2
    half = (xyxy[:, 2:] - xyxy[:, :2]) / 2 * scale
    return np.concatenate([centre - half, centre + half], axis=1)


def apply_box_scale(xyxy: np.ndarray, classes: np.ndarray, box_scale, shape) -> np.ndarray:
    """Scale each box by its class's factors, keeping sides on the slice's edge.

    A side on the edge is where the slice cuts the organelle, not where the
    detector guessed its outline, so it stays.
    """
    rows, cols = shape
    at_edge = np.column_stack(
        [xyxy[:, 0] <= 1, xyxy[:, 1] <= 1, xyxy[:, 2] >= cols - 1, xyxy[:, 3] >= rows - 1]
    )
    scaled = scale_boxes(xyxy, np.asarray(box_scale, np.float64)[classes])
    return np.where(at_edge, xyxy, scaled)
