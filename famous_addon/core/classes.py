"""Class configuration: names in the detector's order, colours and recipes.

A project has one TOML file (see ``presets/fibsem.toml``)::

    [[class]]
    name = "mitochondria"
    color = "#d62728"
    [class.extract]
    method = "otsu"
    polarity = "dark"
    [class.mesh]
    mesher = "hull"
    shape = "project"

Darknet's ``obj.names`` is accepted too: names that match a preset class take
its recipes, other names get the default recipe with a polarity estimated from
the annotated boxes when annotations are given.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import tomli_w

from .annotations import read_yolo_mark
from .errors import FamousError
from .fileio import atomic_write_bytes

PRESET_DIR = Path(__file__).parent / "presets"
PRESETS = ("fibsem", "yeast")

EXTRACT_METHODS = ("otsu", "ellipse", "paper", "refined", "learned")
POLARITIES = ("light", "dark")
MESHERS = ("hull", "volume")
MESH_SHAPES = ("uniform", "project")

_FALLBACK_COLORS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


@dataclass(frozen=True)
class ExtractRecipe:
    """How the pixels of one box are extracted (paper Algorithms 1-3).

    Kernel sizes are physical (nm) and converted to pixels with the stack's
    pixel size, so one recipe serves 4 nm and 10 nm data alike.
    """

    method: str = "otsu"
    polarity: str = "dark"
    blur_nm: float = 50.0
    erode_nm: float = 30.0
    dilate_nm: float = 30.0
    iterations: int = 1
    fill_holes: bool = True
    # Used by the "refined" method only (see famous_addon.core.extract.refined_recipe).
    smooth_nm: float = 6.0
    threshold_offset: float = 0.5
    open_nm: float = 24.0
    context_fraction: float = 0.5
    edge_level: float = 0.5
    separate_core: float = 0.0
    adaptive: bool = True
    membrane_nm: float = 0.0
    # The "learned" method's trained pixel classifier (famous_addon.core.learned).
    weights: tuple[float, ...] = ()


@dataclass(frozen=True)
class MeshRecipe:
    """How Blender meshes an organelle of this class."""

    mesher: str = "hull"
    shape: str = "project"


@dataclass(frozen=True)
class ClassSpec:
    """One organelle class."""

    name: str
    color: str = "#7f7f7f"
    extract: ExtractRecipe = field(default_factory=ExtractRecipe)
    mesh: MeshRecipe = field(default_factory=MeshRecipe)

    @property
    def rgb(self) -> tuple[float, float, float]:
        """Colour as linear-free 0..1 RGB floats (sRGB values as written)."""
        h = self.color.lstrip("#")
        return tuple(int(h[i : i + 2], 16) / 255.0 for i in (0, 2, 4))


@dataclass(frozen=True)
class ClassConfig:
    """All classes of a project, in the detector's order."""

    classes: tuple[ClassSpec, ...]
    name: str = "custom"
    source: str = ""
    notes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.classes)

    def __iter__(self):
        return iter(self.classes)

    def __getitem__(self, i: int) -> ClassSpec:
        return self.classes[i]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def index(self, name: str) -> int:
        """Index of a class by name."""
        try:
            return self.names.index(name)
        except ValueError:
            raise FamousError(
                f"unknown class {name!r}; the config has {', '.join(self.names)}.",
                self.source or None,
            ) from None

    def check_count(self, n: int, what: str, path: str | Path | None = None) -> None:
        """Fail clearly when another file (a model, annotations) has another class count."""
        if n != len(self):
            raise FamousError(
                f"{what} has {n} classes but the class config has {len(self)} "
                f"({', '.join(self.names)}).",
                path,
                "use the class config the model was trained with, or retrain with this one.",
            )

    def to_dict(self) -> dict:
        return {"name": self.name, "class": [asdict(c) for c in self.classes]}


def _norm(name: str) -> str:
    """Normalise a class name so 'Early endosomes' matches 'early_endosome'."""
    n = re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")
    return n[:-1] if n.endswith("s") and not n.endswith("ss") and not n.endswith("us") else n


