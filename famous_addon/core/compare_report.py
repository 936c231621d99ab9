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
import io
import math
from pathlib import Path

import numpy as np

from .compare import NO_MATCH, ClassScore, Comparison, PairResult
from .fileio import atomic_write_bytes, write_csv
from .progress import ProgressFn, silent

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


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")


def _pct(x: float) -> str:
    return "—" if x is None or math.isnan(x) else f"{100 * x:.2f}%"


def _num(x: float) -> str:
    return f"{x:.4g}"


def _metric_row(pair: str, s: ClassScore, thr: float) -> dict:
    row = {
        "pair": pair,
        "class": s.class_name,
        "iou_threshold": thr,
    }
    for k in METRIC_COLUMNS[2:-1]:
        v = getattr(s, k)
        row[k] = round(v, 6) if isinstance(v, float) and not math.isnan(v) else v
    return row


def _classes_of(pair: PairResult, thr: float) -> list[str]:
    return [s.class_name for s in pair.scores[thr]]


def _confusion_matrix(
    pair: PairResult, order: list[str]
) -> tuple[list[str], list[str], np.ndarray]:
    """Rows: reference classes (+ none), columns: test classes (+ none), in class order."""
    rank = {c: i for i, c in enumerate(order)}

    def ordered(names):
        return sorted(set(names) - {NO_MATCH}, key=lambda c: (rank.get(c, len(rank)), c))

    rows = ordered(r for r, _ in pair.confusion) + [NO_MATCH]
    cols = ordered(c for _, c in pair.confusion) + [NO_MATCH]
    mat = np.zeros((len(rows), len(cols)), np.int64)
    for (r, c), n in pair.confusion.items():
        mat[rows.index(r), cols.index(c)] = n
    return rows, cols, mat


# -- report blocks: rendered once to Markdown and once to HTML --------------------


def _blocks(comp: Comparison, plots: dict[str, Path], notes: list[str]) -> list[tuple]:
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
            [[c] + [_pct(_score(p, thr, c).volume_overlap) for p in comp.pairs] for c in classes],
        )
    )
    b.append(("h3", "Dice coefficient per class"))
    b.append(
        (
            "table",
            ["Class"] + [p.name for p in comp.pairs],
            [[c] + [_pct(_score(p, thr, c).dice) for p in comp.pairs] for c in classes],
        )
    )
    for i, p in enumerate(comp.pairs, start=2):
        b.append(("h2", f"Table {i}: Precision, Recall, Jaccard index and F1 scores - {p.name}"))
        sc = p.scores[thr]
        b.append(
            (
                "table",
                ["Class", "Precision", "Recall", "Jaccard Index", "F1 Score"],
                [
                    [s.class_name, _pct(s.precision), _pct(s.recall), _pct(s.jaccard), _pct(s.f1)]
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
                        [s.class_name, str(s.tp), str(s.fp), str(s.fn), _pct(s.precision),
                         _pct(s.recall), _pct(s.jaccard), _pct(s.f1)]
                        for s in p.scores[t]
                    ],
                )
            )  # fmt: skip
        rows, cols, mat = _confusion_matrix(p, comp.class_order)
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
        for key in (f"scatter_{_slug(p.name)}", f"confusion_{_slug(p.name)}"):
            if key in plots:
                b.append(("img", plots[key], key.replace("_", " ")))
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
    if notes:
        b.append(("h2", "Warnings and notes"))
        b.append(("list", notes))
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


# -- plots ----------------------------------------------------------------------


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


def _plot_volumes(comp: Comparison, path: Path) -> Path:
    from matplotlib.figure import Figure

    classes = list(comp.class_order) + ["total"]
    segs = comp.segmentations
    fig = Figure(figsize=(max(6.0, 1.3 * len(classes)), 4.0))
    ax = fig.add_subplot()
    width = 0.8 / len(segs)
    x = np.arange(len(classes))
    for i, s in enumerate(segs):
        per = comp.class_volumes.get(s.name, {})
        vals = [per.get(c, 0.0) for c in classes[:-1]]
        vals.append(sum(vals))
        ax.bar(x + (i - (len(segs) - 1) / 2) * width, vals, width, label=s.name, color=s.colour)
    ax.set_xticks(x, [c.replace("_", " ") for c in classes], rotation=20, ha="right")
    ax.set_ylabel("total volume (µm³)")
    # Classes span orders of magnitude (nucleus vs endosomes): a log axis shows all.
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("Total volume per class")
    return _save(fig, path)


def _plot_scatter(comp: Comparison, pair: PairResult, path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 5.0))
    ax = fig.add_subplot()
    vols = [(c, a, b) for c, a, b in pair.object_volumes if a > 0 and b > 0]
    for i, c in enumerate(comp.class_order):
        pts = np.array([(b, a) for cc, a, b in vols if cc == c])
        if pts.size:
            ax.scatter(pts[:, 0], pts[:, 1], s=14, label=c.replace("_", " "), color=f"C{i}")
    if vols:
        lo = min(min(a, b) for _, a, b in vols) / 1.5
        hi = max(max(a, b) for _, a, b in vols) * 1.5
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    ax.set_xlabel(f"{pair.reference} volume (µm³)")
    ax.set_ylabel(f"{pair.test} volume (µm³)")
    ax.set_title(f"Matched objects: {pair.name} (n={len(vols)})")
    return _save(fig, path)


