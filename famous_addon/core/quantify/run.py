"""Quantify a finished run: what ``famous quantify``, the panel and ``run_famous.py`` run."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import FamousError
from ..fileio import read_csv, write_csv
from ..guard import writable_folder
from ..progress import ProgressFn, silent, sub
from ..runfolder import LABELS_TIF, ORGANELLE_COLUMNS, ORGANELLES_CSV, RunFolder
from . import TUBULAR_DEFAULT
from .labelfile import read_labels
from .morphometry import MEASUREMENT_COLUMNS, measure_labels
from .plots import plot_measurements
from .tables import (
    CLASSES_CSV,
    PLOTS_DIR,
    QUANTIFICATION_CSV,
    class_table,
    class_table_columns,
    format_cell,
    merge_mesh_areas,
)


@dataclass
class QuantifyResult:
    """What :func:`quantify_run` wrote and measured."""

    organelles_csv: Path
    classes_csv: Path
    plots: list[Path]
    rows: list[dict]
    classes: list[dict]


def quantify_run(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    progress: ProgressFn | None = None,
    tubular: Iterable[str] = TUBULAR_DEFAULT,
    mesh_areas: str | Path | None = None,
) -> QuantifyResult:
    """Measure every organelle of a finished run and write tables and plots.

    Parameters
    ----------
    run_dir : str or Path
        A finished run folder with ``labels.tif`` (``famous run --labels``).
    out_dir : str or Path, optional
        Where to write; default the run folder itself.
    progress : callable, optional
        ``progress(fraction, message)``.
    tubular : iterable of str
        Classes that get skeleton length and branch count.
    mesh_areas : str or Path, optional
        The add-on's ``quantification.csv`` (mesh areas, merged as
        ``area_mesh_um2``); default: one in ``out_dir`` or the run folder.

    Returns
    -------
    QuantifyResult
        Paths written (``organelles.csv`` with the run's columns followed by
        the measurements, ``classes.csv``, ``plots/*.png``) and the tables.
    """
    run = RunFolder(run_dir)
    out = Path(out_dir) if out_dir is not None else run.path
    # before the measuring, so a bad --out fails in a second, not after minutes
    writable_folder(out, "choose another --out folder.")
    progress = progress or silent
    labels = _labels_of(run, progress)
    original = read_csv(run.path / ORGANELLES_CSV)
    classes = {int(r["id"]): r["class"] for r in original}
    names = run.class_names
    measured = measure_labels(
        labels,
        run.voxel_size_nm,
        classes,
        tubular=tubular,
        class_names=names,
        progress=sub(progress, 0.05, 0.85),
    )
    del labels
    rows = _merge_rows(original, measured)
    candidates = [out / QUANTIFICATION_CSV, run.path / QUANTIFICATION_CSV]
    for path in [Path(mesh_areas)] if mesh_areas is not None else candidates:
        if merge_mesh_areas(rows, path):
            break
    new_cols = [*MEASUREMENT_COLUMNS, *(f"nearest_{c}_um" for c in names), "area_mesh_um2"]
    columns = list(original[0].keys()) if original else list(ORGANELLE_COLUMNS)
    columns += [c for c in new_cols if c not in columns and any(c in r for r in rows)]
    progress(0.88, "writing tables")
    organelles_csv = out / ORGANELLES_CSV
    write_csv(organelles_csv, columns, ([format_cell(r.get(c)) for c in columns] for r in rows))
    table = class_table(measured, names, run.shape, run.voxel_size_nm)
    classes_csv = out / CLASSES_CSV
    cols = class_table_columns()
    write_csv(classes_csv, cols, ([format_cell(t[c]) for c in cols] for t in table))
    progress(0.92, "plotting")
    # Colours only: read them as written, without validating the whole recipe.
    colors = {c["name"]: c.get("color") for c in run.info["classes"]["class"]}
    plots = plot_measurements(measured, names, out / PLOTS_DIR, colors)
    progress(1.0, f"quantified {len(measured)} organelles")
    return QuantifyResult(organelles_csv, classes_csv, plots, rows, table)


def _labels_of(run: RunFolder, progress: ProgressFn):
    """The run's ``labels.tif``, checked against the run's stack shape."""
    if run.labels_path is None:
        raise FamousError(
            f"has no {LABELS_TIF}, which quantification measures.",
            run.path,
            "rerun `famous run` with --labels (the same --out resumes from its cache).",
        )
    progress(0.0, "reading labels")
    labels = read_labels(run.labels_path)
    if tuple(labels.shape) != tuple(run.shape):
        raise FamousError(
            f"has shape {labels.shape} but the run's stack is {tuple(run.shape)}.",
            run.labels_path,
            "rerun `famous run --labels` so the labels match the run.",
        )
    return labels


def _merge_rows(original: list[dict], measured: list[dict]) -> list[dict]:
    """The run's organelle rows with the measurements added."""
    by_id = {r["id"]: r for r in measured}
    rows = []
    for r in original:
        row = dict(r)
        row.update(by_id.get(int(r["id"]), {}))
        # The pipeline's own columns keep their values exactly as written
        # (a re-run replaces only the measurement columns).
        row.update({k: r[k] for k in ORGANELLE_COLUMNS if k in r})
        rows.append(row)
    return rows
