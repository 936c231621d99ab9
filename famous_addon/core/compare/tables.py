"""The comparison's tables: ``metrics.csv``, ``confusion.csv``, ``volumes.csv``
and the plain-text table printed in the terminal.

``metrics.csv`` has one row per pair and class at the main IoU threshold;
``metrics_iou<T>.csv`` the same at each extra threshold. ``confusion.csv``
counts the classes of objects matched regardless of class; ``volumes.csv``
gives the objects and total volume per class and segmentation.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..fileio import write_csv
from .comparison import Comparison, PairResult
from .score import NO_MATCH, ClassScore

METRIC_COLUMNS = (
    "pair",
    "class",
    "tp",
    "fp",
    "fn",
    "precision",
    "recall",
    "f1",
    "jaccard",
    "volume_a_um3",
    "volume_b_um3",
    "volume_overlap",
    "dice",
    "n_a",
    "n_b",
    "splits_a",
    "splits_b",
    "iou_threshold",
)
CONFUSION_COLUMNS = ("pair", "class_reference", "class_test", "count")
VOLUME_COLUMNS = ("segmentation", "class", "objects", "volume_um3")


def slug(text: str) -> str:
    """``text`` as a file-name part: every character but letters and digits becomes ``_``.

    Parameters
    ----------
    text : str
        E.g. a pair's name, ``"automatic vs M1"``.

    Returns
    -------
    str
        E.g. ``"automatic_vs_M1"``.
    """
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")


def percent(x: float | None) -> str:
    """A score as a percentage with two decimals; a dash where it is undefined.

    Parameters
    ----------
    x : float or None
        A fraction (NaN or None when the score is undefined, e.g. 0/0).

    Returns
    -------
    str
    """
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def _metric_row(pair: str, s: ClassScore, thr: float) -> dict:
    """One row of ``metrics.csv``: floats rounded to 6 decimals, NaN kept."""
    row = {
        "pair": pair,
        "class": s.class_name,
        "iou_threshold": thr,
    }
    for k in METRIC_COLUMNS[2:-1]:
        v = getattr(s, k)
        row[k] = round(v, 6) if isinstance(v, float) and not math.isnan(v) else v
    return row


def confusion_matrix(pair: PairResult, order: list[str]) -> tuple[list[str], list[str], np.ndarray]:
    """A pair's class confusion as a matrix.

    Parameters
    ----------
    pair : PairResult
    order : list of str
        Class order (classes not in it follow alphabetically).

    Returns
    -------
    rows, cols : list of str
        Reference classes and test classes in class order, each followed by
        ``NO_MATCH``.
    matrix : ndarray of int64, shape (len(rows), len(cols))
        Matched objects per (reference class, test class).
    """
    rank = {c: i for i, c in enumerate(order)}

    def ordered(names):
        return sorted(set(names) - {NO_MATCH}, key=lambda c: (rank.get(c, len(rank)), c))

    rows = ordered(r for r, _ in pair.confusion) + [NO_MATCH]
    cols = ordered(c for _, c in pair.confusion) + [NO_MATCH]
    mat = np.zeros((len(rows), len(cols)), np.int64)
    for (r, c), n in pair.confusion.items():
        mat[rows.index(r), cols.index(c)] = n
    return rows, cols, mat


def format_table(scores: list[ClassScore]) -> str:
    """A plain-text table of per-class scores for the terminal.

    Parameters
    ----------
    scores : list of ClassScore

    Returns
    -------
    str
    """
    head = (
        "class",
        "n_a",
        "n_b",
        "TP",
        "FP",
        "FN",
        "precision",
        "recall",
        "jaccard",
        "F1",
        "vol.overlap",
        "dice",
        "vol_a µm³",
        "vol_b µm³",
    )
    rows = [
        (
            s.class_name,
            str(s.n_a),
            str(s.n_b),
            str(s.tp),
            str(s.fp),
            str(s.fn),
            percent(s.precision),
            percent(s.recall),
            percent(s.jaccard),
            percent(s.f1),
            percent(s.volume_overlap),
            percent(s.dice),
            f"{s.volume_a_um3:.4g}",
            f"{s.volume_b_um3:.4g}",
        )
        for s in scores
    ]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)
    ]
    lines = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths))
        )
    ]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append(
            "  ".join(
                v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))
            )
        )
    return "\n".join(lines)


def write_tables(comp: Comparison, out: Path) -> dict[str, Path]:
    """Write ``metrics*.csv``, ``confusion.csv`` and ``volumes.csv`` into ``out``.

    Parameters
    ----------
    comp : Comparison
    out : Path
        Existing output folder.

    Returns
    -------
    dict of str to Path
        ``metrics_csv``, ``metrics_iou<T>_csv`` per extra threshold,
        ``confusion_csv`` and ``volumes_csv``.
    """
    paths: dict[str, Path] = {}
    main = comp.iou_threshold
    for thr in comp.thresholds:
        name = "metrics.csv" if thr == main else f"metrics_iou{thr:g}.csv"
        rows = [_metric_row(p.name, s, thr) for p in comp.pairs for s in p.scores[thr]]
        write_csv(out / name, METRIC_COLUMNS, rows)
        paths["metrics_csv" if thr == main else f"metrics_iou{thr:g}_csv"] = out / name
    write_csv(
        out / "confusion.csv",
        CONFUSION_COLUMNS,
        [(p.name, r, c, n) for p in comp.pairs for (r, c), n in sorted(p.confusion.items())],
    )
    paths["confusion_csv"] = out / "confusion.csv"
    vol_rows = []
    for s in comp.segmentations:
        for c in comp.class_order:
            objs = [v for cc, v in comp.object_volumes.get(s.name, []) if cc == c]
            vol_rows.append((s.name, c, len(objs), round(sum(objs), 6)))
    write_csv(out / "volumes.csv", VOLUME_COLUMNS, vol_rows)
    paths["volumes_csv"] = out / "volumes.csv"
    return paths
