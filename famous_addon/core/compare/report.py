"""Write a comparison to disk: CSV tables, a report like the paper's, and plots.

Files (all written atomically) in the output folder:

- ``metrics.csv``: one row per pair and class at the main IoU threshold;
  ``metrics_iou<T>.csv`` the same at each extra threshold.
- ``confusion.csv``: classes of objects matched regardless of class.
- ``volumes.csv``: objects and total volume per class and segmentation.
- ``report.md`` and ``report.html``: the paper's Tables 1-7 layout.
- ``plots/``: total volume per class (the paper's Figures 13-18), per-object
  volume scatter, confusion matrices and slice overlays (Figure 19).
"""

from __future__ import annotations

import html
import math
from pathlib import Path

from ..fileio import atomic_write_bytes
from ..progress import ProgressFn, silent
from .comparison import Comparison, PairResult
from .plots import write_plots
from .score import ClassScore
from .tables import confusion_matrix, percent, slug, write_tables


def _num(x: float) -> str:
    return f"{x:.4g}"


def _blocks(comp: Comparison, plots: dict[str, Path], notes: list[str]) -> list[tuple]:
    """The report as blocks: ``(kind, ...)`` with kind h1/h2/h3, p, table, img or list."""
    b = _intro_blocks(comp)
    for i, p in enumerate(comp.pairs, start=2):
        b += _pair_blocks(comp, p, i, plots)
    b += _volume_blocks(comp, plots)
    if notes:
        b.append(("h2", "Warnings and notes"))
        b.append(("list", notes))
    return b


def _intro_blocks(comp: Comparison) -> list[tuple]:
    """Title, grid and metric definitions, the inputs, Table 1 and Dice."""
    thr = comp.iou_threshold
    segs = comp.segmentations
    b: list[tuple] = [("h1", "FAMOUS comparison report")]
    vz, vy, vx = (v * 1000 for v in comp.grid.voxel_size_um)
    b.append(
        (
            "p",
            f"Grid {comp.grid.shape[0]} x {comp.grid.shape[1]} x {comp.grid.shape[2]} voxels "
            f"(Z, Y, X) of {vz:g} x {vy:g} x {vx:g} nm. Objects match when IoU ≥ {thr:g} "
            "(Hungarian assignment per class). Precision = TP/(TP+FP), recall = TP/(TP+FN), "
            "F1 = 2TP/(2TP+FP+FN), Jaccard index = TP/(TP+FP+FN), as in the paper; "
            "in each pair 'A vs B' B is the reference.",
        )
    )
    b.append(
        (
            "table",
            ["Segmentation", "Kind", "Objects", "Source"],
            [[s.name, s.kind, str(len(s.classes)), str(s.source)] for s in segs],
        )
    )
    classes = list(comp.class_order)
    b.append(("h2", "Table 1: Volume overlap |A ∩ B| / |B| per class"))
    b.append(
        (
            "table",
            ["Class"] + [p.name for p in comp.pairs],
            [
                [c] + [percent(_score(p, thr, c).volume_overlap) for p in comp.pairs]
                for c in classes
            ],
        )
    )
    b.append(("h3", "Dice coefficient per class"))
    b.append(
        (
            "table",
            ["Class"] + [p.name for p in comp.pairs],
            [[c] + [percent(_score(p, thr, c).dice) for p in comp.pairs] for c in classes],
        )
    )
    return b


def _pair_blocks(comp: Comparison, p: PairResult, i: int, plots: dict[str, Path]) -> list[tuple]:
    """Table ``i`` of one pair: scores, counts, extra thresholds, confusion, plots."""
    thr = comp.iou_threshold
    b: list[tuple] = []
    b.append(("h2", f"Table {i}: Precision, Recall, Jaccard index and F1 scores - {p.name}"))
    sc = p.scores[thr]
    b.append(
        (
            "table",
            ["Class", "Precision", "Recall", "Jaccard Index", "F1 Score"],
            [
                [
                    s.class_name,
                    percent(s.precision),
                    percent(s.recall),
                    percent(s.jaccard),
                    percent(s.f1),
                ]
                for s in sc
            ],
        )
    )
    b.append(
        (
            "table",
            ["Class", f"{p.test} objects", f"{p.reference} objects", "TP", "FP", "FN",
             f"split by {p.test}", f"split by {p.reference}"],
            [
                [s.class_name, str(s.n_a), str(s.n_b), str(s.tp), str(s.fp), str(s.fn),
                 str(s.splits_a), str(s.splits_b)]
                for s in sc
            ],
        )
    )  # fmt: skip
    for t in comp.thresholds[1:]:
        b.append(("p", f"At IoU ≥ {t:g}:"))
        b.append(
            (
                "table",
                ["Class", "TP", "FP", "FN", "Precision", "Recall", "Jaccard Index", "F1 Score"],
                [
                    [s.class_name, str(s.tp), str(s.fp), str(s.fn), percent(s.precision),
                     percent(s.recall), percent(s.jaccard), percent(s.f1)]
                    for s in p.scores[t]
                ],
            )
        )  # fmt: skip
    rows, cols, mat = confusion_matrix(p, comp.class_order)
    b.append(
        (
            "p",
            f"Class confusion of {p.name} (objects matched regardless of class; "
            f"rows: {p.reference}, columns: {p.test}):",
        )
    )
    b.append(
        (
            "table",
            [f"{p.reference} \\ {p.test}"] + cols,
            [[r] + [str(v) for v in mat[i]] for i, r in enumerate(rows)],
        )
    )
    for key in (f"scatter_{slug(p.name)}", f"confusion_{slug(p.name)}"):
        if key in plots:
            b.append(("img", plots[key], key.replace("_", " ")))
    return b


