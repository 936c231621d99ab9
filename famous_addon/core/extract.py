"""Pixel extraction: from a box to the organelle's pixels (paper Algorithms 1-3).

Each recipe is a function ``(roi, recipe, pixel_nm, context=None) -> bool
mask`` over the box's region of interest, registered in :data:`RECIPES` under
the name a class config uses in ``extract.method``; ``context`` (a
:class:`BoxContext`) lets a recipe see around the box. The recipes:

- ``paper``: the paper's Algorithms 1-2 exactly; ``otsu`` is the same with
  holes filled (``fill_holes``), as FAMOUS first shipped it;
- ``ellipse``: Algorithm 3 as the paper's text describes it;
- ``refined``: the paper's threshold with the failures seen on tight boxes in
  real EM fixed (see :func:`refined_recipe`);
- ``learned``: a pixel classifier trained on the annotated boxes
  (:mod:`famous_addon.core.learned`).

:func:`segment_slice` applies them to all boxes of a slice and then gives
pixels claimed by two overlapping boxes to one of them; it is the per-slice
stage of the pipeline, a pure function of (slice, boxes, classes, pixel size).
:mod:`famous_addon.core.calibrate` picks a recipe per class from annotated
boxes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from skimage.filters import threshold_otsu
from skimage.segmentation import watershed

from .boxes import Box, boxes_to_array
from .classes import ClassConfig, ExtractRecipe


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


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _fill_holes(mask: np.ndarray, cut: tuple[bool, bool, bool, bool]) -> np.ndarray:
    """Fill holes, counting as holes also those the slice edge cut open.

    Sides cut by the slice edge are closed with a frame of foreground first, so
    background reaching only those sides is enclosed (not when all four are
    cut: the frame would enclose everything). Background is 4-connected, the
    dual of the 8-connected foreground.
    """
    padded = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), bool)
    padded[1:-1, 1:-1] = mask
    if not all(cut):
        left, top, right, bottom = cut
        padded[:, 0] |= left
        padded[0, :] |= top
        padded[:, -1] |= right
        padded[-1, :] |= bottom
    n, lab = cv2.connectedComponents((~padded).astype(np.uint8), connectivity=4)
    outside = np.zeros(n, bool)
    outside[np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])] = True
    outside[0] = False
    return ~outside[lab[1:-1, 1:-1]]


def _pick_component(binary: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The 8-connected component with most weight (area breaks ties)."""
    n, lab = cv2.connectedComponents(binary.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros(binary.shape, bool)
    score = np.bincount(lab.ravel(), (np.clip(weight, 0, None) + 1e-6).ravel(), minlength=n)
    return lab == 1 + int(np.argmax(score[1:]))


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
       constraint, as in :mod:`famous_addon.core.calibrate`; eight
       extractions per box).
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
    # Per box, the offset whose mask best fits the box and stays put when the
    # box is drawn looser (the calibration's criterion, see calibrate.py).
    g = max(2, int(round(JITTER * max(h, w))))
    rows, cols = img.shape
    loose = (max(x0 - g, 0), max(y0 - g, 0), min(x1 + g, cols), min(y1 + g, rows))
    fx0, fy0, fx1, fy1 = context.full_box
    loose_full = (fx0 - g, fy0 - g, fx1 + g, fy1 + g)
    best, best_score = None, -1.0
    for step in ADAPTIVE_STEPS:
        t = otsu + max(recipe.threshold_offset + step, 0.0) * std
        m = _refined_mask(img, context.box, context.full_box, t, recipe, pixel_nm, cut)
        wide = _refined_mask(img, loose, loose_full, t, recipe, pixel_nm, cut)
        score = bbox_fit(m) * mask_iou(m, context.box, wide, loose)
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
    x0, y0 = min(box_a[0], box_b[0]), min(box_a[1], box_b[1])
    x1, y1 = max(box_a[2], box_b[2]), max(box_a[3], box_b[3])
    pa = np.zeros((y1 - y0, x1 - x0), bool)
    pb = np.zeros_like(pa)
    pa[box_a[1] - y0 : box_a[3] - y0, box_a[0] - x0 : box_a[2] - x0] = a
    pb[box_b[1] - y0 : box_b[3] - y0, box_b[0] - x0 : box_b[2] - x0] = b
    union = np.count_nonzero(pa | pb)
    return np.count_nonzero(pa & pb) / union if union else 0.0


