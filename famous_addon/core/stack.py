"""Reading vEM stacks one slice at a time.

Supported: multi-page TIFF (plain, ImageJ hyperstack, OME-TIFF), a folder of
TIFF/PNG slices (natural sort order) and MRC (tomograms). Every source is
checked when it is opened (slice shapes and dtypes, truncated files), so bad
input fails before any work is done; pixel data is read only by
:meth:`Stack.read`, one slice at a time, and never the whole stack.

Slices come out as 2-D ``uint8``: RGB is converted to grey and other dtypes
(16-bit, float, signed) are mapped to 0..255 through a robust percentile
window estimated from a sample of slices (recorded in ``run.json``).
"""

from __future__ import annotations

import math
import struct
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import mrcfile
import numpy as np
import tifffile
from natsort import natsorted
from PIL import Image

from .errors import FamousError

SLICE_SUFFIXES = (".tif", ".tiff", ".png")
WINDOW_PERCENTILES = (0.5, 99.5)

# Length units found in ImageJ and OME metadata, in nm.
_UNIT_NM = {
    "nm": 1.0,
    "nanometer": 1.0,
    "nanometre": 1.0,
    "um": 1e3,
    "µm": 1e3,
    "μm": 1e3,
    "micron": 1e3,
    "microns": 1e3,
    "micrometer": 1e3,
    "micrometre": 1e3,
    "\\u00b5m": 1e3,
    "mm": 1e6,
    "å": 0.1,
    "angstrom": 0.1,
    "pm": 1e-3,
}


def _unit_to_nm(unit: str | None) -> float | None:
    if unit is None:
        return None
    return _UNIT_NM.get(str(unit).strip().lower())


def neighbour_indices(k: int, n_slices: int) -> tuple[int, int, int]:
    """Slices ``k - 1``, ``k``, ``k + 1``; the end slices stand in for missing neighbours."""
    return tuple(min(max(j, 0), n_slices - 1) for j in (k - 1, k, k + 1))


