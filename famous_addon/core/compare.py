"""Compare two instance segmentations object by object (the paper's Tables 1-7).

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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .errors import FamousError
from .progress import ProgressFn, silent, sub

UNCLASSIFIED = "unclassified"
NO_MATCH = "(none)"
# Voxels per slab when scanning label volumes: ~16 M keeps the pair keys
# (8 bytes each) and np.unique's sort buffers to a few hundred MB at most.
_SLAB_VOXELS = 1 << 24
# A part lies "inside" an object when at least this fraction of its voxels do.
_PART_FRACTION = 0.5
# Voxelised STL segmentations larger than this go to a temporary file, not RAM.
_IN_MEMORY_BYTES = 1 << 30


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


def _object_classes(ids_present: np.ndarray, classes: Mapping[int, str]) -> dict[int, str]:
    """Class per object: every id of the mapping plus every id seen in the volume.

    Ids in the volume but not in the mapping get ``unclassified``; ids in the
    mapping with no voxel on the grid still count (as unmatched objects).
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
    cls_a = _object_classes(ov.ids_a, classes_a)
    cls_b = _object_classes(ov.ids_b, classes_b)
    names = list(class_order or [])
    names += sorted((set(cls_a.values()) | set(cls_b.values())) - set(names))

    pa_cls = np.array([cls_a[int(i)] for i in ov.pair_a], dtype=object)
    pb_cls = np.array([cls_b[int(i)] for i in ov.pair_b], dtype=object)
    same = pa_cls == pb_cls if ov.pair_a.size else np.zeros(0, bool)
    sa = ov.size_of_a(ov.pair_a)
    sb = ov.size_of_b(ov.pair_b)
    iou = ov.pair_n / np.maximum(sa + sb - ov.pair_n, 1)

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
            splits_a, freed_a, found_b = _split_adjust(
                ids_b, size_b, size_a, inter_ab, matched_b, matched_a, iou_threshold
            )
            tp, fp, fn = tp + len(found_b), fp - len(freed_a), fn - len(found_b)
            # A objects already accounted for as parts cannot be parents too.
            inter_ba = {(b, a): n for (a, b), n in inter_ab.items() if a not in freed_a}
            splits_b, freed_b, found_a = _split_adjust(
                ids_a, size_a, size_b, inter_ba, matched_a, matched_b | found_b, iou_threshold
            )
            tp, fp, fn = tp + len(found_a), fp - len(found_a), fn - len(freed_b)
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


def _pct(x: float) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def format_table(scores: list[ClassScore]) -> str:
    """A plain-text table of per-class scores for the terminal.

    Parameters
    ----------
    scores : list of ClassScore

    Returns
    -------
    str
    """
    head = (
        "class",
        "n_a",
        "n_b",
        "TP",
        "FP",
        "FN",
        "precision",
        "recall",
        "jaccard",
        "F1",
        "vol.overlap",
        "dice",
        "vol_a µm³",
        "vol_b µm³",
    )
    rows = [
        (
            s.class_name,
            str(s.n_a),
            str(s.n_b),
            str(s.tp),
            str(s.fp),
            str(s.fn),
            _pct(s.precision),
            _pct(s.recall),
            _pct(s.jaccard),
            _pct(s.f1),
            _pct(s.volume_overlap),
            _pct(s.dice),
            f"{s.volume_a_um3:.4g}",
            f"{s.volume_b_um3:.4g}",
        )
        for s in scores
    ]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)
    ]
    lines = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths))
        )
    ]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append(
            "  ".join(
                v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))
            )
        )
    return "\n".join(lines)


# -- segmentations from disk ----------------------------------------------------

#: Default colours (RGB 0..1) of the paper's figures: M1 red, M2 blue, automatic green.
COLOURS = {"M1": (0.85, 0.12, 0.12), "M2": (0.12, 0.35, 0.9), "automatic": (0.1, 0.7, 0.2)}
_MORE_COLOURS = ((0.9, 0.6, 0.0), (0.6, 0.2, 0.8), (0.0, 0.7, 0.7), (0.5, 0.5, 0.5))


