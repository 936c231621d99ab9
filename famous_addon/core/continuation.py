"""Tracks that Algorithm 4 cut, joined again where one ends and the next begins on it.

Algorithm 4 (:mod:`.link`) links a box to an earlier one by their centres,
within a fifth of the box's half-size. A large organelle that lies obliquely
in the stack drifts by a pixel or more a slice, and the detector boxes it
whole on some slices and in two parts on others, so its boxes' centres jump
further than that. On real FIB-SEM (lucchi, 5 nm slices) the largest
mitochondrion, boxed on 44 of its 64 slices, came out as ten tracks of 1-12
slices, every one shorter than the minimum span and dropped: it was lost
whole, and so was the second largest. The bridge merge
(:func:`~.refine.merge_bridges`) compares adjacent slices only, and these
tracks are often a few missed slices apart.

Here a track that ends on slice ``a`` is joined to a track of its class that
begins on slice ``b``, ``a < b <= a + gap + 1``, where their masks on those
two slices overlap by ``min_overlap`` of the smaller one: the organelle's
own cross-section a few slices on. The slices skipped may be no more than
either track is long, so that flickers of a slice or two do not chain into
an organelle across long gaps. Runs before the minimum span is applied, so
pieces too short to stand alone are kept as the organelle they belong to.

Measured with eight detectors (docs/results.md, session 25): lucchi object
F1 0.779 -> 0.786 on average, none lower, voxel IoU 0.714 -> 0.729 (seed 0:
0.663 -> 0.714); CDeep3M 0.631 -> 0.636, one detector lower by an object (a
false organelle joined to a real one that begins where it ends).
"""

from __future__ import annotations

import numpy as np

from .link import merge_labels
from .refine import label_spans
from .slicecache import load_slice


def join_continuations(out, det: dict, labels: np.ndarray, gap: int, min_overlap: float):
    """Labels with each track joined to the tracks that continue it (see the module).

    Parameters
    ----------
    out : Path
        The run folder (its cached slices hold the masks).
    det : dict
        The detections (:func:`~.slicecache.gather_detections`).
    labels : (n,) int array
        Track label per detection, -1 for none.
    gap : int
        Most slices a continuation may skip.
    min_overlap : float
        Overlap of the two masks, as a fraction of the smaller one (0: off).

    Returns
    -------
    (n,) int array
        Labels renumbered by first appearance, -1 kept.
    """
    ok = labels >= 0
    if min_overlap <= 0 or not ok.any():
        return labels
    idx = np.flatnonzero(ok)
    lab, sl = labels[idx], det["slice"][idx]
    m = int(lab.max()) + 1
    first = np.full(m, np.iinfo(np.int64).max, np.int64)
    last = np.full(m, -1, np.int64)
    np.minimum.at(first, lab, sl)
    np.maximum.at(last, lab, sl)
    cls = np.zeros(m, np.int64)
    cls[lab] = det["cls"][idx]
    head = _bounds_on(det, idx[sl == first[lab]], lab[sl == first[lab]], m)
    tail = _bounds_on(det, idx[sl == last[lab]], lab[sl == last[lab]], m)
    spans = label_spans(lab, sl, m)
    used = np.flatnonzero(last >= 0)
    starts = used[np.argsort(first[used], kind="stable")]
    start_at = first[starts]
    slices: dict[int, tuple] = {}
    pairs = []
    for t in used[np.argsort(last[used], kind="stable")]:
        a = int(last[t])
        for k in [k for k in slices if k < a]:
            del slices[k]  # tails come in slice order: nothing before a is asked again
        lo, hi = np.searchsorted(start_at, [a + 1, a + gap + 2])
        for u in starts[lo:hi]:
            if cls[u] != cls[t] or not _meet(tail[t], head[u]):
                continue
            if first[u] - last[t] - 1 > min(spans[t], spans[u]):
                continue  # a flicker of a slice or two must not bridge a long gap
            b = int(first[u])
            win = (*np.minimum(tail[t][:2], head[u][:2]), *np.maximum(tail[t][2:], head[u][2:]))
            mt = _label_mask(_slice(out, det, labels, a, slices), t, win)
            mu = _label_mask(_slice(out, det, labels, b, slices), u, win)
            smaller = min(np.count_nonzero(mt), np.count_nonzero(mu))
            if smaller and np.count_nonzero(mt & mu) >= min_overlap * smaller:
                pairs.append((t, u))
    if not pairs:
        return labels
    joined = labels.copy()
    joined[ok] = merge_labels(labels[ok], np.array(pairs, np.int64))
    return joined


def _bounds_on(det: dict, rows: np.ndarray, lab: np.ndarray, m: int) -> np.ndarray:
    """Per label, the pixel bounds (x0, y0, x1, y1) around its boxes ``rows``."""
    xywh = det["xywh"][rows]
    out = np.zeros((m, 4), np.int64)
    out[:, :2] = np.iinfo(np.int64).max
    np.minimum.at(out[:, 0], lab, np.floor(xywh[:, 0]).astype(np.int64))
    np.minimum.at(out[:, 1], lab, np.floor(xywh[:, 1]).astype(np.int64))
    np.maximum.at(out[:, 2], lab, np.ceil(xywh[:, 0] + xywh[:, 2]).astype(np.int64))
    np.maximum.at(out[:, 3], lab, np.ceil(xywh[:, 1] + xywh[:, 3]).astype(np.int64))
    return np.maximum(out, 0)


def _meet(p: np.ndarray, q: np.ndarray) -> bool:
    return bool(p[0] < q[2] and q[0] < p[2] and p[1] < q[3] and q[1] < p[3])


def _slice(out, det, labels, k: int, held: dict):
    """Slice ``k``'s masks and their labels, loaded once."""
    if k not in held:
        held[k] = (load_slice(out, k), labels[det["start"][k] : det["start"][k + 1]])
    return held[k]


def _label_mask(state, label: int, win) -> np.ndarray:
    """The union of a label's masks on one slice, in the window ``win`` (x0, y0, x1, y1)."""
    result, labels = state
    x0, y0, x1, y1 = (int(v) for v in win)
    mask = np.zeros((y1 - y0, x1 - x0), bool)
    for i in np.flatnonzero(labels == label):
        bx0, by0, bx1, by1 = (int(v) for v in result.bounds[i])
        cx0, cy0, cx1, cy1 = max(bx0, x0), max(by0, y0), min(bx1, x1), min(by1, y1)
        if cx0 < cx1 and cy0 < cy1:
            part = result.mask(i)[cy0 - by0 : cy1 - by0, cx0 - bx0 : cx1 - bx0]
            mask[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] |= part
    return mask