@dataclass
class Stack:
    """An open image stack.

    Attributes
    ----------
    path : Path
        The file or folder.
    shape : (Z, Y, X)
        Slices, rows, columns.
    dtype : numpy.dtype
        Stored dtype (before the mapping to 8-bit).
    voxel_size_nm : (z, y, x) or None
        From the file's metadata or the caller's override; ``None`` if unknown.
    voxel_source : str
        Where the voxel size came from ("metadata: ImageJ", "override", ...).
    notes : list of str
        What was done to the data (RGB to grey, channel chosen, window).
    channel : int or None
        The channel of a multi-channel TIFF that is read (None: the file has one).
    """

    path: Path
    shape: tuple[int, int, int]
    dtype: np.dtype
    voxel_size_nm: tuple[float, float, float] | None
    voxel_source: str
    kind: str
    notes: list[str] = field(default_factory=list)
    window: tuple[float, float] | None = None
    channel: int | None = None
    _reader: object = field(default=None, repr=False)
    # the slices of the last read_with_neighbours: read in order, each slice is
    # read once, not three times
    _recent: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return self.shape[0]

    def read_raw(self, k: int) -> np.ndarray:
        """Slice ``k`` as stored (2-D, RGB already reduced to grey)."""
        if not 0 <= k < self.shape[0]:
            raise IndexError(f"slice {k} outside 0..{self.shape[0] - 1}")
        return _to_gray(self._reader.read(k))

    def read(self, k: int) -> np.ndarray:
        """Slice ``k`` as 2-D ``uint8``."""
        img = self.read_raw(k)
        if img.dtype == np.uint8:
            return img
        if self.window is None:
            self.window = self.estimate_window()
        lo, hi = self.window
        scaled = (img.astype(np.float32) - lo) * (255.0 / max(hi - lo, 1e-6))
        if img.dtype.kind == "f":
            # NaN has no grey value; a cast of NaN to uint8 is undefined, so it is set to black
            np.nan_to_num(scaled, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)

    def read_with_neighbours(self, k: int) -> np.ndarray:
        """Slices ``k - 1``, ``k``, ``k + 1`` as one (Y, X, 3) ``uint8`` image.

        The input of a detector that sees each slice between its neighbours;
        the first and last slice stand in for the missing neighbour at the
        stack's ends.
        """
        # keyed by the window too: a slice read under another window is another image
        keys = [(j, self.window) for j in neighbour_indices(k, self.shape[0])]
        recent = {key: self._recent[key] for key in keys if key in self._recent}
        for key in keys:
            if key not in recent:
                recent[key] = self.read(key[0])
        self._recent = recent
        return np.dstack([recent[key] for key in keys])

    def estimate_window(self, n_sample: int = 16) -> tuple[float, float]:
        """Percentile window (0.5 %, 99.5 %) over up to ``n_sample`` evenly spread slices.

        Non-finite values (NaN, inf) of a float stack are left out (one NaN
        would make the window NaN and every slice blank) and counted in a
        note; a sample with no finite value is an error.
        """
        ks = np.unique(np.linspace(0, self.shape[0] - 1, min(n_sample, self.shape[0])).round())
        values = []
        for k in ks.astype(int):
            img = self.read_raw(int(k))
            step = max(1, int(np.sqrt(img.size / 65536)))
            values.append(img[::step, ::step].ravel())
        values = np.concatenate(values)
        if values.dtype.kind == "f":
            finite = np.isfinite(values)
            bad = int(values.size - np.count_nonzero(finite))
            if bad == values.size:
                raise FamousError(
                    "holds no finite grey value (only NaN or inf) in the sampled slices.",
                    self.path,
                    "check the export: the stack's pixels are not numbers.",
                )
            if bad:
                values = values[finite]
                note = (
                    f"{bad} non-finite values (NaN or inf) among the sampled pixels left out of "
                    "the intensity window; NaN and -inf are shown black, +inf white"
                )
                if note not in self.notes:
                    self.notes.append(note)
        lo, hi = np.percentile(values, WINDOW_PERCENTILES)
        return float(lo), float(hi)

    def require_voxel_size(self) -> tuple[float, float, float]:
        """The voxel size, or a clear error asking the user for it."""
        if self.voxel_size_nm is None:
            raise FamousError(
                "the file has no voxel size in its metadata.",
                self.path,
                "give it in nm as (z, y, x), e.g. --voxel-size 10 5 5 "
                "(in Blender: the Voxel size fields of the FAMOUS panel).",
            )
        return self.voxel_size_nm

    def describe(self) -> dict:
        """What run.json records about the input."""
        return {
            "path": str(Path(self.path).resolve()),
            "kind": self.kind,
            "shape": list(self.shape),
            "dtype": str(self.dtype),
            "voxel_size_nm": None if self.voxel_size_nm is None else list(self.voxel_size_nm),
            "voxel_size_source": self.voxel_source,
            "channel": self.channel,
            "intensity_window": None if self.window is None else list(self.window),
            "intensity_window_percentiles": None
            if self.window is None
            else list(WINDOW_PERCENTILES),
            "notes": list(self.notes),
        }

    def __getstate__(self):
        # Readers hold open file handles; workers reopen the source instead.
        state = self.__dict__.copy()
        state["_reader"] = None
        state["_recent"] = {}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reader = _open_reader(Path(self.path), self.kind, self.channel)[0]


