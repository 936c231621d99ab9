"""The Darknet model format: a model folder's file names, ``.cfg`` parsing and checks.

A model folder holds standard Darknet files plus FAMOUS's settings::

    MODEL/model.cfg         Darknet network description
    MODEL/model.weights     Darknet weights (20-byte header, then float32 parameters)
    MODEL/model.weights.sha256  the weights' SHA-256, as ``sha256sum`` writes it
    MODEL/obj.names         class names, one a line, in the detector's order
    MODEL/classes.toml      the class config the model was trained with
    MODEL/thresholds.json   per-class score thresholds, tiling and suppression settings
    MODEL/report.json       training metrics, time and the command that made it

Only ``model.cfg`` and ``model.weights`` are required, so a model trained with
darknet itself works too. OpenCV loads mismatched cfg/weights pairs without a
word and then runs on uninitialised memory, so :func:`check_model` compares the
weights file size with the parameter count computed from the cfg before any
slice is processed. Weights of the same network trained on other data have
the right size and still find nothing, so :func:`write_checksum` stores the
weights' SHA-256 next to them when a model folder is written and
:func:`check_model` compares it; a folder without one (older FAMOUS, darknet
itself) loads unchecked. :func:`yolo_tiny_cfg` writes the cfg ``famous train`` trains.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FamousError
from ..fileio import atomic_write_bytes

CFG_NAME = "model.cfg"
WEIGHTS_NAME = "model.weights"
NAMES_NAME = "obj.names"
CLASSES_NAME = "classes.toml"
THRESHOLDS_NAME = "thresholds.json"
REPORT_NAME = "report.json"
CHECKSUM_SUFFIX = ".sha256"


def parse_cfg_text(text: str, path: str | Path = "") -> list[tuple[str, dict[str, str]]]:
    """Parse Darknet cfg text into ``[(section, {key: value}), ...]``.

    Raises a :class:`FamousError` naming the line for text outside a section
    or a line that is not ``key=value``.
    """
    sections: list[tuple[str, dict[str, str]]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = re.split(r"[#;]", raw, maxsplit=1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise FamousError(f"line {lineno}: unclosed section {line!r}.", path)
            sections.append((line[1:-1].strip().lower(), {}))
            continue
        if not sections or "=" not in line:
            raise FamousError(
                f"line {lineno}: {line!r} is not 'key=value' inside a [section].",
                path,
                "give a Darknet .cfg file (it starts with [net]).",
            )
        key, value = (s.strip() for s in line.split("=", 1))
        sections[-1][1][key] = value
    if not sections or sections[0][0] not in ("net", "network"):
        raise FamousError(
            "is not a Darknet cfg (it does not start with [net]).",
            path,
            "give the .cfg file the weights were trained with.",
        )
    return sections


def parse_cfg(path: str | Path) -> list[tuple[str, dict[str, str]]]:
    """Read and parse a Darknet ``.cfg`` file (see :func:`parse_cfg_text`)."""
    path = Path(path)
    if not path.is_file():
        raise FamousError("cfg file not found.", path, "give the model's .cfg file.")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise FamousError("is not a text file, so not a Darknet cfg.", path) from None
    return parse_cfg_text(text, path)


def _ints(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v.strip()]


def _floats(value: str) -> list[float]:
    return [float(v) for v in value.split(",") if v.strip()]


def _positive(opts: dict, key: str, where: str, path, default: int = 1) -> int:
    """A cfg option that must be a whole number of at least 1 (``groups=0`` divides by 0)."""
    value = int(opts.get(key, default))
    if value < 1:
        raise FamousError(f"{where}: {key}={value} must be at least 1.", path)
    return value


@dataclass
class CfgInfo:
    """What FAMOUS needs to know about a Darknet cfg."""

    width: int
    height: int
    channels: int
    n_classes: int
    n_params: int
    yolo_layers: list[dict] = field(default_factory=list)


def cfg_info(sections: list[tuple[str, dict[str, str]]], path: str | Path = "") -> CfgInfo:
    """Input size, class count and parameter count of a parsed cfg.

    The parameter count is what the ``.weights`` file must hold after its
    header: per convolutional layer its biases (and batch-norm scale, mean and
    variance when ``batch_normalize=1``) and its kernel.
    """
    net = sections[0][1]
    try:
        width, height = int(net.get("width", 416)), int(net.get("height", 416))
        channels = int(net.get("channels", 3))
    except ValueError as exc:
        raise FamousError(f"[net] has a non-integer size ({exc}).", path) from None
    out_channels: list[int] = []
    c = channels
    n_params = 0
    yolo: list[dict] = []
    for i, (name, opts) in enumerate(sections[1:]):
        where = f"layer {i} [{name}]"
        try:
            if name in ("convolutional", "conv"):
                n = _positive(opts, "filters", where, path)
                k = _positive(opts, "size", where, path)
                groups = _positive(opts, "groups", where, path)
                bn = int(opts.get("batch_normalize", 0))
                n_params += n * (c // groups) * k * k + n * (4 if bn else 1)
                c = n
            elif name == "route":
                layers = [j if j >= 0 else i + j for j in _ints(opts["layers"])]
                if not layers or any(j < 0 or j >= i for j in layers):
                    raise FamousError(f"{where}: layers {opts['layers']} point outside.", path)
                c = sum(out_channels[j] for j in layers) // _positive(opts, "groups", where, path)
            elif name == "shortcut":
                if opts.get("weights_type", "none") != "none":
                    raise FamousError(f"{where}: weighted shortcuts are not supported.", path)
            elif name in ("yolo", "region"):
                classes = _positive(opts, "classes", where, path, 20)
                anchors = _floats(opts.get("anchors", ""))
                mask = _ints(opts["mask"]) if "mask" in opts else list(range(len(anchors) // 2))
                yolo.append(
                    {
                        "layer": i,
                        "classes": classes,
                        "mask": mask,
                        "anchors": [anchors[2 * m : 2 * m + 2] for m in mask],
                        "scale_x_y": float(opts.get("scale_x_y", 1.0)),
                    }
                )
            elif name not in ("maxpool", "upsample", "dropout", "avgpool"):
                raise FamousError(
                    f"{where}: layer type {name!r} is not supported.",
                    path,
                    "use a YOLOv3/YOLOv4(-tiny) style cfg (convolutional, route, shortcut, "
                    "maxpool, upsample, yolo).",
                )
        except (KeyError, ValueError) as exc:
            raise FamousError(f"{where}: bad or missing option ({exc}).", path) from None
        out_channels.append(c)
    if not yolo:
        raise FamousError("has no [yolo] layer.", path, "give a YOLO detector cfg.")
    classes = {y["classes"] for y in yolo}
    if len(classes) != 1:
        raise FamousError(f"[yolo] layers disagree on the class count {sorted(classes)}.", path)
    return CfgInfo(width, height, channels, classes.pop(), n_params, yolo)


def weights_header_size(path: str | Path) -> int:
    """Header size of a Darknet weights file: 20 bytes (version >= 0.2), else 16.

    Raises a :class:`FamousError` when the header is not a Darknet version.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(12)
    if len(head) < 12:
        raise FamousError("is too short to be a Darknet weights file.", path)
    major, minor, revision = np.frombuffer(head, "<i4")
    if not all(0 <= v < 1000 for v in (major, minor, revision)):
        raise FamousError(
            "is not a Darknet weights file (its header is not a Darknet version number).",
            path,
            "give the .weights file written by darknet or `famous train` "
            "(PyTorch .pt files are not Darknet weights).",
        )
    return 20 if major * 10 + minor >= 2 else 16