def colour_for(name: str, index: int = 0) -> tuple[float, float, float]:
    """The display colour of a segmentation (by name, else from a fixed palette)."""
    return COLOURS.get(name, _MORE_COLOURS[index % len(_MORE_COLOURS)])


class LabelSlices:
    """A label volume read lazily, a slab of slices at a time, from a TIFF stack.

    Supports ``shape``, ``dtype`` and indexing by a slice index or a slice
    range on the first axis, which is all :func:`count_overlaps` uses.
    """

    def __init__(self, stack):
        self._stack = stack
        self.shape = tuple(stack.shape)
        self.dtype = np.dtype(stack.dtype)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            head, rest = key[0], key[1:]
            return self[head][(slice(None),) + rest if isinstance(head, slice) else rest]
        if isinstance(key, slice):
            ks = range(*key.indices(self.shape[0]))
            out = np.zeros((len(ks),) + self.shape[1:], self.dtype)
            for i, k in enumerate(ks):
                out[i] = self._stack.read_raw(k)
            return out
        return self._stack.read_raw(int(key))


class Resampled:
    """A label volume seen on another grid (nearest voxel centre), slab by slab.

    Voxel centres of the target grid that fall outside the source are 0.
    """

    def __init__(self, labels, source_voxel_um, grid):
        self._src = labels
        self.shape = tuple(grid.shape)
        self.dtype = np.dtype(labels.dtype)
        self._idx = []
        self._ok = []
        for n_src, v_src, n, v in zip(
            labels.shape, source_voxel_um, grid.shape, grid.voxel_size_um
        ):
            i = np.round(np.arange(n) * v / v_src).astype(np.int64)
            self._ok.append((i >= 0) & (i < n_src))
            self._idx.append(np.clip(i, 0, n_src - 1))

    def __getitem__(self, key):
        if not isinstance(key, slice):
            return self[int(key) : int(key) + 1][0]
        ks = np.arange(*key.indices(self.shape[0]))
        zi, yi, xi = self._idx[0][ks], self._idx[1], self._idx[2]
        out = np.zeros((ks.size,) + self.shape[1:], self.dtype)
        for j, (k, ok) in enumerate(zip(zi, self._ok[0][ks])):
            if ok:
                out[j] = np.asarray(self._src[int(k)])[np.ix_(yi, xi)]
        out[:, ~self._ok[1], :] = 0
        out[:, :, ~self._ok[2]] = 0
        return out


@dataclass
class Segmentation:
    """One segmentation on the comparison grid.

    Attributes
    ----------
    name : str
        E.g. "automatic", "M1", "M2".
    labels : array_like, shape grid.shape
        Instance labels (may be lazy: only slabs are read).
    classes : dict of int to str
        Class per object id.
    kind : str
        "run", "labels" or "stl".
    source : Path
    notes : list of str
        Per-file warnings and what was done about them.
    stack_path : Path or None
        The EM stack it was made from, when known (for slice overlays).
    """

    name: str
    labels: object
    classes: dict[int, str]
    kind: str
    source: Path
    notes: list[str] = field(default_factory=list)
    stack_path: Path | None = None
    colour: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @property
    def is_automatic(self) -> bool:
        return self.kind == "run"


def _same_grid(shape, voxel_um, grid) -> bool:
    return tuple(shape) == tuple(grid.shape) and np.allclose(voxel_um, grid.voxel_size_um)


def _on_grid(labels, voxel_um, grid):
    return labels if _same_grid(labels.shape, voxel_um, grid) else Resampled(labels, voxel_um, grid)


