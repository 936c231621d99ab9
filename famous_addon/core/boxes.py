"""Boxes and the one interface through which detections enter the pipeline.

A *box source* is any callable ``source(index, image) -> list[Box]`` giving the
boxes of slice ``index`` (its image is passed for detectors that need it).
Two ship with FAMOUS: :class:`YoloTxtBoxes` (one YOLO text file per slice, as
an external darknet run or the phantom writes them) and the YOLOv4 detector in
:mod:`famous_addon.core.detector.inference`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from .errors import FamousError
from .fileio import atomic_write_bytes
from .guard import decode_text


@dataclass(frozen=True)
class Box:
    """An axis-aligned box on one slice, in pixels.

    ``x``/``y`` are the column/row of the top-left corner, ``w``/``h`` the
    width/height; ``cls`` is the class index in the class config's order.
    """

    cls: int
    x: float
    y: float
    w: float
    h: float
    score: float = 1.0

    @property
    def cx(self) -> float:
        return self.x + self.w / 2

    @property
    def cy(self) -> float:
        return self.y + self.h / 2

    def pixel_bounds(self, shape: tuple[int, int]) -> tuple[int, int, int, int]:
        """Integer ``(x0, y0, x1, y1)`` (end exclusive), clipped to an image of ``shape``."""
        rows, cols = shape[:2]
        x0 = int(np.clip(np.floor(self.x), 0, cols))
        y0 = int(np.clip(np.floor(self.y), 0, rows))
        x1 = int(np.clip(np.ceil(self.x + self.w), 0, cols))
        y1 = int(np.clip(np.ceil(self.y + self.h), 0, rows))
        return x0, y0, x1, y1

    def to_yolo(self, shape: tuple[int, int]) -> str:
        """The box as a YOLO line ``class cx cy w h`` normalised by ``shape``."""
        rows, cols = shape[:2]
        return (
            f"{self.cls} {self.cx / cols:.6f} {self.cy / rows:.6f} "
            f"{self.w / cols:.6f} {self.h / rows:.6f}"
        )


class BoxSource(Protocol):
    """Anything that returns the boxes of a slice.

    A source may also have ``confirm_thresholds`` (a score per class): the
    pipeline then keeps only organelles confirmed by confident boxes (a
    detector has it; boxes drawn by hand need no confirmation).
    """

    def __call__(self, index: int, image: np.ndarray) -> list[Box]: ...


def parse_yolo_lines(
    text: str | bytes, shape: tuple[int, int], n_classes: int | None, path: str | Path
) -> list[Box]:
    """Parse YOLO lines ``class cx cy w h [score]`` into pixel boxes.

    Raises a :class:`FamousError` naming the file and line for a bad class id,
    coordinates outside [0, 1], a box with no area inside the slice, a score
    that is not a number in [0, 1], a malformed line or (for ``bytes``) text
    that is not UTF-8. An empty text is allowed.
    """
    if isinstance(text, bytes):
        text = decode_text(text, path, "box file", "save it as plain text (UTF-8 or ASCII).")
    rows, cols = shape[:2]
    boxes = []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        where = f"line {lineno}"
        if len(parts) not in (5, 6):
            raise FamousError(
                f"{where} has {len(parts)} fields: {line.strip()!r}.",
                path,
                "each line must be 'class cx cy w h' (normalised), optionally with a score.",
            )
        try:
            cls = int(parts[0])
            cx, cy, w, h = (float(v) for v in parts[1:5])
            score = float(parts[5]) if len(parts) == 6 else 1.0
        except ValueError:
            raise FamousError(f"{where} is not numeric: {line.strip()!r}.", path) from None
        if cls < 0 or (n_classes is not None and cls >= n_classes):
            raise FamousError(
                f"{where}: class id {cls} is out of range (the class config has "
                f"{n_classes} classes, ids 0..{(n_classes or 1) - 1}).",
                path,
                "use the class config these boxes were made with.",
            )
        eps = 1e-3
        if not all(-eps <= v <= 1 + eps for v in (cx, cy, w, h)):
            raise FamousError(
                f"{where}: coordinates {cx, cy, w, h} are not in [0, 1].",
                path,
                "YOLO boxes are normalised by the image width and height.",
            )
        if not 0 <= score <= 1:
            raise FamousError(
                f"{where}: score {parts[5]} is not a number in [0, 1].",
                path,
                "give a detection score in [0, 1] as the sixth field, or leave it out.",
            )
        pw, ph = w * cols, h * rows
        box = Box(cls, cx * cols - pw / 2, cy * rows - ph / 2, pw, ph, score)
        x0, y0, x1, y1 = box.pixel_bounds(shape)
        # a box with no pixel inside the slice has nothing to extract (and once crashed it)
        if pw <= 0 or ph <= 0 or x1 <= x0 or y1 <= y0:
            raise FamousError(
                f"{where}: the box {line.strip()!r} covers no pixel of the "
                f"{cols} x {rows} slice (zero width or height, or outside it).",
                path,
                "delete the line or give the box a width and height.",
            )
        boxes.append(box)
    return boxes


def write_yolo_txt(path: str | Path, boxes: list[Box], shape: tuple[int, int]) -> None:
    """Write boxes as a YOLO text file (normalised by ``shape``), atomically.

    Boxes are clipped to the image first (a detected or filled-in box may
    reach past the slice; YOLO coordinates lie in [0, 1]); a box with nothing
    inside the image is left out.
    """
    rows, cols = shape[:2]
    text = ""
    for b in boxes:
        x0, y0 = max(b.x, 0.0), max(b.y, 0.0)
        x1, y1 = min(b.x + b.w, float(cols)), min(b.y + b.h, float(rows))
        if x1 > x0 and y1 > y0:
            text += replace(b, x=x0, y=y0, w=x1 - x0, h=y1 - y0).to_yolo(shape) + "\n"
    atomic_write_bytes(Path(path), text.encode())


_TRAILING_INT = re.compile(r"(\d+)$")


class YoloTxtBoxes:
    """Boxes from one YOLO text file per slice.

    Each file's name (without suffix) ends in the 0-based slice index, e.g.
    ``slice_00012.txt``; a slice without a file has no boxes.

    Parameters
    ----------
    folder : str or Path
        Folder of ``*.txt`` files.
    shape : (rows, cols)
        Slice shape, to turn normalised coordinates into pixels.
    n_classes : int
        Class count of the class config; class ids are checked against it.
    n_slices : int, optional
        Stack depth; files naming a slice beyond it are an error.
    """

    def __init__(
        self,
        folder: str | Path,
        shape: tuple[int, int],
        n_classes: int,
        n_slices: int | None = None,
    ):
        self.folder = Path(folder)
        self.shape = tuple(shape[:2])
        self.n_classes = n_classes
        if not self.folder.is_dir():
            raise FamousError(
                "box folder not found.",
                self.folder,
                "give the folder of per-slice YOLO .txt files.",
            )
        self.files: dict[int, Path] = {}
        for p in self.folder.glob("*.txt"):
            m = _TRAILING_INT.search(p.stem)
            if m is None:
                continue
            idx = int(m.group(1))
            if idx in self.files:
                raise FamousError(
                    f"slice {idx} has two box files ({self.files[idx].name}, {p.name}).",
                    self.folder,
                    "keep one .txt per slice.",
                )
            self.files[idx] = p
        if not self.files:
            raise FamousError(
                "holds no YOLO .txt files whose names end in a slice index.",
                self.folder,
                "name them like slice_00012.txt (0-based slice index).",
            )
        if n_slices is not None and max(self.files) >= n_slices:
            bad = max(self.files)
            raise FamousError(
                f"{self.files[bad].name} names slice {bad}, but the stack has {n_slices} slices.",
                self.folder,
                "use the box folder made for this stack.",
            )

    def validate(self) -> None:
        """Parse every file once, so bad lines fail before any slice is processed."""
        for idx in sorted(self.files):
            self(idx, None)

    def __call__(self, index: int, image: np.ndarray | None = None) -> list[Box]:
        path = self.files.get(index)
        if path is None:
            return []
        return parse_yolo_lines(path.read_bytes(), self.shape, self.n_classes, path)

    def describe(self) -> dict:
        return {"kind": "yolo_txt", "folder": str(self.folder.resolve()), "files": len(self.files)}


def boxes_to_array(boxes: list[Box]) -> np.ndarray:
    """Boxes as an ``(n, 6)`` float array: cls, x, y, w, h, score."""
    if not boxes:
        return np.zeros((0, 6), np.float64)
    return np.array([(b.cls, b.x, b.y, b.w, b.h, b.score) for b in boxes], np.float64)


def boxes_from_array(rows: np.ndarray) -> list[Box]:
    """The inverse of :func:`boxes_to_array`."""
    return [Box(int(r[0]), *map(float, r[1:])) for r in np.asarray(rows).reshape(-1, 6)]