def _central_piece(binary, box, full_box, recipe, pixel_nm, cut, fill: bool):
    """A box's binary pixels opened and cut to their most central component.

    With ``fill``, holes are filled before the opening (which could break an
    organelle's thin membrane ring) and again after. Returns the mask and the
    centre weight it was picked with (an ellipse inscribed in ``full_box``).
    """
    x0, y0, x1, y1 = box
    h, w = y1 - y0, x1 - x0
    binary = (_fill_holes(binary, cut) if fill else binary).astype(np.uint8)
    r = min(int(round(recipe.open_nm / pixel_nm)), min(h, w) // 4)
    if r > 0:
        binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, _disk(r))
    fx0, fy0, fx1, fy1 = full_box
    weight = _ellipse((h, w), (fx0 - x0, fy0 - y0, fx1 - x0, fy1 - y0))
    mask = _pick_component(binary, weight)
    return (_fill_holes(mask, cut) if fill else mask), weight


def _refined_mask(img, box, full_box, t, recipe, pixel_nm, cut) -> np.ndarray:
    """One refined mask for the box ``box`` of the prepared image ``img`` at threshold ``t``."""
    x0, y0, x1, y1 = box
    inside = img[y0:y1, x0:x1] > t
    mask, weight = _central_piece(inside, box, full_box, recipe, pixel_nm, cut, recipe.fill_holes)
    if recipe.separate_core > 0 and mask.sum() >= 10:
        mask = _separate_from_surround(img, box, mask, inside, recipe.separate_core, pixel_nm)
        mask = _pick_component(mask, weight)
    if recipe.edge_level > 0 and mask.sum() >= 10:
        mask = _refine_edge(img, box, mask, recipe.edge_level, recipe.fill_holes, cut, pixel_nm)
    if recipe.polarity == "light" and recipe.membrane_nm > 0 and mask.sum() >= 10:
        mask = _add_membrane(img, box, mask, recipe.membrane_nm, pixel_nm)
    return mask


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
    grown = cv2.dilate(big, _disk(r)).astype(bool)
    surround = cv2.dilate(big, _disk(2 * r + 1)).astype(bool) & ~grown
    if surround.sum() < 5:
        return mask
    band = grown[y0:y1, x0:x1] & ~mask
    return mask | (band & (img[y0:y1, x0:x1] < float(np.median(img[surround]))))


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
    core = cv2.erode(mask.astype(np.uint8), _disk(max(1, int(min(h, w) * core_fraction))))
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
    x0, y0, x1, y1 = box
    big = np.zeros(img.shape, np.uint8)
    big[y0:y1, x0:x1] = mask
    r_in = max(1, int(round(6.0 / pixel_nm)))
    core = cv2.erode(big, _disk(2 * r_in)).astype(bool)
    if core.sum() < 5:
        core = big.astype(bool)
    ring = cv2.dilate(big, _disk(3 * r_in)).astype(bool) & ~cv2.dilate(big, _disk(r_in)).astype(
        bool
    )
    if ring.sum() < 5:
        return mask
    inside, outside = float(np.median(img[core])), float(np.median(img[ring]))
    if inside <= outside:
        return mask
    t = outside + (1.0 - level) * (inside - outside)
    band = cv2.dilate(mask.astype(np.uint8), _disk(1))
    fg = ((img[y0:y1, x0:x1] >= t) & band.astype(bool)).astype(np.uint8)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, _disk(1))
    out = _pick_component(fg, core[y0:y1, x0:x1].astype(np.float32))
    if out.sum() == 0:
        return mask
    return _fill_holes(out, cut) if fill else out


RecipeFn = Callable[..., np.ndarray]
RECIPES: dict[str, RecipeFn] = {
    "paper": paper_recipe,
    "otsu": otsu_recipe,
    "ellipse": ellipse_recipe,
    "refined": refined_recipe,
}


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


