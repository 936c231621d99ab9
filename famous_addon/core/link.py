"""Linking boxes across slices into 3D organelles (paper Algorithm 4), and the
bridge merge the paper lacked.

Algorithm 4 gives a box the label of an earlier box of the same class when that
box lies at most ``layers_to_scan`` slices above and both centres agree within
``tolerance * max(size) / 2`` in x and in y. Two departures from the paper's
text, both deliberate:

- The pseudo-code writes the centre as ``(x + w) / 2``; that is not a centre
  (it depends on the box position twice). We use the true centre ``x + w / 2``.
- Where several earlier boxes qualify the paper takes "the first element" of an
  unordered list. We take the nearest slice, then the largest box overlap
  (IoU), so the result does not depend on the order boxes were stored in.

One addition: the centre tolerance is at least ``min_tolerance_px`` pixels.
For a 5-pixel box the paper's 0.2 x 5 / 2 = 0.5 px is below the slice-to-slice
misalignment of FIB-SEM stacks (about ±1 px per slice, so 2 px between two
slices, plus half a pixel as the box grows), which cut the small caps at both
ends of every round organelle off as separate organelles.

Instead of scanning every box of the previous ``layers_to_scan`` slices for
every box (N x window), candidates are found with a KD-tree over
(centre x, centre y, slice): first on the slice just above, and only for boxes
still unmatched on the slices further up. Most boxes continue an organelle from
the slice above, so the cost is about N log N.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of paired boxes given as (x, y, w, h) rows."""
    ix = np.clip(
        np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None
    )
    iy = np.clip(
        np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None
    )
    inter = ix * iy
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    return inter / np.maximum(union, 1e-12)


def _within(cx, cy, xywh, qi, cj, tolerance, min_px):
    """Algorithm 4's centre test for paired boxes ``qi`` and ``cj``."""
    tx = np.maximum(tolerance * np.maximum(xywh[qi, 2], xywh[cj, 2]) / 2, min_px)
    ty = np.maximum(tolerance * np.maximum(xywh[qi, 3], xywh[cj, 3]) / 2, min_px)
    return (np.abs(cx[qi] - cx[cj]) < tx) & (np.abs(cy[qi] - cy[cj]) < ty)


def _pick(best, qi, cj, z, xywh):
    """Per query box keep the nearest-slice candidate, then the largest IoU."""
    if qi.size == 0:
        return
    iou = _box_iou(xywh[qi], xywh[cj])
    order = np.lexsort((cj, -iou, -z[cj], qi))
    qi, cj = qi[order], cj[order]
    first = np.r_[True, qi[1:] != qi[:-1]]
    best[qi[first]] = cj[first]


def _candidates(tree, points, todo, r, z, z_lo, z_hi, cx, cy, xywh, tolerance, min_px):
    """Pairs (query, candidate) within the Chebyshev radius, filtered exactly."""
    pairs = cKDTree(points).sparse_distance_matrix(tree, r, p=np.inf, output_type="ndarray")
    qi, cj = todo[pairs["i"]], pairs["j"].astype(np.int64)
    ok = (z[cj] >= z_lo[pairs["i"]]) & (z[cj] <= z_hi[pairs["i"]])
    qi, cj = qi[ok], cj[ok]
    ok = _within(cx, cy, xywh, qi, cj, tolerance, min_px)
    return qi[ok], cj[ok]


