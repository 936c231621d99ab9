"""PNG plots of the per-organelle measurements: histograms per class and a scatter."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..fileio import atomic_path

# (column, axis label, log axis when the values span more than 20x)
_HISTOGRAMS = (
    ("volume_um3", "volume (µm³)", True),
    ("sphericity", "sphericity (1 = sphere)", False),
    ("length_um", "skeleton length (µm)", False),
)


def plot_measurements(
    rows: Sequence[dict],
    class_names: Sequence[str],
    out_dir: str | Path,
    colors: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write PNG plots of the per-organelle measurements.

    One figure per measurement (volume, sphericity, length) with a histogram
    per class, and a volume-vs-sphericity scatter of all classes.

    Parameters
    ----------
    rows : sequence of dict
        Output of :func:`~.morphometry.measure_labels`.
    class_names : sequence of str
        Classes in display order.
    out_dir : str or Path
        Folder for the PNG files (created).
    colors : mapping str -> str, optional
        Class name -> matplotlib colour.

    Returns
    -------
    list of Path
        The files written.
    """
    out_dir = Path(out_dir)
    colors = dict(colors or {})
    written = []
    for col, label, log in _HISTOGRAMS:
        fig = _histograms(rows, class_names, colors, col, label, log)
        if fig is not None:
            written.append(_save(fig, out_dir / f"{col}.png"))
    fig = _volume_vs_sphericity(rows, class_names, colors)
    if fig is not None:
        written.append(_save(fig, out_dir / "volume_vs_sphericity.png"))
    return written


def _values(rows: Sequence[dict], cls: str, col: str) -> np.ndarray:
    """The values of one column for one class (organelles without one left out)."""
    return np.array(
        [r[col] for r in rows if r["class"] == cls and r.get(col) is not None], dtype=float
    )


def _save(fig, path: Path) -> Path:
    """Write a figure as PNG (110 dpi) atomically."""
    # matplotlib: slow to import, needed only when plots are drawn
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def _histograms(rows, class_names, colors, col: str, label: str, log: bool):
    """One histogram per class of column ``col``; None when no class has a value."""
    # matplotlib: slow to import, needed only when plots are drawn
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    shown = [c for c in class_names if _values(rows, c, col).size]
    if not shown:
        return None
    ncol = min(3, len(shown))
    nrow = math.ceil(len(shown) / ncol)
    fig = Figure(figsize=(4.2 * ncol, 3.2 * nrow), layout="constrained")
    for i, cls in enumerate(shown):
        ax = fig.add_subplot(nrow, ncol, i + 1)
        v = _values(rows, cls, col)
        use_log = log and v.min() > 0 and v.max() / v.min() > 20
        bins = np.geomspace(v.min(), v.max(), 21) if use_log else 20
        if col == "sphericity":
            # One fixed scale, so classes compare at a glance.
            bins = np.linspace(0.0, 1.0, 21)
        ax.hist(v, bins=bins, color=colors.get(cls, "#7f7f7f"), edgecolor="black", lw=0.4)
        if use_log:
            ax.set_xscale("log")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{cls} (n = {v.size}, median {np.median(v):.3g})", fontsize=9)
        ax.set_xlabel(label)
        ax.set_ylabel("organelles")
    return fig


def _volume_vs_sphericity(rows, class_names, colors):
    """A scatter of all classes; None when no organelle has a sphericity."""
    # matplotlib: slow to import, needed only when plots are drawn
    from matplotlib.figure import Figure

    shown = [c for c in class_names if _values(rows, c, "sphericity").size]
    if not shown:
        return None
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for cls in shown:
        mine = [r for r in rows if r["class"] == cls and r.get("sphericity") is not None]
        ax.scatter(
            [r["volume_um3"] for r in mine],
            [r["sphericity"] for r in mine],
            s=12,
            alpha=0.75,
            color=colors.get(cls),
            label=f"{cls} (n = {len(mine)})",
        )
    ax.set_xscale("log")
    ax.set_xlabel("volume (µm³)")
    ax.set_ylabel("sphericity (1 = sphere)")
    ax.set_title("volume vs sphericity")
    ax.legend(fontsize=8)
    return fig
