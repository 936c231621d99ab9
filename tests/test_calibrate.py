"""Recipe calibration from boxes alone, on two drawn 'modalities'.

In the first, organelles are two-tone and contrasted (as mitochondria in
SBEM): a threshold recipe must win. In the second, they are no darker than
their surround (the paper's lysosomes are barely so): no threshold finds them
and the box's ellipse must win. The calibration sees only images and boxes.
"""

import cv2
import numpy as np
import pytest

from famous_addon.core.boxes import Box
from famous_addon.core.calibrate import box_score, calibrate, candidates, inset_lines
from famous_addon.core.classes import ClassConfig, ClassSpec, ExtractRecipe

PIXEL_NM = 6.0


def scene(seed: int, contrast: bool, n: int = 5, shape=(128, 128), inside: int = 0):
    """A slice with ``n`` separate elliptic organelles and their tight boxes (drawn
    ``inside`` px inside the organelle's outer edge: 2 leaves its dark rim out)."""
    rng = np.random.default_rng(seed)
    img = np.full(shape, 170.0, np.float32)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    taken = np.zeros(shape, bool)
    boxes = []
    while len(boxes) < n:
        ry, rx = rng.uniform(7, 14, 2)
        cy, cx = rng.uniform(16, shape[0] - 16), rng.uniform(16, shape[1] - 16)
        a = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)
        v = -(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)
        outer = (u / rx) ** 2 + (v / ry) ** 2 <= 1
        if (cv2.dilate(taken.astype(np.uint8), np.ones((7, 7))).astype(bool) & outer).any():
            continue
        taken |= outer
        if contrast:
            inner = (u / (rx - 2)) ** 2 + (v / (ry - 2)) ** 2 <= 1
            img[outer] = 45
            img[inner] = 75
            img[inner & (u > 0)] = 125
        # else: no grey-level contrast at all, only the box says where it is.
        drawn = (u / (rx - inside)) ** 2 + (v / (ry - inside)) ** 2 <= 1
        rows, cols = np.flatnonzero(drawn.any(1)), np.flatnonzero(drawn.any(0))
        boxes.append(Box(0, cols[0], rows[0], cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0]))
    img = cv2.GaussianBlur(img, (0, 0), 0.8) + rng.normal(0, 12, shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), boxes


def config(method="paper"):
    return ClassConfig((ClassSpec("organelle", extract=ExtractRecipe(method=method)),))


@pytest.mark.parametrize("contrast, expected", [(True, "refined"), (False, "ellipse")])
def test_calibration_picks_the_recipe_the_modality_needs(contrast, expected):
    data = [scene(seed, contrast) for seed in range(3)]
    images, boxes = [d[0] for d in data], [d[1] for d in data]
    chosen, report = calibrate(images, boxes, config(), PIXEL_NM)
    assert chosen[0].extract.method == expected
    rep = report["organelle"]
    assert rep["n_boxes"] == 15
    assert rep["score"] == max(rep["scores"].values())
    # the pixel classifier is trained only where the refined masks give confident labels
    learned = {"learned"} if contrast else set()
    assert set(rep["scores"]) == {"configured", *candidates(ExtractRecipe())} | learned
    assert rep["recipe"]["method"] == expected


def test_class_without_boxes_keeps_its_recipe():
    img, boxes = scene(0, True)
    two = ClassConfig(
        (
            ClassSpec("a", extract=ExtractRecipe(method="paper")),
            ClassSpec("b", extract=ExtractRecipe(method="ellipse", polarity="light")),
        )
    )
    chosen, report = calibrate([img], [boxes], two, PIXEL_NM, max_boxes=3)
    assert chosen[1] == two[1]
    assert report["b"]["choice"] == "unchanged"
    assert report["a"]["n_boxes"] == 3


def test_box_score_of_a_perfect_mask():
    # An organelle that fills its box exactly: the mask's box is the drawn box
    # (fit 1) and growing the box adds nothing (stability 1).
    img = np.full((60, 60), 200, np.uint8)
    img[20:40, 15:45] = 30
    fit, stability = box_score(
        img, Box(0, 15, 20, 30, 20), ExtractRecipe(method="refined"), PIXEL_NM
    )
    assert fit == pytest.approx(1.0)
    assert stability == pytest.approx(1.0)
    # The ellipse fits its box too, but grows with a looser box.
    fit, stability = box_score(img, Box(0, 15, 20, 30, 20), ExtractRecipe(method="ellipse"), 6.0)
    assert fit == pytest.approx(1.0) and stability < 0.7


def test_configured_ellipse_is_kept():
    # Contrasted organelles would score better with a threshold, but a class
    # configured with the ellipse (organelles that grey values do not delimit)
    # keeps it; the scores are still reported.
    img, boxes = scene(0, True)
    chosen, report = calibrate([img], [boxes], config("ellipse"), PIXEL_NM)
    assert chosen[0].extract.method == "ellipse"
    assert report["organelle"]["choice"] == "configured"
    scores = report["organelle"]["scores"]
    assert max(scores, key=scores.get).startswith("refined")


def test_boxes_drawn_inside_the_dark_rim_make_the_masks_move_inwards():
    """The annotator who leaves the rim out gets an inset of a pixel or more; the one who
    boxes the whole organelle gets none (an inset under a pixel moves no pixel)."""
    insets, lines = {}, {}
    for inside in (0, 2):
        data = [scene(seed, True, inside=inside) for seed in range(4)]
        chosen, report = calibrate([d[0] for d in data], [d[1] for d in data], config(), PIXEL_NM)
        assert report["organelle"]["inset"]["samples"] >= 100
        assert report["organelle"]["recipe"]["inset_nm"] == chosen[0].extract.inset_nm
        insets[inside] = chosen[0].extract.inset_nm / PIXEL_NM
        lines[inside] = inset_lines(report)
    assert insets[0] < 1.0 <= insets[2] <= 2.5
    # said by `famous train` and the Blender panel only where pixels move
    assert lines[0] == [] and len(lines[2]) == 1
    assert lines[2][0].startswith(f"organelle: masks moved {insets[2] * PIXEL_NM:g} nm")