def extract_box(
    image: np.ndarray, box: Box, recipe: ExtractRecipe, pixel_nm: float
) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """The organelle's pixels inside one box.

    Parameters
    ----------
    image : 2-D array
        The slice (uint8 from :class:`~famous_addon.core.stack.Stack`; other
        dtypes are accepted).
    box : Box
        The detection, in slice pixels; it may reach past the slice.
    recipe : ExtractRecipe
        The class's recipe.
    pixel_nm : float
        In-plane pixel size, to turn the recipe's kernel sizes into pixels.

    Returns
    -------
    bounds : (x0, y0, x1, y1)
        The box clipped to the image (end exclusive).
    mask : 2-D bool array
        The organelle's pixels in box coordinates (shape ``(y1 - y0, x1 - x0)``).
    """
    x0, y0, x1, y1 = box.pixel_bounds(image.shape)
    roi = image[y0:y1, x0:x1]
    if roi.size == 0:
        return (x0, y0, x1, y1), np.zeros(roi.shape, bool)
    context = box_context(image, box, recipe.context_fraction)
    return (x0, y0, x1, y1), RECIPES[recipe.method](roi, recipe, pixel_nm, context)


@dataclass
class SliceResult:
    """All extracted masks of one slice, stored flat so it caches compactly.

    ``bounds[i]`` is ``(x0, y0, x1, y1)`` of detection ``i``; its mask is
    ``masks[offsets[i]:offsets[i + 1]]`` reshaped to ``(y1 - y0, x1 - x0)``.
    """

    boxes: np.ndarray  # (n, 6): cls, x, y, w, h, score
    bounds: np.ndarray  # (n, 4) int32
    offsets: np.ndarray  # (n + 1,) int64
    masks: np.ndarray  # packed bool

    def __len__(self) -> int:
        return len(self.boxes)

    def mask(self, i: int) -> np.ndarray:
        x0, y0, x1, y1 = self.bounds[i]
        flat = self.masks[self.offsets[i] : self.offsets[i + 1]]
        return flat.reshape(y1 - y0, x1 - x0)

    def areas(self) -> np.ndarray:
        """Mask pixel counts per detection."""
        return np.add.reduceat(self.masks, self.offsets[:-1]) if len(self) else np.zeros(0, int)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "boxes": self.boxes,
            "bounds": self.bounds,
            "offsets": self.offsets,
            "masks": np.packbits(self.masks),
            "n_mask": np.array(self.masks.size),
        }

    @classmethod
    def of(cls, boxes: list[Box], bounds: list, masks: list[np.ndarray]) -> SliceResult:
        """A slice's boxes with their clipped bounds and masks (box coordinates)."""
        flats = [m.ravel() for m in masks]
        offsets = np.zeros(len(flats) + 1, np.int64)
        offsets[1:] = np.cumsum([f.size for f in flats])
        return cls(
            boxes=boxes_to_array(boxes),
            bounds=np.array(bounds, np.int32).reshape(-1, 4),
            offsets=offsets,
            masks=np.concatenate(flats) if flats else np.zeros(0, bool),
        )

    @classmethod
    def from_arrays(cls, a) -> SliceResult:
        masks = np.unpackbits(a["masks"], count=int(a["n_mask"])).astype(bool)
        return cls(a["boxes"], a["bounds"], a["offsets"], masks)


