"""Annotations in the YOLO_mark layout: the boxes a user draws to train the detector.

A folder holds one image per annotated slice and a text file of the same name
with one box a line, ``class cx cy w h`` normalised by the image size::

    DIR/slice_00120.png   DIR/slice_00120.txt   ...
    DIR/obj.names         class names, one a line (class id = line number - 1)
    DIR/train.txt         the image names, one a line, as darknet and YOLO_mark list them
    DIR/neighbours/slice_00120.png   optional: slices 119, 120, 121 as one 3-channel PNG
    DIR/source.json       optional: the stack the slices come from and its voxel size
    DIR/unconfirmed/slice_00120.txt  self-training's pseudo-boxes only: regions left
                          out of the loss (what the first detector saw there but
                          3-D did not confirm), in the same format

The ``neighbours/`` images are for a detector that sees each slice between its
neighbours in z (``famous train --neighbours``): a faint organelle cap that
one noisy slice barely shows is plain in three. The user boxes only the
slice itself, in YOLO_mark, as always.

YOLO_mark writes a ``.txt`` (possibly empty) for every image the user opened,
so an image without one is reported as not annotated and left out, and an
empty ``.txt`` means "annotated, nothing there".

``source.json`` lets ``famous train`` choose each class's extraction recipe
on the boxes (the recipes' kernels are in nm, so they need the pixel size)
and self-train on the stack, with no option to repeat what the stack
already said.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
from natsort import natsorted
from scipy import ndimage
from skimage.measure import label as cc_label
from skimage.morphology import local_maxima, reconstruction
from skimage.segmentation import watershed

from .boxes import Box, parse_yolo_lines, write_yolo_txt
from .errors import FamousError
from .fileio import atomic_path, atomic_write_bytes, write_json
from .guard import decode_text
from .progress import ProgressFn, silent
from .stack import in_plane_nm

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
NAMES_FILE = "obj.names"
LIST_FILE = "train.txt"
NEIGHBOURS_DIR = "neighbours"
UNCONFIRMED_DIR = "unconfirmed"


def _read_gray(path: Path) -> np.ndarray:
    """An annotation image as 2-D uint8 (RGB taken to grey)."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise FamousError("cannot be read as an image.", path, "re-export it as PNG.")
    if img.ndim == 3:
        img = cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2GRAY)
    if img.dtype != np.uint8:
        raise FamousError(
            f"is {img.dtype}, but annotation images must be 8-bit.",
            path,
            "export the slices with `famous annotate-pick`, which writes 8-bit PNGs.",
        )
    return img


