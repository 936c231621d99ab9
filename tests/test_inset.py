"""Where the user draws the boundary: fitted from boxes (known shifts), applied per slice."""

import cv2
import numpy as np
import pytest
from scipy import ndimage

from famous_addon.core.boxes import Box
from famous_addon.core.inset import Profiles, apply_inset, fit_inset


def membrane_scene(seed: int, drawn_inside: int, n: int = 6, shape=(160, 160)):
    """Dark-rimmed ellipses; each mask is the whole ellipse (as extraction finds it) and
    each box is drawn ``drawn_inside`` px inside its edge, as an annotator who leaves
    the rim out would draw it."""
    rng = np.random.default_rng(seed)
    img = np.full(shape, 180.0, np.float32)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    masks = np.zeros(shape, bool)
    boxes = []
    while len(boxes) < n:
        ry, rx = rng.uniform(9, 16, 2)
        cy, cx = rng.uniform(20, shape[0] - 20), rng.uniform(20, shape[1] - 20)
        r = np.hypot((yy - cy) / ry, (xx - cx) / rx)
        outer = r <= 1
        if (ndimage.binary_dilation(masks, iterations=8) & outer).any():
            continue
        masks |= outer
        img[outer] = 60.0  # the rim: 3 px of dark membrane
        img[np.hypot((yy - cy) / (ry - 3), (xx - cx) / (rx - 3)) <= 1] = 120.0
        drawn = np.hypot((yy - cy) / (ry - drawn_inside), (xx - cx) / (rx - drawn_inside)) <= 1
        rows, cols = np.flatnonzero(drawn.any(1)), np.flatnonzero(drawn.any(0))
        boxes.append(Box(0, cols[0], rows[0], cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0]))
    img = cv2.GaussianBlur(img, (0, 0), 1.0) + rng.normal(0, 6, shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), boxes, masks


@pytest.mark.parametrize("drawn_inside", [0, 2, 3])
def test_the_fitted_inset_is_how_far_inside_the_masks_the_boxes_are_drawn(drawn_inside):
    profiles = Profiles()
    for seed in range(3):
        img, boxes, masks = membrane_scene(seed, drawn_inside)
        profiles.add(img, boxes, masks)
    facts = fit_inset(profiles)
    assert facts["samples"] >= 100
    assert facts["shift_px"] == pytest.approx(drawn_inside, abs=0.5)
    assert facts["inset_px"] == max(0.0, facts["shift_px"])


def test_too_few_boxes_leave_the_masks_as_they_are():
    img, boxes, masks = membrane_scene(0, 2, n=1)
    profiles = Profiles()
    profiles.add(img, boxes[:1], masks)
    facts = fit_inset(profiles)
    assert facts["inset_px"] == 0.0 and "reason" in facts


def test_inset_clears_what_lies_within_it_of_the_background():
    rng = np.random.default_rng(1)
    labels = np.zeros((120, 160), np.int32)
    yy, xx = np.mgrid[0:120, 0:160]
    for v, (cy, cx) in enumerate([(30, 30), (30, 100), (85, 60), (85, 130)], start=1):
        ry, rx = rng.uniform(8, 18, 2)
        labels[np.hypot((yy - cy) / ry, (xx - cx) / rx) <= 1] = v
    inset = np.array([0.0, 1.0, 1.5, 2.0, 3.0])
    out = apply_inset(labels, inset)
    # separate organelles off the border: the pixels farther than the inset from the background
    depth = ndimage.distance_transform_edt(labels > 0)
    assert np.array_equal(out, np.where(depth > inset[labels], labels, 0))


def test_inset_cuts_both_sides_where_organelles_touch_but_not_the_slice_border():
    labels = np.zeros((30, 60), np.int32)
    labels[5:25, 5:25] = 1
    labels[5:25, 25:45] = 2  # touches 1 along a column
    labels[20:30, 50:60] = 3  # cut by the slice's bottom and right borders
    out = apply_inset(labels, np.full(4, 2.0))
    for v, rows, cols in [(1, (7, 22), (7, 22)), (2, (7, 22), (27, 42)), (3, (22, 29), (52, 59))]:
        yy, xx = np.nonzero(out == v)
        assert (yy.min(), yy.max()) == rows and (xx.min(), xx.max()) == cols, v
        assert (out == v).sum() == (rows[1] - rows[0] + 1) * (cols[1] - cols[0] + 1)


def test_a_profile_thinner_than_the_inset_keeps_its_ridge():
    labels = np.zeros((20, 20), np.int32)
    labels[5:8, 4:16] = 7  # 3 px thick: an inset of 2 would clear it
    out = apply_inset(labels, np.full(8, 2.0))
    assert np.array_equal(np.nonzero(out == 7)[0], np.full(10, 6))
    assert apply_inset(np.zeros((4, 4), np.int32), np.zeros(1)).sum() == 0
