"""Detection metrics: predictions matched to truth boxes, AP@0.5 per class and mAP,
precision and recall, and recall by case (border, small, other)."""

from __future__ import annotations

import numpy as np

from ..boxes import Box
from .boxops import boxes_xyxy, iou_matrix


def small_boxes(classes: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """Which boxes are small: under a quarter of their class's median area among these boxes.

    The caps of round organelles, which detectors trained on few slices find
    least; :func:`evaluate` reports their recall apart, and training can
    centre crops on them (``AugmentConfig.small_focus``).
    """
    classes, areas = np.asarray(classes), np.asarray(areas, np.float64)
    small = np.zeros(len(areas), bool)
    for c in np.unique(classes):
        mine = classes == c
        small[mine] = areas[mine] < 0.25 * np.median(areas[mine])
    return small


def truth_categories(truth: list[Box], shape: tuple[int, int], small) -> list[str]:
    """Case of each truth box: ``"edge"``, ``"small"`` or ``"other"``.

    ``"edge"`` touches the image border; ``"small"`` is flagged in ``small``
    (see :func:`small_boxes`).
    """
    rows, cols = shape
    out = []
    for b, is_small in zip(truth, small):
        if b.x <= 1 or b.y <= 1 or b.x + b.w >= cols - 1 or b.y + b.h >= rows - 1:
            out.append("edge")
        elif is_small:
            out.append("small")
        else:
            out.append("other")
    return out


def match_class(
    pred: list[Box], truth: list[Box], c: int, iou: float = 0.5
) -> tuple[list[tuple[float, bool]], np.ndarray]:
    """Match the class-``c`` predictions of one image to its class-``c`` truth boxes.

    Predictions are matched by decreasing score to the unmatched truth box
    with the highest IoU (>= ``iou``).

    Returns
    -------
    scored : list of (score, is a true box), one per class-``c`` prediction
    hit : (len(truth),) bool, which truth boxes were found
    """
    p = sorted((b for b in pred if b.cls == c), key=lambda b: -b.score)
    hit = np.zeros(len(truth), bool)
    ious = iou_matrix(boxes_xyxy(p), boxes_xyxy(truth))[0] if (p and truth) else None
    scored = []
    for k, b in enumerate(p):
        ok = False
        if truth:
            cand = np.where(hit, -1.0, ious[k])
            j = int(np.argmax(cand))
            if cand[j] >= iou:
                hit[j] = ok = True
        scored.append((b.score, ok))
    return scored, hit


def evaluate(
    preds: list[list[Box]],
    truths: list[list[Box]],
    shapes: list[tuple[int, int]],
    names: list[str],
    iou: float = 0.5,
) -> dict:
    """Detection metrics over images: AP@iou per class and mAP, precision/recall, recall by case.

    Predictions are matched greedily by decreasing score to the unmatched truth
    box of the same class with the highest IoU (>= ``iou``). Recall is also
    given separately for truth boxes touching the image border, small ones
    (under a quarter of their class's median area) and the others, the three
    cases where detectors trained on few slices differ most.

    Returns
    -------
    dict
        ``mAP``, ``per_class`` {name: AP, precision, recall, n_truth, n_pred,
        recall_edge, recall_small, recall_other}, and ``recall_by_case``.
    """
    n_classes = len(names)
    every = [b for t in truths for b in t]
    small = small_boxes([b.cls for b in every], [b.w * b.h for b in every])
    ends = np.cumsum([0] + [len(t) for t in truths])
    scored: list[list[tuple[float, bool]]] = [[] for _ in range(n_classes)]
    n_truth = np.zeros(n_classes, int)
    found: dict[tuple[int, str], list[bool]] = {}
    for n, (pred, truth, shape) in enumerate(zip(preds, truths, shapes)):
        cats = truth_categories(truth, shape, small[ends[n] : ends[n + 1]])
        for c in range(n_classes):
            t_idx = [i for i, b in enumerate(truth) if b.cls == c]
            n_truth[c] += len(t_idx)
            pairs, hit = match_class(pred, [truth[i] for i in t_idx], c, iou)
            scored[c].extend(pairs)
            for j, i in enumerate(t_idx):
                found.setdefault((c, cats[i]), []).append(bool(hit[j]))
    per_class = {}
    aps = []
    for c, name in enumerate(names):
        s = sorted(scored[c], key=lambda v: -v[0])
        tp = np.cumsum([ok for _, ok in s]) if s else np.zeros(0)
        fp = np.cumsum([not ok for _, ok in s]) if s else np.zeros(0)
        n_t = int(n_truth[c])
        if n_t:
            rec = tp / n_t
            prec = tp / np.maximum(tp + fp, 1)
            mrec = np.concatenate([[0.0], rec, [1.0]])
            mpre = np.concatenate([[1.0], prec, [0.0]])
            mpre = np.maximum.accumulate(mpre[::-1])[::-1]
            ap = float(np.sum((mrec[1:] - mrec[:-1]) * mpre[1:]))
            aps.append(ap)
        else:
            ap = float("nan")
        entry = {
            "AP50": ap,
            "n_truth": n_t,
            "n_pred": len(s),
            "precision": float(tp[-1] / len(s)) if s else float("nan"),
            "recall": float(tp[-1] / n_t) if (s and n_t) else (0.0 if n_t else float("nan")),
        }
        for case in ("edge", "small", "other"):
            hits = found.get((c, case), [])
            entry[f"recall_{case}"] = float(np.mean(hits)) if hits else float("nan")
            entry[f"n_{case}"] = len(hits)
        per_class[name] = entry
    by_case = {}
    for case in ("edge", "small", "other"):
        hits = [h for (c, k), v in found.items() if k == case for h in v]
        by_case[case] = {"recall": float(np.mean(hits)) if hits else float("nan"), "n": len(hits)}
    return {
        "mAP50": float(np.mean(aps)) if aps else float("nan"),
        "per_class": per_class,
        "recall_by_case": by_case,
    }