def _volume_blocks(comp: Comparison, plots: dict[str, Path]) -> list[tuple]:
    """Total volume per class and segmentation, its plot and the slice overlays."""
    segs = comp.segmentations
    classes = list(comp.class_order)
    b: list[tuple] = []
    b.append(("h2", "Total volume per class (µm³)"))
    b.append(
        (
            "table",
            ["Class"] + [f"{s.name} (n)" for s in segs] + [f"{s.name} µm³" for s in segs],
            [
                [c]
                + [str(sum(1 for cc, _ in comp.object_volumes.get(s.name, []) if cc == c))
                   for s in segs]
                + [_num(comp.class_volumes.get(s.name, {}).get(c, 0.0)) for s in segs]
                for c in classes
            ],
        )
    )  # fmt: skip
    if "volumes" in plots:
        b.append(("img", plots["volumes"], "total volume per class"))
    overlays = [k for k in plots if k.startswith("overlay_")]
    if overlays:
        legend = ", ".join(f"{s.name} {_colour_word(s.colour)}" for s in segs)
        b.append(("h2", f"Slice overlays ({legend})"))
        for k in overlays:
            b.append(("img", plots[k], k.replace("_", " ")))
    return b


def _score(pair: PairResult, thr: float, cls: str) -> ClassScore:
    for s in pair.scores[thr]:
        if s.class_name == cls:
            return s
    nan = math.nan
    return ClassScore(cls, 0, 0, 0, nan, nan, nan, nan, 0, 0, 0.0, 0.0, nan, nan)


def _colour_word(rgb) -> str:
    names = {(0.85, 0.12, 0.12): "red", (0.12, 0.35, 0.9): "blue", (0.1, 0.7, 0.2): "green"}
    return names.get(tuple(rgb), "#" + "".join(f"{int(255 * c):02x}" for c in rgb))


def _render_md(blocks, base: Path) -> str:
    out = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + rest[0] + "\n")
        elif kind == "p":
            out.append(rest[0] + "\n")
        elif kind == "list":
            out.extend(f"- {n}" for n in rest[0])
            out.append("")
        elif kind == "img":
            out.append(f"![{rest[1]}]({Path(rest[0]).relative_to(base).as_posix()})\n")
        elif kind == "table":
            head, rows = rest
            out.append("| " + " | ".join(head) + " |")
            out.append("|" + "|".join("---" for _ in head) + "|")
            out.extend("| " + " | ".join(r) + " |" for r in rows)
            out.append("")
    return "\n".join(out)


def _render_html(blocks, base: Path) -> str:
    e = html.escape
    out = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>FAMOUS comparison</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse;margin:0.5em 0 1.2em}"
        "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}</style>",
        "</head><body>",
    ]
    for kind, *rest in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{e(rest[0])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{e(rest[0])}</p>")
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in rest[0]) + "</ul>")
        elif kind == "img":
            src = Path(rest[0]).relative_to(base).as_posix()
            out.append(f"<figure><img src='{e(src)}' alt='{e(rest[1])}'></figure>")
        elif kind == "table":
            head, rows = rest
            out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>")
            out.extend("<tr>" + "".join(f"<td>{e(v)}</td>" for v in r) + "</tr>" for r in rows)
            out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


def write_outputs(
    comp: Comparison,
    out: str | Path,
    slices: list[int] | None = None,
    plots: bool = True,
    progress: ProgressFn | None = None,
) -> dict[str, Path]:
    """Write the comparison's tables, report and plots into ``out``.

    Parameters
    ----------
    comp : Comparison
        From :func:`~famous_addon.core.compare.comparison.compare_segmentations`.
    out : str or Path
        Output folder (created).
    slices : list of int, optional
        Slices for the overlays; default :func:`~.plots.choose_slices`.
    plots : bool
        Draw the PNG plots.
    progress : callable, optional

    Returns
    -------
    dict of str to Path
        ``metrics_csv``, ``confusion_csv``, ``volumes_csv``, ``report_md``,
        ``report_html`` and one entry per plot.
    """
    # matplotlib: slow to import, needed only here
    import matplotlib

    matplotlib.use("Agg")
    progress = progress or silent
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = write_tables(comp, out)
    progress(0.1, "tables written")
    figs = write_plots(comp, out / "plots", slices, progress) if plots else {}
    paths.update(figs)
    notes = [f"{s.name}: {n}" for s in comp.segmentations for n in s.notes]
    blocks = _blocks(comp, figs, notes)
    atomic_write_bytes(out / "report.md", _render_md(blocks, out).encode())
    atomic_write_bytes(out / "report.html", _render_html(blocks, out).encode())
    paths["report_md"] = out / "report.md"
    paths["report_html"] = out / "report.html"
    progress(1.0, f"report written to {out / 'report.md'}")
    return paths
