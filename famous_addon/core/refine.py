"""Linking refinements that keep, join or drop whole organelles: bridges, pieces, flashes.

Algorithm 4 (:mod:`.link`) links boxes by their centres; these rules work on
its organelle labels (one per detection, -1 for none) with the masks:
same-class organelles whose masks overlap on adjacent slices are joined
(:func:`merge_bridges`), but not through a box over a neighbour's edge
(:func:`neighbours`), and detector flashes are dropped, short ones
(:func:`drop_small`) and those the detector is never confident about
(:func:`drop_unconfirmed`). :mod:`.follow` adds boxes where an organelle was
missed. Last, pieces of one organelle that the detector boxed side by side
on every slice are joined where their masks touch (:func:`join_touching`).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from .link import merge_labels, overlap_pairs
from .slicecache import iter_slices, load_slice


def merge_bridges(out, stack, det, labels0, settings, progress) -> np.ndarray:
    """Join same-class organelles whose masks overlap on adjacent slices.

    An overlap that is only a box's mask over a neighbour's edge joins
    nothing (:func:`neighbours`; off with ``settings.join_touching`` 0, the
    rule that judges which organelles side by side are one).
    With ``settings.short_joins_one``, organelles spanning fewer slices than
    :meth:`~.request.RunSettings.min_span` are bridges that may join one long
    organelle only (see :func:`bridge_pairs`).
    """
    label_class = np.zeros(labels0.max() + 1, np.int64)
    label_class[labels0] = det["cls"]
    pairs, prev = [], None
    n = stack.shape[0]
    for k, result, sel in iter_slices(out, det, n):
        cur, cur_areas = result.paint_areas(stack.shape[1:], labels0[sel])
        if prev is not None:
            p = overlap_pairs(
                prev, cur, settings.merge_min_overlap, with_counts=True, cur_areas=cur_areas
            )
            pairs.append(p[label_class[p[:, 0]] == label_class[p[:, 1]]])
        prev = cur
        progress((k + 1) / n, "joining bridged organelles")
    pairs = np.concatenate(pairs) if pairs else np.zeros((0, 5), np.int64)
    return merge_labels(labels0, bridges_to_join(out, stack, det, labels0, pairs, settings))


def bridges_to_join(out, stack, det, labels, pairs, settings) -> np.ndarray:
    """Which overlap pairs the bridge merge joins, as ``(j, 2)`` label pairs.

    ``pairs`` are :func:`~.link.overlap_pairs` ``with_counts`` over adjacent
    slices, in the label space of ``labels`` (per detection, -1: none). Those
    that only touch a neighbour's edge are left out (:func:`neighbours`), and
    with ``settings.short_joins_one`` a short organelle joins one long one
    only (:func:`bridge_pairs`). Following joins what its own slices overlap
    by this rule too: on lucchi it joined two neighbours the bridge merge had
    kept apart (t8 and t10, docs/results.md, session 34).
    """
    if not len(pairs):
        return pairs[:, :2]
    min_span = settings.min_span(stack.voxel_size_nm[0])
    if settings.join_touching > 0:
        apart = neighbours(out, det, labels, pairs, stack.shape, min_span, settings.join_touching)
        pairs = pairs[~apart]
    if settings.short_joins_one:
        long = long_enough(labels, det["slice"], min_span, stack.shape[0], int(labels.max()) + 1)
        return bridge_pairs(pairs, long)
    return pairs[:, :2]


# a touch counts where the shared border is this long over the square root of the
# smaller cross-section (a disc touching along about a fifth of its perimeter: 0.8)
TOUCH_CONTACT = 0.8

# organelles on adjacent slices continue each other where each mask holds this much
# of the other; a bridge between two neighbours holds this much of the smaller one
CONTINUES = 0.5
NEIGHBOURS_HOLD = 0.5


def neighbours(out, det, labels, pairs, shape, min_span: int, share: float) -> np.ndarray:
    """Which bridge pairs only touch a neighbour's edge (True: do not join them).

    The bridge merge joins two organelles where a mask on one slice overlaps
    the other's on the slice beside. Where a box's mask spreads over the edge
    of a neighbouring mitochondrion, that overlap is a part of the neighbour,
    and on lucchi it joined two mitochondria that lie side by side on 19
    slices (t8 and t10, 0.36 of the smaller cross-section; session 33).
    Here organelles that continue each other (masks holding
    :data:`CONTINUES` of each other on adjacent slices) form chains. A pair
    is a neighbour's edge where its overlap holds less than
    :data:`NEIGHBOURS_HOLD` of the smaller cross-section and its two chains
    are long (:func:`long_enough`), lie on two or more common slices and touch
    on fewer than ``share`` of them, as :func:`join_touching` judges: pieces
    of one organelle boxed side by side touch along their border on most
    slices, two neighbours on few. A dumbbell's bridge holds most of both
    lobes, so it still joins them.

    Parameters
    ----------
    pairs : (k, 5) int array
        :func:`~.link.overlap_pairs` ``with_counts`` over all adjacent slices.
    shape : (n, rows, cols)
        The stack's shape.

    Returns
    -------
    (k,) bool array
    """
    n, m = shape[0], int(labels.max()) + 1
    a, b, w = pairs[:, 0], pairs[:, 1], pairs[:, 2]
    continues = w >= CONTINUES * np.maximum(pairs[:, 3], pairs[:, 4])
    chain = merge_labels(np.arange(m), pairs[continues, :2])
    c = int(chain.max()) + 1
    of = np.where(labels >= 0, chain[labels], -1)  # each detection's chain (-1: none)
    long = long_enough(of, det["slice"], min_span, n, c)
    ca, cb = np.minimum(chain[a], chain[b]), np.maximum(chain[a], chain[b])
    test = (w < NEIGHBOURS_HOLD * np.minimum(pairs[:, 3], pairs[:, 4])) & (ca != cb)
    test &= long[ca] & long[cb]
    if not test.any():
        return test
    keys = set(zip(ca[test].tolist(), cb[test].tolist()))
    tested = np.zeros(c, bool)
    tested[[x for key in keys for x in key]] = True
    # the slices each tested chain is on
    on = {x: set() for x in np.flatnonzero(tested).tolist()}
    mine = (of >= 0) & tested[of]
    for x, k in zip(of[mine].tolist(), det["slice"][mine].tolist()):
        on[x].add(k)
    common = {key: on[key[0]] & on[key[1]] for key in keys}
    touched = dict.fromkeys(keys, 0)
    for k in sorted(set().union(*common.values())):
        sel = slice(det["start"][k], det["start"][k + 1])
        # only the chains tested are painted, and their contacts counted around them
        painted = np.where(mine[sel], of[sel], -1)
        result = load_slice(out, k)
        img, area = result.paint_areas(shape[1:], painted, c + 1)
        b = result.bounds[painted >= 0]
        window = img[b[:, 1].min() : b[:, 3].max(), b[:, 0].min() : b[:, 2].max()]
        for x, y in _touching(window, area, c + 1):
            if k in common.get((x - 1, y - 1), ()):
                touched[x - 1, y - 1] += 1
    apart = {
        key for key in keys if len(common[key]) >= 2 and touched[key] < share * len(common[key])
    }
    return test & np.array([key in apart for key in zip(ca.tolist(), cb.tolist())], bool)


def join_touching(out, stack, det, det_labels, share: float, progress) -> np.ndarray:
    """Join same-class organelles whose masks touch on ``share`` of the shorter one's slices.

    A detector sometimes boxes a large organelle in pieces side by side, and
    does so on every slice: on CDeep3M's SBEM (40 nm sections), axonal
    mitochondria lying diagonally came out as two to four organelles each,
    every piece on all ten slices. Extraction gives each pixel to one box, so
    the pieces' masks never overlap and the bridge merge (adjacent slices)
    does not join them; but they touch along a long border on most slices
    they share, and a piece lies beside the rest on most of its own slices.
    Two organelles beside each other touch on a few slices, where both masks
    reach into the membranes between them (on lucchi's FIB-SEM, six or seven
    of twenty), and so do two that follow each other in z where their ends
    pass: counting against the shorter one's slices, not the shared ones,
    keeps such a pair apart. A touch
    counts on a slice where the border (4-neighbour pixel pairs) is at least
    :data:`TOUCH_CONTACT` times the square root of the smaller cross-section,
    and a pair is joined where it touches on at least two slices and on
    ``share`` of the slices the shorter one is on; pairs already joined are
    judged as one organelle (:func:`_pieces_to_join`). Renumbers the organelles
    by first appearance.
    """
    ok = det_labels >= 0
    if share <= 0 or not ok.any():
        return det_labels
    m = int(det_labels.max()) + 1
    label_class = np.zeros(m + 1, np.int64)
    label_class[det_labels[ok] + 1] = det["cls"][ok]
    shape, n = stack.shape[1:], stack.shape[0]
    touched: dict[tuple[int, int], set[int]] = {}  # the slices each pair touches on
    for k, result, sel in iter_slices(out, det, n):
        img, area = result.paint_areas(shape, det_labels[sel], m + 1)
        for a, b in _touching(img, area, m + 1):
            if label_class[a] == label_class[b]:
                touched.setdefault((a - 1, b - 1), set()).add(k)
        progress((k + 1) / n, "joining pieces of organelles")
    join = _pieces_to_join(touched, det_labels, det["slice"], share)
    if not len(join):
        return det_labels
    out_labels = det_labels.copy()
    out_labels[ok] = merge_labels(det_labels[ok], join)
    return out_labels


def _pieces_to_join(
    touched: dict, labels: np.ndarray, slices: np.ndarray, share: float
) -> np.ndarray:
    """The touching pairs :func:`join_touching` joins, as ``(j, 2)`` label pairs.

    Pairs are taken strongest first (touching on the largest share of the
    shorter one's slices), and each is judged with the pieces already joined
    to either side: the two groups must touch on at least two slices and on
    ``share`` of the slices the shorter group is on. So a short piece that
    touches two long neighbours joins one of them, not both: on CDeep3M a
    box over two mitochondria (and the gap between them) made a 3-slice piece
    that touched each on 2-3 slices, and joining it to both made one
    organelle of two that touch nowhere, side by side on all ten sections
    (t8 and t11, docs/results.md, session 37). Pieces of one organelle boxed
    side by side each touch the rest on most of their slices, and still join.
    ``touched`` maps label pairs to the slices they touch on; ``labels`` and
    ``slices`` are each detection's (-1: none).
    """
    pairs = [p for p, s in touched.items() if len(s) >= 2]
    if not pairs:
        return np.zeros((0, 2), np.int64)
    # the slices of the labels involved only: a dense labels x slices table would
    # hold every organelle of a large stack
    on = {x: set() for p in pairs for x in p}
    mine = np.isin(labels, list(on))
    for x, k in zip(labels[mine].tolist(), slices[mine].tolist()):
        on[x].add(k)
    pairs.sort(key=lambda p: -len(touched[p]) / min(len(on[p[0]]), len(on[p[1]])))
    group = {x: x for x in on}  # each label's group, named by one of its labels
    join = []
    for a, b in pairs:
        ga, gb = group[a], group[b]
        if ga == gb:
            continue
        members_a = [x for x, g in group.items() if g == ga]
        members_b = [x for x, g in group.items() if g == gb]
        between = set().union(
            *(s for (x, y), s in touched.items() if {group.get(x), group.get(y)} == {ga, gb})
        )
        shorter = min(
            len(set().union(*(on[x] for x in members))) for members in (members_a, members_b)
        )
        if len(between) >= max(2, share * shorter):
            for x in members_b:
                group[x] = ga
            join.append((a, b))
    return np.array(join, np.int64).reshape(-1, 2)


def _touching(img: np.ndarray, area: np.ndarray, m: int) -> list[tuple[int, int]]:
    """The painted labels (low, high; 1..m-1) that touch on this slice: a border
    of at least :data:`TOUCH_CONTACT` times the square root of the smaller of
    their cross-sections ``area``."""
    found = []
    for key, contact in _contacts(img, m).items():
        a, b = divmod(key, m)
        if contact >= TOUCH_CONTACT * np.sqrt(min(area[a], area[b])):
            found.append((a, b))
    return found


def _contacts(img: np.ndarray, m: int) -> dict[int, int]:
    """4-neighbour pixel pairs between different painted labels, keyed ``low * m + high``."""
    found: dict[int, int] = {}
    for a, b in ((img[:, :-1], img[:, 1:]), (img[:-1], img[1:])):
        sel = (a != b) & (a > 0) & (b > 0)
        if not sel.any():
            continue
        u, v = a[sel].astype(np.int64), b[sel].astype(np.int64)
        keys, counts = np.unique(np.minimum(u, v) * m + np.maximum(u, v), return_counts=True)
        for key, c in zip(keys.tolist(), counts.tolist()):
            found[key] = found.get(key, 0) + c
    return found


def label_spans(labels: np.ndarray, slices: np.ndarray, minlength: int = 0) -> np.ndarray:
    """Slices each label (0..m-1) is found on (at least ``minlength`` entries); -1 left out."""
    ok = labels >= 0
    pairs = np.unique(np.column_stack([labels[ok], slices[ok]]), axis=0).reshape(-1, 2)
    m = max(minlength, int(labels.max()) + 1 if labels.size else 0)
    return np.bincount(pairs[:, 0], minlength=m)


def bridge_pairs(pairs: np.ndarray, long: np.ndarray, holds: float = 0.5) -> np.ndarray:
    """The overlap pairs to join when a short organelle may join one long one only.

    Long organelles (``long``) are the ones the detector followed for the
    depth a real organelle spans; a box of two neighbours at once, or a flash
    between them, makes a short one. Two long organelles are joined where
    their own masks overlap, and short ones are joined to each other. A group
    of short ones joins the long group it overlaps most (in pixels), and any
    other long group only where it holds ``holds`` of that one's cross-section
    on the slice beside: a whole cross-section of an organelle the detector
    boxed in two pieces elsewhere holds both pieces, while the middle of two
    mitochondria boxed as one (the mask of such a box) holds a little of
    each. On real FIB-SEM, mitochondria lying side by side became one
    through such short organelles.

    Parameters
    ----------
    pairs : (k, 5) int array
        Label, label, overlap, first area, second area, in pixels
        (:func:`~.link.overlap_pairs` ``with_counts``).
    long : (m,) bool array
        Per label.
    holds : float

    Returns
    -------
    (j, 2) int array
        The pairs to join (:func:`~.link.merge_labels`).
    """
    a, b, w = pairs[:, 0], pairs[:, 1], pairs[:, 2].astype(np.float64)
    alike = long[a] == long[b]
    base = pairs[alike, :2]
    m = len(long)
    graph = sparse.coo_matrix((np.ones(len(base)), (base[:, 0], base[:, 1])), shape=(m, m))
    _, comp = connected_components(graph, directed=False)
    mixed = ~alike
    if not mixed.any():
        return base
    first_long = long[a][mixed]
    short_end = np.where(first_long, b[mixed], a[mixed])
    long_end = np.where(first_long, a[mixed], b[mixed])
    long_area = np.where(first_long, pairs[mixed, 3], pairs[mixed, 4])
    strong = w[mixed] >= holds * long_area
    key = comp[short_end].astype(np.int64) * m + comp[long_end]
    keys, inverse = np.unique(key, return_inverse=True)
    weight = np.bincount(inverse, weights=w[mixed])
    # per group of short organelles, the long group it overlaps most
    group = keys // m
    order = np.lexsort((-weight, group))
    best = np.ones(len(order), bool)
    best[1:] = group[order][1:] != group[order][:-1]
    take = np.isin(key, keys[order][best]) | strong
    return np.concatenate([base, np.column_stack([short_end[take], long_end[take]])])


def long_enough(
    labels: np.ndarray, slices: np.ndarray, min_slices: int, n_slices: int, m: int
) -> np.ndarray:
    """Per label 0..m-1: on ``min_slices`` slices or more, or on the stack's first or last slice.

    The stack cuts an organelle at its ends, so a short extent there says
    nothing: the minimum span (:func:`drop_small`) spares such organelles,
    and the bridge merge with ``short_joins_one`` counts them as long
    (:func:`bridge_pairs`). Counted short, two large mitochondria side by
    side where lucchi's stack begins (tracked on 18 and 19 slices, under the
    20 of 100 nm) were joined through a box over both (docs/results.md,
    session 30).
    """
    ok = labels >= 0
    labels, slices = labels[ok], slices[ok]
    long = label_spans(labels, slices, m) >= min_slices
    long[labels[(slices == 0) | (slices == n_slices - 1)]] = True
    return long


def drop_small(det_labels: np.ndarray, det: dict, min_slices: int, n_slices: int) -> np.ndarray:
    """Remove organelles with empty masks or on fewer than ``min_slices`` slices.

    A detector's false positives are mostly flashes on one or two slices,
    while an organelle spans many. Organelles on the first or last slice are
    kept: the stack cuts them, so a short extent is expected there. Renumbers
    the rest 0..m-1.
    """
    if not len(det_labels):
        return det_labels
    total = np.bincount(det_labels, weights=det["area"])
    has_mask = det["area"] > 0
    long = long_enough(
        det_labels[has_mask], det["slice"][has_mask], min_slices, n_slices, len(total)
    )
    return _renumbered(det_labels, (total > 0) & long)


def drop_spanning(
    det_labels: np.ndarray, det: dict, inside: float = 0.7, cover: float = 0.6
) -> np.ndarray:
    """Unlink the boxes that hold two organelles of their own slice.

    A detector sometimes boxes two organelles lying side by side as one and
    each of them on its own as well. Such a box's mask is the middle of the
    pair (its central piece), and it joins whichever organelle it was linked
    to to the other one's pixels. Where a box holds (by ``inside`` of their
    area) boxes of two or more organelles of its class on its slice, and
    they cover ``cover`` of it, it is left out (label -1): they are what it
    shows.
    """
    out = det_labels.copy()
    xywh, cls = det["xywh"], det["cls"]
    for k in range(len(det["start"]) - 1):
        r = np.arange(det["start"][k], det["start"][k + 1])
        r = r[det_labels[r] >= 0]
        if len(r) < 3:
            continue
        x0, y0 = xywh[r, 0], xywh[r, 1]
        x1, y1 = x0 + xywh[r, 2], y0 + xywh[r, 3]
        iw = np.clip(np.minimum(x1[:, None], x1[None]) - np.maximum(x0[:, None], x0[None]), 0, None)
        ih = np.clip(np.minimum(y1[:, None], y1[None]) - np.maximum(y0[:, None], y0[None]), 0, None)
        area = xywh[r, 2] * xywh[r, 3]
        # held[i, j]: box j (smaller, same class) lies inside box i
        held = (iw * ih >= inside * area[None]) & (area[None] < area[:, None])
        held &= cls[r][:, None] == cls[r][None]
        for i in np.flatnonzero(held.sum(1) >= 2):
            # ... and they fill it: a large organelle's box may hold small ones of others
            filled = (iw[i] * ih[i])[held[i]].sum() >= cover * area[i]
            if filled and len(np.unique(det_labels[r[held[i]]])) >= 2:
                out[r[i]] = -1
    return out


def _renumbered(det_labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Labels with the kept organelles numbered 0..m-1 and the others (and -1) as -1."""
    new = np.where(keep, np.cumsum(keep) - 1, -1)
    return np.where(det_labels >= 0, new[det_labels], -1)


def drop_unconfirmed(
    det_labels: np.ndarray, det: dict, confirm: list[float], n_boxes: int
) -> np.ndarray:
    """Remove organelles the detector is never confident about (hysteresis).

    Boxes above the detection threshold continue an organelle, but an
    organelle is kept only where at least ``n_boxes`` of its boxes score at
    least its class's ``confirm`` threshold. False positives (vesicles and
    noise taken for small organelles) flicker at middling scores over a few
    slices; a real organelle near its equator is detected confidently on
    several. Even a confident box alone is no confirmation: organelles on the
    stack's first or last slice escape the minimum span (:func:`drop_small`),
    and a one-slice flash there was the demo's last false lysosome.
    Renumbers the rest 0..m-1.
    """
    ok = det_labels >= 0
    if not ok.any():
        return det_labels
    lab = det_labels[ok]
    sure = det["score"][ok] >= np.asarray(confirm, np.float64)[det["cls"][ok]]
    keep = np.bincount(lab, weights=sure) >= n_boxes
    return _renumbered(det_labels, keep)