def _open_labels(path: Path):
    """A label TIFF as a memory map when its pixels are contiguous, else read lazily."""
    import tifffile

    from .stack import open_stack

    stack = open_stack(path)
    try:
        labels = tifffile.memmap(path, mode="r")
        if labels.shape != tuple(stack.shape):
            raise ValueError("not a plain Z-stack")
    except (ValueError, OSError):  # compressed or tiled: tifffile cannot map it
        labels = LabelSlices(stack)
    if np.dtype(labels.dtype).kind not in "ui":
        raise FamousError(
            f"holds {labels.dtype} pixels, not integer labels.",
            path,
            "give an instance label TIFF (one integer id per object, 0 = background).",
        )
    return labels, stack


def read_classes_csv(path: Path) -> dict[int, str]:
    """``id,class`` rows (other columns ignored) as a mapping."""
    from .fileio import read_csv

    rows = read_csv(path)
    if not rows or not {"id", "class"} <= set(rows[0]):
        raise FamousError(
            "needs the columns id and class.",
            path,
            "write one row per object: id,class (e.g. 7,mitochondria).",
        )
    try:
        return {int(r["id"]): r["class"] for r in rows}
    except ValueError:
        raise FamousError("has an id that is not an integer.", path) from None


def _classes_csv_for(tif: Path) -> Path:
    """The classes CSV of a label TIFF: same stem, else the only id,class CSV beside it."""
    same = tif.with_suffix(".csv")
    if same.is_file():
        return same
    found = []
    for p in sorted(tif.parent.glob("*.csv")):
        with open(p, newline="") as fh:
            head = fh.readline().strip().split(",")
        if "id" in head and "class" in head:
            found.append(p)
    if len(found) == 1:
        return found[0]
    raise FamousError(
        "has no classes CSV beside it." if not found else "has several classes CSVs beside it.",
        tif,
        f"give it as {tif.name},CLASSES.csv (a CSV with the columns id,class).",
    )


def input_kind(spec: str | Path) -> str:
    """What an input is: "run" folder, "labels" TIFF (+ CSV) or "stl" file/folder."""
    text = str(spec)
    path = Path(text.rsplit(",", 1)[0] if text.lower().endswith(".csv") else text)
    if not path.exists():
        raise FamousError("does not exist.", path, "check the path of this segmentation.")
    if path.is_dir() and (path / "run.json").is_file():
        return "run"
    if path.suffix.lower() in (".tif", ".tiff"):
        return "labels"
    if path.is_dir() or path.suffix.lower() == ".stl":
        return "stl"
    raise FamousError(
        "is not a run folder, label TIFF or STL file/folder.",
        path,
        "give a `famous run` output folder, LABELS.tif[,CLASSES.csv] or a folder of STL files.",
    )


def _native_grid(spec: str | Path):
    """(Grid, stack path) that an input defines by itself, or (None, None) for STL."""
    from .runfolder import RunFolder
    from .stl import Grid

    kind = input_kind(spec)
    if kind == "run":
        run = RunFolder(spec)
        stack = run.info.get("input", {}).get("path")
        return Grid.from_nm(run.shape, run.voxel_size_nm), Path(stack) if stack else None
    if kind == "labels":
        from .stack import open_stack

        tif = Path(str(spec).rsplit(",", 1)[0]) if str(spec).lower().endswith(".csv") else spec
        st = open_stack(tif)
        if st.voxel_size_nm is None:
            return None, None
        return Grid.from_nm(st.shape, st.voxel_size_nm), None
    return None, None


