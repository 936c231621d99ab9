"""The annotated slices a detector is trained and calibrated on: reading them and
the held-out split."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..annotations import read_yolo_mark
from ..errors import FamousError


def split_images(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Training and held-out image indices; no held-out split below 3 images."""
    if n < 3 or val_fraction <= 0:
        return list(range(n)), []
    n_val = max(1, round(n * val_fraction))
    order = np.random.default_rng(seed).permutation(n)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def read_boxed(annotations: str | Path, n_classes: int, neighbours: bool = False):
    """Images and boxes of a YOLO_mark folder; an error when it holds no box at all.

    Parameters
    ----------
    annotations : str or Path
        YOLO_mark folder (images + ``.txt`` boxes).
    n_classes : int
        The detector's class count; a box of another class is an error.
    neighbours : bool
        Read each slice between its neighbours (the folder's ``neighbours/``).

    Returns
    -------
    images : list of uint8 arrays
    boxes : list of list of Box
    """
    images, boxes = read_yolo_mark(
        annotations, n_classes=n_classes, load_images=True, neighbours=neighbours
    )
    if not any(boxes):
        raise FamousError("holds no boxes.", annotations, "box the organelles in YOLO_mark first.")
    return images, boxes
