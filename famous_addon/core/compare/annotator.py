"""A simulated second annotator with known differences (phantom demo and tests)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class AnnotatorChanges:
    """What :func:`simulate_annotator` did, so its effect on the scores is known.

    Attributes
    ----------
    dropped : list of int
        Objects left out.
    reclassified : dict of int to (str, str)
        Object → (old class, new class).
    moved : dict of int to int
        Object → voxels its boundary moved (positive: grown, negative: shrunk).
    """

    dropped: list[int]
    reclassified: dict[int, tuple[str, str]]
    moved: dict[int, int]


def simulate_annotator(
    labels: np.ndarray,
    classes: Mapping[int, str],
    seed: int = 0,
    n_drop: int = 1,
    n_reclassify: int = 1,
    shifts: tuple[int, ...] = (1, 2),
    min_iou: float = 0.6,
) -> tuple[np.ndarray, dict[int, str], AnnotatorChanges]:
    """A second annotator's version of a segmentation, with known differences.

    Every object's boundary moves out or in by one of ``shifts`` voxels (an
    object grows only into background, so neighbours keep their voxels; the
    move is made smaller when the object's IoU with itself would fall below
    ``min_iou``), ``n_drop`` objects are left out and ``n_reclassify`` get
    another class. Same seed, same result.

    Parameters
    ----------
    labels : ndarray, shape (Z, Y, X)
        Instance labels (e.g. the phantom's truth).
    classes : mapping of int to str
    seed : int
    n_drop, n_reclassify : int
    shifts : tuple of int
        Boundary moves to choose from, in voxels.
    min_iou : float
        Lowest IoU of a moved object with the original.

    Returns
    -------
    labels : ndarray
    classes : dict of int to str
    changes : AnnotatorChanges
    """
    rng = np.random.default_rng(seed)
    present = set(np.unique(labels).tolist())
    ids = [i for i in sorted(classes) if i in present and i != 0]
    picked = rng.permutation(ids)
    dropped = sorted(int(i) for i in picked[:n_drop])
    names = sorted(set(classes.values()))
    reclassified = {}
    for i in picked[n_drop : n_drop + n_reclassify]:
        old = classes[int(i)]
        new = str(rng.choice([c for c in names if c != old]))
        reclassified[int(i)] = (old, new)
    out = np.where(np.isin(labels, dropped), 0, labels).astype(labels.dtype)
    background = labels == 0
    ball = ndimage.generate_binary_structure(3, 1)
    moved = {}
    boxes = ndimage.find_objects(labels)
    for i in ids:
        if i in dropped:
            continue
        pad = max(shifts)
        box = tuple(
            slice(max(0, s.start - pad), min(n, s.stop + pad))
            for s, n in zip(boxes[i - 1], labels.shape)
        )
        moved[i] = _move_boundary(labels, out, background, box, i, rng, shifts, min_iou, ball)
    new_classes = {i: classes[i] for i in ids if i not in dropped}
    for i, (_, new) in reclassified.items():
        new_classes[i] = new
    return out, new_classes, AnnotatorChanges(dropped, reclassified, moved)


def _move_boundary(
    labels: np.ndarray,
    out: np.ndarray,
    background: np.ndarray,
    box: tuple[slice, ...],
    i: int,
    rng: np.random.Generator,
    shifts: tuple[int, ...],
    min_iou: float,
    ball: np.ndarray,
) -> int:
    """Grow or shrink object ``i`` inside ``box`` of ``out``; the voxels it gained.

    The object grows only into background that no other object took; the
    move falls back to one voxel, then to none, when the IoU with the
    original would drop below ``min_iou``.
    """
    mask = labels[box] == i
    grow = bool(rng.integers(2))
    first = int(rng.choice(shifts))
    free = (background[box] & (out[box] == 0)) | mask
    for r in dict.fromkeys((first, 1)):
        if grow:
            new = ndimage.binary_dilation(mask, ball, iterations=r) & free
        else:
            # The stack's edge is not a boundary the annotator drew.
            new = ndimage.binary_erosion(mask, ball, iterations=r, border_value=1)
        inter = np.count_nonzero(new & mask)
        if inter / np.count_nonzero(new | mask) >= min_iou:
            break
    else:
        new = mask
    region = out[box]
    region[mask & ~new] = 0
    region[new] = i
    return int(np.count_nonzero(new)) - int(np.count_nonzero(mask))