def resolve_grid(inputs, stack=None, voxel_size_nm=None):
    """The common grid: the stack's (or the first run folder's / label TIFF's) extent.

    Parameters
    ----------
    inputs : list of str or Path
        The segmentations to compare.
    stack : str or Path, optional
        The EM stack; its shape and voxel size define the grid.
    voxel_size_nm : (z, y, x), optional
        Voxel size of the comparison grid; default the stack's. With a stack
        of unknown voxel size, it is the stack's voxel size.

    Returns
    -------
    (Grid, Path or None)
        The grid and the EM stack for overlays, when known.
    """
    from .stl import Grid

    base, stack_path = None, None
    if stack is not None:
        from .stack import open_stack

        st = open_stack(stack, None)
        vs = st.voxel_size_nm or voxel_size_nm
        if vs is None:
            st.require_voxel_size()
        base, stack_path = Grid.from_nm(st.shape, vs), Path(stack)
    else:
        for spec in sorted(inputs, key=lambda s: input_kind(s) != "run"):
            base, stack_path = _native_grid(spec)
            if base is not None:
                break
    if base is None:
        raise FamousError(
            "no input defines the grid (STL files have no voxel size).",
            None,
            "give --stack STACK (the EM stack), a run folder or a label TIFF with a voxel size.",
        )
    if voxel_size_nm is not None:
        base = base.resampled(tuple(v / 1000.0 for v in voxel_size_nm))
    return base, stack_path


def _label_buffer(grid, n_objects: int):
    """A zeroed label volume for the grid: in memory, or file-backed when large."""
    dtype = np.dtype(np.uint16 if n_objects < 2**16 else np.uint32)
    if int(np.prod(grid.shape)) * dtype.itemsize <= _IN_MEMORY_BYTES:
        return np.zeros(grid.shape, dtype)
    import tempfile

    # The file is deleted when the array is released; new file pages read as zeros.
    return np.memmap(tempfile.TemporaryFile(), dtype=dtype, mode="w+", shape=grid.shape)


def load_segmentation(
    spec: str | Path,
    grid,
    name: str,
    class_map: Mapping[str, str] | None = None,
    transform=None,
    progress: ProgressFn | None = None,
) -> Segmentation:
    """Open one input on the comparison grid.

    Parameters
    ----------
    spec : str or Path
        A run folder, ``LABELS.tif`` or ``LABELS.tif,CLASSES.csv``, or an STL
        file or folder (one sub-folder per class).
    grid : Grid
        The comparison grid (:func:`resolve_grid`).
    name : str
        Name shown in tables and plots.
    class_map, transform :
        STL only: file-name pattern → class, and units/axes
        (:class:`~famous_addon.core.stl.Transform`).
    progress : callable, optional

    Returns
    -------
    Segmentation
    """
    from .runfolder import RunFolder
    from .stl import check_bounds, read_stl_segmentation, voxelise

    progress = progress or silent
    kind = input_kind(spec)
    notes: list[str] = []
    stack_path = None
    if kind == "run":
        run = RunFolder(spec)
        if run.labels_path is None:
            raise FamousError(
                "has no labels.tif.",
                spec,
                "run `famous run ... --labels` (or tick 'Write labels' in Blender) to write it.",
            )
        labels, _ = _open_labels(run.labels_path)
        labels = _on_grid(labels, tuple(v / 1000.0 for v in run.voxel_size_nm), grid)
        classes = {int(r["id"]): r["class"] for r in run.organelles()}
        path = run.path
        stack = run.info.get("input", {}).get("path")
        stack_path = Path(stack) if stack else None
    elif kind == "labels":
        text = str(spec)
        if text.lower().endswith(".csv"):
            tif, csv = (Path(p) for p in text.rsplit(",", 1))
        else:
            tif = Path(text)
            csv = _classes_csv_for(tif)
        labels, st = _open_labels(tif)
        if st.voxel_size_nm is None:
            if tuple(st.shape) != tuple(grid.shape):
                raise FamousError(
                    "has no voxel size and another shape than the comparison grid.",
                    tif,
                    "save it with its voxel size (ImageJ/OME metadata) or give --stack.",
                )
            notes.append(f"{tif}: no voxel size in the file; taken as the grid's")
            vs = grid.voxel_size_um
        else:
            vs = tuple(v / 1000.0 for v in st.voxel_size_nm)
        labels = _on_grid(labels, vs, grid)
        classes = read_classes_csv(csv)
        path = tif
    else:
        seg = read_stl_segmentation(spec, class_map, transform, progress=sub(progress, 0, 0.3))
        notes.extend(seg.warnings)
        if not seg.objects:
            raise FamousError(
                "holds no readable STL object.", spec, "check the files (see the warnings above)."
            )
        check = check_bounds(seg.bounds_xyz(), grid, transform.scale if transform else 1.0)
        if check.suggested_scale is not None or check.fraction < 0.5:
            notes.append(f"{spec}: {check.message}")
        labels, classes, vox_notes = voxelise(
            seg.objects, grid, _label_buffer(grid, len(seg.objects)), sub(progress, 0.3, 1)
        )
        notes.extend(vox_notes)
        path = Path(spec)
    progress(1.0, f"{name} loaded")
    return Segmentation(name, labels, classes, kind, path, notes, stack_path, colour_for(name))


