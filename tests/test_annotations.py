"""YOLO_mark annotations: round trip, validation errors, slice picking, boxes from labels."""

from __future__ import annotations

import argparse

import cv2
import numpy as np
import pytest
import tifffile

from famous_addon.commands.detector import add_parsers
from famous_addon.core.annotations import (
    SOURCE_NAME,
    boxes_from_label_slice,
    parse_slice_list,
    read_yolo_mark,
    recorded_voxel_size,
    spread_indices,
    write_yolo_mark,
)
from famous_addon.core.boxes import Box
from famous_addon.core.errors import FamousError


def _images(n=3, shape=(60, 80)):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, shape, dtype=np.uint8) for _ in range(n)]


def test_round_trip(tmp_path):
    images = _images()
    boxes = [
        [Box(0, 10, 5, 20, 10), Box(1, 0, 0, 80, 60)],
        [],
        [Box(1, 33.5, 12.25, 7, 9)],
    ]
    write_yolo_mark(tmp_path, images, ["s_2", "s_10", "s_1"], ["a", "b"], boxes)
    assert (tmp_path / "obj.names").read_text() == "a\nb\n"
    # natural order: s_1, s_2, s_10
    assert (tmp_path / "train.txt").read_text().split() == ["s_1.png", "s_2.png", "s_10.png"]
    got_images, got_boxes = read_yolo_mark(tmp_path, load_images=True)
    order = [2, 0, 1]
    for k, j in enumerate(order):
        np.testing.assert_array_equal(got_images[k], images[j])
        assert len(got_boxes[k]) == len(boxes[j])
        for a, b in zip(got_boxes[k], boxes[j]):
            assert a.cls == b.cls
            np.testing.assert_allclose([a.x, a.y, a.w, a.h], [b.x, b.y, b.w, b.h], atol=1e-3)
    paths, _ = read_yolo_mark(tmp_path)
    assert [p.name for p in paths] == ["s_1.png", "s_2.png", "s_10.png"]


def test_never_overwrites(tmp_path):
    write_yolo_mark(tmp_path, _images(1), ["s_0"], ["a"], [[]])
    with pytest.raises(FamousError, match="never overwrites"):
        write_yolo_mark(tmp_path, _images(1), ["s_0"], ["a"], [[]])


def _folder(tmp_path, text, names="a\nb\n"):
    cv2.imwrite(str(tmp_path / "img.png"), np.zeros((10, 20), np.uint8))
    (tmp_path / "img.txt").write_text(text)
    if names is not None:
        (tmp_path / "obj.names").write_text(names)
    return tmp_path


