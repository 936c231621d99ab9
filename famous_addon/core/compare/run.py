"""The comparison runners: load the inputs, compare them and write the report.

:func:`run_compare` is what ``famous compare`` and the Blender panel run;
:func:`compare_for_headless` is what ``run_famous.py --compare`` runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..errors import FamousError
from ..guard import writable_folder
from ..progress import ProgressFn, silent, sub
from ..runfolder import RunFolder
from .comparison import Comparison, compare_segmentations
from .report import write_outputs
from .segmentations import colour_for, default_names, load_segmentation, resolve_grid
from .tables import format_table


def run_compare(
    inputs: list[str | Path],
    out: str | Path,
    names: list[str] | None = None,
    stack: str | Path | None = None,
    voxel_size_nm: tuple[float, float, float] | None = None,
    iou_threshold: float = 0.5,
    extra_thresholds: tuple[float, ...] = (0.25,),
    pairs: list[tuple[str, str]] | None = None,
    class_map: Mapping[str, str] | None = None,
    transform=None,
    slices: list[int] | None = None,
    plots: bool = True,
    adjust_splits: bool = True,
    progress: ProgressFn | None = None,
) -> tuple[Comparison, dict[str, Path]]:
    """Load, compare and write a report: what ``famous compare`` and Blender run.

    Parameters
    ----------
    inputs : list of str or Path
        Two or more run folders, label TIFFs (``LABELS.tif[,CLASSES.csv]``) or
        STL files/folders.
    out : str or Path
        Output folder for tables, report and plots.
    names : list of str, optional
        One per input; default :func:`~.segmentations.default_names` (automatic, M1, M2, ...).
    stack : str or Path, optional
        The EM stack (grid and overlays); default from a run folder.
    voxel_size_nm : (z, y, x), optional
        Comparison grid voxel size; default the stack's.
    iou_threshold, extra_thresholds, pairs :
        See :func:`~.comparison.compare_segmentations`.
    class_map, transform :
        For STL inputs, see :func:`~famous_addon.core.compare.stl.read_stl_segmentation`.
    slices : list of int, optional
        Slices for the overlay plots.
    plots : bool
        Draw the PNG plots.
    adjust_splits : bool
        The paper's adjustment for objects cut into several parts.
    progress : callable, optional

    Returns
    -------
    (Comparison, dict of str to Path)
    """
    progress = progress or silent
    if len(inputs) < 2:
        raise FamousError("needs at least two segmentations to compare.", None)
    names = list(names) if names else default_names(inputs)
    if len(names) != len(inputs):
        raise FamousError(
            f"{len(names)} names for {len(inputs)} inputs.", None, "give one name per input."
        )
    # before the loading, so a bad --out fails in a second, not after minutes
    writable_folder(out, "choose another --out folder.")
    grid, stack_path = resolve_grid(inputs, stack, voxel_size_nm)
    segs = _load_all(inputs, names, grid, class_map, transform, progress)
    run = next((s for s in segs if s.is_automatic), None)
    order = RunFolder(run.source).class_names if run is not None else None
    comp = compare_segmentations(
        segs,
        grid,
        pairs,
        iou_threshold,
        extra_thresholds,
        adjust_splits,
        class_order=order,
        progress=sub(progress, 0.4, 0.8),
    )
    if stack_path is not None:
        comp.stack_path = stack_path
    paths = write_outputs(comp, out, slices, plots, sub(progress, 0.8, 1.0))
    return comp, paths


def _load_all(inputs, names, grid, class_map, transform, progress: ProgressFn) -> list:
    """Every input as a :class:`~.segmentations.Segmentation` on the grid, coloured.

    Loading fills the first 40 % of ``progress``.
    """
    segs = []
    n = len(inputs)
    for i, (spec, name) in enumerate(zip(inputs, names)):
        seg = load_segmentation(
            spec, grid, name, class_map, transform, sub(progress, 0.4 * i / n, 0.4 * (i + 1) / n)
        )
        seg.colour = colour_for(name, i)
        segs.append(seg)
    return segs


def compare_for_headless(
    run_dir: str | Path,
    manual_dirs: list[str | Path],
    out_dir: str | Path,
    iou_threshold: float = 0.5,
    voxel_size_nm: tuple[float, float, float] | None = None,
    plots: bool = True,
    progress: ProgressFn | None = None,
) -> dict[str, Path]:
    """Compare a finished run with one or two manual segmentations (M1, M2).

    What ``blender_scripts/run_famous.py -- ... --compare M1_DIR [M2_DIR]``
    calls after the run. Prints one table per pair.

    Parameters
    ----------
    run_dir : str or Path
        The run folder (needs ``labels.tif``).
    manual_dirs : list of str or Path
        STL folders (one sub-folder per class) or label TIFFs, named M1, M2, ...
    out_dir : str or Path
        Where the report goes (e.g. ``RUN/compare``).
    iou_threshold : float
    voxel_size_nm : (z, y, x), optional
        Comparison grid; default the run's.
    plots : bool
        Draw the PNG plots.
    progress : callable, optional

    Returns
    -------
    dict of str to Path
        The written files; ``report_md`` is the report.
    """
    inputs = [run_dir, *manual_dirs]
    names = ["automatic"] + [f"M{i + 1}" for i in range(len(manual_dirs))]
    comp, paths = run_compare(
        inputs,
        out_dir,
        names=names,
        voxel_size_nm=voxel_size_nm,
        iou_threshold=iou_threshold,
        plots=plots,
        progress=progress,
    )
    for p in comp.pairs:
        print(f"\n{p.name} (IoU >= {iou_threshold:g}):")
        print(format_table(p.scores[iou_threshold]))
    for s in comp.segmentations:
        for note in s.notes:
            print(f"warning: {s.name}: {note}")
    print(f"\ncomparison report: {paths['report_md']}")
    return paths
