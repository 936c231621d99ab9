"""Object matching and per-class scores of two instance segmentations.

Both segmentations are integer label volumes on one grid (0 = background,
one id per object) with a class per id. Overlaps are counted sparsely: every
foreground voxel gives one ``(id_a, id_b)`` pair and ``np.unique`` counts the
pairs, slab by slab, so neither a dense per-object mask nor a copy of a large
(memory-mapped) volume is ever made.

Convention: A is the segmentation under test (automatic), B is the reference
(manual / ground truth). So precision = TP / (TP + FP) counts A's objects and
recall = TP / (TP + FN) counts B's. Detection metrics follow the paper:
F1 = 2 TP / (2 TP + FP + FN) and Jaccard = TP / (TP + FP + FN).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..errors import FamousError
from ..progress import ProgressFn, silent

UNCLASSIFIED = "unclassified"
NO_MATCH = "(none)"
# Voxels per slab when scanning label volumes: ~16 M keeps the pair keys
# (8 bytes each) and np.unique's sort buffers to a few hundred MB at most.
_SLAB_VOXELS = 1 << 24
# A part lies "inside" an object when at least this fraction of its voxels do.
_PART_FRACTION = 0.5


@dataclass
class Overlaps:
    """Voxel counts of every object and of every overlapping (a, b) pair.

    Attributes
    ----------
    ids_a, size_a : ndarray
        Object ids present in A (sorted, no 0) and their voxel counts.
    ids_b, size_b : ndarray
        The same for B.
    pair_a, pair_b, pair_n : ndarray
        Each overlapping pair of ids and the number of voxels they share.
    """

    ids_a: np.ndarray
    size_a: np.ndarray
    ids_b: np.ndarray
    size_b: np.ndarray
    pair_a: np.ndarray
    pair_b: np.ndarray
    pair_n: np.ndarray

    def size_of_a(self, ids: np.ndarray) -> np.ndarray:
        return _lookup(self.ids_a, self.size_a, ids)

    def size_of_b(self, ids: np.ndarray) -> np.ndarray:
        return _lookup(self.ids_b, self.size_b, ids)


@dataclass
class ClassScore:
    """Detection and volume scores of one class (one row of the paper's tables).

    ``volume_overlap`` is |A ∩ B| / |B| over all voxels of the class (Table 1);
    ``dice`` is 2 |A ∩ B| / (|A| + |B|). ``splits_a`` counts B objects that A
    cut into several parts, ``splits_b`` A objects that B cut into several
    parts; with the paper's adjustment the extra parts are not counted as FP
    (or FN) and a split object whose parts together reach the IoU threshold
    counts as one TP.
    """

    class_name: str
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    jaccard: float
    n_a: int
    n_b: int
    volume_a_um3: float
    volume_b_um3: float
    volume_overlap: float
    dice: float
    splits_a: int = 0
    splits_b: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Matching:
    """Matched pairs of one comparison (object ids of A and B with their IoU)."""

    a: np.ndarray
    b: np.ndarray
    iou: np.ndarray


def _lookup(ids: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``values`` at the positions of ``query`` in the sorted ``ids`` (0 where absent)."""
    query = np.asarray(query)
    if ids.size == 0:
        return np.zeros(query.shape, dtype=values.dtype)
    pos = np.clip(np.searchsorted(ids, query), 0, ids.size - 1)
    return np.where(ids[pos] == query, values[pos], 0)


def _reduce_counts(keys: list[np.ndarray], counts: list[np.ndarray]) -> tuple:
    if not keys:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    k = np.concatenate(keys)
    c = np.concatenate(counts)
    uniq, inv = np.unique(k, return_inverse=True)
    return uniq, np.bincount(inv, weights=c, minlength=uniq.size).astype(np.int64)


def count_overlaps(labels_a, labels_b, progress: ProgressFn | None = None) -> Overlaps:
    """Count object sizes and pairwise voxel overlaps of two label volumes.

    Parameters
    ----------
    labels_a, labels_b : array_like, shape (Z, Y, X)
        Integer instance labels (0 = background, ids below 2**32) on the same
        grid. ``np.memmap`` and other lazily read arrays are scanned in slabs
        of slices, never copied whole.
    progress : callable, optional
        ``progress(fraction, message)``.

    Returns
    -------
    Overlaps
    """
    progress = progress or silent
    if tuple(labels_a.shape) != tuple(labels_b.shape):
        raise FamousError(
            f"the two segmentations have different shapes {tuple(labels_a.shape)} and "
            f"{tuple(labels_b.shape)}.",
            None,
            "voxelise both on the same grid (same stack shape and voxel size).",
        )
    if len(labels_a.shape) != 3:
        raise FamousError(
            f"label volumes must be 3-D (Z, Y, X), got shape {tuple(labels_a.shape)}.",
            None,
            "give one label volume per segmentation.",
        )
    nz = labels_a.shape[0]
    per_slice = max(1, int(labels_a.shape[1]) * int(labels_a.shape[2]))
    step = max(1, _SLAB_VOXELS // per_slice)
    sa_k, sa_c, sb_k, sb_c, p_k, p_c = [], [], [], [], [], []
    for z0 in range(0, nz, step):
        a = np.asarray(labels_a[z0 : z0 + step]).ravel()
        b = np.asarray(labels_b[z0 : z0 + step]).ravel()
        if a.dtype.kind not in "ui" or b.dtype.kind not in "ui":
            raise FamousError(
                f"label volumes must hold integers, got {a.dtype} and {b.dtype}.",
                None,
                "give instance labels (one integer id per object, 0 = background).",
            )
        for arr, keys, counts in ((a, sa_k, sa_c), (b, sb_k, sb_c)):
            u, c = np.unique(arr[arr != 0], return_counts=True)
            keys.append(u.astype(np.uint64))
            counts.append(c)
        both = (a != 0) & (b != 0)
        key = (a[both].astype(np.uint64) << np.uint64(32)) | b[both].astype(np.uint64)
        u, c = np.unique(key, return_counts=True)
        p_k.append(u)
        p_c.append(c)
        progress(min(1.0, (z0 + step) / nz), "counting overlaps")
    ids_a, size_a = _reduce_counts(sa_k, sa_c)
    ids_b, size_b = _reduce_counts(sb_k, sb_c)
    pk, pn = _reduce_counts(p_k, p_c)
    return Overlaps(
        ids_a=ids_a.astype(np.int64),
        size_a=size_a,
        ids_b=ids_b.astype(np.int64),
        size_b=size_b,
        pair_a=(pk >> np.uint64(32)).astype(np.int64),
        pair_b=(pk & np.uint64(0xFFFFFFFF)).astype(np.int64),
        pair_n=pn,
    )


def object_classes(ids_present: np.ndarray, classes: Mapping[int, str]) -> dict[int, str]:
    """Class per object: every id of the mapping plus every id seen in the volume.

    Ids in the volume but not in the mapping get ``unclassified``; ids in the
    mapping with no voxel on the grid still count (as unmatched objects).

    Parameters
    ----------
    ids_present : ndarray
        Object ids found in the volume.
    classes : mapping of int to str
        Class name per object id (id 0 is ignored).

    Returns
    -------
    dict of int to str
    """
    out = {int(k): str(v) for k, v in classes.items() if int(k) != 0}
    for i in ids_present.tolist():
        out.setdefault(int(i), UNCLASSIFIED)
    return out


def assign(
    pair_a: np.ndarray,
    pair_b: np.ndarray,
    pair_iou: np.ndarray,
    iou_threshold: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matching maximising total IoU among pairs with IoU >= threshold.

    The candidate graph is cut into connected components and each component is
    solved with :func:`scipy.optimize.linear_sum_assignment`, so thousands of
    objects never need one dense IoU matrix.

    Returns
    -------
    a, b, iou : ndarray
        Matched ids and their IoU.
    """
    keep = pair_iou >= iou_threshold
    pa, pb, pv = pair_a[keep], pair_b[keep], pair_iou[keep]
    if pa.size == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0)
    ua, ia = np.unique(pa, return_inverse=True)
    ub, ib = np.unique(pb, return_inverse=True)
    na, nb = ua.size, ub.size
    graph = coo_matrix((np.ones(pa.size), (ia, na + ib)), shape=(na + nb, na + nb))
    _, comp = connected_components(graph, directed=False)
    comp_of_pair = comp[ia]
    order = np.argsort(comp_of_pair, kind="stable")
    bounds = np.flatnonzero(np.diff(comp_of_pair[order])) + 1
    out_a, out_b, out_v = [], [], []
    for grp in np.split(order, bounds):
        if grp.size == 1:
            out_a.append(ua[ia[grp]])
            out_b.append(ub[ib[grp]])
            out_v.append(pv[grp])
            continue
        ra, la = np.unique(ia[grp], return_inverse=True)
        rb, lb = np.unique(ib[grp], return_inverse=True)
        mat = np.zeros((ra.size, rb.size))
        mat[la, lb] = pv[grp]
        r, c = linear_sum_assignment(mat, maximize=True)
        ok = mat[r, c] >= iou_threshold
        out_a.append(ua[ra[r[ok]]])
        out_b.append(ub[rb[c[ok]]])
        out_v.append(mat[r[ok], c[ok]])
    return np.concatenate(out_a), np.concatenate(out_b), np.concatenate(out_v)


def _pair_iou(ov: Overlaps) -> np.ndarray:
    """IoU of every overlapping (a, b) pair."""
    sa = ov.size_of_a(ov.pair_a)
    sb = ov.size_of_b(ov.pair_b)
    return ov.pair_n / np.maximum(sa + sb - ov.pair_n, 1)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else math.nan


def _split_adjust(
    parent_ids: list[int],
    parent_size: dict[int, int],
    part_size: dict[int, int],
    inter: dict[tuple[int, int], int],
    parent_matched: set[int],
    part_matched: set[int],
    iou_threshold: float,
) -> tuple[int, set[int], set[int]]:
    """Find parents cut into several parts by the other segmentation.

    ``inter`` maps (part, parent) to shared voxels. A part belongs to a parent
    when most of its voxels lie inside it. Returns the number of split
    parents, the parts no longer counted as unmatched and the parents newly
    counted as found.
    """
    parts_of: dict[int, list[int]] = {}
    for (part, parent), n in inter.items():
        if part_size.get(part, 0) and n >= _PART_FRACTION * part_size[part]:
            parts_of.setdefault(parent, []).append(part)
    n_split = 0
    freed: set[int] = set()
    found: set[int] = set()
    for parent in parent_ids:
        parts = parts_of.get(parent, [])
        if len(parts) < 2:
            continue
        n_split += 1
        loose = [p for p in parts if p not in part_matched]
        if parent in parent_matched:
            freed.update(loose)
            continue
        if len(loose) < 2:
            continue
        shared = sum(inter[(p, parent)] for p in loose)
        union = parent_size[parent] + sum(part_size[p] for p in loose) - shared
        if union and shared / union >= iou_threshold:
            found.add(parent)
            freed.update(loose)
    return n_split, freed, found


def _adjust_for_splits(
    ids_a: list[int],
    ids_b: list[int],
    size_a: dict[int, int],
    size_b: dict[int, int],
    inter_ab: dict[tuple[int, int], int],
    matched_a: set[int],
    matched_b: set[int],
    iou_threshold: float,
) -> tuple[int, int, int, int, int]:
    """The paper's split adjustment of one class, both ways.

    First B objects cut into parts by A, then A objects cut into parts by B.
    ``inter_ab`` maps (a, b) to shared voxels. Returns ``splits_a``,
    ``splits_b`` and the changes to TP, FP and FN.
    """
    splits_a, freed_a, found_b = _split_adjust(
        ids_b, size_b, size_a, inter_ab, matched_b, matched_a, iou_threshold
    )
    # A objects already accounted for as parts cannot be parents too.
    inter_ba = {(b, a): n for (a, b), n in inter_ab.items() if a not in freed_a}
    splits_b, freed_b, found_a = _split_adjust(
        ids_a, size_a, size_b, inter_ba, matched_a, matched_b | found_b, iou_threshold
    )
    d_tp = len(found_b) + len(found_a)
    d_fp = -len(freed_a) - len(found_a)
    d_fn = -len(found_b) - len(freed_b)
    return splits_a, splits_b, d_tp, d_fp, d_fn


def score_overlaps(
    ov: Overlaps,
    classes_a: Mapping[int, str],
    classes_b: Mapping[int, str],
    iou_threshold: float = 0.5,
    voxel_volume_um3: float = 1.0,
    adjust_splits: bool = True,
    class_order: list[str] | None = None,
) -> tuple[list[ClassScore], Matching]:
    """Per-class scores from counted overlaps (see :func:`match_objects`).

    Returns
    -------
    scores : list of ClassScore
        One per class, in ``class_order`` then alphabetical order.
    matching : Matching
        The matched pairs of all classes.
    """
    cls_a = object_classes(ov.ids_a, classes_a)
    cls_b = object_classes(ov.ids_b, classes_b)
    names = list(class_order or [])
    names += sorted((set(cls_a.values()) | set(cls_b.values())) - set(names))

    pa_cls = np.array([cls_a[int(i)] for i in ov.pair_a], dtype=object)
    pb_cls = np.array([cls_b[int(i)] for i in ov.pair_b], dtype=object)
    same = pa_cls == pb_cls if ov.pair_a.size else np.zeros(0, bool)
    iou = _pair_iou(ov)

    m_a, m_b, m_v = assign(ov.pair_a[same], ov.pair_b[same], iou[same], iou_threshold)
    matched_a = set(m_a.tolist())
    matched_b = set(m_b.tolist())
    size_a = dict(zip(ov.ids_a.tolist(), ov.size_a.tolist()))
    size_b = dict(zip(ov.ids_b.tolist(), ov.size_b.tolist()))
    m_cls = np.array([cls_a[int(i)] for i in m_a], dtype=object)

    scores = []
    for name in names:
        ids_a = [i for i, c in cls_a.items() if c == name]
        ids_b = [i for i, c in cls_b.items() if c == name]
        n_a, n_b = len(ids_a), len(ids_b)
        tp = int(np.count_nonzero(m_cls == name))
        fp, fn = n_a - tp, n_b - tp
        splits_a = splits_b = 0
        if adjust_splits:
            sel = same & (pa_cls == name)
            inter_ab = {
                (int(a), int(b)): int(n)
                for a, b, n in zip(ov.pair_a[sel], ov.pair_b[sel], ov.pair_n[sel])
            }
            splits_a, splits_b, d_tp, d_fp, d_fn = _adjust_for_splits(
                ids_a, ids_b, size_a, size_b, inter_ab, matched_a, matched_b, iou_threshold
            )
            tp, fp, fn = tp + d_tp, fp + d_fp, fn + d_fn
        vol_a = sum(size_a.get(i, 0) for i in ids_a)
        vol_b = sum(size_b.get(i, 0) for i in ids_b)
        inter = int(ov.pair_n[same & (pa_cls == name)].sum()) if ov.pair_n.size else 0
        scores.append(
            ClassScore(
                class_name=name,
                tp=tp,
                fp=fp,
                fn=fn,
                precision=_ratio(tp, tp + fp),
                recall=_ratio(tp, tp + fn),
                f1=_ratio(2 * tp, 2 * tp + fp + fn),
                jaccard=_ratio(tp, tp + fp + fn),
                n_a=n_a,
                n_b=n_b,
                volume_a_um3=vol_a * voxel_volume_um3,
                volume_b_um3=vol_b * voxel_volume_um3,
                volume_overlap=_ratio(inter, vol_b),
                dice=_ratio(2 * inter, vol_a + vol_b),
                splits_a=splits_a,
                splits_b=splits_b,
            )
        )
    return scores, Matching(a=m_a, b=m_b, iou=m_v)


def match_objects(
    labels_a,
    classes_a: Mapping[int, str],
    labels_b,
    classes_b: Mapping[int, str],
    iou_threshold: float = 0.5,
    voxel_volume_um3: float = 1.0,
    adjust_splits: bool = True,
    class_order: list[str] | None = None,
    progress: ProgressFn | None = None,
) -> list[ClassScore]:
    """Match the objects of two label volumes per class and score the result.

    Within each class the IoU of every overlapping pair of objects is computed,
    objects are paired one-to-one by Hungarian assignment
    (:func:`scipy.optimize.linear_sum_assignment`) and a pair with
    IoU >= ``iou_threshold`` is a true positive.

    Parameters
    ----------
    labels_a, labels_b : array_like, shape (Z, Y, X)
        Instance labels of the tested (A, automatic) and reference (B, manual)
        segmentation on one grid; 0 is background. May be ``np.memmap``.
    classes_a, classes_b : mapping of int to str
        Class name per object id. Ids missing from a mapping are counted as
        ``unclassified``; ids in a mapping with no voxel count as unmatched.
    iou_threshold : float
        Minimum IoU of a true positive (the paper: 0.5).
    voxel_volume_um3 : float
        Volume of one voxel, for the volume columns.
    adjust_splits : bool
        Apply the paper's adjustment for objects cut into several parts.
    class_order : list of str, optional
        Classes listed first, in this order (others follow alphabetically).
    progress : callable, optional
        ``progress(fraction, message)``.

    Returns
    -------
    list of ClassScore
        One per class.

    Examples
    --------
    >>> a = np.zeros((1, 4, 4), np.uint16); a[0, :2, :2] = 1
    >>> [s.f1 for s in match_objects(a, {1: "x"}, a, {1: "x"})]
    [1.0]
    """
    ov = count_overlaps(labels_a, labels_b, progress)
    scores, _ = score_overlaps(
        ov, classes_a, classes_b, iou_threshold, voxel_volume_um3, adjust_splits, class_order
    )
    return scores


def class_confusion(
    ov: Overlaps, classes_a: Mapping[int, str], classes_b: Mapping[int, str], iou_threshold: float
) -> dict[tuple[str, str], int]:
    """Classes of objects matched regardless of class.

    Returns
    -------
    dict
        ``(class_in_b, class_in_a) -> count``; unmatched objects pair with
        ``NO_MATCH`` (an A object no B object matched: ``(NO_MATCH, class_a)``).
    """
    cls_a = object_classes(ov.ids_a, classes_a)
    cls_b = object_classes(ov.ids_b, classes_b)
    iou = _pair_iou(ov)
    m_a, m_b, _ = assign(ov.pair_a, ov.pair_b, iou, iou_threshold)
    out: dict[tuple[str, str], int] = {}
    for a, b in zip(m_a.tolist(), m_b.tolist()):
        key = (cls_b[b], cls_a[a])
        out[key] = out.get(key, 0) + 1
    for i in set(cls_b) - set(m_b.tolist()):
        out[(cls_b[i], NO_MATCH)] = out.get((cls_b[i], NO_MATCH), 0) + 1
    for i in set(cls_a) - set(m_a.tolist()):
        out[(NO_MATCH, cls_a[i])] = out.get((NO_MATCH, cls_a[i]), 0) + 1
    return out
