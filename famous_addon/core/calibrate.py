"""Choose each class's extraction recipe from the user's annotated boxes alone.

The user drew boxes, not pixels, so a candidate recipe is judged by what a
good mask of a tight box must do without knowing the true mask:

- **fit**: the mask's own bounding box reproduces the drawn box (IoU of the
  two boxes): an organelle fills its tight box from side to side, so a mask
  that is only a piece of it, or empty, scores low;
- **stability**: the mask hardly changes when the box is drawn looser (grown
  by ``jitter`` of its longer side on every side): a mask found in the image
  stays put, one that leaks along membranes or follows the box's shape (as
  the ellipse does by construction) grows with the box.

A candidate's score is the mean over the class's boxes of fit x stability;
each class configured with a grey-value recipe gets the best-scoring candidate
among the paper's recipe, the ellipse, the ``refined`` recipe over a small
grid of its threshold offset and opening radius, and the ``learned`` pixel
classifier trained on the same boxes (:mod:`.learned`). A chosen ``refined`` recipe
keeps the class's ``adaptive`` setting: with it (the default) the calibrated
offset is the centre of the offsets tried per box (a per-box choice by the
same criterion). The configured recipe is kept unless a candidate beats it by
``margin``; a class configured with ``ellipse`` keeps it (its scores are still
reported): the ellipse is chosen for organelles whose grey values do not
delimit them, where a threshold finds a stable but too small dense core.

Last, with the chosen recipes, where the user puts the boundary relative to
the extracted masks' edge is fitted on the same boxes (``inset_nm``, applied
at assembly; see :mod:`.inset`).
"""

from __future__ import annotations

from dataclasses import asdict, replace

import numpy as np

from .boxes import Box
from .classes import ClassConfig, ExtractRecipe
from .extract import extract_box, segment_slice
from .inset import Profiles, fit_inset
from .learned import fit_pixel_classifier
from .progress import ProgressFn, silent, sub
from .recipes import JITTER, bbox_fit, mask_iou

THRESHOLD_OFFSETS = (0.0, 0.25, 0.5, 0.75)
OPEN_NM = (6.0, 12.0, 24.0)


def candidates(recipe: ExtractRecipe) -> dict[str, ExtractRecipe]:
    """The recipes tried for a class whose configured recipe is ``recipe``.

    The class's polarity and kernel sizes are kept; names describe what
    changes, e.g. ``refined(offset=0.5,open=12nm)``. Refined candidates are
    scored with a fixed offset (``adaptive`` off); see :func:`calibrate`.
    """
    out = {
        "paper": replace(recipe, method="paper"),
        "ellipse": replace(recipe, method="ellipse"),
    }
    for off in THRESHOLD_OFFSETS:
        for open_nm in OPEN_NM:
            out[f"refined(offset={off:g},open={open_nm:g}nm)"] = replace(
                recipe, method="refined", adaptive=False, threshold_offset=off, open_nm=open_nm
            )
    return out


def box_score(
    image: np.ndarray, box: Box, recipe: ExtractRecipe, pixel_nm: float, jitter: float = JITTER
) -> tuple[float, float]:
    """Fit and stability of one recipe on one annotated box (see module doc).

    Returns
    -------
    fit, stability : float
        Both in [0, 1].
    """
    bounds, mask = extract_box(image, box, recipe, pixel_nm)
    fit = bbox_fit(mask) if mask.size else 0.0
    g = max(2.0, round(jitter * max(box.w, box.h)))
    loose = Box(box.cls, box.x - g, box.y - g, box.w + 2 * g, box.h + 2 * g, box.score)
    loose_bounds, wide = extract_box(image, loose, recipe, pixel_nm)
    return fit, mask_iou(mask, bounds, wide, loose_bounds)