def check_model(cfg: str | Path, weights: str | Path) -> CfgInfo:
    """Check that a weights file fits a cfg, before OpenCV silently accepts a wrong one.

    Returns the :class:`CfgInfo` of the cfg. Raises a :class:`FamousError` for
    a missing or non-Darknet file or a size that differs from
    ``header + 4 x parameters``, naming the likely cause (another class count
    or input channel count) when one explains the difference, and for weights
    whose SHA-256 differs from the one stored next to them (:func:`write_checksum`).
    """
    info = cfg_info(parse_cfg(cfg), cfg)
    weights = Path(weights)
    if not weights.is_file():
        raise FamousError("weights file not found.", weights, "give the model's .weights file.")
    header = weights_header_size(weights)
    size = weights.stat().st_size
    expected = header + 4 * info.n_params
    if size == expected:
        _check_checksum(weights)
        return info
    cause = ""
    if size > header and (size - header) % 4 == 0:
        cause = _explain_size((size - header) // 4, cfg)
    raise FamousError(
        f"holds {size:,} bytes but {Path(cfg).name} needs {expected:,} "
        f"({header} header + 4 x {info.n_params:,} parameters){cause}.",
        weights,
        "use the .weights file trained with this .cfg (same classes, channels and width).",
    )


def weights_digest(weights: str | Path) -> str:
    """The SHA-256 of a weights file, as 64 hex digits."""
    with open(weights, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def write_checksum(weights: str | Path) -> Path:
    """Store the SHA-256 of ``weights`` next to it (``model.weights.sha256``).

    Written in ``sha256sum``'s format, so ``sha256sum -c`` checks it too;
    :func:`check_model` compares it whenever the model is loaded.
    """
    weights = Path(weights)
    path = weights.with_name(weights.name + CHECKSUM_SUFFIX)
    atomic_write_bytes(path, f"{weights_digest(weights)}  {weights.name}\n".encode())
    return path


def _check_checksum(weights: Path) -> None:
    """Compare ``weights`` with the SHA-256 stored next to it, when one is."""
    path = weights.with_name(weights.name + CHECKSUM_SUFFIX)
    if not path.is_file():
        return  # a model folder of an older FAMOUS or of darknet: nothing to compare
    stored = re.match(rb"\s*([0-9a-fA-F]{64})(\s|$)", path.read_bytes()[:256])
    if stored is None:
        raise FamousError(
            "is not a SHA-256 checksum (64 hex digits).",
            path,
            "copy the whole model folder again, or delete this file to load it unchecked.",
        )
    if stored.group(1).decode().lower() != weights_digest(weights):
        raise FamousError(
            f"is not the file this model folder was trained with (its SHA-256 differs "
            f"from {path.name}).",
            weights,
            f"copy the whole model folder again; if you replaced {weights.name} on purpose "
            f"(same network, other training), delete {path.name}.",
        )


def _explain_size(n_params: int, cfg: str | Path) -> str:
    """Which class/channel count would make the cfg hold ``n_params`` parameters."""
    sections = parse_cfg(cfg)
    for channels in (1, 3):
        for classes in range(1, 101):
            changed = [(n, dict(o)) for n, o in sections]
            changed[0][1]["channels"] = str(channels)
            for k, (name, opts) in enumerate(changed):
                if name == "yolo":
                    opts["classes"] = str(classes)
                    n_mask = len(_ints(opts["mask"]))
                    prev = max(j for j in range(k) if changed[j][0] == "convolutional")
                    changed[prev][1]["filters"] = str((classes + 5) * n_mask)
            if cfg_info(changed, cfg).n_params == n_params:
                return f"; it fits this cfg with {classes} classes and {channels}-channel input"
    return "; it is truncated or made for another network"


def read_names(path: Path) -> list[str]:
    """Class names of an ``obj.names`` file."""
    try:
        return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    except UnicodeDecodeError:
        raise FamousError("is not a text file of class names.", path) from None


# ------------------------------------------------------ writing a YOLOv4-tiny cfg


def _conv(filters, size_=3, stride=1, act="leaky", bn=True) -> str:
    """A ``[convolutional]`` section."""
    bn_line = "batch_normalize=1\n" if bn else ""
    return (
        f"[convolutional]\n{bn_line}filters={filters}\nsize={size_}\nstride={stride}\n"
        f"pad=1\nactivation={act}\n\n"
    )


def _yolo(mask, anchor_text: str, n_classes: int, n_anchors: int, scale_x_y: float) -> str:
    """A ``[yolo]`` head section using the anchors ``mask`` of ``anchor_text``."""
    return (
        f"[yolo]\nmask={','.join(map(str, mask))}\nanchors={anchor_text}\n"
        f"classes={n_classes}\nnum={n_anchors}\njitter=.3\nscale_x_y={scale_x_y:g}\n"
        "ignore_thresh=.7\ntruth_thresh=1\nrandom=0\nresize=1.5\nnms_kind=greedynms\n"
        "beta_nms=0.6\n\n"
    )


def _csp(filters) -> str:
    """A YOLOv4-tiny CSP block, ending in a stride-2 maxpool."""
    return (
        _conv(filters)
        + "[route]\nlayers=-1\ngroups=2\ngroup_id=1\n\n"
        + _conv(filters // 2)
        + _conv(filters // 2)
        + "[route]\nlayers=-1,-2\n\n"
        + _conv(filters, 1)
        + "[route]\nlayers=-6,-1\n\n"
        + "[maxpool]\nsize=2\nstride=2\n\n"
    )


def yolo_tiny_cfg(
    n_classes: int,
    anchors: list[tuple[float, float]],
    width: str = "tiny",
    channels: int = 1,
    size: int = 416,
    heads: int = 2,
    scale_x_y: float = 2.0,
) -> str:
    """A YOLOv4-tiny Darknet cfg (``heads=3``: the ``-3l`` variant with a stride-8 head).

    Parameters
    ----------
    n_classes : int
    anchors : list of (w, h)
        ``3 * heads`` anchors in input pixels, smallest first.
    width : {"tiny", "slim"}
        ``"tiny"`` is darknet's yolov4-tiny; ``"slim"`` halves every layer's
        filters (about 4x fewer operations, for CPU training).
    channels : int
        1 for grey EM slices, 3 for RGB.
    size : int
        Network input (tile) size, a multiple of 32.
    heads : {2, 3}
    scale_x_y : float
        Darknet's centre scaling; 2 lets a cell place a centre half a cell
        beyond its borders, so neighbouring cells can learn a box too.
    """
    if width not in ("tiny", "slim"):
        raise FamousError(f"unknown width {width!r}.", fix="use tiny or slim.")
    if heads not in (2, 3) or len(anchors) != 3 * heads:
        raise FamousError(f"need 2 or 3 heads and 3 anchors per head (got {len(anchors)}).")
    if size % 32:
        raise FamousError(f"input size {size} is not a multiple of 32.")
    f = 1 if width == "tiny" else 2
    out = (n_classes + 5) * 3
    anchor_text = ", ".join(f"{round(w)},{round(h)}" for w, h in anchors)

    def yolo(mask):
        return _yolo(mask, anchor_text, n_classes, len(anchors), scale_x_y)

    first = 3 * (heads - 1)
    text = (
        f"# YOLOv4-tiny{'-3l' if heads == 3 else ''} ({width}) written by FAMOUS\n"
        f"[net]\nbatch=1\nsubdivisions=1\nwidth={size}\nheight={size}\nchannels={channels}\n"
        "momentum=0.9\ndecay=0.0005\nlearning_rate=0.00261\nburn_in=1000\n"
        "max_batches=6000\npolicy=steps\nsteps=4800,5400\nscales=.1,.1\n\n"
        + _conv(32 // f, 3, 2)
        + _conv(64 // f, 3, 2)
        + _csp(64 // f)
        + _csp(128 // f)  # layer 15: 128/f channels at stride 8
        + _csp(256 // f)  # layer 23: 256/f channels at stride 16
        + _conv(512 // f)
        + _conv(256 // f, 1)
        + _conv(512 // f)
        + _conv(out, 1, act="linear", bn=False)
        + yolo(range(first, first + 3))
        + "[route]\nlayers=-4\n\n"
        + _conv(128 // f, 1)
        + "[upsample]\nstride=2\n\n"
        + "[route]\nlayers=-1,23\n\n"
        + _conv(256 // f)
        + _conv(out, 1, act="linear", bn=False)
        + yolo(range(first - 3, first))
    )
    if heads == 3:
        text += (
            "[route]\nlayers=-3\n\n"
            + _conv(64 // f, 1)
            + "[upsample]\nstride=2\n\n"
            + "[route]\nlayers=-1,15\n\n"
            + _conv(128 // f)
            + _conv(out, 1, act="linear", bn=False)
            + yolo(range(0, 3))
        )
    return text