def _link_class(z, xywh, layers_to_scan, tolerance, min_px):
    """Best earlier partner (index or -1) of each box of one class.

    Two KD-tree queries over (centre x, centre y, scaled slice): the slice just
    above for every box, then the rest of the look-back window for the boxes
    left without a partner (mostly the first slice of each organelle).
    """
    n = len(z)
    cx = xywh[:, 0] + xywh[:, 2] / 2
    cy = xywh[:, 1] + xywh[:, 3] / 2
    r = max(tolerance * float(xywh[:, 2:].max()) / 2, min_px) + 1e-9
    best = np.full(n, -1, np.int64)
    if layers_to_scan < 2 or n == 0:
        return best
    # Slices placed 4 r apart: a ball of radius r reaches only the slice queried.
    gap = 4.0 * r
    tree = cKDTree(np.column_stack([cx, cy, z * gap]))
    todo = np.arange(n)
    query = np.column_stack([cx, cy, (z - 1) * gap])
    qi, cj = _candidates(tree, query, todo, r, z, z - 1, z - 1, cx, cy, xywh, tolerance, min_px)
    _pick(best, qi, cj, z, xywh)
    todo = np.flatnonzero(best < 0)
    if layers_to_scan > 2 and todo.size:
        # Slices z-2 .. z-(L-1), scaled so that half the window spans r.
        half = max((layers_to_scan - 3) / 2, 0.5)
        scale = r / half
        tree = cKDTree(np.column_stack([cx, cy, z * scale]))
        centre = z[todo] - (layers_to_scan + 1) / 2
        query = np.column_stack([cx[todo], cy[todo], centre * scale])
        qi, cj = _candidates(
            tree,
            query,
            todo,
            r * (1 + 1e-9),
            z,
            z[todo] - layers_to_scan + 1,
            z[todo] - 2,
            cx,
            cy,
            xywh,
            tolerance,
            min_px,
        )
        _pick(best, qi, cj, z, xywh)
    return best


def link_boxes(
    slices: np.ndarray,
    classes: np.ndarray,
    xywh: np.ndarray,
    layers_to_scan: int = 50,
    tolerance: float = 0.2,
    min_tolerance_px: float = 2.5,
) -> np.ndarray:
    """Assign an organelle label to every box (paper Algorithm 4).

    Parameters
    ----------
    slices : (n,) int array
        Slice index of each box.
    classes : (n,) int array
        Class index of each box.
    xywh : (n, 4) float array
        Boxes as top-left x, y, width, height in pixels.
    layers_to_scan : int
        How many slices above a box are searched (the paper's 50); a partner
        must lie in ``(slice - layers_to_scan, slice)``.
    tolerance : float
        Centre tolerance as a fraction of the larger half-size (the paper's 0.2).
    min_tolerance_px : float
        Lower bound of the centre tolerance in pixels (0 gives the paper's rule).

    Returns
    -------
    (n,) int64 array
        Labels 0..m-1, numbered in order of first appearance (slice, then
        input order).
    """
    slices = np.asarray(slices, np.int64)
    classes = np.asarray(classes, np.int64)
    xywh = np.asarray(xywh, np.float64).reshape(-1, 4)
    n = len(slices)
    partner = np.full(n, -1, np.int64)
    for c in np.unique(classes):
        idx = np.flatnonzero(classes == c)
        best = _link_class(
            slices[idx].astype(np.float64), xywh[idx], layers_to_scan, tolerance, min_tolerance_px
        )
        partner[idx[best >= 0]] = idx[best[best >= 0]]
    return _labels_from_partners(slices, partner)


def _labels_from_partners(slices: np.ndarray, partner: np.ndarray) -> np.ndarray:
    """Follow partner links (always to an earlier slice) to consecutive labels."""
    order = np.argsort(slices, kind="stable")
    labels = np.full(len(slices), -1, np.int64)
    next_label = 0
    for i in order:
        p = partner[i]
        if p >= 0:
            labels[i] = labels[p]
        else:
            labels[i] = next_label
            next_label += 1
    return labels


def link_boxes_reference(
    slices, classes, xywh, layers_to_scan=50, tolerance=0.2, min_tolerance_px=2.5
) -> np.ndarray:
    """A direct transcription of Algorithm 4 (with the same two fixes), for benchmarks and tests.

    For every box, tests every box of the previous ``layers_to_scan - 1``
    slices (boxes sorted by slice, so the window is one contiguous range).
    """
    slices = np.asarray(slices, np.int64)
    classes = np.asarray(classes, np.int64)
    xywh = np.asarray(xywh, np.float64).reshape(-1, 4)
    order = np.argsort(slices, kind="stable")
    z, c, b = slices[order], classes[order], xywh[order]
    cx, cy = b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2
    partner = np.full(len(z), -1, np.int64)
    for i in range(len(z)):
        lo = np.searchsorted(z, z[i] - layers_to_scan + 1)
        hi = np.searchsorted(z, z[i])
        j = np.arange(lo, hi)
        j = j[
            (c[j] == c[i]) & _within(cx, cy, b, np.full(len(j), i), j, tolerance, min_tolerance_px)
        ]
        if j.size:
            nearest = j[z[j] == z[j].max()]
            iou = _box_iou(np.repeat(b[i : i + 1], len(nearest), 0), b[nearest])
            partner[i] = nearest[np.argmax(iou)]
    # Back to the caller's order; partners were found in the sorted order.
    back = np.empty_like(partner)
    back[order] = np.where(partner >= 0, order[np.maximum(partner, 0)], -1)
    return _labels_from_partners(slices, back)