def _to_gray(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        return img
    if img.ndim == 3 and img.shape[2] in (3, 4):
        if img.dtype in (np.uint8, np.uint16, np.float32):
            return cv2.cvtColor(np.ascontiguousarray(img[..., :3]), cv2.COLOR_RGB2GRAY)
        return img[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    if img.ndim == 3 and img.shape[2] == 1:
        return img[..., 0]
    raise ValueError(f"cannot make a 2-D grey slice from shape {img.shape}")


class _TiffReader:
    """Pages of the first series of a TIFF; the Z axis picked from its axes.

    A channel axis (C) is read as the slices when the file has no slice axis
    (ImageJ stacks saved with their slices tagged as channels); a hyperstack
    with slices and several channels needs ``channel`` to say which is meant.
    """

    def __init__(self, path: Path, channel: int | None = None):
        try:
            self.tf = tifffile.TiffFile(path)
            all_series = self.tf.series
        except Exception as exc:  # tifffile raises several types for damaged files
            raise FamousError(
                f"cannot be read as a TIFF ({exc}).", path, "check the file is a complete TIFF."
            ) from None
        if not all_series:
            raise FamousError("holds no images.", path)
        series = all_series[0]
        axes, shape = series.axes, series.shape
        sample = axes.endswith("S")
        plane = 3 if sample else 2
        lead_axes, lead_shape = axes[:-plane], shape[:-plane]
        self.plane_shape = shape[-plane:]
        self.path = path
        self.notes = []
        z_axis = next((a for a in "ZIQT" if a in lead_axes), None)
        fixed = self._channel_axis(dict(zip(lead_axes, lead_shape)), z_axis, channel)
        if fixed is None:
            z_axis, fixed = "C", {}
        self.n = lead_shape[lead_axes.index(z_axis)] if z_axis else 1
        self._lead_shape = lead_shape
        self._z_pos = lead_axes.index(z_axis) if z_axis else None
        self._fixed = {lead_axes.index(a): i for a, i in fixed.items()}
        for a, n in zip(lead_axes, lead_shape):
            if a != z_axis and a not in fixed and n > 1:
                self.notes.append(f"axis {a} has {n} entries; using the first")
        self.pages = series.pages
        self.dtype = series.dtype

    def _channel_axis(self, lead: dict, z_axis: str | None, channel: int | None) -> dict | None:
        """``{"C": channel}`` to read one channel, ``{}`` for none, None to read C as slices."""
        n_c = lead.get("C", 1)
        if channel is not None:
            if not 0 <= channel < n_c:
                raise FamousError(
                    f"has no channel {channel} (it has {n_c}, numbered from 0).",
                    self.path,
                    f"choose --channel 0..{n_c - 1}." if n_c > 1 else "leave out --channel.",
                )
            if n_c > 1:
                self.notes.append(f"channel {channel} of {n_c} used")
            return {"C": channel} if "C" in lead else {}
        if n_c <= 1:
            return {}
        if z_axis is None:
            self.notes.append(
                f"the file's {n_c} images are tagged as channels and it has no slice axis: "
                f"read as {n_c} slices"
            )
            return None
        raise FamousError(
            f"is a hyperstack with {n_c} channels on each of its {lead[z_axis]} slices; "
            "FAMOUS segments one channel.",
            self.path,
            f"choose the channel with --channel 0..{n_c - 1} (`famous info` shows the axes).",
        )

    def page_index(self, k: int) -> int:
        if not self._lead_shape:
            return 0
        idx = [self._fixed.get(i, 0) for i in range(len(self._lead_shape))]
        if self._z_pos is not None:
            idx[self._z_pos] = k
        return int(np.ravel_multi_index(idx, self._lead_shape))

    def check(self) -> None:
        self._check_complete()
        size = self.path.stat().st_size
        for k in range(self.n):
            try:
                page = self.pages[self.page_index(k)]
            except Exception:  # tifffile fails in several ways on a cut-off page index
                raise FamousError(
                    f"slice {k} cannot be found: the file is truncated or damaged.",
                    self.path,
                    "the file is incomplete: copy or export it again.",
                ) from None
            if page is None:
                raise FamousError(f"slice {k} is missing.", self.path)
            offsets = getattr(page, "dataoffsets", ())
            counts = getattr(page, "databytecounts", ())
            if not offsets or any(o + c > size for o, c in zip(offsets, counts)):
                raise FamousError(
                    f"slice {k} is truncated (its data runs past the end of the file).",
                    self.path,
                    "the file is incomplete: copy or export it again.",
                )

    def _check_complete(self) -> None:
        """Fail on a file cut short: tifffile then reads the pages it finds as a shorter stack.

        Two signs: fewer images than the ImageJ header's ``images=`` (a cut
        ImageJ file falls back to its first page), and a page chain whose
        last page points to a next page that cannot be read.
        """
        fix = "the file is incomplete: copy or export it again."
        ij = self.tf.imagej_metadata or {}
        try:
            expected = int(ij.get("images") or 0)
        except (TypeError, ValueError):
            expected = 0
        found = math.prod(self._lead_shape)
        if expected > found:
            raise FamousError(
                f"its ImageJ header says {expected} images (slices={ij.get('slices', '?')}) "
                f"but only {found} can be read: the file is truncated or damaged.",
                self.path,
                fix,
            )
        pages = self.tf.pages
        fmt, fh = self.tf.tiff, self.tf.filehandle
        try:
            n_pages = len(pages)
            last = pages[n_pages - 1]
            fh.seek(last.offset)
            (n_tags,) = struct.unpack(fmt.tagnoformat, fh.read(fmt.tagnosize))
            fh.seek(last.offset + fmt.tagnosize + n_tags * fmt.tagsize)
            (following,) = struct.unpack(fmt.offsetformat, fh.read(fmt.offsetsize))
        except Exception:  # tifffile and struct fail in several ways on a cut-off IFD
            n_pages, following = len(self.pages), -1
        if following != 0:
            raise FamousError(
                f"its page chain breaks after page {n_pages}: the file is truncated or damaged.",
                self.path,
                fix,
            )

    def read(self, k: int) -> np.ndarray:
        page = self.pages[self.page_index(k)]
        img = page.asarray()
        if img.ndim == 3 and img.shape[0] in (3, 4) and img.shape[-1] not in (3, 4):
            img = np.moveaxis(img, 0, -1)  # planar RGB
        return img


class _FolderReader:
    """A folder of single-slice TIFF/PNG files in natural sort order."""

    def __init__(self, path: Path):
        self.path = path
        self.files = natsorted(
            (p for p in path.iterdir() if p.suffix.lower() in SLICE_SUFFIXES),
            key=lambda p: p.name,
        )
        if not self.files:
            raise FamousError(
                "holds no .tif/.tiff/.png slices.",
                path,
                "point to the folder of slice images (or to a multi-page TIFF).",
            )
        self.n = len(self.files)
        self.notes = []
        shapes = [self._header(p) for p in self.files]
        first_shape, first_dtype = shapes[0]
        for p, (shape, dtype) in zip(self.files, shapes):
            if shape != first_shape or dtype != first_dtype:
                raise FamousError(
                    f"slice {p.name} is {shape} {dtype}, but {self.files[0].name} is "
                    f"{first_shape} {first_dtype}.",
                    path,
                    "all slices of a stack must have the same size and bit depth.",
                )
        self.plane_shape, self.dtype = first_shape, np.dtype(first_dtype)

    @staticmethod
    def _header(p: Path):
        try:
            if p.suffix.lower() == ".png":
                with Image.open(p) as im:
                    bands = len(im.getbands())
                    depth = np.uint16 if im.mode.startswith("I;16") or im.mode == "I" else np.uint8
                    shape = (im.height, im.width) + ((bands,) if bands > 1 else ())
                    return shape, np.dtype(depth)
            with tifffile.TiffFile(p) as tf:
                page = tf.pages[0]
                return tuple(page.shape), page.dtype
        except FamousError:
            raise
        except Exception as exc:
            raise FamousError(f"cannot be read as an image ({exc}).", p) from None

    def check(self) -> None:
        for p in self.files:
            if p.suffix.lower() in (".tif", ".tiff"):
                with tifffile.TiffFile(p) as tf:
                    page = tf.pages[0]
                    size = p.stat().st_size
                    if any(o + c > size for o, c in zip(page.dataoffsets, page.databytecounts)):
                        raise FamousError("is truncated.", p, "copy or export the slice again.")

    def read(self, k: int) -> np.ndarray:
        p = self.files[k]
        if p.suffix.lower() == ".png":
            img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
            if img is None:
                raise FamousError("cannot be decoded as PNG.", p)
            if img.ndim == 3:
                img = cv2.cvtColor(
                    img, cv2.COLOR_BGRA2RGBA if img.shape[2] == 4 else cv2.COLOR_BGR2RGB
                )
            return img
        return tifffile.imread(p, key=0)


class _MrcReader:
    def __init__(self, path: Path):
        try:
            self.mrc = mrcfile.mmap(path, mode="r", permissive=True)
        except Exception as exc:
            raise FamousError(f"cannot be read as MRC ({exc}).", path) from None
        data = self.mrc.data
        if data is None:
            raise FamousError("is truncated or damaged (no data block).", path)
        if data.ndim == 2:
            data = data[None]
        self.data = data
        self.n = data.shape[0]
        self.plane_shape = data.shape[1:]
        self.dtype = data.dtype
        self.notes = []
        self.path = path

    def check(self) -> None:
        expected = self.data.nbytes + self.mrc.header.nbytes + self.mrc.extended_header.nbytes
        if self.path.stat().st_size < expected:
            raise FamousError("is truncated.", self.path, "copy or export the file again.")

    def read(self, k: int) -> np.ndarray:
        return np.array(self.data[k])

    def voxel_size_nm(self):
        vs = self.mrc.voxel_size  # Å, (x, y, z)
        values = (float(vs.z), float(vs.y), float(vs.x))
        return None if min(values) <= 0 else tuple(v / 10.0 for v in values)


def _open_reader(path: Path, kind: str | None = None, channel: int | None = None):
    if kind is None:
        if path.is_dir():
            kind = "folder"
        elif path.suffix.lower() in (".mrc", ".rec", ".st", ".ali", ".map"):
            kind = "mrc"
        elif path.suffix.lower() in (".tif", ".tiff", ".btf", ".tf8"):
            kind = "tiff"
        else:
            raise FamousError(
                "unknown stack format.",
                path,
                "use a multi-page TIFF, a folder of TIFF/PNG slices, or an MRC file.",
            )
    if kind == "tiff":
        return _TiffReader(path, channel), kind
    if channel is not None:
        raise FamousError(
            f"a {kind} stack has one channel; --channel is for multi-channel TIFFs.",
            path,
            "leave out --channel.",
        )
    reader = {"folder": _FolderReader, "mrc": _MrcReader}[kind](path)
    return reader, kind


def _tiff_voxel_size(tf) -> tuple[tuple[float, float, float] | None, str]:
    """Voxel size in nm from OME or ImageJ metadata of an open TiffFile."""
    if tf.is_ome and tf.ome_metadata:
        try:
            root = ET.fromstring(tf.ome_metadata)
            px = next(el for el in root.iter() if el.tag.endswith("Pixels"))
            vals = []
            for ax in "ZYX":
                v = px.get(f"PhysicalSize{ax}")
                unit = px.get(f"PhysicalSize{ax}Unit", "µm")
                f = _unit_to_nm(unit)
                vals.append(None if v is None or f is None else float(v) * f)
            if vals[1] and vals[2]:
                return (vals[0] or vals[2], vals[1], vals[2]), "metadata: OME"
        except (ET.ParseError, StopIteration):
            pass
    page = tf.pages[0]
    res = page.tags.get("XResolution"), page.tags.get("YResolution")
    ij = tf.imagej_metadata or {}
    unit = ij.get("unit")
    f = _unit_to_nm(unit)
    if res[0] is not None and res[1] is not None and f is not None:

        def per_pixel(tag):
            num, den = tag.value
            return den / num * f if num else None

        px_x, px_y = per_pixel(res[0]), per_pixel(res[1])
        if px_x and px_y:
            dz = float(ij["spacing"]) * f if "spacing" in ij else px_x
            return (dz, px_y, px_x), "metadata: ImageJ"
    return None, "none"


def in_plane_nm(voxel_size_nm) -> float:
    """The in-plane pixel size (nm) of a voxel size (z, y, x): the mean of y and x
    (geometric, so a pixel's area is kept)."""
    return float(math.sqrt(voxel_size_nm[1] * voxel_size_nm[2]))


def open_stack(
    path: str | Path,
    voxel_size_nm: tuple[float, float, float] | None = None,
    channel: int | None = None,
) -> Stack:
    """Open a stack and check it, without reading pixel data.

    Parameters
    ----------
    path : str or Path
        Multi-page TIFF / OME-TIFF, a folder of TIFF or PNG slices, or MRC.
    voxel_size_nm : (z, y, x), optional
        Overrides the file's metadata.
    channel : int, optional
        The channel of a multi-channel TIFF (hyperstack) to read; required
        when it has several channels and slices.

    Returns
    -------
    Stack

    Raises
    ------
    FamousError
        Missing file, unknown format, empty folder, slices of different
        shapes or dtypes, truncated file, a hyperstack without ``channel``.
    """
    path = Path(path)
    if not path.exists():
        raise FamousError("not found.", path, "check the path of the image stack.")
    reader, kind = _open_reader(path, channel=channel)
    if reader.n == 0:
        raise FamousError("the stack has no slices.", path)
    if len(reader.plane_shape) not in (2, 3) or min(reader.plane_shape[:2]) == 0:
        raise FamousError(f"slices have an unusable shape {reader.plane_shape}.", path)
    reader.check()
    meta, source = None, "none"
    if kind == "tiff":
        meta, source = _tiff_voxel_size(reader.tf)
    elif kind == "mrc":
        meta = reader.voxel_size_nm()
        source = "metadata: MRC header" if meta else "none"
    if voxel_size_nm is not None:
        vs = tuple(float(v) for v in voxel_size_nm)
        if len(vs) != 3 or min(vs) <= 0:
            raise FamousError(
                f"voxel size {voxel_size_nm} must be three positive numbers (z, y, x) in nm."
            )
        meta, source = vs, "override"
    notes = list(reader.notes)
    if len(reader.plane_shape) == 3:
        notes.append(f"{reader.plane_shape[2]}-channel (RGB) slices converted to grey")
    return Stack(
        path=path,
        shape=(reader.n, *reader.plane_shape[:2]),
        dtype=np.dtype(reader.dtype),
        voxel_size_nm=meta,
        voxel_source=source,
        kind=kind,
        notes=notes,
        channel=channel,
        _reader=reader,
    )
