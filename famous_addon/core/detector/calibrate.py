"""Per-class thresholds of a trained detector, chosen on annotated slices.

Box and confirmation score thresholds, box scale and containment
suppression per class, measured through the exported model in OpenCV
(:mod:`.inference`) and written to the model folder's ``thresholds.json``:
at the end of ``famous train`` (:func:`calibrate_model`), or again for an
existing model folder (:func:`recalibrate_model`, ``famous recalibrate``).
Needs no torch.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..boxes import Box
from ..classes import load_classes
from ..fileio import write_json
from .annotated import read_boxed, split_images
from .boxops import apply_box_scale, boxes_xyxy, iou_matrix
from .config import TrainConfig
from .darknet import CLASSES_NAME, REPORT_NAME, THRESHOLDS_NAME
from .evaluate import evaluate, match_class
from .inference import Detector, load_detector
from .settings import DetectSettings


def _scored_boxes(preds, truths, c: int, iou: float) -> tuple[list[tuple[float, bool]], int]:
    """(score, is a true box) of each class-``c`` prediction, and the number of truth boxes."""
    scored = []
    n_truth = 0
    for pred, truth in zip(preds, truths):
        t = [b for b in truth if b.cls == c]
        n_truth += len(t)
        scored.extend(match_class(pred, t, c, iou)[0])
    return scored, n_truth


def choose_thresholds(
    preds: list[list[Box]],
    truths: list[list[Box]],
    n_classes: int,
    iou: float = 0.5,
    default: float = 0.25,
    cap: float = 0.8,
) -> list[float]:
    """Per-class score threshold with the best F1 on annotated images (ties: the lowest).

    The threshold lies halfway between the last kept and the next score, and
    within [0.1, ``cap``].
    """
    out = []
    for c in range(n_classes):
        scored, n_truth = _scored_boxes(preds, truths, c, iou)
        if not n_truth or not scored:
            out.append(default)
            continue
        scored.sort(key=lambda v: -v[0])
        tp = np.cumsum([ok for _, ok in scored])
        f1 = 2 * tp / (np.arange(1, len(scored) + 1) + n_truth)
        # the lowest threshold reaching the best F1: on a plateau, keep the recall
        best = int(np.flatnonzero(f1 >= f1.max() - 1e-9)[-1])
        # halfway to the next lower score, so the chosen boxes are kept with a margin
        nxt = scored[best + 1][0] if best + 1 < len(scored) else scored[best][0] * 0.5
        # a few held-out boxes make the F1 optimum noisy (two nucleus boxes put it at
        # 0.87, which lost 12 % of the nuclei on an unseen phantom): stay in [0.1, cap]
        out.append(float(np.clip((scored[best][0] + nxt) / 2, 0.1, cap)))
    return out


def choose_confirm_thresholds(
    preds: list[list[Box]],
    truths: list[list[Box]],
    thresholds: list[float],
    iou: float = 0.5,
    cap: float = 0.8,
) -> list[float]:
    """Per-class score that confirms an organelle: the median score of true boxes.

    An organelle is kept when a few of its boxes score at least as high as a
    typical correctly found box on the annotated slices (see
    :class:`~.settings.DetectSettings`). Never below the class's box threshold,
    and at most ``cap``, so a model that is sure of everything it saw in
    training still confirms real organelles on new slices.
    """
    out = []
    for c, thr in enumerate(thresholds):
        scored, _ = _scored_boxes(preds, truths, c, iou)
        true_scores = [s for s, ok in scored if ok]
        median = float(np.median(true_scores)) if true_scores else thr
        out.append(float(np.clip(median, thr, max(cap, thr))))
    return out


def choose_box_scale(
    preds: list[list[Box]],
    truths: list[list[Box]],
    shapes: list[tuple[int, int]],
    n_classes: int,
    iou: float = 0.5,
    min_pairs: int = 10,
    limits: tuple[float, float] = (0.8, 1.25),
    min_score: float = 0.3,
) -> list[tuple[float, float]]:
    """Per-class width and height factors that turn the detector's boxes into the user's.

    The median of truth size over predicted size, over predictions scoring at
    least ``min_score``, matched to a truth box (IoU >= ``iou``) and touching
    no image border (a border cuts both boxes alike). Classes with fewer than
    ``min_pairs`` matches keep (1, 1); factors stay within ``limits``.
    """
    ratios: list[list[tuple[float, float]]] = [[] for _ in range(n_classes)]
    for pred, truth, (rows, cols) in zip(preds, truths, shapes):
        inside = [
            b
            for b in pred
            if b.score >= min_score
            and min(b.x, b.y) > 1
            and b.x + b.w < cols - 1
            and b.y + b.h < rows - 1
        ]
        for c in range(n_classes):
            p = [b for b in inside if b.cls == c]
            t = [b for b in truth if b.cls == c]
            if not p or not t:
                continue
            m = iou_matrix(boxes_xyxy(p), boxes_xyxy(t))[0]
            for i, j in enumerate(m.argmax(axis=1)):
                if m[i, j] >= iou:
                    ratios[c].append((t[j].w / p[i].w, t[j].h / p[i].h))
    out = []
    for r in ratios:
        if len(r) < min_pairs:
            out.append((1.0, 1.0))
            continue
        sw, sh = np.clip(np.median(np.asarray(r), axis=0), *limits)
        out.append((round(float(sw), 4), round(float(sh), 4)))
    return out


def _rescaled(boxes: list[Box], scale: list[tuple[float, float]], shape) -> list[Box]:
    """Boxes scaled as the detector will scale them (clipped to the image)."""
    if not boxes:
        return boxes
    xyxy = apply_box_scale(boxes_xyxy(boxes), np.array([b.cls for b in boxes]), scale, shape)
    xyxy[:, [0, 2]] = np.clip(xyxy[:, [0, 2]], 0, shape[1])
    xyxy[:, [1, 3]] = np.clip(xyxy[:, [1, 3]], 0, shape[0])
    return [
        Box(b.cls, x0, y0, x1 - x0, y1 - y0, b.score)
        for b, (x0, y0, x1, y1) in zip(boxes, xyxy.tolist())
    ]


def choose_containment(
    on: list[list[Box]],
    off: list[list[Box]],
    truths: list[list[Box]],
    shapes: list[tuple[int, int]],
    containment: list[float | None],
    margin: float = 0.01,
) -> list[float | None]:
    """Per class, whether containment suppression helps: the given value, or None (off).

    ``on`` and ``off`` are the same images' detections with ``containment``
    and with the rule off for every class (suppression is class-wise, so one
    run of each serves all classes). A class turns it off when that raises
    its AP@0.5 by more than ``margin``: on the annotated slices of the step-7
    demo model this picked out endosomes, lysosomes and mitochondria
    (0.06-0.18 AP, as much as on unseen phantoms) and kept it for the nucleus
    (no difference there; on one unseen phantom off cost 0.05 AP).
    """
    names = [str(c) for c in range(len(containment))]
    ap_on = evaluate(on, truths, shapes, names)["per_class"]
    ap_off = evaluate(off, truths, shapes, names)["per_class"]
    return [
        None if ap_off[n]["AP50"] > ap_on[n]["AP50"] + margin else value
        for n, value in zip(names, containment)
    ]


def calibrate_model(
    model_dir: str | Path,
    classes,
    images: list[np.ndarray],
    truths: list[list[Box]],
    settings: DetectSettings,
    held_out: list[int] | None = None,
) -> tuple[list[float], dict]:
    """Choose per-class thresholds on annotated slices and measure the model there.

    Runs the model folder's detector (OpenCV, CPU) with near-zero thresholds,
    turns containment suppression off for the classes it hurts
    (:func:`choose_containment`, on all images: the slices a model was
    trained on show its merged boxes as clearly as new ones, and more boxes
    make a steadier choice), picks each class's box threshold with
    :func:`choose_thresholds` on the
    ``held_out`` images and its confirm threshold with
    :func:`choose_confirm_thresholds` on all of them (more true boxes make a
    steadier median), measures the detector at those thresholds on the
    held-out images and then writes ``thresholds.json`` (with the tiling and
    suppression ``settings``).

    Parameters
    ----------
    held_out : list of int, optional
        Indices of the images to choose thresholds and measure on; all when None.

    Returns
    -------
    thresholds : list of float
    metrics : dict
        ``mAP50`` (from the near-zero-threshold run), ``per_class`` (AP50,
        precision, recall, recall per case at the chosen thresholds),
        ``recall_by_case``, ``confirm_thresholds``, ``box_scale``,
        ``containment`` and ``evaluated_on``.
    """
    out = Path(model_dir)
    names = list(classes.names)
    if held_out is None:
        evaluated_on = "all annotated slices (no held-out split)"
        held_out = list(range(len(images)))
    else:
        evaluated_on = "held-out slices"
    low = replace(
        settings, score_thresholds=[0.01] * len(names), confirm_thresholds=None, box_scale=None
    )
    # the settings live in memory until chosen: an interrupted calibration
    # leaves the model folder's thresholds.json as it was
    det = load_detector(out, classes, "cpu")
    all_preds, containment, box_scale = _low_threshold_boxes(det, low, images, truths)
    low_preds = [all_preds[i] for i in held_out]
    eval_truths = [truths[i] for i in held_out]
    thresholds = choose_thresholds(low_preds, eval_truths, len(names))
    confirm = choose_confirm_thresholds(all_preds, truths, thresholds)
    chosen = replace(
        settings,
        score_thresholds=thresholds,
        confirm_thresholds=confirm,
        box_scale=box_scale,
        containment=containment,
    )
    det.settings = chosen
    shapes = [images[i].shape[:2] for i in held_out]
    at_thr = evaluate([det.detect(images[i]) for i in held_out], eval_truths, shapes, names)
    ap = evaluate(low_preds, eval_truths, shapes, names)
    metrics = {
        "mAP50": ap["mAP50"],
        "per_class": {
            n: {**at_thr["per_class"][n], "AP50": ap["per_class"][n]["AP50"]} for n in names
        },
        "recall_by_case": at_thr["recall_by_case"],
        "confirm_thresholds": dict(zip(names, confirm)),
        "box_scale": dict(zip(names, box_scale)),
        "containment": dict(zip(names, containment)),
        "evaluated_on": evaluated_on,
    }
    write_json(out / THRESHOLDS_NAME, chosen.to_json(names))
    return thresholds, metrics


def _low_threshold_boxes(
    det: Detector, low: DetectSettings, images: list[np.ndarray], truths: list[list[Box]]
) -> tuple[list[list[Box]], list[float | None], list[tuple[float, float]]]:
    """Every image's boxes at the near-zero thresholds ``low``, containment and box scale chosen.

    The detector runs with containment suppression as ``low`` has it and with
    it off; each class keeps the run :func:`choose_containment` picks for it,
    and the boxes are then scaled by :func:`choose_box_scale`'s factors.

    Returns
    -------
    preds : list of list of Box
    containment : list of (float or None)
    box_scale : list of (float, float)
    """
    n_classes = len(low.score_thresholds)
    det.settings = low
    on = [det.detect(im) for im in images]
    det.settings = replace(low, containment=[None] * n_classes)
    off = [det.detect(im) for im in images]
    all_shapes = [im.shape[:2] for im in images]
    containment = choose_containment(on, off, truths, all_shapes, low.contain(n_classes))
    all_preds = [
        [b for b in p_on if containment[b.cls] is not None]
        + [b for b in p_off if containment[b.cls] is None]
        for p_on, p_off in zip(on, off)
    ]
    box_scale = choose_box_scale(all_preds, truths, all_shapes, n_classes)
    all_preds = [_rescaled(p, box_scale, s) for p, s in zip(all_preds, all_shapes)]
    return all_preds, containment, box_scale


def recalibrate_model(
    model_dir: str | Path,
    annotations: str | Path,
    flip_views: int | None = None,
    command: str | None = None,
) -> dict:
    """Choose a trained model's thresholds again, as :func:`~.train.train_model` does at its end.

    For a model folder made by an earlier FAMOUS (whose calibration lacked a
    later step, such as the containment choice) or to be calibrated on other
    annotated slices. The weights are not touched; ``thresholds.json`` is
    rewritten and ``report.json`` gets the new metrics and thresholds (the
    training's own under ``metrics_at_training`` and ``thresholds_at_training``).

    Parameters
    ----------
    model_dir : str or Path
        A model folder (``famous train`` output).
    annotations : str or Path
        YOLO_mark folder. Its held-out split is the one ``famous train`` would
        make with the model's recorded validation fraction and seed.
    flip_views : {1, 2, 4}, optional
        Test-time views to calibrate for; default: the model's setting.
    command : str, optional
        Recorded in the report.

    Returns
    -------
    dict
        The updated report.
    """
    out = Path(model_dir)
    classes = load_classes(out / CLASSES_NAME)
    settings = load_detector(out, classes, "cpu").settings
    settings = replace(settings, flip_views=flip_views or settings.flip_views, containment=None)
    report_path = out / REPORT_NAME
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    config = report.get("config", {})
    images, boxes = read_boxed(annotations, len(classes), settings.neighbours)
    _, val_idx = split_images(
        len(images), config.get("val_fraction", TrainConfig.val_fraction), config.get("seed", 0)
    )
    thresholds, metrics = calibrate_model(
        out, classes, images, boxes, settings, held_out=val_idx or None
    )
    for key in ("metrics", "thresholds"):
        if key in report:
            report.setdefault(f"{key}_at_training", report[key])
    report["metrics"] = metrics
    report["thresholds"] = dict(zip(classes.names, thresholds))
    report["recalibrated"] = {
        "command": command or " ".join(sys.argv),
        "annotations": str(Path(annotations).resolve()),
        "val_images": val_idx,
    }
    write_json(report_path, report)
    return report