def default_names(inputs) -> list[str]:
    """Run folders are "automatic" (numbered if several), the others M1, M2, ..."""
    kinds = [input_kind(s) for s in inputs]
    n_runs = kinds.count("run")
    names, i_run, i_man = [], 0, 0
    for k in kinds:
        if k == "run":
            i_run += 1
            names.append("automatic" if n_runs == 1 else f"automatic{i_run}")
        else:
            i_man += 1
            names.append(f"M{i_man}")
    return names


# -- comparing several segmentations ---------------------------------------------


@dataclass
class PairResult:
    """All scores of one tested segmentation against one reference."""

    test: str
    reference: str
    scores: dict[float, list[ClassScore]]
    matching: Matching
    confusion: dict[tuple[str, str], int]
    object_volumes: list[tuple[str, float, float]]

    @property
    def name(self) -> str:
        return f"{self.test} vs {self.reference}"


@dataclass
class Comparison:
    """The result of :func:`compare_segmentations`."""

    segmentations: list[Segmentation]
    grid: object
    iou_threshold: float
    thresholds: list[float]
    pairs: list[PairResult]
    class_order: list[str]
    class_volumes: dict[str, dict[str, float]]
    object_volumes: dict[str, list[tuple[str, float]]]
    stack_path: Path | None = None

    def segmentation(self, name: str) -> Segmentation:
        return next(s for s in self.segmentations if s.name == name)


def default_pairs(segs: list[Segmentation]) -> list[tuple[str, str]]:
    """Every pair once: automatic results against each manual one, then manual
    against manual (the earlier named one tested against the later, as in the
    paper's "M1 vs M2")."""
    ordered = sorted(segs, key=lambda s: not s.is_automatic)
    return [
        (ordered[i].name, ordered[j].name)
        for i in range(len(ordered))
        for j in range(i + 1, len(ordered))
    ]


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
    cls_a = _object_classes(ov.ids_a, classes_a)
    cls_b = _object_classes(ov.ids_b, classes_b)
    sa = ov.size_of_a(ov.pair_a)
    sb = ov.size_of_b(ov.pair_b)
    iou = ov.pair_n / np.maximum(sa + sb - ov.pair_n, 1)
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


