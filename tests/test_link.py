"""Algorithm 4 linking, its fast KD-tree form, and the bridge merge."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from famous_addon.core.link import (
    link_boxes,
    link_boxes_reference,
    merge_labels,
    overlap_pairs,
)


def _link(rows, **kw):
    a = np.array(rows, float)
    return link_boxes(a[:, 0], a[:, 1], a[:, 2:6], **kw)


def test_a_column_of_boxes_is_one_organelle_and_a_neighbour_another():
    rows = [(z, 0, 100, 100, 40, 40) for z in range(10)]
    rows += [(z, 0, 300, 100, 40, 40) for z in range(3, 8)]
    labels = _link(rows)
    assert len(set(labels[:10])) == 1 and len(set(labels[10:])) == 1
    assert labels[0] != labels[10]


def test_uses_the_true_centre():
    # Same true centre (120, 120); the paper's (x + w) / 2 would differ by 10 px.
    labels = _link([(0, 0, 100, 100, 40, 40), (1, 0, 110, 110, 20, 20)])
    assert labels[0] == labels[1]


def test_centre_tolerance():
    # tolerance 0.2 * 40 / 2 = 4 px: a 3 px shift links, a 5 px shift does not.
    assert len(set(_link([(0, 0, 100, 100, 40, 40), (1, 0, 103, 100, 40, 40)]))) == 1
    assert len(set(_link([(0, 0, 100, 100, 40, 40), (1, 0, 105, 100, 40, 40)]))) == 2


def test_small_boxes_tolerate_a_pixel_of_misalignment():
    rows = [(0, 0, 100, 100, 5, 5), (1, 0, 101, 99, 5, 5)]
    assert len(set(_link(rows))) == 1
    assert len(set(_link(rows, min_tolerance_px=0))) == 2  # the paper's rule alone


def test_look_back_window_and_class():
    rows = [(0, 0, 100, 100, 40, 40), (49, 0, 100, 100, 40, 40), (98, 0, 100, 100, 40, 40)]
    labels = _link(rows, layers_to_scan=50)
    assert labels[0] == labels[1] == labels[2]
    labels = _link([(0, 0, 100, 100, 40, 40), (50, 0, 100, 100, 40, 40)], layers_to_scan=50)
    assert labels[0] != labels[1]
    labels = _link([(0, 0, 100, 100, 40, 40), (1, 1, 100, 100, 40, 40)])
    assert labels[0] != labels[1]


def test_prefers_the_nearest_slice_then_the_largest_overlap():
    rows = [
        (0, 0, 100, 100, 40, 40),  # organelle A, far above
        (5, 0, 300, 100, 40, 40),  # organelle B, elsewhere
        (8, 0, 102, 101, 40, 40),  # continues A on slice 8 ...
        (8, 0, 98, 99, 44, 44),  # ... and a second, larger box on slice 8
        (9, 0, 101, 100, 40, 40),
    ]
    labels = _link(rows)
    # slice 8's two boxes both link to A; slice 9's box takes the best-overlapping one.
    assert labels[2] == labels[0] and labels[4] == labels[0]


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000))
def test_fast_linking_equals_the_transcription(seed):
    rng = np.random.default_rng(seed)
    n = 300
    z = rng.integers(0, 60, n)
    c = rng.integers(0, 3, n)
    xy = rng.uniform(0, 300, (n, 2))
    wh = rng.uniform(5, 80, (n, 2))
    xywh = np.column_stack([xy, wh])
    fast = link_boxes(z, c, xywh, layers_to_scan=10, tolerance=0.5)
    ref = link_boxes_reference(z, c, xywh, layers_to_scan=10, tolerance=0.5)
    np.testing.assert_array_equal(fast, ref)


def test_overlap_pairs_join_a_bridge_but_not_touching_neighbours():
    prev = np.zeros((40, 60), int)
    cur = np.zeros((40, 60), int)
    prev[10:30, 5:25] = 1  # lobe A (label 0)
    prev[10:30, 35:55] = 2  # lobe B (label 1)
    cur[10:30, 5:55] = 3  # bridge slice: one mask over both lobes (label 2)
    pairs = {tuple(p) for p in overlap_pairs(prev, cur)}
    assert pairs == {(0, 2), (1, 2)}
    # Two touching organelles that overlap by a sliver on the next slice stay apart.
    a = np.zeros((40, 60), int)
    b = np.zeros((40, 60), int)
    a[10:30, 5:25] = 1
    b[10:30, 23:43] = 2
    assert overlap_pairs(a, b).shape == (0, 2)
    assert overlap_pairs(a, b, 0.3).shape == (0, 2)  # the pipeline's default
    # One organelle boxed in two halves that shift from slice to slice: the
    # left piece overlaps the next slice's right piece by a third of it.
    a[:], b[:] = 0, 0
    a[10:30, 5:35], a[10:30, 35:55] = 1, 2
    b[10:30, 5:25], b[10:30, 25:55] = 3, 4
    assert {tuple(p) for p in overlap_pairs(a, b, 0.3)} == {(0, 2), (0, 3), (1, 3)}
    assert {tuple(p) for p in overlap_pairs(a, b)} == {(0, 2), (1, 3)}


def test_merge_labels_renumbers_by_first_appearance():
    labels = np.array([0, 1, 2, 3, 2, 4])
    merged = merge_labels(labels, np.array([[1, 3], [3, 4]]))
    np.testing.assert_array_equal(merged, [0, 1, 2, 1, 2, 1])


@pytest.mark.parametrize("n", [0, 1])
def test_tiny_inputs(n):
    rows = np.array([(0, 0, 1, 1, 2, 2)] * n, float).reshape(-1, 6)
    assert len(link_boxes(rows[:, 0], rows[:, 1], rows[:, 2:6])) == n


def test_a_short_organelle_joins_one_long_one_unless_it_holds_both():
    from famous_addon.core.refine import bridge_pairs

    long = np.array([True, True, False, False])
    # 2 (short) overlaps 0 by 50 px of its 400 and 1 by 30 px of its 400; 3 is short too
    pairs = np.array([[2, 0, 50, 100, 400], [1, 2, 30, 400, 100], [2, 3, 80, 100, 90]])
    joined = {tuple(sorted(p)) for p in bridge_pairs(pairs, long).tolist()}
    assert joined == {(2, 3), (0, 2)}  # the short group joins 0 only, never both
    # a whole cross-section holding most of both long pieces joins them
    holds = np.array([[2, 0, 300, 500, 400], [1, 2, 250, 400, 500]])
    assert {tuple(sorted(p)) for p in bridge_pairs(holds, long).tolist()} == {(0, 2), (1, 2)}
    # long and long join where they overlap, whatever the short ones do
    direct = np.array([[0, 1, 200, 400, 400]])
    assert bridge_pairs(direct, long).tolist() == [[0, 1]]


def test_organelles_on_the_stacks_first_or_last_slice_count_as_long():
    from famous_addon.core.refine import long_enough

    # label: slices; 10 slices in the stack, 4 make an organelle long
    tracks = {0: [0, 1], 1: [3, 4, 5, 6], 2: [4, 5], 3: [8, 9], 4: [9]}
    labels = np.array([lab for lab, ks in tracks.items() for _ in ks] + [-1])
    slices = np.array([k for ks in tracks.values() for k in ks] + [5])
    long = long_enough(labels, slices, 4, 10, 6)
    np.testing.assert_array_equal(long, [True, True, False, True, True, False])


def test_a_box_that_holds_boxes_of_two_organelles_is_unlinked():
    from famous_addon.core.refine import drop_spanning

    # slice 0: a box around two side-by-side boxes (organelles 0 and 1), and an
    # organelle 2 far away; slice 1: a large box holding one small box of another organelle
    xywh = np.array(
        [[0, 0, 100, 50], [2, 2, 45, 45], [52, 2, 45, 45], [300, 300, 20, 20],
         [0, 0, 200, 200], [10, 10, 20, 20], [150, 150, 5, 5]],
        float,
    )  # fmt: skip
    det = {"xywh": xywh, "cls": np.zeros(7, int), "start": np.array([0, 4, 7])}
    labels = np.array([0, 0, 1, 2, 3, 4, 5])
    out = drop_spanning(labels, det)
    assert out.tolist() == [-1, 0, 1, 2, 3, 4, 5]
    # the two held boxes of one organelle (a piece each) leave the box alone
    assert drop_spanning(np.array([0, 0, 0, 2, 3, 4, 5]), det)[0] == 0
