"""YOLO box files: parsing, writing and the per-slice box source."""

import pytest

from famous_addon.core.boxes import Box, YoloTxtBoxes, parse_yolo_lines, write_yolo_txt
from famous_addon.core.errors import FamousError


def test_round_trip_in_pixels(tmp_path):
    boxes = [Box(2, 10, 20, 30, 40), Box(0, 0, 0, 5, 5)]
    write_yolo_txt(tmp_path / "slice_00003.txt", boxes, (100, 200))
    src = YoloTxtBoxes(tmp_path, (100, 200), n_classes=5, n_slices=4)
    got = src(3, None)
    assert [(b.cls, round(b.x, 3), round(b.y, 3), round(b.w, 3), round(b.h, 3)) for b in got] == [
        (2, 10, 20, 30, 40),
        (0, 0, 0, 5, 5),
    ]
    assert src(0, None) == []  # no file: no boxes


@pytest.mark.parametrize(
    "line, message",
    [
        ("7 0.5 0.5 0.1 0.1", "class id 7 is out of range"),
        ("1 1.5 0.5 0.1 0.1", r"not in \[0, 1\]"),
        ("1 0.5 0.5", "3 fields"),
        ("a b c d e", "not numeric"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "slice_1.txt"
    with pytest.raises(FamousError, match=message) as err:
        parse_yolo_lines("0 0.5 0.5 0.2 0.2\n" + line, (10, 10), 5, path)
    assert "line 2" in str(err.value) and "slice_1.txt" in str(err.value)


def test_box_folder_checks(tmp_path):
    with pytest.raises(FamousError, match="not found"):
        YoloTxtBoxes(tmp_path / "none", (10, 10), 2)
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(FamousError, match="slice index"):
        YoloTxtBoxes(tmp_path, (10, 10), 2)
    (tmp_path / "slice_9.txt").write_text("")
    with pytest.raises(FamousError, match="stack has 5 slices"):
        YoloTxtBoxes(tmp_path, (10, 10), 2, n_slices=5)


def test_pixel_bounds_clip_to_image():
    assert Box(0, -3.2, 5.5, 10, 100).pixel_bounds((50, 40)) == (0, 5, 7, 50)