def compare_segmentations(
    segs: list[Segmentation],
    grid,
    pairs: list[tuple[str, str]] | None = None,
    iou_threshold: float = 0.5,
    extra_thresholds: tuple[float, ...] = (0.25,),
    adjust_splits: bool = True,
    class_order: list[str] | None = None,
    progress: ProgressFn | None = None,
) -> Comparison:
    """Score every pair of segmentations (automatic vs M1, vs M2, M1 vs M2, ...).

    Overlaps are counted once per pair; all thresholds, the class confusion
    and the per-object volumes come from those counts.

    Parameters
    ----------
    segs : list of Segmentation
        On one grid (:func:`load_segmentation`).
    grid : Grid
    pairs : list of (test, reference) names, optional
        Default :func:`default_pairs`.
    iou_threshold : float
        The main IoU threshold (tables, confusion, scatter).
    extra_thresholds : tuple of float
        Also reported (the issue asks for 0.25).
    adjust_splits : bool
        The paper's adjustment for objects cut into several parts.
    class_order : list of str, optional
        Classes first in this order (e.g. the class config's).
    progress : callable, optional

    Returns
    -------
    Comparison
    """
    progress = progress or silent
    by_name = {s.name: s for s in segs}
    if len(by_name) != len(segs):
        raise FamousError("two segmentations have the same name.", None, "give distinct --names.")
    pairs = pairs or default_pairs(segs)
    for t, r in pairs:
        for n in (t, r):
            if n not in by_name:
                raise FamousError(f"pair {t}:{r} names unknown segmentation {n!r}.", None)
    thresholds = [iou_threshold] + [t for t in extra_thresholds if t != iou_threshold]
    vv = grid.voxel_volume_um3
    order = list(class_order or [])
    for s in segs:
        order += [c for c in dict.fromkeys(s.classes.values()) if c not in order]
    sizes: dict[str, dict[int, int]] = {}
    results = []
    for i, (t, r) in enumerate(pairs):
        a, b = by_name[t], by_name[r]
        ov = count_overlaps(a.labels, b.labels, sub(progress, i / len(pairs), (i + 1) / len(pairs)))
        sizes.setdefault(t, dict(zip(ov.ids_a.tolist(), ov.size_a.tolist())))
        sizes.setdefault(r, dict(zip(ov.ids_b.tolist(), ov.size_b.tolist())))
        scores, matching = {}, None
        for thr in thresholds:
            sc, m = score_overlaps(ov, a.classes, b.classes, thr, vv, adjust_splits, order)
            scores[thr] = sc
            if thr == iou_threshold:
                matching = m
        cls_a = _object_classes(ov.ids_a, a.classes)
        vol_pairs = [
            (cls_a[int(ia)], sizes[t].get(int(ia), 0) * vv, sizes[r].get(int(ib), 0) * vv)
            for ia, ib in zip(matching.a, matching.b)
        ]
        results.append(
            PairResult(
                test=t,
                reference=r,
                scores=scores,
                matching=matching,
                confusion=class_confusion(ov, a.classes, b.classes, iou_threshold),
                object_volumes=vol_pairs,
            )
        )
    class_volumes, object_volumes = {}, {}
    for s in segs:
        sz = sizes.get(s.name, {})
        cls = _object_classes(np.array(sorted(sz), dtype=np.int64), s.classes)
        per = {c: 0.0 for c in order}
        objs = []
        for i, c in cls.items():
            v = sz.get(i, 0) * vv
            per[c] = per.get(c, 0.0) + v
            objs.append((c, v))
        class_volumes[s.name] = per
        object_volumes[s.name] = objs
    stack_path = next((s.stack_path for s in segs if s.stack_path is not None), None)
    return Comparison(
        segmentations=segs,
        grid=grid,
        iou_threshold=iou_threshold,
        thresholds=thresholds,
        pairs=results,
        class_order=order,
        class_volumes=class_volumes,
        object_volumes=object_volumes,
        stack_path=stack_path,
    )


