"""Extraction recipes: the pixels of one organelle inside its box (paper Algorithms 1-3).

Each recipe is a function ``(roi, recipe, pixel_nm, context=None) -> bool
mask`` over the box's region of interest; ``context`` (a :class:`BoxContext`)
lets a recipe see around the box. :mod:`.extract` registers them by the name a
class config uses in ``extract.method``:

- ``paper``: the paper's Algorithms 1-2 exactly; ``otsu`` is the same with
  holes filled (``fill_holes``), as FAMOUS first shipped it;
- ``ellipse``: Algorithm 3 as the paper's text describes it;
- ``refined``: the paper's threshold with the failures seen on tight boxes in
  real EM fixed (see :func:`refined_recipe`);
- ``learned`` lives in :mod:`.learned` and builds on this module's helpers.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
from skimage.segmentation import watershed

from .boxes import Box
from .classes import ExtractRecipe


def kernel_px(size_nm: float, pixel_nm: float) -> int:
    """An odd kernel size in pixels for a physical size in nm (1 means no-op)."""
    k = int(round(size_nm / pixel_nm))
    return max(1, k | 1)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a binary mask."""
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros(mask.shape, bool)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return lab == best


@dataclass(frozen=True)
class BoxContext:
    """The image around a box, for recipes that look past the box's edges.

    Attributes
    ----------
    image : 2-D array
        The box grown by ``recipe.context_fraction`` of its longer side on
        every side, clipped to the slice.
    box : (x0, y0, x1, y1)
        The (clipped) box in ``image`` coordinates, end exclusive.
    full_box : (x0, y0, x1, y1)
        The box as detected, possibly reaching past the slice, in ``image``
        coordinates (floats).
    """

    image: np.ndarray
    box: tuple[int, int, int, int]
    full_box: tuple[float, float, float, float]

    @classmethod
    def of(cls, roi: np.ndarray, context: BoxContext | None) -> BoxContext:
        """``context``, or the ROI alone as its own context when there is none."""
        if context is not None:
            return context
        h, w = roi.shape
        return cls(roi, (0, 0, w, h), (0.0, 0.0, float(w), float(h)))

    def cut_sides(self) -> tuple[bool, bool, bool, bool]:
        """Which sides (left, top, right, bottom) of the box the slice's edge cut off."""
        x0, y0, x1, y1 = self.box
        fx0, fy0, fx1, fy1 = self.full_box
        return (fx0 < x0 - 0.5, fy0 < y0 - 0.5, fx1 > x1 + 0.5, fy1 > y1 + 0.5)

    def edge_sides(self) -> tuple[bool, bool, bool, bool]:
        """Which sides (left, top, right, bottom) of the box lie on the slice's edge.

        ``image`` is the grown box clipped to the slice, so a box side on the
        border of ``image`` is on the slice's edge.
        """
        x0, y0, x1, y1 = self.box
        rows, cols = self.image.shape[:2]
        return (x0 == 0, y0 == 0, x1 == cols, y1 == rows)


def _to_uint8(roi: np.ndarray) -> np.ndarray:
    """Grey uint8 view of a ROI; other dtypes are stretched over their own range."""
    if roi.dtype == np.uint8:
        return roi
    lo, hi = float(roi.min()), float(roi.max())
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return ((roi.astype(np.float32) - lo) * scale).astype(np.uint8)