@pytest.mark.parametrize(
    "text, message",
    [
        ("0 0.5 0.5 0.1 0.1\n2 0.5 0.5 0.1 0.1\n", "line 2: class id 2 is out of range"),
        ("0 0.5 1.5 0.1 0.1\n", "line 1: coordinates"),
        ("0 0.5 0.5 0.1\n", "line 1 has 4 fields"),
        ("0 0.5 x 0.1 0.1\n", "line 1 is not numeric"),
        ("-1 0.5 0.5 0.1 0.1\n", "class id -1"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, text, message):
    _folder(tmp_path, text)
    with pytest.raises(FamousError, match=message) as err:
        read_yolo_mark(tmp_path)
    assert "img.txt" in str(err.value)


def test_empty_txt_is_annotated_with_no_boxes(tmp_path):
    _folder(tmp_path, "")
    images, boxes = read_yolo_mark(tmp_path)
    assert len(images) == 1 and boxes == [[]]


def test_class_count_checks(tmp_path):
    _folder(tmp_path, "1 0.5 0.5 0.1 0.1\n", names="a\nb\n")
    with pytest.raises(FamousError, match="obj.names lists 2 classes but the class config has 3"):
        read_yolo_mark(tmp_path, n_classes=3)
    (tmp_path / "obj.names").unlink()
    with pytest.raises(FamousError, match="class id 1 is out of range"):
        read_yolo_mark(tmp_path, n_classes=1)


def test_missing_and_orphan_files(tmp_path):
    _folder(tmp_path, "0 0.5 0.5 0.1 0.1\n")
    cv2.imwrite(str(tmp_path / "unboxed.png"), np.zeros((10, 20), np.uint8))
    with pytest.warns(UserWarning, match="1 image\\(s\\) have no .txt.*unboxed.png"):
        images, _ = read_yolo_mark(tmp_path)
    assert [p.name for p in images] == ["img.png"]
    (tmp_path / "stray.txt").write_text("")
    with pytest.raises(FamousError, match="have no image, e.g. stray.txt"):
        read_yolo_mark(tmp_path)


def test_no_annotated_image_and_16_bit(tmp_path):
    with pytest.raises(FamousError, match="holds no annotated image"):
        read_yolo_mark(tmp_path)
    cv2.imwrite(str(tmp_path / "deep.png"), np.zeros((10, 20), np.uint16))
    (tmp_path / "deep.txt").write_text("")
    with pytest.raises(FamousError, match="must be 8-bit"):
        read_yolo_mark(tmp_path)


def test_yolo_mark_img_subfolder(tmp_path):
    (tmp_path / "img").mkdir()
    _folder(tmp_path / "img", "0 0.5 0.5 0.5 0.5\n", names=None)
    (tmp_path / "obj.names").write_text("only\n")
    images, boxes = read_yolo_mark(tmp_path)
    assert len(images) == 1 and boxes[0][0].w == pytest.approx(10)


def test_spread_and_slice_lists():
    assert spread_indices(1800, 0.01) == [int((i + 0.5) * 100) for i in range(18)]
    assert spread_indices(200, 0.01) == [50, 150]
    assert spread_indices(5, 0.01, minimum=2) == [1, 3]
    assert parse_slice_list("3, 10-12,0:20:10", 30) == [0, 3, 10, 11, 12]
    with pytest.raises(FamousError, match="slice 30 is outside"):
        parse_slice_list("30", 30)
    with pytest.raises(FamousError, match="is not an index"):
        parse_slice_list("a", 30)


def test_boxes_from_labels_pieces_and_classes():
    lab = np.zeros((20, 30), np.uint16)
    lab[2:6, 3:9] = 7  # id 7
    lab[2:6, 9:12] = 8  # id 8 touching id 7: stays a separate box
    lab[10:15, 20:25] = 7  # a second piece of id 7 on this slice
    lab[18, 0] = 9  # single pixel: dropped as noise
    boxes = boxes_from_label_slice(lab, {7: 1, 8: 0, 9: 0}, min_pixels=4)
    got = sorted((b.cls, b.x, b.y, b.w, b.h) for b in boxes)
    assert got == [(0, 9, 2, 3, 4), (1, 3, 2, 6, 4), (1, 20, 10, 5, 5)]
    mask = (lab > 0).astype(np.uint8)
    # a binary mask: each 4-connected piece is one object
    assert len(boxes_from_label_slice(mask, 0)) == 2


def test_split_touching_cuts_touching_discs_and_keeps_a_tube_whole(tmp_path, capsys):
    mask = np.zeros((200, 300), np.uint8)
    cv2.circle(mask, (60, 100), 30, 1, -1)  # two discs touching at a narrow contact
    cv2.circle(mask, (112, 100), 25, 1, -1)
    cv2.ellipse(mask, (220, 60), (60, 14), 20, 0, 360, 1, -1)  # one long, even piece
    cv2.line(mask, (160, 170), (290, 150), 1, 20)
    whole = sorted((b.x, b.y, b.w, b.h) for b in boxes_from_label_slice(mask, 0))
    split = sorted((b.x, b.y, b.w, b.h) for b in boxes_from_label_slice(mask, 0, 4, 0.25))
    assert len(whole) == 3 and len(split) == 4
    assert (30, 70, 108, 61) in whole
    # each disc gets its own box: the cut runs where the outlines cross (x = 89)
    assert (30, 70, 59, 61) in split and (89, 75, 49, 51) in split
    assert set(whole) - {(30, 70, 108, 61)} <= set(split)
    tifffile.imwrite(tmp_path / "mask.tif", mask[None])
    args = _parse(
        ["boxes-from-labels", str(tmp_path / "mask.tif"), "--slices", "0",
         "--out", str(tmp_path / "ann"), "--split-touching", "0.25"]
    )  # fmt: skip
    assert args.func(args) == 0
    assert "wrote 4 boxes on 1 slices" in capsys.readouterr().out


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def _stack_and_labels(folder, seed: int) -> np.ndarray:
    """A random 20 x 40 x 50 stack.tif and a labels.tif with one box-shaped label."""
    stack = np.random.default_rng(seed).integers(0, 255, (20, 40, 50), dtype=np.uint8)
    labels = np.zeros((20, 40, 50), np.uint16)
    labels[:, 5:15, 10:30] = 3
    tifffile.imwrite(folder / "stack.tif", stack)
    tifffile.imwrite(folder / "labels.tif", labels)
    return stack


def test_cli_annotate_pick_and_boxes_from_labels(tmp_path, capsys):
    stack = _stack_and_labels(tmp_path, 1)
    args = _parse(
        [
            "annotate-pick",
            str(tmp_path / "stack.tif"),
            "--fraction",
            "0.1",
            "--out",
            str(tmp_path / "pick"),
        ]
    )
    assert args.func(args) == 0
    pngs = sorted(p.name for p in (tmp_path / "pick").glob("*.png"))
    assert pngs == ["slice_00005.png", "slice_00015.png"]
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "pick" / pngs[0]), 0), stack[5])
    assert (tmp_path / "pick" / "obj.names").read_text().split()[2] == "mitochondria"
    args = _parse(
        [
            "boxes-from-labels", str(tmp_path / "labels.tif"), "--slices", "2,7",
            "--out", str(tmp_path / "ann"), "--stack", str(tmp_path / "stack.tif"),
            "--class", "mitochondria",
        ]
    )  # fmt: skip
    assert args.func(args) == 0
    images, boxes = read_yolo_mark(tmp_path / "ann", load_images=True)
    assert len(images) == 2
    b = boxes[0][0]
    assert (b.cls, b.x, b.y, b.w, b.h) == (2, 10, 5, 20, 10)
    np.testing.assert_array_equal(images[1], stack[7])