def run_compare(
    inputs: list[str | Path],
    out: str | Path,
    names: list[str] | None = None,
    stack: str | Path | None = None,
    voxel_size_nm: tuple[float, float, float] | None = None,
    iou_threshold: float = 0.5,
    extra_thresholds: tuple[float, ...] = (0.25,),
    pairs: list[tuple[str, str]] | None = None,
    class_map: Mapping[str, str] | None = None,
    transform=None,
    slices: list[int] | None = None,
    plots: bool = True,
    adjust_splits: bool = True,
    progress: ProgressFn | None = None,
) -> tuple[Comparison, dict[str, Path]]:
    """Load, compare and write a report: what ``famous compare`` and Blender run.

    Parameters
    ----------
    inputs : list of str or Path
        Two or more run folders, label TIFFs (``LABELS.tif[,CLASSES.csv]``) or
        STL files/folders.
    out : str or Path
        Output folder for tables, report and plots.
    names : list of str, optional
        One per input; default :func:`default_names` (automatic, M1, M2, ...).
    stack : str or Path, optional
        The EM stack (grid and overlays); default from a run folder.
    voxel_size_nm : (z, y, x), optional
        Comparison grid voxel size; default the stack's.
    iou_threshold, extra_thresholds, pairs :
        See :func:`compare_segmentations`.
    class_map, transform :
        For STL inputs, see :func:`~famous_addon.core.stl.read_stl_segmentation`.
    slices : list of int, optional
        Slices for the overlay plots.
    plots : bool
        Draw the PNG plots.
    adjust_splits : bool
        The paper's adjustment for objects cut into several parts.
    progress : callable, optional

    Returns
    -------
    (Comparison, dict of str to Path)
    """
    from .compare_report import write_outputs

    progress = progress or silent
    if len(inputs) < 2:
        raise FamousError("needs at least two segmentations to compare.", None)
    names = list(names) if names else default_names(inputs)
    if len(names) != len(inputs):
        raise FamousError(
            f"{len(names)} names for {len(inputs)} inputs.", None, "give one name per input."
        )
    grid, stack_path = resolve_grid(inputs, stack, voxel_size_nm)
    segs = []
    n = len(inputs)
    for i, (spec, name) in enumerate(zip(inputs, names)):
        seg = load_segmentation(
            spec, grid, name, class_map, transform, sub(progress, 0.4 * i / n, 0.4 * (i + 1) / n)
        )
        seg.colour = colour_for(name, i)
        segs.append(seg)
    order = None
    run = next((s for s in segs if s.is_automatic), None)
    if run is not None:
        from .runfolder import RunFolder

        order = RunFolder(run.source).class_names
    comp = compare_segmentations(
        segs,
        grid,
        pairs,
        iou_threshold,
        extra_thresholds,
        adjust_splits,
        class_order=order,
        progress=sub(progress, 0.4, 0.8),
    )
    if stack_path is not None:
        comp.stack_path = stack_path
    paths = write_outputs(comp, out, slices, plots, sub(progress, 0.8, 1.0))
    return comp, paths


def compare_for_headless(
    run_dir: str | Path,
    manual_dirs: list[str | Path],
    out_dir: str | Path,
    iou_threshold: float = 0.5,
    voxel_size_nm: tuple[float, float, float] | None = None,
    plots: bool = True,
    progress: ProgressFn | None = None,
) -> dict[str, Path]:
    """Compare a finished run with one or two manual segmentations (M1, M2).

    What ``blender_scripts/run_famous.py -- ... --compare M1_DIR [M2_DIR]``
    calls after the run. Prints one table per pair.

    Parameters
    ----------
    run_dir : str or Path
        The run folder (needs ``labels.tif``).
    manual_dirs : list of str or Path
        STL folders (one sub-folder per class) or label TIFFs, named M1, M2, ...
    out_dir : str or Path
        Where the report goes (e.g. ``RUN/compare``).
    iou_threshold : float
    voxel_size_nm : (z, y, x), optional
        Comparison grid; default the run's.
    plots : bool
        Draw the PNG plots.
    progress : callable, optional

    Returns
    -------
    dict of str to Path
        The written files; ``report_md`` is the report.
    """
    inputs = [run_dir, *manual_dirs]
    names = ["automatic"] + [f"M{i + 1}" for i in range(len(manual_dirs))]
    comp, paths = run_compare(
        inputs,
        out_dir,
        names=names,
        voxel_size_nm=voxel_size_nm,
        iou_threshold=iou_threshold,
        plots=plots,
        progress=progress,
    )
    for p in comp.pairs:
        print(f"\n{p.name} (IoU >= {iou_threshold:g}):")
        print(format_table(p.scores[iou_threshold]))
    for s in comp.segmentations:
        for note in s.notes:
            print(f"warning: {s.name}: {note}")
    print(f"\ncomparison report: {paths['report_md']}")
    return paths