def paper_recipe(
    roi: np.ndarray, recipe: ExtractRecipe, pixel_nm: float, context: BoxContext | None = None
) -> np.ndarray:
    """Algorithms 1 and 2 exactly: (invert), blur, erode, dilate, Otsu, largest component.

    The paper writes "bitwise Not" before the grey conversion for dark classes;
    on a grey ROI the order does not matter. Nothing else is done (no hole
    filling, whatever ``recipe.fill_holes`` says), so published results can be
    reproduced; ``context`` is ignored.
    """
    img = _to_uint8(roi)
    img = 255 - img if recipe.polarity == "dark" else img
    b = kernel_px(recipe.blur_nm, pixel_nm)
    if b > 1:
        img = cv2.GaussianBlur(img, (b, b), 0)
    e, d = kernel_px(recipe.erode_nm, pixel_nm), kernel_px(recipe.dilate_nm, pixel_nm)
    if e > 1:
        img = cv2.erode(
            img, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (e, e)), iterations=recipe.iterations
        )
    if d > 1:
        img = cv2.dilate(
            img, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (d, d)), iterations=recipe.iterations
        )
    _, binary = cv2.threshold(img, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return largest_component(binary.astype(bool))


def otsu_recipe(
    roi: np.ndarray, recipe: ExtractRecipe, pixel_nm: float, context: BoxContext | None = None
) -> np.ndarray:
    """The paper's recipe, then holes filled when ``recipe.fill_holes`` (the default).

    FAMOUS's first ``otsu`` method, kept so that configs written for it keep
    their results; ``paper`` is the algorithm without additions.
    """
    mask = paper_recipe(roi, recipe, pixel_nm)
    return _fill_holes(mask, (False,) * 4) if recipe.fill_holes else mask


def _ellipse(shape: tuple[int, int], full: tuple[float, float, float, float]) -> np.ndarray:
    """``1 - r**2`` of the ellipse inscribed in ``full`` (x0, y0, x1, y1) on a ``shape`` grid."""
    x0, y0, x1, y1 = full
    rx, ry = max((x1 - x0) / 2.0, 0.5), max((y1 - y0) / 2.0, 0.5)
    yy = ((np.arange(shape[0]) + 0.5 - (y0 + ry)) / ry) ** 2
    xx = ((np.arange(shape[1]) + 0.5 - (x0 + rx)) / rx) ** 2
    return 1.0 - yy[:, None] - xx[None, :]


def ellipse_recipe(
    roi: np.ndarray, recipe: ExtractRecipe, pixel_nm: float, context: BoxContext | None = None
) -> np.ndarray:
    """Algorithm 3 as the paper's text describes it: the ellipse inscribed in the box.

    A box that reaches past the slice keeps its full ellipse, cut by the slice
    edge, instead of an ellipse squeezed into the visible part. So does a box
    that stops at the slice edge (see :func:`_open_at_edge`).
    """
    full = (0.0, 0.0, float(roi.shape[1]), float(roi.shape[0]))
    if context is not None:
        x0, y0 = context.box[:2]
        fx0, fy0, fx1, fy1 = context.full_box
        full = _open_at_edge((fx0 - x0, fy0 - y0, fx1 - x0, fy1 - y0), context.edge_sides())
    return _ellipse(roi.shape, full) >= 0.0


def _open_at_edge(full, edge) -> tuple[float, float, float, float]:
    """The box of a round organelle that the slice edge cuts, from its visible part.

    A detector trained on boxes clipped to the slice draws a cut organelle's
    box up to the edge, and the ellipse inscribed in it would round off the
    side where the organelle actually goes on. Its true extent past the edge
    is unknown; taking the organelle as round as its visible box allows
    (extent across the cut = the box's longer side) puts the ellipse's far
    side at the box's inner side and leaves it open at the edge: a sliver at
    the edge becomes the cap of a round organelle, widest at the edge.

    Parameters
    ----------
    full : (x0, y0, x1, y1)
        The detected box in ROI coordinates.
    edge : (left, top, right, bottom)
        Which of the box's sides lie on the slice edge.
    """
    x0, y0, x1, y1 = full
    d = max(x1 - x0, y1 - y0)
    left, top, right, bottom = edge
    if right and not left:
        x1 = max(x1, x0 + d)
    elif left and not right:
        x0 = min(x0, x1 - d)
    if bottom and not top:
        y1 = max(y1, y0 + d)
    elif top and not bottom:
        y0 = min(y0, y1 - d)
    return x0, y0, x1, y1


@lru_cache(maxsize=64)
def disk(radius: int) -> np.ndarray:
    """An elliptic structuring element of ``radius`` pixels (uint8, for OpenCV).

    Cached (read-only, shared by every caller): extraction asks for a few
    radii tens of thousands of times a slice.
    """
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    kernel.setflags(write=False)
    return kernel


def _fill_holes(mask: np.ndarray, cut: tuple[bool, bool, bool, bool]) -> np.ndarray:
    """Fill holes, counting as holes also those the slice edge cut open.

    Sides cut by the slice edge are closed with a frame of foreground first, so
    background reaching only those sides is enclosed (not when all four are
    cut: the frame would enclose everything). Background is 4-connected, the
    dual of the 8-connected foreground.
    """
    # Two rings around the mask: the inner one is the frame (foreground on the
    # cut sides), the outer one background that joins every open side, so one
    # flood fill from a corner reaches all background outside the organelle.
    padded = cv2.copyMakeBorder(_as_uint8(mask), 2, 2, 2, 2, cv2.BORDER_CONSTANT, value=0)
    if any(cut) and not all(cut):
        left, top, right, bottom = cut
        padded[1:-1, 1] |= left
        padded[1, 1:-1] |= top
        padded[1:-1, -2] |= right
        padded[-2, 1:-1] |= bottom
    # the background the fill reaches becomes 2: what it does not reach is the
    # mask (1) or a hole (0)
    cv2.floodFill(padded, None, (0, 0), 2, flags=4)
    return padded[2:-2, 2:-2] != 2


def _as_uint8(mask: np.ndarray) -> np.ndarray:
    """A 0/1 mask as uint8 for OpenCV, without a copy where it can be had without one."""
    if mask.dtype == np.uint8:
        return mask
    if mask.dtype == bool and mask.flags.c_contiguous:
        return mask.view(np.uint8)
    return mask.astype(np.uint8)


def threshold_otsu(img: np.ndarray) -> float:
    """Otsu's threshold of a float image of two or more grey values, as
    ``skimage.filters.threshold_otsu(img)`` gives it.

    The same 256-bin histogram (``np.histogram``'s binning over the image's
    range, an exact copy) and the same sums, without the wrappers around
    them: it is computed for every box, and the wrappers took a third of it.
    """
    a = img.ravel()
    lo, hi = a.min(), a.max()
    edges = np.linspace(lo, hi, 257, endpoint=True, dtype=np.result_type(lo, hi, a))
    idx = ((np.subtract(a, lo, dtype=edges.dtype) / (hi - lo)) * 256).astype(np.intp)
    idx[idx == 256] -= 1
    idx[a < edges[idx]] -= 1
    idx[(a >= edges[idx + 1]) & (idx != 255)] += 1
    counts = np.bincount(idx, minlength=256).astype(np.float32)
    centres = (edges[:-1] + edges[1:]) / 2.0
    # skimage's class weights and means for every threshold
    weight1 = np.cumsum(counts)
    weight2 = np.cumsum(counts[::-1])[::-1]
    mean1 = np.cumsum(counts * centres) / weight1
    mean2 = (np.cumsum((counts * centres)[::-1]) / weight2[::-1])[::-1]
    variance12 = weight1[:-1] * weight2[1:] * (mean1[:-1] - mean2[1:]) ** 2
    return centres[np.argmax(variance12)]


def _pick_component(binary: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The 8-connected component with most weight; ``weight`` is a :func:`pick_weight`."""
    n, lab = cv2.connectedComponents(_as_uint8(binary), connectivity=8)
    if n <= 1:
        return np.zeros(binary.shape, bool)
    if n == 2:
        return lab == 1
    score = np.bincount(lab.ravel(), weight.ravel(), minlength=n)
    return lab == 1 + int(np.argmax(score[1:]))


def pick_weight(weight: np.ndarray) -> np.ndarray:
    """Pixel weights for :func:`_pick_component`: negative ones count 0, and every
    pixel a little, so that area breaks ties (computed once a box: the adaptive
    recipe picks up to eight components with the same weights)."""
    return np.clip(weight, 0, None) + 1e-6


def refined_recipe(
    roi: np.ndarray, recipe: ExtractRecipe, pixel_nm: float, context: BoxContext | None = None
) -> np.ndarray:
    """The paper's threshold with its three failures on tight boxes fixed.

    1. Threshold statistics come from the box's surroundings (``context``), not
       the tight box alone, where Otsu splits an organelle's own light and dark
       parts: Otsu on the neighbourhood, raised by ``threshold_offset``
       standard deviations towards the organelle's side, since in EM the
       surround holds other dark (or light) structures that pull Otsu's
       threshold towards the background. With ``adaptive`` (default) the
       offset is chosen per box, among ``threshold_offset`` plus
       :data:`ADAPTIVE_STEPS`, as the one whose mask best reproduces the box
       and stays put when the box is drawn looser (the box used as a
       constraint, as in :mod:`famous_addon.core.calibrate`; up to eight
       masks per box). The offsets are compared on their masks before the
       edge refinement (3.), which then refines the chosen one only: half
       the extraction time, with the same object F1 on lucchi and unseen
       phantoms and more on CDeep3M (docs/results.md, session 25).
    2. Leakage along membranes through the box corners: holes are filled
       first (also those the slice edge cut open), then a morphological
       opening of radius ``open_nm`` cuts thin attachments and the component
       kept is the one most central in the box (weighted by the inscribed
       ellipse), not the largest one. With ``separate_core`` > 0, dark
       structures that join the organelle inside the box but continue outside
       it are cut off by a seeded watershed (organelle seeds: the mask eroded
       by ``separate_core`` of the box's shorter side; background seeds:
       outside the box), since a tight box holds nothing of the organelle
       outside it.
    3. Boundary: the contour is moved to the level ``edge_level`` of the way
       from the organelle's median grey to that of a thin ring just outside
       it (0.5: the half-way edge), within one pixel of the first mask. A
       light organelle with ``membrane_nm`` > 0 then gets its dark limiting
       membrane added (the threshold finds the lumen only).
    4. Bays: gaps in the outline up to twice ``close_nm`` wide are closed
       and what they enclose is filled. Light cristae or lumen content that
       reach the outline form no hole, so step 2 leaves a bite there (lucchi
       with the labels' boxes: voxel IoU 0.800 -> 0.812; docs/results.md).

    Kernel sizes are physical (nm): the pixel size scales them.
    """
    context = BoxContext.of(roi, context)
    x0, y0, x1, y1 = context.box
    h, w = y1 - y0, x1 - x0
    if h == 0 or w == 0:
        return np.zeros((h, w), bool)
    img = context.image.astype(np.float32)
    if recipe.polarity == "dark":
        img = -img
    sigma = recipe.smooth_nm / pixel_nm
    if sigma >= 0.3:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    if float(img.max()) == float(img.min()):
        return np.zeros((h, w), bool)
    otsu, std = threshold_otsu(img), float(img.std())
    cut = context.cut_sides()
    if not recipe.adaptive:
        t = otsu + recipe.threshold_offset * std
        return _refined_mask(img, context.box, context.full_box, t, recipe, pixel_nm, cut)
    best = _adaptive_mask(img, context, otsu, std, recipe, pixel_nm, cut)
    return _finish_edge(img, context.box, best, recipe, pixel_nm, cut)


def _adaptive_mask(img, context, otsu, std, recipe, pixel_nm, cut) -> np.ndarray:
    """Per box, the mask (before the edge refinement) of the offset that best fits the
    box and stays put when the box is drawn looser (the calibration's criterion, see
    calibrate.py)."""
    x0, y0, x1, y1 = context.box
    g = max(2, int(round(JITTER * max(y1 - y0, x1 - x0))))
    rows, cols = img.shape
    loose = (max(x0 - g, 0), max(y0 - g, 0), min(x1 + g, cols), min(y1 + g, rows))
    fx0, fy0, fx1, fy1 = context.full_box
    loose_full = (fx0 - g, fy0 - g, fx1 + g, fy1 + g)
    best, best_score = None, -1.0
    tight_weight = centre_weight(context.box, context.full_box)
    loose_weight = None
    for step in ADAPTIVE_STEPS:
        t = otsu + max(recipe.threshold_offset + step, 0.0) * std
        m = _refined_mask(
            img, context.box, context.full_box, t, recipe, pixel_nm, cut, False, tight_weight
        )
        fit = bbox_fit(m)
        if fit <= best_score:
            # the stability factor is at most 1: this offset cannot win, and the
            # looser box's mask (half of this loop's time) is not needed
            continue
        if loose_weight is None:
            loose_weight = centre_weight(loose, loose_full)
        wide = _refined_mask(img, loose, loose_full, t, recipe, pixel_nm, cut, False, loose_weight)
        score = fit * mask_iou(m, context.box, wide, loose)
        if score > best_score:
            best, best_score = m, score
    return best


JITTER = 0.15
ADAPTIVE_STEPS = (-0.5, -0.25, 0.0, 0.25)


def bbox_fit(mask: np.ndarray) -> float:
    """IoU of a mask's bounding box with the whole box it was extracted from."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return 0.0
    cols = np.flatnonzero(mask.any(axis=0))
    return float((rows[-1] + 1 - rows[0]) * (cols[-1] + 1 - cols[0])) / mask.size


def mask_iou(a: np.ndarray, box_a, b: np.ndarray, box_b) -> float:
    """IoU of two masks given in their own boxes (x0, y0, x1, y1) of one image."""
    inside = box_b[0] <= box_a[0] and box_b[1] <= box_a[1]
    if inside and box_a[2] <= box_b[2] and box_a[3] <= box_b[3]:
        # a's box inside b's (a box and the same box drawn looser): counted in place
        x, y = box_a[0] - box_b[0], box_a[1] - box_b[1]
        inter = np.count_nonzero(a & b[y : y + a.shape[0], x : x + a.shape[1]])
        union = np.count_nonzero(a) + np.count_nonzero(b) - inter
        return inter / union if union else 0.0
    x0, y0 = min(box_a[0], box_b[0]), min(box_a[1], box_b[1])
    x1, y1 = max(box_a[2], box_b[2]), max(box_a[3], box_b[3])
    pa = np.zeros((y1 - y0, x1 - x0), bool)
    pb = np.zeros_like(pa)
    pa[box_a[1] - y0 : box_a[3] - y0, box_a[0] - x0 : box_a[2] - x0] = a
    pb[box_b[1] - y0 : box_b[3] - y0, box_b[0] - x0 : box_b[2] - x0] = b
    union = np.count_nonzero(pa | pb)
    return np.count_nonzero(pa & pb) / union if union else 0.0


def centre_weight(box, full_box) -> np.ndarray:
    """The centre weight of a box's pixels: the ellipse inscribed in ``full_box`` (see
    :func:`central_piece`), as a :func:`pick_weight`."""
    x0, y0, x1, y1 = box
    fx0, fy0, fx1, fy1 = full_box
    return pick_weight(_ellipse((y1 - y0, x1 - x0), (fx0 - x0, fy0 - y0, fx1 - x0, fy1 - y0)))


def central_piece(binary, box, full_box, recipe, pixel_nm, cut, fill: bool, weight=None):
    """A box's binary pixels opened and cut to their most central component.

    With ``fill``, holes are filled before the opening (which could break an
    organelle's thin membrane ring) and again after. Returns the mask and the
    centre weight it was picked with (:func:`centre_weight`, computed here
    unless given: the adaptive recipe picks up to eight pieces of two boxes).
    """
    x0, y0, x1, y1 = box
    h, w = y1 - y0, x1 - x0
    binary = _as_uint8(_fill_holes(binary, cut) if fill else binary)
    r = min(int(round(recipe.open_nm / pixel_nm)), min(h, w) // 4)
    if r > 0:
        binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, disk(r))
    weight = centre_weight(box, full_box) if weight is None else weight
    mask = _pick_component(binary, weight)
    return (_fill_holes(mask, cut) if fill else mask), weight


def _refined_mask(
    img, box, full_box, t, recipe, pixel_nm, cut, edge=True, weight=None
) -> np.ndarray:
    """One refined mask for the box ``box`` of the prepared image ``img`` at threshold ``t``.

    ``edge`` False stops before the edge refinement (:func:`_finish_edge` does
    the rest); ``weight``: the box's :func:`centre_weight`, where known.
    """
    x0, y0, x1, y1 = box
    inside = img[y0:y1, x0:x1] > t
    mask, weight = central_piece(
        inside, box, full_box, recipe, pixel_nm, cut, recipe.fill_holes, weight
    )
    if recipe.separate_core > 0 and mask.sum() >= 10:
        mask = _separate_from_surround(img, box, mask, inside, recipe.separate_core, pixel_nm)
        mask = _pick_component(mask, weight)
    return _finish_edge(img, box, mask, recipe, pixel_nm, cut) if edge else mask


def _finish_edge(img, box, mask, recipe, pixel_nm, cut) -> np.ndarray:
    """A thresholded mask's edge refined, a light organelle's membrane added, bays filled."""
    if recipe.edge_level > 0 and mask.sum() >= 10:
        mask = _refine_edge(img, box, mask, recipe.edge_level, recipe.fill_holes, cut, pixel_nm)
    if recipe.polarity == "light" and recipe.membrane_nm > 0 and mask.sum() >= 10:
        mask = _add_membrane(img, box, mask, recipe.membrane_nm, pixel_nm)
    r = int(round(recipe.close_nm / pixel_nm))
    if r > 0 and recipe.fill_holes and mask.sum() >= 10:
        mask = _fill_bays(mask, r, cut)
    return mask


def _fill_bays(mask: np.ndarray, r: int, cut) -> np.ndarray:
    """The mask with gaps in its outline up to ``2 r`` px wide closed and what they enclose filled.

    Light cristae in a dark mitochondrion, or a lumen's content in an
    endosome, that reach the outline through a break in the membrane form no
    hole, so the thresholded mask has a bay there; the cross-section still
    ends at the membrane on either side of the break.
    """
    # padded so the closing treats the box's border as background, not as mask
    padded = cv2.copyMakeBorder(mask.astype(np.uint8), r, r, r, r, cv2.BORDER_CONSTANT, value=0)
    closed = cv2.morphologyEx(padded, cv2.MORPH_CLOSE, disk(r))[r:-r, r:-r]
    return _fill_holes(closed, cut)  # a closing only adds: the mask is inside it


def _median(values: np.ndarray) -> float:
    """``np.median`` of a 1-D array, without its wrappers (called ~15,000 times a slice)."""
    k = values.size // 2
    if values.size % 2:
        return float(np.partition(values, k)[k])
    return float(np.mean(np.partition(values, (k - 1, k))[k - 1 : k + 1]))


def _add_membrane(img, box, mask, membrane_nm, pixel_nm) -> np.ndarray:
    """Add a light organelle's dark limiting membrane to its mask.

    The threshold keeps the light lumen only, but the organelle (and what an
    annotator outlines) ends at the outer side of its membrane: the pixels
    within ``membrane_nm`` (plus a pixel of blur) outside the lumen that are
    darker than the surround beyond them are added.
    """
    x0, y0, x1, y1 = box
    big = np.zeros(img.shape, np.uint8)
    big[y0:y1, x0:x1] = mask
    r = max(1, int(round(membrane_nm / pixel_nm))) + 1
    grown = cv2.dilate(big, disk(r)).astype(bool)
    surround = cv2.dilate(big, disk(2 * r + 1)).astype(bool) & ~grown
    if surround.sum() < 5:
        return mask
    band = grown[y0:y1, x0:x1] & ~mask
    return mask | (band & (img[y0:y1, x0:x1] < _median(img[surround])))


_SEPARATE_GAP_NM = 18.0
_SEPARATE_SMOOTH_NM = 12.0


def _separate_from_surround(img, box, mask, binary, core_fraction, pixel_nm) -> np.ndarray:
    """Cut off the parts of a mask that belong to dark structures outside the box.

    The box is tight, so whatever lies outside it is not this organelle. A
    seeded watershed on the grey values floods from the organelle's core and
    from everything outside the box (and inside it below the threshold); a
    structure that joins the organelle inside the box but continues outside
    it is reached from outside through its own grey values before the lighter
    seam that separates it from the organelle is crossed.
    """
    x0, y0, x1, y1 = box
    h, w = mask.shape
    seeds = np.zeros(img.shape, np.int32)
    seeds[:] = 2
    # Seeds start a little outside the box: the pixels just outside a tight
    # box are the organelle's own boundary.
    g = max(1, int(round(_SEPARATE_GAP_NM / pixel_nm)))
    seeds[max(y0 - g, 0) : y1 + g, max(x0 - g, 0) : x1 + g] = 0
    inner = np.zeros((h, w), np.int32)
    inner[~binary] = 2
    core = cv2.erode(mask.astype(np.uint8), disk(max(1, int(min(h, w) * core_fraction))))
    core = core.astype(bool) if core.any() else mask
    inner[core] = 1
    seeds[y0:y1, x0:x1] = inner
    # Smoothing keeps light cristae inside an organelle from acting as seams.
    land = cv2.GaussianBlur(img, (0, 0), _SEPARATE_SMOOTH_NM / pixel_nm)
    labels = watershed(-land, seeds)
    out = mask & (labels[y0:y1, x0:x1] == 1)
    return out if out.any() else mask


def _refine_edge(img, box, mask, level, fill, cut, pixel_nm) -> np.ndarray:
    """Move the contour to the level between inside and outside grey (see refined_recipe).

    Inside is the mask eroded by ~12 nm, outside a ring ~6-18 nm out of it.
    """
    r_in = max(1, int(round(6.0 / pixel_nm)))
    # the box and the ring's reach around it: the morphology below sees nothing
    # further out (the erosion treats the image border as foreground, and a crop
    # edge 3 r + 1 px from the mask changes no eroded pixel)
    reach = 3 * r_in + 1
    bx0, by0, bx1, by1 = box
    cy0, cx0 = max(by0 - reach, 0), max(bx0 - reach, 0)
    img = img[cy0 : min(by1 + reach, img.shape[0]), cx0 : min(bx1 + reach, img.shape[1])]
    x0, y0, x1, y1 = bx0 - cx0, by0 - cy0, bx1 - cx0, by1 - cy0
    big = np.zeros(img.shape, np.uint8)
    big[y0:y1, x0:x1] = mask
    core = cv2.erode(big, disk(2 * r_in)).astype(bool)
    if core.sum() < 5:
        core = big.astype(bool)
    ring = cv2.dilate(big, disk(3 * r_in)).astype(bool) & ~cv2.dilate(big, disk(r_in)).astype(bool)
    if ring.sum() < 5:
        return mask
    inside, outside = _median(img[core]), _median(img[ring])
    if inside <= outside:
        return mask
    t = outside + (1.0 - level) * (inside - outside)
    band = cv2.dilate(mask.astype(np.uint8), disk(1))
    fg = ((img[y0:y1, x0:x1] >= t) & band.astype(bool)).astype(np.uint8)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, disk(1))
    out = _pick_component(fg, pick_weight(core[y0:y1, x0:x1].astype(np.float32)))
    if out.sum() == 0:
        return mask
    return _fill_holes(out, cut) if fill else out


def box_context(image: np.ndarray, box: Box, fraction: float) -> BoxContext:
    """The neighbourhood of ``box`` (grown by ``fraction`` of its longer side), clipped."""
    x0, y0, x1, y1 = box.pixel_bounds(image.shape)
    pad = max(2, int(round(fraction * max(x1 - x0, y1 - y0))))
    rows, cols = image.shape[:2]
    X0, Y0 = max(x0 - pad, 0), max(y0 - pad, 0)
    X1, Y1 = min(x1 + pad, cols), min(y1 + pad, rows)
    return BoxContext(
        image[Y0:Y1, X0:X1],
        (x0 - X0, y0 - Y0, x1 - X0, y1 - Y0),
        (box.x - X0, box.y - Y0, box.x + box.w - X0, box.y + box.h - Y0),
    )