def test_exported_slices_record_the_voxel_size_their_stack_gives(tmp_path):
    stack = np.random.default_rng(4).integers(0, 255, (20, 40, 50), dtype=np.uint8)
    # ImageJ metadata: 5 nm pixels, 40 nm sections
    tifffile.imwrite(
        tmp_path / "stack.tif",
        stack,
        imagej=True,
        resolution=(0.2, 0.2),
        metadata={"spacing": 40.0, "unit": "nm"},
    )
    tifffile.imwrite(tmp_path / "plain.tif", stack)
    labels = np.zeros((20, 40, 50), np.uint16)
    labels[:, 5:15, 10:30] = 1
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    for argv in (
        ["annotate-pick", str(tmp_path / "stack.tif"), "--out", str(tmp_path / "pick")],
        ["boxes-from-labels", str(tmp_path / "labels.tif"), "--slices", "3",
         "--out", str(tmp_path / "ann"), "--stack", str(tmp_path / "stack.tif")],
        ["annotate-pick", str(tmp_path / "plain.tif"), "--out", str(tmp_path / "plain")],
    ):  # fmt: skip
        args = _parse(argv)
        assert args.func(args) == 0
    assert recorded_voxel_size([tmp_path / "pick"]) == (40.0, 5.0, 5.0)
    assert recorded_voxel_size([tmp_path / "plain", tmp_path / "ann"]) == (40.0, 5.0, 5.0)
    # a stack without a voxel size records none: training is told nothing wrong
    assert not (tmp_path / "plain" / SOURCE_NAME).exists()
    assert recorded_voxel_size([tmp_path / "plain"]) is None
    (tmp_path / "pick" / SOURCE_NAME).write_text('{"voxel_size_nm": [40, 0, 5]}')
    with pytest.raises(FamousError, match="source.json.*not positive"):
        recorded_voxel_size([tmp_path / "pick"])
    (tmp_path / "pick" / SOURCE_NAME).write_text('{"voxel": 5}')
    with pytest.raises(FamousError, match="source.json.*not a voxel size record"):
        recorded_voxel_size([tmp_path / "pick"])


def test_neighbours_are_written_beside_the_slices_and_checked_on_reading(tmp_path, capsys):
    stack = _stack_and_labels(tmp_path, 3)
    args = _parse(
        ["annotate-pick", str(tmp_path / "stack.tif"), "--fraction", "0.1",
         "--out", str(tmp_path / "pick"), "--neighbours"]
    )  # fmt: skip
    assert args.func(args) == 0
    saved = cv2.imread(str(tmp_path / "pick" / "neighbours" / "slice_00015.png"), -1)
    np.testing.assert_array_equal(saved, np.dstack([stack[14], stack[15], stack[16]]))
    args = _parse(
        ["boxes-from-labels", str(tmp_path / "labels.tif"), "--slices", "0,7",
         "--out", str(tmp_path / "ann"), "--stack", str(tmp_path / "stack.tif"),
         "--class", "mitochondria", "--neighbours"]
    )  # fmt: skip
    assert args.func(args) == 0
    images, boxes = read_yolo_mark(tmp_path / "ann", load_images=True, neighbours=True)
    # the first slice stands in for its missing upper neighbour
    np.testing.assert_array_equal(images[0], np.dstack([stack[0], stack[0], stack[1]]))
    np.testing.assert_array_equal(images[1], np.dstack([stack[6], stack[7], stack[8]]))
    assert boxes[1][0].cls == 2
    # neighbours of another slice, and none at all, are named with the fix
    other = tmp_path / "ann" / "neighbours" / "slice_00007.png"
    cv2.imwrite(str(other), np.dstack([stack[1], stack[2], stack[3]]))
    with pytest.raises(FamousError, match="slice_00007.png.*middle slice.*--neighbours"):
        read_yolo_mark(tmp_path / "ann", load_images=True, neighbours=True)
    other.unlink()
    with pytest.raises(FamousError, match="slice_00007.png.*is missing"):
        read_yolo_mark(tmp_path / "ann", load_images=True, neighbours=True)
    args = _parse(
        ["boxes-from-labels", str(tmp_path / "labels.tif"), "--slices", "3",
         "--out", str(tmp_path / "ann2"), "--neighbours"]
    )  # fmt: skip
    with pytest.raises(FamousError, match="needs the image stack"):
        args.func(args)
