"""The comparison's figures (PNG): total volume per class (the paper's Figures
13-18), per-object volume scatter, confusion matrices and slice overlays
(Figure 19).
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from scipy.ndimage import binary_dilation
from skimage.segmentation import find_boundaries

from ..fileio import atomic_write_bytes
from ..progress import ProgressFn, silent
from ..stack import open_stack
from .comparison import Comparison, PairResult
from .tables import confusion_matrix, slug


def _save(fig, path: Path) -> Path:
    """Write a figure as PNG (110 dpi) atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


def _plot_volumes(comp: Comparison, path: Path) -> Path:
    # matplotlib: slow to import, needed only when plots are drawn
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
    # matplotlib: slow to import, needed only when plots are drawn
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
    # matplotlib: slow to import, needed only when plots are drawn
    from matplotlib.figure import Figure

    rows, cols, mat = confusion_matrix(pair, order)
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
    """The EM slice at grid slice ``k``, resized to the grid; None without a stack."""
    if comp.stack_path is None or not Path(comp.stack_path).exists():
        return None
    st = open_stack(comp.stack_path)
    vz = st.voxel_size_nm[0] / 1000.0 if st.voxel_size_nm else comp.grid.voxel_size_um[0]
    ks = min(st.shape[0] - 1, max(0, int(round(k * comp.grid.voxel_size_um[0] / vz))))
    img = st.read(ks)
    if img.shape != tuple(comp.grid.shape[1:]):
        img = cv2.resize(img, comp.grid.shape[:0:-1], interpolation=cv2.INTER_AREA)
    return img


def _plot_overlay(comp: Comparison, k: int, path: Path) -> Path:
    # matplotlib: slow to import, needed only when plots are drawn
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

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


def write_plots(
    comp: Comparison,
    pdir: Path,
    slices: list[int] | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Path]:
    """Draw every figure of a comparison into ``pdir``.

    Parameters
    ----------
    comp : Comparison
    pdir : Path
        The ``plots`` folder (created).
    slices : list of int, optional
        Slices for the overlays; default :func:`choose_slices`. Slices off
        the grid are skipped.
    progress : callable, optional
        Reported from 0.1 to 0.95: the report's writer passes its own bar.

    Returns
    -------
    dict of str to Path
        ``volumes``, ``scatter_<pair>``, ``confusion_<pair>`` and
        ``overlay_z<slice>``.
    """
    progress = progress or silent
    figs: dict[str, Path] = {}
    figs["volumes"] = _plot_volumes(comp, pdir / "volumes.png")
    for i, p in enumerate(comp.pairs):
        name = slug(p.name)
        figs[f"scatter_{name}"] = _plot_scatter(comp, p, pdir / f"scatter_{name}.png")
        figs[f"confusion_{name}"] = _plot_confusion(
            p, comp.class_order, pdir / f"confusion_{name}.png"
        )
        progress(0.1 + 0.5 * (i + 1) / len(comp.pairs), f"plots of {p.name}")
    chosen = choose_slices(comp) if slices is None else list(slices)
    for i, k in enumerate(chosen):
        if 0 <= k < comp.grid.shape[0]:
            figs[f"overlay_z{k:05d}"] = _plot_overlay(comp, k, pdir / f"overlay_z{k:05d}.png")
        progress(0.6 + 0.35 * (i + 1) / max(1, len(chosen)), f"overlay of slice {k}")
    return figs