def find_annotated(folder: str | Path) -> tuple[list[Path], list[Path], list[Path]]:
    """Images with a ``.txt``, images without one, and ``.txt`` files without an image.

    Looks in ``folder`` and, when it holds no images, in ``folder/img`` (the
    YOLO_mark default). Files are in natural order.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FamousError("annotation folder not found.", folder, "give a YOLO_mark folder.")
    where = folder
    images = [p for p in where.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images and (folder / "img").is_dir():
        where = folder / "img"
        images = [p for p in where.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    images = natsorted(images, key=lambda p: p.name)
    with_txt = [p for p in images if p.with_suffix(".txt").is_file()]
    without = [p for p in images if not p.with_suffix(".txt").is_file()]
    stems = {p.stem for p in images}
    skip = {Path(NAMES_FILE).stem, Path(LIST_FILE).stem}
    orphans = [
        p for p in natsorted(where.glob("*.txt")) if p.stem not in stems and p.stem not in skip
    ]
    return with_txt, without, orphans


def read_names_file(folder: str | Path) -> list[str] | None:
    """Class names from ``obj.names`` in ``folder`` or its parent (YOLO_mark's ``data/``)."""
    folder = Path(folder)
    for cand in (folder / NAMES_FILE, folder.parent / NAMES_FILE):
        if cand.is_file():
            text = decode_text(
                cand.read_bytes(), cand, "names file", "write one class name a line."
            )
            names = [ln.strip() for ln in text.splitlines() if ln.strip()]
            if not names:
                raise FamousError("has no class names.", cand, "write one class name per line.")
            return names
    return None


def read_neighbours(path: Path, image: np.ndarray) -> np.ndarray:
    """The (Y, X, 3) neighbours image of annotation image ``path``, checked against it."""
    n_path = path.parent / NEIGHBOURS_DIR / f"{path.stem}.png"
    fix = (
        "export the slices again with their neighbours (`famous annotate-pick --neighbours`, "
        "or Export with Neighbouring slices on in Blender)."
    )
    if not n_path.is_file():
        raise FamousError(
            "is missing: the detector sees slices between their neighbours.", n_path, fix
        )
    img = cv2.imread(str(n_path), cv2.IMREAD_UNCHANGED)
    if img is None or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise FamousError("is not an 8-bit 3-channel PNG.", n_path, fix)
    if img.shape[:2] != image.shape or not np.array_equal(img[..., 1], image):
        raise FamousError(f"does not hold {path.name} as its middle slice.", n_path, fix)
    return img


def read_unconfirmed(folder: str | Path, images, n_classes: int | None) -> list[list[Box]] | None:
    """Per annotated image of ``folder``, the boxes of ``unconfirmed/`` (an image
    without a file there has none); None where the folder has no ``unconfirmed/``.

    ``images`` are the folder's images as :func:`read_yolo_mark` loaded them
    (their shapes scale the boxes).
    """
    where = Path(folder) / UNCONFIRMED_DIR
    if not where.is_dir():
        return None
    out = []
    for path, image in zip(find_annotated(folder)[0], images):
        txt = where / f"{path.stem}.txt"
        shape = image.shape[:2]
        out.append(
            parse_yolo_lines(txt.read_bytes(), shape, n_classes, txt) if txt.is_file() else []
        )
    return out


def write_neighbours(folder: str | Path, stack, picks: list[int]) -> None:
    """Write ``neighbours/slice_NNNNN.png`` (slices k-1, k, k+1) for each pick ``k``."""
    where = Path(folder) / NEIGHBOURS_DIR
    where.mkdir(parents=True, exist_ok=True)
    for k in picks:
        path = where / f"slice_{k:05d}.png"
        with atomic_path(path) as tmp:
            if not cv2.imwrite(str(tmp), stack.read_with_neighbours(k)):
                raise FamousError("could not be written.", path, "check the disk and permissions.")


SOURCE_NAME = "source.json"


def write_source(folder: str | Path, stack) -> None:
    """Record in ``folder`` the stack its slices come from and its voxel size, where known."""
    if stack.voxel_size_nm is None:
        return
    facts = {"stack": str(Path(stack.path).resolve()), "voxel_size_nm": list(stack.voxel_size_nm)}
    write_json(Path(folder) / SOURCE_NAME, facts)


def _recorded(folders) -> tuple[Path | None, dict]:
    """The first of ``folders``' ``source.json`` and what it records ({} without one)."""
    for folder in folders:
        path = Path(folder) / SOURCE_NAME
        if not path.is_file():
            continue
        try:
            facts = json.loads(path.read_text())
        except ValueError as err:
            raise FamousError(
                f"is not a record of the slices' stack ({err}).",
                path,
                "delete it, or write it again.",
            ) from None
        if not isinstance(facts, dict):
            raise FamousError(
                "is not a record of the slices' stack (not a JSON object).",
                path,
                "delete it, or write it again.",
            )
        return path, facts
    return None, {}


def recorded_voxel_size(folders) -> tuple[float, float, float] | None:
    """The voxel size (z, y, x) in nm that the first of ``folders`` with a ``source.json``
    records (:func:`write_source` writes one only with a voxel size)."""
    path, facts = _recorded(folders)
    if path is None:
        return None
    try:
        z, y, x = (float(v) for v in facts["voxel_size_nm"])
    except (ValueError, KeyError, TypeError) as err:
        raise FamousError(
            f"is not a voxel size record ({err}).", path, "delete it, or write it again."
        ) from None
    if min(z, y, x) <= 0:
        raise FamousError(
            "gives a voxel size that is not positive.", path, "delete it, or write it again."
        )
    return z, y, x


def recorded_stack(folders) -> Path | None:
    """The stack the first of ``folders`` with a ``source.json`` says its slices come from."""
    stack = _recorded(folders)[1].get("stack")
    return Path(stack) if isinstance(stack, str) and stack else None


def slices_pixel_nm(folders, voxel_size_nm=None) -> float | None:
    """The annotated slices' in-plane pixel size (nm): from ``voxel_size_nm`` (z, y, x)
    where given, else from the first of ``folders`` recording one; None without either."""
    voxel = voxel_size_nm or recorded_voxel_size(folders)
    return in_plane_nm(voxel) if voxel else None


def read_yolo_mark(
    folder: str | Path,
    n_classes: int | None = None,
    load_images: bool = False,
    neighbours: bool = False,
) -> tuple[list, list[list[Box]]]:
    """Read a YOLO_mark annotation folder.

    Parameters
    ----------
    folder : str or Path
    n_classes : int, optional
        Class count to check ids against; defaults to the length of the
        folder's ``obj.names`` (when present).
    load_images : bool
        Return the images as 2-D uint8 arrays instead of their paths.
    neighbours : bool
        With ``load_images``: return each image between its neighbouring
        slices, (Y, X, 3) from ``neighbours/`` (see the module docstring).

    Returns
    -------
    images : list of ndarray or Path
    boxes_per_image : list of list of Box
        Boxes in image pixels.

    Raises
    ------
    FamousError
        No annotated image, a bad line (file and line named), a class id out
        of range, ``obj.names`` disagreeing with ``n_classes``, an unreadable
        or non-8-bit image, or a ``.txt`` that belongs to no image.
    """
    folder = Path(folder)
    with_txt, without, orphans = find_annotated(folder)
    names = read_names_file(folder)
    if names is not None and n_classes is not None and len(names) != n_classes:
        raise FamousError(
            f"obj.names lists {len(names)} classes but the class config has {n_classes}.",
            folder,
            "annotate with the same classes as the class config, in the same order.",
        )
    if n_classes is None and names is not None:
        n_classes = len(names)
    if orphans:
        raise FamousError(
            f"{len(orphans)} box file(s) have no image, e.g. {orphans[0].name}.",
            folder,
            "keep each .txt beside the image of the same name.",
        )
    if not with_txt:
        raise FamousError(
            "holds no annotated image (an image plus a .txt of the same name).",
            folder,
            "box the slices in YOLO_mark, or make boxes with `famous boxes-from-labels`.",
        )
    if without:
        warnings.warn(
            f"{folder}: {len(without)} image(s) have no .txt and are left out as not annotated "
            f"({', '.join(p.name for p in without[:5])}{', ...' if len(without) > 5 else ''}).",
            stacklevel=2,
        )
    images, boxes = [], []
    for path in with_txt:
        img = _read_gray(path)
        txt = path.with_suffix(".txt")
        boxes.append(parse_yolo_lines(txt.read_bytes(), img.shape, n_classes, txt))
        if load_images and neighbours:
            img = read_neighbours(path, img)
        images.append(img if load_images else path)
    return images, boxes


def write_yolo_mark(
    folder: str | Path,
    images: list[np.ndarray],
    stems: list[str],
    names: list[str],
    boxes: list[list[Box]] | None = None,
    progress: ProgressFn | None = None,
) -> list[Path]:
    """Write images (and boxes) in the YOLO_mark layout, with ``obj.names`` and ``train.txt``.

    Parameters
    ----------
    folder : str or Path
        Created if missing; existing files of the same names are an error,
        so a user's boxes are never overwritten.
    images : iterable of 2-D uint8 arrays
        One per stem (a generator works, so slices are read one at a time).
    stems : list of str
        File names without suffix, e.g. ``slice_00120``.
    names : list of str
        Class names for ``obj.names``.
    boxes : list of list of Box, optional
        Boxes per image; without them only the images are written, ready for
        YOLO_mark.
    progress : callable, optional

    Returns
    -------
    list of Path
        The image files written.
    """
    progress = progress or silent
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clash = [s for s in stems if (folder / f"{s}.png").exists() or (folder / f"{s}.txt").exists()]
    if clash:
        raise FamousError(
            f"already holds {clash[0]}.png/.txt ({len(clash)} clashing file(s)).",
            folder,
            "choose a new --out folder; FAMOUS never overwrites annotations.",
        )
    written = []
    for k, (img, stem) in enumerate(zip(images, stems)):
        img = np.asarray(img)
        if img.ndim != 2 or img.dtype != np.uint8:
            raise FamousError(f"image {stem} is not 2-D uint8 ({img.dtype}, {img.shape}).")
        path = folder / f"{stem}.png"
        with atomic_path(path) as tmp:
            if not cv2.imwrite(str(tmp), img):
                raise FamousError("could not be written.", path, "check the disk and permissions.")
        if boxes is not None:
            write_yolo_txt(folder / f"{stem}.txt", boxes[k], img.shape)
        written.append(path)
        progress((k + 1) / len(stems), f"wrote {path.name}")
    atomic_write_bytes(folder / NAMES_FILE, "".join(n + "\n" for n in names).encode())
    listed = [p.name for p in find_annotated(folder)[0] + find_annotated(folder)[1]]
    atomic_write_bytes(folder / LIST_FILE, "".join(n + "\n" for n in listed).encode())
    return written


def export_for_annotation(
    stack,
    classes,
    out: str | Path,
    fraction: float = 0.01,
    minimum: int = 2,
    progress: ProgressFn | None = None,
    neighbours: bool = False,
) -> list[int]:
    """Write evenly spread slices of a stack as 8-bit PNGs for YOLO_mark, with ``obj.names``.

    Parameters
    ----------
    stack : Stack
        The opened image stack (16-bit slices are windowed to 8 bits).
    classes : ClassConfig
        Its names go to ``obj.names``, in the detector's order.
    out : str or Path
        Folder to write; it must not hold these slices already.
    fraction : float
        Share of the slices (the paper boxes about 1 %).
    minimum : int
        At least this many slices.
    neighbours : bool
        Also write ``neighbours/`` (each slice between its neighbours), for
        ``famous train --neighbours``.

    Returns
    -------
    list of int
        The slices written, as ``slice_NNNNN.png``.
    """
    picks = spread_indices(len(stack), fraction, minimum=minimum)
    write_yolo_mark(
        out,
        (stack.read(k) for k in picks),
        [f"slice_{k:05d}" for k in picks],
        classes.names,
        progress=progress,
    )
    if neighbours:
        write_neighbours(out, stack, picks)
    write_source(out, stack)
    return picks


def spread_indices(n_slices: int, fraction: float, minimum: int = 1) -> list[int]:
    """Evenly spread slice indices covering ``fraction`` of a stack (at least ``minimum``).

    The first and last slices are avoided, since slices are spread over the
    centres of equal parts of the stack.
    """
    if not 0 < fraction <= 1:
        raise FamousError(f"fraction {fraction} is not in (0, 1].", fix="e.g. 0.01 for 1%.")
    n = min(n_slices, max(minimum, round(n_slices * fraction)))
    return sorted({int((i + 0.5) * n_slices / n) for i in range(n)})


def parse_slice_list(text: str, n_slices: int) -> list[int]:
    """Slice indices from ``"3,10,20"``, ranges ``"5-9"`` and steps ``"0:200:20"`` (0-based)."""
    out: set[int] = set()
    bad: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if ":" in part:
                bits = [int(b) if b.strip() else None for b in part.split(":")]
                if len(bits) > 3:
                    raise ValueError(part)
                out.update(range(n_slices)[slice(*bits)])
            elif re.fullmatch(r"\d+-\d+", part):
                a, b = (int(v) for v in part.split("-"))
                # only the indices inside the stack are listed: "0-99999999999" must not fill
                # memory before it is refused
                out.update(range(a, min(b, n_slices - 1) + 1))
                bad += [b] if b >= n_slices and a <= b else []
            else:
                out.add(int(part))
        except ValueError:
            raise FamousError(
                f"slice list item {part!r} is not an index, a-b range or start:stop:step.",
                fix="e.g. --slices 10,50,90 or --slices 0:200:20.",
            ) from None
    bad += [k for k in out if not 0 <= k < n_slices]
    if bad:
        raise FamousError(
            f"slice {min(bad)} is outside the stack (0..{n_slices - 1}).",
            fix="slice indices are 0-based.",
        )
    if not out:
        raise FamousError("no slices chosen.", fix="e.g. --slices 10,50,90.")
    return sorted(out)


def boxes_from_label_slice(
    labels: np.ndarray,
    class_of: dict[int, int] | int,
    min_pixels: int = 4,
    split_touching: float = 0.0,
) -> list[Box]:
    """Boxes around each connected piece of each label on one slice.

    Parameters
    ----------
    labels : 2-D int array
        Instance ids (0 = background); a binary mask works too (each
        connected piece is one object).
    class_of : dict or int
        Class index per label id, or one class for all.
    min_pixels : int
        Pieces smaller than this are dropped (label noise).
    split_touching : float
        0 (default): one box per piece. Above 0, a piece is cut where it
        narrows (:func:`split_at_necks`), so organelles that touch in a
        semantic mask get a box each; 0.25 cuts where the piece is a quarter
        narrower than its thickest part.
    """
    labels = np.asarray(labels)
    # pieces: 4-connected runs of one label value, so touching organelles stay apart
    pieces = cc_label(labels, background=0, connectivity=1)
    out = []
    for k, sl in enumerate(ndimage.find_objects(pieces), 1):
        if sl is None:
            continue
        mask = pieces[sl] == k
        lab = int(labels[sl][mask][0])
        if isinstance(class_of, dict):
            if lab not in class_of:
                continue
            cls = class_of[lab]
        else:
            cls = int(class_of)
        parts = split_at_necks(mask, split_touching) if split_touching > 0 else mask.astype(int)
        for part in ndimage.find_objects(parts):
            y, x = part
            if np.count_nonzero(parts[part]) < min_pixels:
                continue
            y0, x0 = sl[0].start + y.start, sl[1].start + x.start
            out.append(Box(cls, x0, y0, x.stop - x.start, y.stop - y.start))
    return out


def split_at_necks(mask: np.ndarray, depth: float) -> np.ndarray:
    """Cut one connected 2-D piece where it narrows: labels 1..n of its parts.

    A watershed of the distance to the background, seeded at the maxima that
    stand at least ``depth`` x the piece's largest distance above the neck
    joining them (the regional maxima of the h-maxima transform). A tube of
    even width keeps one seed; two mitochondria touching at a narrow contact
    get one each.
    """
    # the padding puts background around the piece, so distances end at its outline
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    h = max(depth * dist.max(), 1.0)
    # maxima of the reconstruction, not of the distance: the pixel-to-pixel ripple
    # along a tube's ridge would otherwise seed a cut every few pixels
    seeds = cc_label(local_maxima(reconstruction(dist - h, dist, method="dilation")))
    if seeds.max() < 2:
        return mask.astype(int)
    return watershed(-dist, seeds, mask=mask)


MERGED_MARK = ".famous-merged"
#: Where ``famous train`` merges several annotation folders, inside the model folder.
MERGED_DIR = "annotations"


def merge_folders(folders: list[str | Path], out: str | Path) -> Path:
    """Copy several YOLO_mark folders into one, for a training on all of them.

    The user's first slices and the ones corrected later (``famous suggest``)
    live in separate folders; training reads one. Images, ``.txt`` files and
    ``neighbours/`` are copied; two folders holding the same slice name, or
    naming different classes in ``obj.names``, are an error. ``out`` is
    FAMOUS's own (marked by :data:`MERGED_MARK`) and rebuilt on every call; an
    existing folder without the mark is never touched.
    """
    out = Path(out)
    if out.exists():
        if not (out / MERGED_MARK).is_file():
            raise FamousError(
                "exists and is not a folder FAMOUS merged.",
                out,
                "move it, or choose another --out.",
            )
        shutil.rmtree(out)
    names, seen = None, {}
    for folder in folders:
        here = read_names_file(folder)
        if here is not None and names is not None and here != names:
            raise FamousError(
                f"names classes {here}, another folder {names}.",
                Path(folder) / NAMES_FILE,
                "box every folder with the same obj.names.",
            )
        names = names if here is None else here
        with_txt, _, _ = find_annotated(folder)
        for path in with_txt:
            if path.stem in seen:
                raise FamousError(
                    f"holds {path.stem} as {seen[path.stem]} does.",
                    folder,
                    "keep each slice in one annotation folder.",
                )
            seen[path.stem] = Path(folder)
    (out / NEIGHBOURS_DIR).mkdir(parents=True)
    # the mark first: a copy cut short is still known as FAMOUS's own
    (out / MERGED_MARK).write_text("written by famous train from: " + ", ".join(map(str, folders)))
    for stem, folder in seen.items():
        image = next(p for p in find_annotated(folder)[0] if p.stem == stem)
        shutil.copy2(image, out / image.name)
        shutil.copy2(image.with_suffix(".txt"), out / f"{stem}.txt")
        near = image.parent / NEIGHBOURS_DIR / f"{stem}.png"
        if near.is_file():
            shutil.copy2(near, out / NEIGHBOURS_DIR / near.name)
    if names is not None:
        atomic_write_bytes(out / NAMES_FILE, "".join(n + "\n" for n in names).encode())
    return out