def _check_color(color: str, where: str, path) -> str:
    if not isinstance(color, str) or not re.fullmatch(r"#?[0-9a-fA-F]{6}", color):
        raise FamousError(
            f"{where}: colour {color!r} is not a hex colour.", path, 'write it as "#rrggbb".'
        )
    return color if color.startswith("#") else "#" + color


def _choice(value, allowed, where, key, path):
    if value not in allowed:
        raise FamousError(
            f"{where}: {key} {value!r} is unknown.", path, f"use one of {', '.join(allowed)}."
        )
    return value


def _build_dataclass(cls, data: dict, where: str, path):
    known = set(cls.__dataclass_fields__)
    unknown = set(data) - known
    if unknown:
        raise FamousError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))}.",
            path,
            f"allowed keys are {', '.join(sorted(known))}.",
        )
    try:
        return cls(**data)
    except TypeError as exc:
        raise FamousError(f"{where}: {exc}", path) from None


def _weights(value, where: str, path) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise FamousError(
            f"{where}: extract.weights is not a list of numbers.",
            path,
            "let calibration write it (famous run --annotations DIR), or remove it.",
        ) from None


def parse_config(data: dict, source: str | Path = "") -> ClassConfig:
    """Build and validate a :class:`ClassConfig` from a TOML/JSON-like dict."""
    path = str(source) or None
    entries = data.get("class")
    if not entries:
        raise FamousError(
            "no classes found.", path, 'add one [[class]] table per class with a "name".'
        )
    specs, seen = [], set()
    for i, entry in enumerate(entries):
        where = f"class {i + 1}"
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise FamousError(f"{where} has no name.", path, 'add name = "..." to it.')
        if name in seen:
            raise FamousError(
                f"class name {name!r} appears twice.", path, "give every class its own name."
            )
        seen.add(name)
        where = f"class {name!r}"
        raw = dict(entry.get("extract", {}))
        if "weights" in raw:
            raw["weights"] = _weights(raw["weights"], where, path)
        extract = _build_dataclass(ExtractRecipe, raw, where, path)
        _choice(extract.method, EXTRACT_METHODS, where, "extract.method", path)
        _choice(extract.polarity, POLARITIES, where, "extract.polarity", path)
        for key in (
            "blur_nm",
            "erode_nm",
            "dilate_nm",
            "smooth_nm",
            "open_nm",
            "context_fraction",
            "separate_core",
            "membrane_nm",
        ):
            if getattr(extract, key) < 0:
                raise FamousError(f"{where}: {key} must not be negative.", path)
        mesh = _build_dataclass(MeshRecipe, dict(entry.get("mesh", {})), where, path)
        _choice(mesh.mesher, MESHERS, where, "mesh.mesher", path)
        _choice(mesh.shape, MESH_SHAPES, where, "mesh.shape", path)
        color = _check_color(entry.get("color", _FALLBACK_COLORS[i % 10]), where, path)
        specs.append(ClassSpec(name=name, color=color, extract=extract, mesh=mesh))
    return ClassConfig(tuple(specs), name=str(data.get("name", "custom")), source=str(source))


def preset(name: str) -> ClassConfig:
    """A built-in class config: ``"fibsem"`` (the paper's HeLa classes) or ``"yeast"``."""
    if name not in PRESETS:
        raise FamousError(f"unknown preset {name!r}.", fix=f"use one of {', '.join(PRESETS)}.")
    path = PRESET_DIR / f"{name}.toml"
    with open(path, "rb") as fh:
        return parse_config(tomllib.load(fh), path)


def _preset_lookup() -> dict[str, ClassSpec]:
    table = {}
    for p in PRESETS:
        for spec in preset(p):
            table.setdefault(_norm(spec.name), spec)
    return table