def _plot_confusion(pair: PairResult, order: list[str], path: Path) -> Path:
    from matplotlib.figure import Figure

    rows, cols, mat = _confusion_matrix(pair, order)
    fig = Figure(figsize=(1.2 * len(cols) + 2.5, 0.8 * len(rows) + 2.0))
    ax = fig.add_subplot()
    ax.imshow(mat, cmap="Blues")
    for (i, j), v in np.ndenumerate(mat):
        ax.text(j, i, str(v), ha="center", va="center", color="k" if v < mat.max() / 2 else "w")
    ax.set_xticks(range(len(cols)), [c.replace("_", " ") for c in cols], rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), [r.replace("_", " ") for r in rows])
    ax.set_xlabel(pair.test)
    ax.set_ylabel(pair.reference)
    ax.set_title(f"Class confusion: {pair.name}")
    return _save(fig, path)


def choose_slices(comp: Comparison, n: int = 3) -> list[int]:
    """Slices through the bulk of the objects: quartiles of the reference's voxels along z.

    The reference is the first manual segmentation (else the first one).
    """
    ref = next((s for s in comp.segmentations if not s.is_automatic), comp.segmentations[0])
    nz = comp.grid.shape[0]
    per_slice = np.zeros(nz)
    step = max(1, (1 << 24) // max(1, comp.grid.shape[1] * comp.grid.shape[2]))
    for z0 in range(0, nz, step):
        slab = np.asarray(ref.labels[z0 : z0 + step])
        per_slice[z0 : z0 + slab.shape[0]] = np.count_nonzero(slab.reshape(slab.shape[0], -1), 1)
    if per_slice.sum() == 0:
        return sorted({int(round(q * (nz - 1))) for q in np.linspace(0.25, 0.75, n)})
    cum = np.cumsum(per_slice) / per_slice.sum()
    qs = np.linspace(0.0, 1.0, n + 2)[1:-1]
    return sorted({int(np.searchsorted(cum, q)) for q in qs})


def _em_slice(comp: Comparison, k: int) -> np.ndarray | None:
    if comp.stack_path is None or not Path(comp.stack_path).exists():
        return None
    import cv2

    from .stack import open_stack

    st = open_stack(comp.stack_path)
    vz = st.voxel_size_nm[0] / 1000.0 if st.voxel_size_nm else comp.grid.voxel_size_um[0]
    ks = min(st.shape[0] - 1, max(0, int(round(k * comp.grid.voxel_size_um[0] / vz))))
    img = st.read(ks)
    if img.shape != tuple(comp.grid.shape[1:]):
        img = cv2.resize(img, comp.grid.shape[:0:-1], interpolation=cv2.INTER_AREA)
    return img


def _plot_overlay(comp: Comparison, k: int, path: Path) -> Path:
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from scipy.ndimage import binary_dilation
    from skimage.segmentation import find_boundaries

    ny, nx = comp.grid.shape[1:]
    em = _em_slice(comp, k)
    fig = Figure(figsize=(7.0, 7.0 * ny / nx + 0.6))
    ax = fig.add_subplot()
    ax.imshow(em if em is not None else np.zeros((ny, nx)), cmap="gray", vmin=0, vmax=255)
    rgba = np.zeros((ny, nx, 4))
    n = len(comp.segmentations)
    for i, s in enumerate(comp.segmentations):
        edge = find_boundaries(np.asarray(s.labels[k]), mode="inner")
        # Earlier outlines are drawn wider so that coinciding ones all stay visible.
        if n - 1 - i:
            edge = binary_dilation(edge, iterations=n - 1 - i)
        rgba[edge] = (*s.colour, 1.0)
    ax.imshow(rgba, interpolation="nearest")
    ax.legend(
        handles=[Line2D([], [], color=s.colour, lw=2, label=s.name) for s in comp.segmentations],
        loc="upper right",
        fontsize=8,
    )
    ax.set_axis_off()
    ax.set_title(f"slice {k} (z = {k * comp.grid.voxel_size_um[0]:.3g} µm)")
    return _save(fig, path)


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
        From :func:`~famous_addon.core.compare.compare_segmentations`.
    out : str or Path
        Output folder (created).
    slices : list of int, optional
        Slices for the overlays; default :func:`choose_slices`.
    plots : bool
        Draw the PNG plots.
    progress : callable, optional

    Returns
    -------
    dict of str to Path
        ``metrics_csv``, ``confusion_csv``, ``volumes_csv``, ``report_md``,
        ``report_html`` and one entry per plot.
    """
    import matplotlib

    matplotlib.use("Agg")
    progress = progress or silent
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
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
    progress(0.1, "tables written")
    figs: dict[str, Path] = {}
    if plots:
        pdir = out / "plots"
        figs["volumes"] = _plot_volumes(comp, pdir / "volumes.png")
        for i, p in enumerate(comp.pairs):
            slug = _slug(p.name)
            figs[f"scatter_{slug}"] = _plot_scatter(comp, p, pdir / f"scatter_{slug}.png")
            figs[f"confusion_{slug}"] = _plot_confusion(
                p, comp.class_order, pdir / f"confusion_{slug}.png"
            )
            progress(0.1 + 0.5 * (i + 1) / len(comp.pairs), f"plots of {p.name}")
        chosen = choose_slices(comp) if slices is None else list(slices)
        for i, k in enumerate(chosen):
            if 0 <= k < comp.grid.shape[0]:
                figs[f"overlay_z{k:05d}"] = _plot_overlay(comp, k, pdir / f"overlay_z{k:05d}.png")
            progress(0.6 + 0.35 * (i + 1) / max(1, len(chosen)), f"overlay of slice {k}")
    paths.update(figs)
    notes = [f"{s.name}: {n}" for s in comp.segmentations for n in s.notes]
    blocks = _blocks(comp, figs, notes)
    atomic_write_bytes(out / "report.md", _render_md(blocks, out).encode())
    atomic_write_bytes(out / "report.html", _render_html(blocks, out).encode())
    paths["report_md"] = out / "report.md"
    paths["report_html"] = out / "report.html"
    progress(1.0, f"report written to {out / 'report.md'}")
    return paths