# -- a simulated second annotator (phantom demo and tests) ------------------------


@dataclass
class AnnotatorChanges:
    """What :func:`simulate_annotator` did, so its effect on the scores is known.

    Attributes
    ----------
    dropped : list of int
        Objects left out.
    reclassified : dict of int to (str, str)
        Object → (old class, new class).
    moved : dict of int to int
        Object → voxels its boundary moved (positive: grown, negative: shrunk).
    """

    dropped: list[int]
    reclassified: dict[int, tuple[str, str]]
    moved: dict[int, int]


def simulate_annotator(
    labels: np.ndarray,
    classes: Mapping[int, str],
    seed: int = 0,
    n_drop: int = 1,
    n_reclassify: int = 1,
    shifts: tuple[int, ...] = (1, 2),
    min_iou: float = 0.6,
) -> tuple[np.ndarray, dict[int, str], AnnotatorChanges]:
    """A second annotator's version of a segmentation, with known differences.

    Every object's boundary moves out or in by one of ``shifts`` voxels (an
    object grows only into background, so neighbours keep their voxels; the
    move is made smaller when the object's IoU with itself would fall below
    ``min_iou``), ``n_drop`` objects are left out and ``n_reclassify`` get
    another class. Same seed, same result.

    Parameters
    ----------
    labels : ndarray, shape (Z, Y, X)
        Instance labels (e.g. the phantom's truth).
    classes : mapping of int to str
    seed : int
    n_drop, n_reclassify : int
    shifts : tuple of int
        Boundary moves to choose from, in voxels.
    min_iou : float
        Lowest IoU of a moved object with the original.

    Returns
    -------
    labels : ndarray
    classes : dict of int to str
    changes : AnnotatorChanges
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    present = set(np.unique(labels).tolist())
    ids = [i for i in sorted(classes) if i in present and i != 0]
    picked = rng.permutation(ids)
    dropped = sorted(int(i) for i in picked[:n_drop])
    names = sorted(set(classes.values()))
    reclassified = {}
    for i in picked[n_drop : n_drop + n_reclassify]:
        old = classes[int(i)]
        new = str(rng.choice([c for c in names if c != old]))
        reclassified[int(i)] = (old, new)
    out = np.where(np.isin(labels, dropped), 0, labels).astype(labels.dtype)
    background = labels == 0
    ball = ndimage.generate_binary_structure(3, 1)
    moved = {}
    boxes = ndimage.find_objects(labels)
    for i in ids:
        if i in dropped:
            continue
        pad = max(shifts)
        box = tuple(
            slice(max(0, s.start - pad), min(n, s.stop + pad))
            for s, n in zip(boxes[i - 1], labels.shape)
        )
        mask = labels[box] == i
        grow = bool(rng.integers(2))
        first = int(rng.choice(shifts))
        free = (background[box] & (out[box] == 0)) | mask
        for r in dict.fromkeys((first, 1)):
            if grow:
                new = ndimage.binary_dilation(mask, ball, iterations=r) & free
            else:
                # The stack's edge is not a boundary the annotator drew.
                new = ndimage.binary_erosion(mask, ball, iterations=r, border_value=1)
            inter = np.count_nonzero(new & mask)
            if inter / np.count_nonzero(new | mask) >= min_iou:
                break
        else:
            new = mask
        region = out[box]
        region[mask & ~new] = 0
        region[new] = i
        moved[i] = int(np.count_nonzero(new)) - int(np.count_nonzero(mask))
    new_classes = {i: classes[i] for i in ids if i not in dropped}
    for i, (_, new) in reclassified.items():
        new_classes[i] = new
    return out, new_classes, AnnotatorChanges(dropped, reclassified, moved)