def _depth(box: Box, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """How deep each pixel of the window lies inside ``box``: 1 at its centre, 0 at its edge."""
    xs = np.arange(x0, x1) + 0.5
    ys = np.arange(y0, y1) + 0.5
    dx = np.minimum(xs - box.x, box.x + box.w - xs) / max(box.w / 2.0, 0.5)
    dy = np.minimum(ys - box.y, box.y + box.h - ys) / max(box.h / 2.0, 0.5)
    return np.minimum(dy[:, None], dx[None, :])


def _pairs(g: np.ndarray) -> list[tuple[int, int, tuple[int, int, int, int]]]:
    """Pairs of boxes whose bounds intersect, with the intersection."""
    ix0 = np.maximum(g[:, None, 0], g[None, :, 0])
    iy0 = np.maximum(g[:, None, 1], g[None, :, 1])
    ix1 = np.minimum(g[:, None, 2], g[None, :, 2])
    iy1 = np.minimum(g[:, None, 3], g[None, :, 3])
    hit = np.triu((ix1 > ix0) & (iy1 > iy0), 1)
    return [
        (int(i), int(j), (int(ix0[i, j]), int(iy0[i, j]), int(ix1[i, j]), int(iy1[i, j])))
        for i, j in zip(*np.nonzero(hit))
    ]


def _window(mask: np.ndarray, bnd, win) -> np.ndarray:
    """A mask (in box ``bnd`` coordinates) on the window ``win``, False outside its box."""
    x0, y0, x1, y1 = win
    out = np.zeros((y1 - y0, x1 - x0), bool)
    ax0, ay0 = max(x0, bnd[0]), max(y0, bnd[1])
    ax1, ay1 = min(x1, bnd[2]), min(y1, bnd[3])
    if ax1 > ax0 and ay1 > ay0:
        out[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0] = mask[
            ay0 - bnd[1] : ay1 - bnd[1], ax0 - bnd[0] : ax1 - bnd[0]
        ]
    return out


def _unwindow(mask: np.ndarray, bnd, win, values: np.ndarray) -> None:
    """Write a window's values back into a box mask (the inverse of :func:`_window`)."""
    x0, y0, x1, y1 = win
    ax0, ay0 = max(x0, bnd[0]), max(y0, bnd[1])
    ax1, ay1 = min(x1, bnd[2]), min(y1, bnd[3])
    if ax1 > ax0 and ay1 > ay0:
        mask[ay0 - bnd[1] : ay1 - bnd[1], ax0 - bnd[0] : ax1 - bnd[0]] = values[
            ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0
        ]


def resolve_overlaps(boxes: list[Box], bounds: list, masks: list[np.ndarray]) -> None:
    """Give every pixel to at most one organelle, in place.

    Where two boxes overlap, a pixel both masks claim goes to the box it lies
    deeper in (relative to the box size), the higher score on a tie. For two
    boxes of the same class, a pixel only box A's mask claims but which lies
    deeper in box B, whose own recipe rejected it, is removed from A too: it
    is the gap between two neighbours that A leaked into.

    Giving pixels away can cut a mask in pieces; a piece under
    :data:`SLIVER_FRACTION` of the mask's largest is dropped (on real SBEM such
    slivers, a few pixels each, were up to a third of a detector's false
    objects in 3-D).
    """
    if len(boxes) < 2:
        return
    b = np.asarray(bounds, np.int64).reshape(-1, 4)
    cut = set()
    for i, j, win in _pairs(b):
        bi, bj = boxes[i], boxes[j]
        mi, mj = _window(masks[i], b[i], win), _window(masks[j], b[j], win)
        # A box whose recipe found nothing gives no evidence against its neighbour.
        if not (mi.any() or mj.any()) or not (masks[i].any() and masks[j].any()):
            continue
        di, dj = _depth(bi, *win), _depth(bj, *win)
        i_wins = (di > dj) | ((di == dj) & (bi.score >= bj.score))
        if bi.cls == bj.cls:
            mi &= i_wins
            mj &= ~i_wins
        else:
            both = mi & mj
            mi &= ~(both & ~i_wins)
            mj &= ~(both & i_wins)
        _unwindow(masks[i], b[i], win, mi)
        _unwindow(masks[j], b[j], win, mj)
        cut.update((i, j))
    for i in cut:
        masks[i] &= ~_slivers(masks[i])


# A piece of a mask smaller than this fraction of its largest piece is a sliver.
SLIVER_FRACTION = 0.1


def _slivers(mask: np.ndarray) -> np.ndarray:
    """The 8-connected pieces of a mask under :data:`SLIVER_FRACTION` of its largest."""
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 2:
        return np.zeros(mask.shape, bool)
    area = stats[:, cv2.CC_STAT_AREA]
    small = area < SLIVER_FRACTION * area[1:].max()
    small[0] = False  # the background
    return small[lab]


def segment_slice(
    image: np.ndarray,
    boxes: list[Box],
    classes: ClassConfig,
    pixel_nm: float,
    resolve: bool = True,
) -> SliceResult:
    """Extract every box of a slice with its class's recipe (the per-slice stage).

    Boxes with an empty mask are kept (with an empty mask) so that detections
    and masks stay aligned. With ``resolve`` (default) overlapping boxes are
    reconciled afterwards (:func:`resolve_overlaps`) so that no pixel belongs
    to two organelles.
    """
    bounds, masks = [], []
    for b in boxes:
        bnd, m = extract_box(image, b, classes[b.cls].extract, pixel_nm)
        bounds.append(bnd)
        masks.append(m)
    if resolve:
        resolve_overlaps(boxes, bounds, masks)
    return SliceResult.of(boxes, bounds, masks)


# learned.py builds on this module's helpers, so it registers itself last.
from .learned import learned_recipe  # noqa: E402

RECIPES["learned"] = learned_recipe
