"""Linking refinements that keep or drop whole organelles: bridges, short and unconfirmed ones.

Algorithm 4 (:mod:`.link`) links boxes by their centres; these rules work on
its organelle labels (one per detection, -1 for none) with the masks:
same-class organelles whose masks overlap on adjacent slices are joined
(:func:`merge_bridges`), and detector flashes are dropped, short ones
(:func:`drop_small`) and those the detector is never confident about
(:func:`drop_unconfirmed`). :mod:`.follow` adds boxes where an organelle was
missed.
"""

from __future__ import annotations

import numpy as np

from .link import merge_labels, overlap_pairs
from .slicecache import iter_slices


def merge_bridges(out, stack, det, labels0, settings, progress) -> np.ndarray:
    """Join same-class organelles whose masks overlap on adjacent slices."""
    label_class = np.zeros(labels0.max() + 1, np.int64)
    label_class[labels0] = det["cls"]
    pairs, prev = [], None
    n = stack.shape[0]
    for k, result, sel in iter_slices(out, det, n):
        cur = result.paint(stack.shape[1:], labels0[sel])
        if prev is not None:
            p = overlap_pairs(prev, cur, settings.merge_min_overlap)
            pairs.append(p[label_class[p[:, 0]] == label_class[p[:, 1]]])
        prev = cur
        progress((k + 1) / n, "joining bridged organelles")
    pairs = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)
    return merge_labels(labels0, pairs)


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
    lab, sl = det_labels[has_mask], det["slice"][has_mask]
    pairs = np.unique(np.column_stack([lab, sl]), axis=0)
    spans = np.bincount(pairs[:, 0], minlength=len(total))
    at_edge = np.zeros(len(total), bool)
    at_edge[lab[(sl == 0) | (sl == n_slices - 1)]] = True
    keep = (total > 0) & ((spans >= min_slices) | at_edge)
    return _renumbered(det_labels, keep)


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