def calibrate(
    images: list[np.ndarray],
    boxes_per_image: list[list[Box]],
    classes: ClassConfig,
    pixel_nm: float,
    max_boxes: int = 80,
    margin: float = 0.02,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> tuple[ClassConfig, dict[str, dict]]:
    """Pick each class's extraction recipe on annotated slices (boxes only).

    Parameters
    ----------
    images : list of 2-D arrays
        The annotated slices.
    boxes_per_image : list of lists of Box
        The boxes drawn on each slice (class indices in ``classes``' order).
    classes : ClassConfig
        The project's classes; their configured recipes give polarity and the
        paper recipe's kernel sizes, and are kept for classes with no box.
    pixel_nm : float
        In-plane pixel size (nm).
    max_boxes : int
        At most this many boxes per class are scored (a seeded random sample),
        which bounds the time: about ``max_boxes x 28`` extractions.
    margin : float
        A candidate replaces the configured recipe only when its score is
        higher by at least this much.
    seed : int
        Seed of that sample.
    progress : callable, optional
        ``progress(fraction, message)``.

    Returns
    -------
    config : ClassConfig
        ``classes`` with each annotated class's ``extract`` replaced by the
        best-scoring candidate (a ``refined`` one with the class's
        ``adaptive`` setting).
    report : dict
        Per class name: ``choice`` (candidate name, ``"configured"`` when the
        configured recipe is kept), ``score``, ``fit``,
        ``stability``, ``n_boxes`` (scored), ``recipe`` (the chosen recipe as
        a dict) and ``scores`` (every candidate's score); for a class without
        boxes ``choice`` is ``"unchanged"`` and ``reason`` says why.
    """
    progress = progress or silent
    rng = np.random.default_rng(seed)
    per_class: dict[int, list[tuple[int, Box]]] = {}
    for k, boxes in enumerate(boxes_per_image):
        for b in boxes:
            if b.w >= 2 and b.h >= 2:
                per_class.setdefault(b.cls, []).append((k, b))
    specs = list(classes.classes)
    report: dict[str, dict] = {}
    for ci, spec in enumerate(specs):
        items = per_class.get(ci, [])
        if not items:
            report[spec.name] = {"choice": "unchanged", "reason": "no annotated boxes"}
            continue
        if len(items) > max_boxes:
            items = [items[i] for i in sorted(rng.choice(len(items), max_boxes, replace=False))]
        cands = _candidates_of(spec.extract, ci, images, boxes_per_image, pixel_nm, seed)
        step = sub(progress, ci / len(specs), (ci + 1) / len(specs))
        table = _score_table(cands, images, items, pixel_nm, step, f"calibrating {spec.name}")
        chosen, report[spec.name] = _choose(spec.extract, cands, table, margin)
        report[spec.name]["n_boxes"] = len(items)
        specs[ci] = replace(spec, extract=chosen)
    config = replace(classes, classes=tuple(specs))
    annotated = [ci for ci in sorted(per_class) if ci < len(specs)]
    return _fit_insets(config, images, boxes_per_image, pixel_nm, annotated, report)


def _fit_insets(config: ClassConfig, images, boxes_per_image, pixel_nm, annotated, report):
    """``config`` with the ``inset_nm`` of each class in ``annotated`` (indices of the
    classes with boxes) fitted on its boxes (:mod:`.inset`).

    An ellipse's edge is the box's, not the image's, so it is left as configured.
    """
    fitted = [ci for ci in annotated if config[ci].extract.method != "ellipse"]
    if not fitted:
        return config, report
    profiles = {ci: Profiles() for ci in fitted}
    for image, boxes in zip(images, boxes_per_image):
        boxes = [b for b in boxes if b.w >= 2 and b.h >= 2]
        if not boxes:
            continue
        painted = segment_slice(image, boxes, config, pixel_nm).paint(
            image.shape[:2], np.array([b.cls for b in boxes])
        )
        for ci in fitted:
            own = [b for b in boxes if b.cls == ci]
            if own:
                profiles[ci].add(image, own, painted == ci + 1)
    specs = list(config.classes)
    for ci in fitted:
        facts = fit_inset(profiles[ci])
        spec = specs[ci]
        if "reason" not in facts:
            extract = replace(spec.extract, inset_nm=round(facts["inset_px"] * pixel_nm, 3))
            specs[ci] = replace(spec, extract=extract)
            report[spec.name]["recipe"]["inset_nm"] = extract.inset_nm
        report[spec.name]["inset"] = facts
    return replace(config, classes=tuple(specs)), report


def inset_lines(calibration: dict) -> list[str]:
    """One line per class whose masks the fitted inset moves (``report.json``'s
    ``extraction_calibration``), for the CLI and the Blender panel to say so."""
    lines = []
    for name, facts in (calibration or {}).items():
        px = (facts.get("inset") or {}).get("inset_px", 0.0)
        if px >= 1.0:
            nm = facts["recipe"]["inset_nm"]
            lines.append(
                f"{name}: masks moved {nm:g} nm ({px:g} px) inside the edge found,"
                " where your boxes put the boundary"
            )
    return lines


def _choose(configured, cands: dict, table: dict, margin: float):
    """The recipe to use, from the candidates' scores, and its report."""
    best = max(table, key=lambda name: table[name][0])
    if table[best][0] < table["configured"][0] + margin or configured.method == "ellipse":
        # The boxes must give clear evidence against the configured recipe.
        # An ellipse is configured for organelles that grey values do not
        # delimit (the paper's lysosomes), where a stable, well-fitting
        # threshold mask is usually a dense core, not the organelle.
        best = "configured"
    chosen = cands[best]
    if chosen.method == "refined":
        chosen = replace(chosen, adaptive=configured.adaptive)
    report = {
        "choice": best,
        "score": round(table[best][0], 4),
        "fit": round(table[best][1], 4),
        "stability": round(table[best][2], 4),
        "n_boxes": 0,
        "recipe": {**asdict(chosen), "weights": list(chosen.weights)},
        "scores": {name: round(v[0], 4) for name, v in table.items()},
    }
    return chosen, report


def _candidates_of(configured, ci, images, boxes_per_image, pixel_nm, seed) -> dict:
    """Class ``ci``'s candidate recipes: the configured one, its variants, a learned one."""
    cands = {"configured": replace(configured, adaptive=False)}
    cands.update(candidates(configured))
    if configured.method != "ellipse":
        weights = fit_pixel_classifier(
            images,
            [[b for b in bs if b.cls == ci] for bs in boxes_per_image],
            configured,
            pixel_nm,
            seed=seed,
        )
        if weights is not None:
            cands["learned"] = replace(configured, method="learned", weights=weights)
    return cands


def _score_table(cands, images, items, pixel_nm, progress, message) -> dict:
    """Per candidate: (mean fit x stability, mean fit, mean stability) over the boxes ``items``."""
    table = {}
    for n, (name, recipe) in enumerate(cands.items()):
        fs = np.array([box_score(images[k], b, recipe, pixel_nm) for k, b in items])
        table[name] = (
            float(np.mean(fs[:, 0] * fs[:, 1])),
            float(fs[:, 0].mean()),
            float(fs[:, 1].mean()),
        )
        progress((n + 1) / len(cands), message)
    return table
