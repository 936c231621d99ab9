"""Segmentations from disk on one comparison grid.

A run folder, a label TIFF (with its ``id,class`` CSV) or an STL file or
folder becomes a :class:`Segmentation` on the common :class:`Grid`. Label
volumes are read lazily (memory map or slab by slab) and resampled to the
grid by nearest voxel centre, so a large stack is never copied whole.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from ..errors import FamousError
from ..fileio import read_csv
from ..progress import ProgressFn, silent, sub
from ..runfolder import RunFolder
from ..stack import open_stack
from .stl import Grid, check_bounds, fit_units_per_file, read_stl_segmentation, voxelise

# Voxelised STL segmentations larger than this go to a temporary file, not RAM.
_IN_MEMORY_BYTES = 1 << 30


#: Default colours (RGB 0..1) of the paper's figures: M1 red, M2 blue, automatic green.
COLOURS = {"M1": (0.85, 0.12, 0.12), "M2": (0.12, 0.35, 0.9), "automatic": (0.1, 0.7, 0.2)}
_MORE_COLOURS = ((0.9, 0.6, 0.0), (0.6, 0.2, 0.8), (0.0, 0.7, 0.7), (0.5, 0.5, 0.5))


def colour_for(name: str, index: int = 0) -> tuple[float, float, float]:
    """The display colour of a segmentation (by name, else from a fixed palette)."""
    return COLOURS.get(name, _MORE_COLOURS[index % len(_MORE_COLOURS)])


class LabelSlices:
    """A label volume read lazily, a slab of slices at a time, from a TIFF stack.

    Supports ``shape``, ``dtype`` and indexing by a slice index or a slice
    range on the first axis, which is all :func:`~.score.count_overlaps` uses.
    """

    def __init__(self, stack):
        self._stack = stack
        self.shape = tuple(stack.shape)
        self.dtype = np.dtype(stack.dtype)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            head, rest = key[0], key[1:]
            return self[head][(slice(None),) + rest if isinstance(head, slice) else rest]
        if isinstance(key, slice):
            ks = range(*key.indices(self.shape[0]))
            out = np.zeros((len(ks),) + self.shape[1:], self.dtype)
            for i, k in enumerate(ks):
                out[i] = self._stack.read_raw(k)
            return out
        return self._stack.read_raw(int(key))


class Resampled:
    """A label volume seen on another grid (nearest voxel centre), slab by slab.

    Voxel centres of the target grid that fall outside the source are 0.
    """

    def __init__(self, labels, source_voxel_um, grid):
        self._src = labels
        self.shape = tuple(grid.shape)
        self.dtype = np.dtype(labels.dtype)
        self._idx = []
        self._ok = []
        for n_src, v_src, n, v in zip(
            labels.shape, source_voxel_um, grid.shape, grid.voxel_size_um
        ):
            i = np.round(np.arange(n) * v / v_src).astype(np.int64)
            self._ok.append((i >= 0) & (i < n_src))
            self._idx.append(np.clip(i, 0, n_src - 1))

    def __getitem__(self, key):
        if not isinstance(key, slice):
            return self[int(key) : int(key) + 1][0]
        ks = np.arange(*key.indices(self.shape[0]))
        zi, yi, xi = self._idx[0][ks], self._idx[1], self._idx[2]
        out = np.zeros((ks.size,) + self.shape[1:], self.dtype)
        for j, (k, ok) in enumerate(zip(zi, self._ok[0][ks])):
            if ok:
                out[j] = np.asarray(self._src[int(k)])[np.ix_(yi, xi)]
        out[:, ~self._ok[1], :] = 0
        out[:, :, ~self._ok[2]] = 0
        return out


@dataclass
class Segmentation:
    """One segmentation on the comparison grid.

    Attributes
    ----------
    name : str
        E.g. "automatic", "M1", "M2".
    labels : array_like, shape grid.shape
        Instance labels (may be lazy: only slabs are read).
    classes : dict of int to str
        Class per object id.
    kind : str
        "run", "labels" or "stl".
    source : Path
    notes : list of str
        Per-file warnings and what was done about them.
    stack_path : Path or None
        The EM stack it was made from, when known (for slice overlays).
    """

    name: str
    labels: object
    classes: dict[int, str]
    kind: str
    source: Path
    notes: list[str] = field(default_factory=list)
    stack_path: Path | None = None
    colour: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @property
    def is_automatic(self) -> bool:
        return self.kind == "run"


def _same_grid(shape, voxel_um, grid) -> bool:
    return tuple(shape) == tuple(grid.shape) and np.allclose(voxel_um, grid.voxel_size_um)


def _on_grid(labels, voxel_um, grid):
    return labels if _same_grid(labels.shape, voxel_um, grid) else Resampled(labels, voxel_um, grid)


def _open_labels(path: Path):
    """A label TIFF as a memory map when its pixels are contiguous, else read lazily."""
    stack = open_stack(path)
    try:
        labels = tifffile.memmap(path, mode="r")
        if labels.shape != tuple(stack.shape):
            raise ValueError("not a plain Z-stack")
    except (ValueError, OSError):  # compressed or tiled: tifffile cannot map it
        labels = LabelSlices(stack)
    if np.dtype(labels.dtype).kind not in "ui":
        raise FamousError(
            f"holds {labels.dtype} pixels, not integer labels.",
            path,
            "give an instance label TIFF (one integer id per object, 0 = background).",
        )
    return labels, stack


def read_classes_csv(path: Path) -> dict[int, str]:
    """``id,class`` rows (other columns ignored) as a mapping."""
    rows = read_csv(path)
    if not rows or not {"id", "class"} <= set(rows[0]):
        raise FamousError(
            "needs the columns id and class.",
            path,
            "write one row per object: id,class (e.g. 7,mitochondria).",
        )
    try:
        return {int(r["id"]): r["class"] for r in rows}
    except ValueError:
        raise FamousError("has an id that is not an integer.", path) from None


def _classes_csv_for(tif: Path) -> Path:
    """The classes CSV of a label TIFF: same stem, else the only id,class CSV beside it."""
    same = tif.with_suffix(".csv")
    if same.is_file():
        return same
    found = []
    for p in sorted(tif.parent.glob("*.csv")):
        with open(p, newline="") as fh:
            head = fh.readline().strip().split(",")
        if "id" in head and "class" in head:
            found.append(p)
    if len(found) == 1:
        return found[0]
    raise FamousError(
        "has no classes CSV beside it." if not found else "has several classes CSVs beside it.",
        tif,
        f"give it as {tif.name},CLASSES.csv (a CSV with the columns id,class).",
    )


def input_kind(spec: str | Path) -> str:
    """What an input is: "run" folder, "labels" TIFF (+ CSV) or "stl" file/folder."""
    text = str(spec)
    path = Path(text.rsplit(",", 1)[0] if text.lower().endswith(".csv") else text)
    if not path.exists():
        raise FamousError("does not exist.", path, "check the path of this segmentation.")
    if path.is_dir() and (path / "run.json").is_file():
        return "run"
    if path.suffix.lower() in (".tif", ".tiff"):
        return "labels"
    if path.is_dir() or path.suffix.lower() == ".stl":
        return "stl"
    raise FamousError(
        "is not a run folder, label TIFF or STL file/folder.",
        path,
        "give a `famous run` output folder, LABELS.tif[,CLASSES.csv] or a folder of STL files.",
    )


def _native_grid(spec: str | Path):
    """(Grid, stack path) that an input defines by itself, or (None, None) for STL."""
    kind = input_kind(spec)
    if kind == "run":
        run = RunFolder(spec)
        stack = run.info.get("input", {}).get("path")
        return Grid.from_nm(run.shape, run.voxel_size_nm), Path(stack) if stack else None
    if kind == "labels":
        tif = Path(str(spec).rsplit(",", 1)[0]) if str(spec).lower().endswith(".csv") else spec
        st = open_stack(tif)
        if st.voxel_size_nm is None:
            return None, None
        return Grid.from_nm(st.shape, st.voxel_size_nm), None
    return None, None


def resolve_grid(inputs, stack=None, voxel_size_nm=None):
    """The common grid: the stack's (or the first run folder's / label TIFF's) extent.

    Parameters
    ----------
    inputs : list of str or Path
        The segmentations to compare.
    stack : str or Path, optional
        The EM stack; its shape and voxel size define the grid.
    voxel_size_nm : (z, y, x), optional
        Voxel size of the comparison grid; default the stack's. With a stack
        of unknown voxel size, it is the stack's voxel size.

    Returns
    -------
    (Grid, Path or None)
        The grid and the EM stack for overlays, when known.
    """
    base, stack_path = None, None
    if stack is not None:
        st = open_stack(stack, None)
        vs = st.voxel_size_nm or voxel_size_nm
        if vs is None:
            st.require_voxel_size()
        base, stack_path = Grid.from_nm(st.shape, vs), Path(stack)
    else:
        for spec in sorted(inputs, key=lambda s: input_kind(s) != "run"):
            base, stack_path = _native_grid(spec)
            if base is not None:
                break
    if base is None:
        raise FamousError(
            "no input defines the grid (STL files have no voxel size).",
            None,
            "give --stack STACK (the EM stack), a run folder or a label TIFF with a voxel size.",
        )
    if voxel_size_nm is not None:
        base = base.resampled(tuple(v / 1000.0 for v in voxel_size_nm))
    return base, stack_path


def _label_buffer(grid, n_objects: int):
    """A zeroed label volume for the grid: in memory, or file-backed when large."""
    dtype = np.dtype(np.uint16 if n_objects < 2**16 else np.uint32)
    if int(np.prod(grid.shape)) * dtype.itemsize <= _IN_MEMORY_BYTES:
        return np.zeros(grid.shape, dtype)
    # The file is deleted when the array is released; new file pages read as zeros.
    return np.memmap(tempfile.TemporaryFile(), dtype=dtype, mode="w+", shape=grid.shape)


def load_segmentation(
    spec: str | Path,
    grid,
    name: str,
    class_map: Mapping[str, str] | None = None,
    transform=None,
    progress: ProgressFn | None = None,
) -> Segmentation:
    """Open one input on the comparison grid.

    Parameters
    ----------
    spec : str or Path
        A run folder, ``LABELS.tif`` or ``LABELS.tif,CLASSES.csv``, or an STL
        file or folder (one sub-folder per class).
    grid : Grid
        The comparison grid (:func:`resolve_grid`).
    name : str
        Name shown in tables and plots.
    class_map, transform :
        STL only: file-name pattern → class, and units/axes
        (:class:`~famous_addon.core.compare.stl.Transform`).
    progress : callable, optional

    Returns
    -------
    Segmentation
    """
    progress = progress or silent
    kind = input_kind(spec)
    if kind == "run":
        labels, classes, path, notes, stack_path = _load_run(spec, grid)
    elif kind == "labels":
        labels, classes, path, notes, stack_path = _load_labels(spec, grid)
    else:
        labels, classes, path, notes, stack_path = _load_stl(
            spec, grid, class_map, transform, progress
        )
    progress(1.0, f"{name} loaded")
    return Segmentation(name, labels, classes, kind, path, notes, stack_path, colour_for(name))


def _load_run(spec, grid) -> tuple:
    """A run folder's ``labels.tif`` and classes on the grid, with its EM stack."""
    run = RunFolder(spec)
    if run.labels_path is None:
        raise FamousError(
            "has no labels.tif.",
            spec,
            "run `famous run ... --labels` (or tick 'Write labels' in Blender) to write it.",
        )
    labels, _ = _open_labels(run.labels_path)
    labels = _on_grid(labels, tuple(v / 1000.0 for v in run.voxel_size_nm), grid)
    classes = {int(r["id"]): r["class"] for r in run.organelles()}
    stack = run.info.get("input", {}).get("path")
    return labels, classes, run.path, [], Path(stack) if stack else None