def from_names(
    names: list[str], source: str | Path = "", polarity_hints: dict[str, str] | None = None
) -> ClassConfig:
    """Class config from bare class names (darknet's ``obj.names``).

    Names that match a preset class (case, spaces and plural ignored) take its
    recipes; others get the default recipe, with the polarity from
    ``polarity_hints`` when given (see :func:`estimate_polarity`).
    """
    lookup = _preset_lookup()
    specs, notes = [], []
    for i, raw in enumerate(names):
        name = raw.strip()
        known = lookup.get(_norm(name))
        if known is not None:
            specs.append(replace(known, name=name))
            continue
        # "refined" beat the paper's recipe on real SBEM and on the phantom (issue 6).
        recipe = ExtractRecipe(method="refined")
        if polarity_hints and name in polarity_hints:
            recipe = replace(recipe, polarity=polarity_hints[name])
            notes.append(f"{name}: polarity {recipe.polarity} estimated from the annotated boxes")
        else:
            notes.append(f"{name}: no preset matches; default recipe (dark objects)")
        specs.append(ClassSpec(name=name, color=_FALLBACK_COLORS[i % 10], extract=recipe))
    data = {"name": Path(str(source)).stem or "custom", "class": [asdict(s) for s in specs]}
    config = parse_config(data, source)
    return replace(config, notes=tuple(notes))


def estimate_polarity(images: list[np.ndarray], boxes_per_image: list[list]) -> dict[int, str]:
    """Guess per class whether objects are lighter or darker than their surround.

    Compares the median grey value of each box's centre (the inner half) with
    that of its rim (the outer quarter on each side), over all annotated boxes.

    Parameters
    ----------
    images : list of 2-D uint8 arrays
    boxes_per_image : list of lists of :class:`~famous_addon.core.boxes.Box`

    Returns
    -------
    dict
        class index -> ``"light"`` or ``"dark"``.
    """
    diffs: dict[int, list[float]] = {}
    for image, boxes in zip(images, boxes_per_image):
        for b in boxes:
            x0, y0, x1, y1 = b.pixel_bounds(image.shape)
            roi = image[y0:y1, x0:x1].astype(np.float32)
            if roi.shape[0] < 4 or roi.shape[1] < 4:
                continue
            h, w = roi.shape
            inner = roi[h // 4 : h - h // 4, w // 4 : w - w // 4]
            rim = np.ones_like(roi, dtype=bool)
            rim[h // 4 : h - h // 4, w // 4 : w - w // 4] = False
            diffs.setdefault(b.cls, []).append(float(np.median(inner) - np.median(roi[rim])))
    return {c: ("light" if np.median(d) > 0 else "dark") for c, d in diffs.items()}


def load_classes(path: str | Path, annotations: str | Path | None = None) -> ClassConfig:
    """Load a class config from a TOML file, an ``obj.names`` file or a preset name.

    Parameters
    ----------
    path : str or Path
        ``*.toml``, ``*.json``, ``obj.names`` (one name per line), or
        ``"fibsem"``/``"yeast"`` for a built-in preset.
    annotations : str or Path, optional
        A YOLO_mark folder; used to estimate the polarity of classes named in
        an ``obj.names`` that no preset knows.
    """
    if str(path) in PRESETS:
        return preset(str(path))
    path = Path(path)
    if not path.is_file():
        raise FamousError(
            "class config not found.",
            path,
            'give a .toml class config, an obj.names file, or "fibsem"/"yeast".',
        )
    if path.suffix.lower() == ".toml":
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise FamousError(f"not valid TOML ({exc}).", path) from None
        return parse_config(data, path)
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise FamousError(f"not valid JSON ({exc}).", path) from None
        return parse_config(data, path)
    try:
        names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    except UnicodeDecodeError:
        raise FamousError("is not a text file of class names.", path) from None
    if not names:
        raise FamousError("has no class names.", path, "write one class name per line.")
    hints = None
    if annotations is not None:
        images, boxes = read_yolo_mark(annotations, n_classes=len(names), load_images=True)
        hints = {names[c]: p for c, p in estimate_polarity(images, boxes).items()}
    return from_names(names, path, hints)


def save_classes(config: ClassConfig, path: str | Path) -> None:
    """Write a class config as TOML (atomically)."""
    atomic_write_bytes(Path(path), tomli_w.dumps(config.to_dict()).encode())
