"""Class configuration: names in the detector's order, colours and recipes.

A project has one TOML file (see ``presets/fibsem.toml``)::

    [[class]]
    name = "mitochondria"
    color = "#d55e00"
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
import math
import re
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import tomli_w

from .annotations import read_yolo_mark
from .errors import FamousError
from .fileio import atomic_write_bytes
from .guard import check_class_name, decode_text

PRESET_DIR = Path(__file__).parent / "presets"
PRESETS = ("fibsem", "yeast")

EXTRACT_METHODS = ("otsu", "ellipse", "paper", "refined", "learned")
POLARITIES = ("light", "dark")
MESHERS = ("hull", "volume")
MESH_SHAPES = ("uniform", "project")

# Okabe-Ito's colour-blind-safe colours (black left out), then three of Tol's
# muted ones: apart from each other and from the grey of the EM slice
_FALLBACK_COLORS = (
    "#d55e00",
    "#0072b2",
    "#009e73",
    "#e69f00",
    "#cc79a7",
    "#56b4e9",
    "#f0e442",
    "#882255",
    "#44aa99",
    "#999933",
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
    close_nm: float = 20.0
    # How far inside the extracted edge the user draws the boundary, applied at
    # assembly to every method (fitted on the user's boxes: famous_addon.core.inset).
    inset_nm: float = 0.0
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


# Allowed ranges of the recipes' numbers. The kernel sizes are physical; past
# 10 µm a kernel is larger than most stacks' slices and only costs time.
_RANGES = {
    "blur_nm": (0.0, 10_000.0),
    "erode_nm": (0.0, 10_000.0),
    "dilate_nm": (0.0, 10_000.0),
    "smooth_nm": (0.0, 10_000.0),
    "open_nm": (0.0, 10_000.0),
    "membrane_nm": (0.0, 10_000.0),
    "close_nm": (0.0, 10_000.0),
    "inset_nm": (0.0, 10_000.0),
    "iterations": (0, 100),
    "threshold_offset": (-10.0, 10.0),
    "context_fraction": (0.0, 10.0),
    "edge_level": (0.0, 1.0),
    "separate_core": (0.0, 1.0),
}
_ENTRY_KEYS = ("name", "color", "extract", "mesh")


def _check_color(color: str, where: str, path) -> str:
    if not isinstance(color, str) or not re.fullmatch(r"#?[0-9a-fA-F]{6}", color):
        raise FamousError(
            f"{where}: colour {color!r} is not a hex colour.", path, 'write it as "#rrggbb".'
        )
    return color if color.startswith("#") else "#" + color


def _choice(value, allowed, where, key, path):
    if not isinstance(value, str) or value not in allowed:
        raise FamousError(
            f"{where}: {key} {value!r} is unknown.", path, f"use one of {', '.join(allowed)}."
        )
    return value


def _check_value(cls, key: str, value, where: str, path) -> None:
    """Fail unless ``value`` has the type of ``cls``'s default for ``key`` and lies in range.

    TOML keeps ``"50"`` a string and ``50`` an integer; a recipe that took
    either would fail mid-run, after hours of work, so types are checked here.
    """
    default = cls.__dataclass_fields__[key].default
    name = f"{cls.__name__[:-6].lower()}.{key}"  # ExtractRecipe -> extract.key
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, kind = isinstance(value, int) and not isinstance(value, bool), "a whole number"
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok, kind = ok and math.isfinite(value), "a number"
    else:
        return  # strings are checked against their choices, weights by _weights
    lo, hi = _RANGES.get(key, (-math.inf, math.inf))
    if ok and not lo <= value <= hi:
        raise FamousError(
            f"{where}: {name} = {value!r} is out of range.", path, f"give a value in [{lo}, {hi}]."
        )
    if not ok:
        raise FamousError(
            f"{where}: {name} = {value!r} is not {kind}.",
            path,
            f"write it {'without quotes' if isinstance(value, str) else 'as ' + kind}, "
            f"e.g. {key} = {str(default).lower()}.",
        )


def _build_dataclass(cls, data, where: str, path):
    key = cls.__name__[:-6].lower()  # ExtractRecipe -> extract
    if not isinstance(data, dict):
        raise FamousError(
            f"{where}: {key} = {data!r} is not a table.",
            path,
            f"write the options under [class.{key}], as key = value lines.",
        )
    known = set(cls.__dataclass_fields__)
    unknown = set(data) - known
    if unknown:
        raise FamousError(
            f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}.",
            path,
            f"allowed keys are {', '.join(sorted(known))}.",
        )
    for name, value in data.items():
        _check_value(cls, name, value, where, path)
    return cls(**data)


def _weights(value, where: str, path) -> tuple[float, ...]:
    fix = "let calibration write it (famous run --annotations DIR), or remove it."
    if not isinstance(value, (list, tuple)):
        raise FamousError(f"{where}: extract.weights is not a list of numbers.", path, fix)
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise FamousError(f"{where}: extract.weights is not a list of numbers.", path, fix)
    return tuple(float(v) for v in value)


def _class_entries(data, path) -> list:
    """The ``[[class]]`` tables of a config, checked to be a list of tables."""
    if not isinstance(data, dict):
        raise FamousError("is not a table of classes.", path, "write one [[class]] table each.")
    entries = data.get("class")
    if isinstance(entries, dict):
        raise FamousError(
            "has [class] (one table) where [[class]] (a list of tables) belongs.",
            path,
            "write [[class]], with two brackets, above every class.",
        )
    if not entries:
        raise FamousError(
            "no classes found.", path, 'add one [[class]] table per class with a "name".'
        )
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise FamousError(
            f"class = {entries!r} is not a list of [[class]] tables.",
            path,
            'write one [[class]] table per class, with name = "...".',
        )
    return entries


def _parse_entry(entry: dict, i: int, path) -> ClassSpec:
    """One ``[[class]]`` table as a checked :class:`ClassSpec`."""
    where = f"class {i + 1}"
    unknown = set(entry) - set(_ENTRY_KEYS)
    if unknown:
        raise FamousError(
            f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}.",
            path,
            f"a [[class]] table has {', '.join(_ENTRY_KEYS)}.",
        )
    name = check_class_name(entry.get("name"), path, where)
    where = f"class {name!r}"
    raw = entry.get("extract", {})
    if isinstance(raw, dict) and "weights" in raw:
        raw = {**raw, "weights": _weights(raw["weights"], where, path)}
    extract = _build_dataclass(ExtractRecipe, raw, where, path)
    _choice(extract.method, EXTRACT_METHODS, where, "extract.method", path)
    _choice(extract.polarity, POLARITIES, where, "extract.polarity", path)
    mesh = _build_dataclass(MeshRecipe, entry.get("mesh", {}), where, path)
    _choice(mesh.mesher, MESHERS, where, "mesh.mesher", path)
    _choice(mesh.shape, MESH_SHAPES, where, "mesh.shape", path)
    color = _check_color(entry.get("color", _FALLBACK_COLORS[i % 10]), where, path)
    return ClassSpec(name=name, color=color, extract=extract, mesh=mesh)


def parse_config(data: dict, source: str | Path = "") -> ClassConfig:
    """Build and validate a :class:`ClassConfig` from a TOML/JSON-like dict.

    Every value is checked for its type and range, and every class name for
    being safe as a file name, so a bad config fails here with one line
    naming ``source`` rather than mid-run.
    """
    path = str(source) or None
    specs, seen = [], set()
    for i, entry in enumerate(_class_entries(data, path)):
        spec = _parse_entry(entry, i, path)
        if spec.name in seen:
            raise FamousError(
                f"class name {spec.name!r} appears twice.", path, "give every class its own name."
            )
        seen.add(spec.name)
        specs.append(spec)
    name = data.get("name", "custom")
    if not isinstance(name, str):
        raise FamousError(f"name = {name!r} is not text.", path, 'write name = "...".')
    return ClassConfig(tuple(specs), name=name, source=str(source))


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
    suffix = path.suffix.lower()
    fix = {
        ".toml": "save the class config as a UTF-8 text file (see presets/fibsem.toml).",
        ".json": "save the class config as a UTF-8 text file.",
    }.get(suffix, "write one class name a line, as plain text.")
    text = decode_text(path.read_bytes(), path, "class config", fix)
    if suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise FamousError(f"not valid TOML ({exc}).", path) from None
        return parse_config(data, path)
    if suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise FamousError(f"not valid JSON ({exc}).", path) from None
        return parse_config(data, path)
    names = [ln.strip() for ln in text.splitlines() if ln.strip()]
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