def merge_labels(labels: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Join labels connected by ``pairs`` (k, 2) and renumber by first appearance.

    Parameters
    ----------
    labels : (n,) int array
        Organelle label per detection (0..m-1).
    pairs : (k, 2) int array
        Labels to join.

    Returns
    -------
    (n,) int64 array
        New labels 0..m'-1, in order of the smallest old label of each group.
    """
    labels = np.asarray(labels, np.int64)
    m = int(labels.max()) + 1 if labels.size else 0
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    graph = sparse.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(m, m))
    _, comp = connected_components(graph, directed=False)
    # Renumber components by their smallest member so ids follow first appearance.
    first = np.full(comp.max() + 1 if m else 0, m, np.int64)
    np.minimum.at(first, comp, np.arange(m))
    rank = np.empty_like(first)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[comp[labels]] if labels.size else labels


def overlap_pairs(
    prev_labels: np.ndarray,
    cur_labels: np.ndarray,
    min_fraction: float = 0.5,
    with_counts: bool = False,
    cur_areas: np.ndarray | None = None,
) -> np.ndarray:
    """Same-class organelles whose masks overlap between two adjacent slices.

    Parameters
    ----------
    prev_labels, cur_labels : 2-D int arrays
        Per-pixel organelle label + 1 (0 = none) of two adjacent slices, for
        one class.
    min_fraction : float
        Minimum overlap as a fraction of the smaller of the two cross-sections,
        so touching neighbours (a thin contact) are not joined while a bridge
        slice that holds both parts of an object is.
    with_counts : bool
        Also return each pair's overlap and the two cross-sections, in pixels.
    cur_areas : 1-D int array, optional
        :func:`label_areas` of ``cur_labels``, where the caller has it.

    Returns
    -------
    (k, 2) int array
        Pairs of labels (0-based) to join; ``with_counts``: (k, 5), label,
        label, overlap, first label's area, second label's area.
    """
    none = np.zeros((0, 5 if with_counts else 2), np.int64)
    # on the labelled pixels only (whole-slice passes were most of this function's
    # time), found through a bool array (nonzero on int32 labels is three times slower)
    prev_flat, cur_flat = prev_labels.ravel(), cur_labels.ravel()
    at = np.flatnonzero(prev_flat != 0)
    a, b = prev_flat[at], cur_flat[at]
    keep = (b > 0) & (a != b)
    if not keep.any():
        return none
    area_b = label_areas(cur_labels) if cur_areas is None else cur_areas
    m = max(int(a.max()) + 1, len(area_b))
    pair_ids, counts = np.unique(
        a[keep].astype(np.int64) * m + b[keep].astype(np.int64), return_counts=True
    )
    pa, pb = pair_ids // m, pair_ids % m
    area_a = np.bincount(a, minlength=m)
    area_b = np.pad(area_b, (0, m - len(area_b)))
    ok = counts >= min_fraction * np.minimum(area_a[pa], area_b[pb])
    if with_counts:
        return np.column_stack([pa[ok] - 1, pb[ok] - 1, counts[ok], area_a[pa[ok]], area_b[pb[ok]]])
    return np.column_stack([pa[ok] - 1, pb[ok] - 1])


def label_areas(painted: np.ndarray, minlength: int = 0) -> np.ndarray:
    """Pixels of each label of a painted slice (index 0, the unpainted pixels: 0).

    Counts the painted pixels only, found through a bool array: a bincount of the
    whole slice, or ``np.flatnonzero`` on its int32 labels, takes about three
    times as long, and linking scans each slice several times.
    """
    flat = painted.ravel()
    return np.bincount(flat[flat != 0], minlength=minlength)