def _load_labels(spec, grid) -> tuple:
    """A label TIFF (``LABELS.tif`` or ``LABELS.tif,CLASSES.csv``) on the grid."""
    notes: list[str] = []
    text = str(spec)
    if text.lower().endswith(".csv"):
        tif, csv = (Path(p) for p in text.rsplit(",", 1))
    else:
        tif = Path(text)
        csv = _classes_csv_for(tif)
    labels, st = _open_labels(tif)
    if st.voxel_size_nm is None:
        if tuple(st.shape) != tuple(grid.shape):
            raise FamousError(
                "has no voxel size and another shape than the comparison grid.",
                tif,
                "save it with its voxel size (ImageJ/OME metadata) or give --stack.",
            )
        notes.append(f"{tif}: no voxel size in the file; taken as the grid's")
        vs = grid.voxel_size_um
    else:
        vs = tuple(v / 1000.0 for v in st.voxel_size_nm)
    labels = _on_grid(labels, vs, grid)
    return labels, read_classes_csv(csv), tif, notes, None


def _load_stl(spec, grid, class_map, transform, progress: ProgressFn) -> tuple:
    """An STL file or folder, read and voxelised onto the grid."""
    notes: list[str] = []
    seg = read_stl_segmentation(spec, class_map, transform, progress=sub(progress, 0, 0.3))
    notes.extend(seg.warnings)
    if not seg.objects:
        raise FamousError(
            "holds no readable STL object.", spec, "check the files (see the warnings above)."
        )
    # per file: one class exported in nm among classes in µm is common
    notes.extend(fit_units_per_file(seg, grid, transform.offset if transform else (0, 0, 0)))
    check = check_bounds(seg.bounds_xyz(), grid, transform.scale if transform else 1.0)
    if check.suggested_scale is not None or check.fraction < 0.5:
        notes.append(f"{spec}: {check.message}")
    labels, classes, vox_notes = voxelise(
        seg.objects, grid, _label_buffer(grid, len(seg.objects)), sub(progress, 0.3, 1)
    )
    notes.extend(vox_notes)
    return labels, classes, Path(spec), notes, None


def default_names(inputs) -> list[str]:
    """Run folders are "automatic" (numbered if several), the others M1, M2, ..."""
    kinds = [input_kind(s) for s in inputs]
    n_runs = kinds.count("run")
    names, i_run, i_man = [], 0, 0
    for k in kinds:
        if k == "run":
            i_run += 1
            names.append("automatic" if n_runs == 1 else f"automatic{i_run}")
        else:
            i_man += 1
            names.append(f"M{i_man}")
    return names
