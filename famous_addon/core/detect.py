"""YOLOv4 detection through OpenCV DNN, tiled over whole slices.

A model folder holds standard Darknet files plus FAMOUS's settings::

    MODEL/model.cfg         Darknet network description
    MODEL/model.weights     Darknet weights (20-byte header, then float32 parameters)
    MODEL/obj.names         class names, one a line, in the detector's order
    MODEL/classes.toml      the class config the model was trained with
    MODEL/thresholds.json   per-class score thresholds, tiling and suppression settings
    MODEL/report.json       training metrics, time and the command that made it

Only ``model.cfg`` and ``model.weights`` are required, so a model trained with
darknet itself works too. OpenCV loads mismatched cfg/weights pairs without a
word and then runs on uninitialised memory, so :func:`check_model` compares the
weights file size with the parameter count computed from the cfg before any
slice is processed.

Slices larger than the network input are cut into tiles that overlap by at
least the largest expected object; boxes cut by a tile border are merged with
the matching box of the neighbouring tile, then class-wise NMS and a
containment suppression (a box mostly inside a larger box of the same class is
a piece of it) run over the whole slice.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .boxes import Box
from .errors import FamousError

CFG_NAME = "model.cfg"
WEIGHTS_NAME = "model.weights"
NAMES_NAME = "obj.names"
CLASSES_NAME = "classes.toml"
THRESHOLDS_NAME = "thresholds.json"
REPORT_NAME = "report.json"

BACKENDS = ("auto", "cpu", "cuda", "cuda_fp16")
# a box with this much of its area inside a larger same-class box is a piece of it
CONTAINMENT = 0.7

# ---------------------------------------------------------------- Darknet cfg


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
                n = int(opts.get("filters", 1))
                k = int(opts.get("size", 1))
                groups = int(opts.get("groups", 1))
                bn = int(opts.get("batch_normalize", 0))
                n_params += n * (c // groups) * k * k + n * (4 if bn else 1)
                c = n
            elif name == "route":
                layers = [j if j >= 0 else i + j for j in _ints(opts["layers"])]
                if any(j < 0 or j >= i for j in layers):
                    raise FamousError(f"{where}: layers {opts['layers']} point outside.", path)
                c = sum(out_channels[j] for j in layers) // int(opts.get("groups", 1))
            elif name == "shortcut":
                if opts.get("weights_type", "none") != "none":
                    raise FamousError(f"{where}: weighted shortcuts are not supported.", path)
            elif name in ("yolo", "region"):
                classes = int(opts.get("classes", 20))
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
    or input channel count) when one explains the difference.
    """
    info = cfg_info(parse_cfg(cfg), cfg)
    weights = Path(weights)
    if not weights.is_file():
        raise FamousError("weights file not found.", weights, "give the model's .weights file.")
    header = weights_header_size(weights)
    size = weights.stat().st_size
    expected = header + 4 * info.n_params
    if size == expected:
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

    def conv(filters, size_=3, stride=1, act="leaky", bn=True):
        bn_line = "batch_normalize=1\n" if bn else ""
        return (
            f"[convolutional]\n{bn_line}filters={filters}\nsize={size_}\nstride={stride}\n"
            f"pad=1\nactivation={act}\n\n"
        )

    def yolo(mask):
        return (
            f"[yolo]\nmask={','.join(map(str, mask))}\nanchors={anchor_text}\n"
            f"classes={n_classes}\nnum={len(anchors)}\njitter=.3\nscale_x_y={scale_x_y:g}\n"
            "ignore_thresh=.7\ntruth_thresh=1\nrandom=0\nresize=1.5\nnms_kind=greedynms\n"
            "beta_nms=0.6\n\n"
        )

    def csp(filters):
        return (
            conv(filters)
            + "[route]\nlayers=-1\ngroups=2\ngroup_id=1\n\n"
            + conv(filters // 2)
            + conv(filters // 2)
            + "[route]\nlayers=-1,-2\n\n"
            + conv(filters, 1)
            + "[route]\nlayers=-6,-1\n\n"
            + "[maxpool]\nsize=2\nstride=2\n\n"
        )

    first = 3 * (heads - 1)
    text = (
        f"# YOLOv4-tiny{'-3l' if heads == 3 else ''} ({width}) written by FAMOUS\n"
        f"[net]\nbatch=1\nsubdivisions=1\nwidth={size}\nheight={size}\nchannels={channels}\n"
        "momentum=0.9\ndecay=0.0005\nlearning_rate=0.00261\nburn_in=1000\n"
        "max_batches=6000\npolicy=steps\nsteps=4800,5400\nscales=.1,.1\n\n"
        + conv(32 // f, 3, 2)
        + conv(64 // f, 3, 2)
        + csp(64 // f)
        + csp(128 // f)  # layer 15: 128/f channels at stride 8
        + csp(256 // f)  # layer 23: 256/f channels at stride 16
        + conv(512 // f)
        + conv(256 // f, 1)
        + conv(512 // f)
        + conv(out, 1, act="linear", bn=False)
        + yolo(range(first, first + 3))
        + "[route]\nlayers=-4\n\n"
        + conv(128 // f, 1)
        + "[upsample]\nstride=2\n\n"
        + "[route]\nlayers=-1,23\n\n"
        + conv(256 // f)
        + conv(out, 1, act="linear", bn=False)
        + yolo(range(first - 3, first))
    )
    if heads == 3:
        text += (
            "[route]\nlayers=-3\n\n"
            + conv(64 // f, 1)
            + "[upsample]\nstride=2\n\n"
            + "[route]\nlayers=-1,15\n\n"
            + conv(128 // f)
            + conv(out, 1, act="linear", bn=False)
            + yolo(range(0, 3))
        )
    return text


# ------------------------------------------------------------------ settings


@dataclass
class DetectSettings:
    """Inference settings stored in ``thresholds.json`` beside the model.

    Attributes
    ----------
    score_thresholds : list of float
        Minimum score per class (class config order).
    nms_iou : float
        Class-wise NMS overlap.
    containment : list of (float or None)
        Per class: a box whose intersection with a larger same-class box
        covers at least this fraction of its own area is dropped as a piece
        of it (see :func:`suppress`). None turns this off for the class:
        where organelles lie close together the larger box is more often two
        neighbours in one box than a whole object (on unseen phantoms the rule
        cost the step-7 demo model 0.05-0.19 AP for endosomes, lysosomes and
        mitochondria). Pieces cut by a tile border are dropped in any case.
        Training chooses it per class (:func:`~.train.choose_containment`).
    tile_overlap : int
        Pixels shared by neighbouring tiles; at least the largest expected
        object, so every object lies whole in some tile.
    whole_slice_classes : list of int
        Classes larger than a tile, found on one downscaled whole-slice pass
        instead of the tiles.
    batch : int
        Tiles per forward pass.
    confirm_thresholds : list of float, optional
        Per class, the score an organelle must reach on a few of its slices to
        be kept (hysteresis: boxes above ``score_thresholds`` continue an
        organelle, boxes above these confirm it). None: the score thresholds.
    box_scale : list of (float, float), optional
        Per class, factors for box width and height about the box centre:
        corrects a detector that draws its boxes systematically larger or
        smaller than the user does (learned on the annotated slices). Masks
        such as the inscribed ellipse follow the box, so this bias would
        otherwise go straight into the volumes.
    flip_views : {1, 2, 4}
        Test-time augmentation: the slice is also detected mirrored left-right
        (2) and up-down and both (4), and the views' boxes are fused (see
        :func:`fuse_views`). On two unseen phantoms four views moved the step-7
        demo model's mAP@0.5 from 0.946 / 0.935 to 0.947 / 0.954 for four times the
        DNN time and lowered its lysosome recall at the chosen thresholds, so
        it is off unless a model's ``thresholds.json`` turns it on.
    neighbours : bool
        The model sees each slice between its neighbours in z: its 3-channel
        input is slices k-1, k, k+1 (``famous train --neighbours``), and
        :meth:`Detector.detect` takes (Y, X, 3) images
        (:meth:`~.stack.Stack.read_with_neighbours`). Off: a 3-channel model
        gets the one slice in every channel, as a standard ``yolov4.cfg``.
    edge_score_factor : float
        Boxes touching the slice border need only this fraction of their
        class's score threshold. An organelle cut by the border shows the
        detector a sliver of itself and scores low on every slice: at half
        the threshold the demo model's recall of boxes touching the border of
        five unseen phantoms rose from 0.90-0.96 to 0.96-0.98, for up to 3.3
        points of precision per class (5.9 for the nucleus). The organelle
        must still be confirmed in 3-D (``confirm_thresholds``), so a sliver
        only continues one.
    zoom_thresholds : dict of int to float
        Classes also looked for on the slice enlarged ``zoom_factor`` times,
        with the score each needs there; empty: no such pass. Small
        cross-sections (the caps of round organelles, a few pixels across)
        span too few cells of the detector's coarsest grids to be boxed, and
        enlarged they are not: on ten unseen phantoms a 1.5x pass for
        lysosomes at score 0.9 raised the demo model's lysosome box recall
        from 0.892-0.934 to 0.904-0.951, for up to 2.9 points of precision,
        at about twice the DNN time. The enlarged view was seen in training
        only through scale jitter, so its boxes must clear a higher bar than
        the class's box threshold, and they only add objects the normal pass
        has not boxed.
    zoom_factor : float
        How many times the slice is enlarged for that pass.
    zoom_max_size : float
        Longest side, in slice pixels, of a box the enlarged pass may add:
        it is there for small cross-sections, and its larger boxes can make
        false organelles (on one of fifteen unseen phantoms, boxes 19-30 px
        across where there was none linked into a false lysosome).
    zoom_overlap : int
        Tile overlap of the enlarged pass, in enlarged pixels: at least the
        largest enlarged object of its classes.
    """

    score_thresholds: list[float]
    nms_iou: float = 0.45
    containment: list[float | None] | None = None
    tile_overlap: int = 96
    whole_slice_classes: list[int] = field(default_factory=list)
    batch: int = 4
    confirm_thresholds: list[float] | None = None
    box_scale: list[tuple[float, float]] | None = None
    flip_views: int = 1
    neighbours: bool = False
    edge_score_factor: float = 0.5
    zoom_thresholds: dict[int, float] = field(default_factory=dict)
    zoom_factor: float = 1.5
    zoom_max_size: float = 20.0
    zoom_overlap: int = 96

    def confirm(self) -> list[float]:
        """Per-class confirmation scores, never below the box thresholds."""
        confirm = self.confirm_thresholds or self.score_thresholds
        return [max(c, s) for c, s in zip(confirm, self.score_thresholds)]

    def contain(self, n_classes: int) -> list[float | None]:
        """Per-class containment (the default for every class when unset)."""
        return list(self.containment or [CONTAINMENT] * n_classes)

    def to_json(self, names: list[str]) -> dict:
        return {
            "score_thresholds": dict(zip(names, self.score_thresholds)),
            "nms_iou": self.nms_iou,
            "containment": dict(zip(names, self.contain(len(names)))),
            "tile_overlap": self.tile_overlap,
            "whole_slice_classes": [names[c] for c in self.whole_slice_classes],
            "batch": self.batch,
            "confirm_thresholds": dict(zip(names, self.confirm())),
            "flip_views": self.flip_views,
            "neighbours": self.neighbours,
            "edge_score_factor": self.edge_score_factor,
            **(
                {
                    "zoom_pass": {
                        "factor": self.zoom_factor,
                        "max_size": self.zoom_max_size,
                        "overlap": self.zoom_overlap,
                        "score_thresholds": {
                            names[c]: t for c, t in sorted(self.zoom_thresholds.items())
                        },
                    }
                }
                if self.zoom_thresholds
                else {}
            ),
            **(
                {"box_scale": {n: list(v) for n, v in zip(names, self.box_scale)}}
                if self.box_scale is not None
                else {}
            ),
        }

    @classmethod
    def from_json(cls, data: dict, names: list[str], path: Path) -> DetectSettings:
        def index(name):
            if name not in names:
                raise FamousError(
                    f"names class {name!r}, which the model does not have ({', '.join(names)}).",
                    path,
                    "keep thresholds.json in step with obj.names.",
                )
            return names.index(name)

        def per_class(key, default):
            values = list(default)
            for name, value in data.get(key, {}).items():
                values[index(name)] = float(value)
            return values

        thresholds = per_class("score_thresholds", [0.25] * len(names))
        flip_views = data.get("flip_views", 1)
        if flip_views not in FLIP_VIEWS:
            raise FamousError(f"has flip_views {flip_views!r}.", path, "use 1 (off), 2 or 4 views.")
        edge = data.get("edge_score_factor", cls.edge_score_factor)
        if not isinstance(edge, (int, float)) or not 0 < edge <= 1:
            raise FamousError(
                f"has edge_score_factor {edge!r}.", path, "use a number in (0, 1]; 1 turns it off."
            )
        return cls(
            score_thresholds=thresholds,
            nms_iou=float(data.get("nms_iou", 0.45)),
            containment=_containment(data.get("containment", CONTAINMENT), names, index, path),
            tile_overlap=int(data.get("tile_overlap", 96)),
            whole_slice_classes=[index(n) for n in data.get("whole_slice_classes", [])],
            batch=max(1, int(data.get("batch", 4))),
            confirm_thresholds=per_class("confirm_thresholds", thresholds),
            box_scale=_box_scale(data.get("box_scale"), names, index, path),
            flip_views=flip_views,
            neighbours=bool(data.get("neighbours", False)),
            edge_score_factor=float(edge),
            **_zoom_pass(data.get("zoom_pass"), index, path),
        )


def _zoom_pass(data, index, path: Path) -> dict:
    """``zoom_pass`` of thresholds.json as DetectSettings fields (none when absent)."""
    if not data:
        return {}
    hint = (
        'give e.g. {"factor": 1.5, "max_size": 20, "overlap": 96, '
        '"score_thresholds": {"lysosome": 0.9}}.'
    )
    if not isinstance(data, dict) or not isinstance(data.get("score_thresholds"), dict):
        raise FamousError(
            f"has zoom_pass {data!r}, without score_thresholds per class.", path, hint
        )
    factor, overlap = data.get("factor", 1.5), data.get("overlap", 96)
    max_size = data.get("max_size", 20.0)
    if not isinstance(max_size, (int, float)) or max_size <= 0:
        raise FamousError(f"has zoom_pass max_size {max_size!r}, not a pixel size.", path, hint)
    if not isinstance(factor, (int, float)) or not 1 < factor <= 4:
        raise FamousError(f"has zoom_pass factor {factor!r}, not in (1, 4].", path, hint)
    if not isinstance(overlap, int) or overlap < 0:
        raise FamousError(f"has zoom_pass overlap {overlap!r}, not a pixel count.", path, hint)
    thresholds = {}
    for name, value in data["score_thresholds"].items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise FamousError(f"has zoom_pass score {value!r} for {name!r}.", path, hint)
        thresholds[index(name)] = float(value)
    return {
        "zoom_thresholds": thresholds,
        "zoom_factor": float(factor),
        "zoom_max_size": float(max_size),
        "zoom_overlap": overlap,
    }


def _containment(data, names: list[str], index, path: Path) -> list[float | None]:
    """Per-class containment from a number (every class) or {name: number or null}."""

    def check(name, value):
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise FamousError(
                f"containment of {name} is {value!r}, not a fraction in (0, 1] or null.",
                path,
                'give e.g. 0.7, or {"mitochondria": 0.7, "lysosome": null} (null: off).',
            )
        return float(value)

    if not isinstance(data, dict):
        return [check("every class", data)] * len(names)
    values: list[float | None] = [CONTAINMENT] * len(names)
    for name, value in data.items():
        values[index(name)] = check(repr(name), value)
    return values


def _box_scale(data, names: list[str], index, path: Path) -> list[tuple[float, float]] | None:
    """``{"class": [sw, sh]}`` from thresholds.json as a per-class list (1, 1 where absent)."""
    if not data:
        return None
    scale = [(1.0, 1.0)] * len(names)
    for name, value in data.items():
        try:
            sw, sh = (float(v) for v in value)
        except (TypeError, ValueError):
            sw = sh = -1.0
        if not (0.25 <= sw <= 4 and 0.25 <= sh <= 4):
            raise FamousError(
                f"box_scale of {name!r} is {value!r}, not two factors between 0.25 and 4.",
                path,
                "give [width factor, height factor], e.g. [0.95, 0.95], or remove box_scale.",
            )
        scale[index(name)] = (sw, sh)
    return scale


def scale_boxes(xyxy: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Boxes ``(n, 4)`` x0 y0 x1 y1 scaled about their centres by ``(n, 2)`` factors (w, h)."""
    centre = (xyxy[:, :2] + xyxy[:, 2:]) / 2
    half = (xyxy[:, 2:] - xyxy[:, :2]) / 2 * scale
    return np.concatenate([centre - half, centre + half], axis=1)


def apply_box_scale(xyxy: np.ndarray, classes: np.ndarray, box_scale, shape) -> np.ndarray:
    """Scale each box by its class's factors, keeping sides on the slice's edge.

    A side on the edge is where the slice cuts the organelle, not where the
    detector guessed its outline, so it stays.
    """
    rows, cols = shape
    at_edge = np.column_stack(
        [xyxy[:, 0] <= 1, xyxy[:, 1] <= 1, xyxy[:, 2] >= cols - 1, xyxy[:, 3] >= rows - 1]
    )
    scaled = scale_boxes(xyxy, np.asarray(box_scale, np.float64)[classes])
    return np.where(at_edge, xyxy, scaled)


# --------------------------------------------------------------- box algebra


def above_threshold(
    xyxy: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    thr: np.ndarray,
    shape: tuple[int, int],
    edge_factor: float,
    margin: float = 2.0,
) -> np.ndarray:
    """Which boxes reach their class's score threshold.

    Boxes within ``margin`` pixels of the border of a ``shape`` slice need
    only ``edge_factor`` times the threshold (see
    :attr:`DetectSettings.edge_score_factor`).
    """
    rows, cols = shape
    at_border = (
        (xyxy[:, 0] <= margin)
        | (xyxy[:, 1] <= margin)
        | (xyxy[:, 2] >= cols - margin)
        | (xyxy[:, 3] >= rows - margin)
    )
    return scores >= thr[classes] * np.where(at_border, edge_factor, 1.0)


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intersection over union and over the smaller box for ``(n, 4)`` x0 y0 x1 y1 arrays."""
    ix = np.clip(
        np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None
    )
    iy = np.clip(
        np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None
    )
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    smaller = np.minimum(area_a[:, None], area_b[None, :])
    return inter / np.maximum(union, 1e-9), inter / np.maximum(smaller, 1e-9)


# Most same-class candidates whose pairwise overlaps suppress takes at once: the
# matrix and its temporaries peak at 64 MB, while a 2048 px slice has a few hundred.
FULL_MATRIX = 1000


def suppress(
    xyxy: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    nms_iou: float,
    containment: list[float | None],
    pieces: np.ndarray | None = None,
) -> np.ndarray:
    """Class-wise NMS plus containment suppression; returns the kept indices.

    Boxes are visited by decreasing score. A box is dropped when a kept box of
    its class overlaps it with IoU >= ``nms_iou`` or contains it (intersection
    >= the class's ``containment`` of its own area). A box that contains one
    kept, smaller box and scores at least half as high replaces it (whatever
    their IoU), so a whole mitochondrion wins over a confident piece of it; a
    box containing several kept boxes is dropped, since it more likely spans
    neighbours than one object.

    Parameters
    ----------
    containment : list of (float or None)
        Per class; None: no containment rule for the class, except for ``pieces``.
    pieces : (n,) bool, optional
        Boxes cut by a tile border: parts of an object some other tile sees
        whole, so one inside a larger box (by :data:`CONTAINMENT`) always goes.
    """
    pieces = np.zeros(len(xyxy), bool) if pieces is None else pieces
    keep_all = []
    for c in np.unique(classes):
        idx = np.flatnonzero(classes == c)
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        box, s, piece = xyxy[idx], scores[idx], pieces[idx]
        area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
        # A slice's few hundred boxes get their pairwise overlaps at once (one
        # matrix per box took a third of a 2048 px slice's time around its
        # forwards); at the near-zero thresholds of calibration a slice has
        # ~10,000 candidates, too many for a matrix, and each box is compared
        # with the boxes kept so far only.
        full = _iou_matrix(box, box) if len(idx) <= FULL_MATRIX else None
        kept: list[int] = []
        for i in range(len(idx)):
            k = np.array(kept, dtype=int)
            if full is None:
                iou, ios = (m[0] for m in _iou_matrix(box[i : i + 1], box[k]))
            else:
                iou, ios = full[0][i, k], full[1][i, k]
            smaller_piece = np.where(area[i] > area[k], piece[k], piece[i])
            limit = np.where(smaller_piece, CONTAINMENT, np.inf)
            if containment[c] is not None:
                limit = np.minimum(limit, containment[c])
            nested = ios >= limit
            is_inside = nested & (area[k] < area[i])
            if ((iou >= nms_iou) | nested)[~is_inside].any():
                continue
            inside = k[is_inside]
            if not len(inside):
                kept.append(i)
            elif len(inside) == 1 and s[i] >= 0.5 * s[inside[0]]:
                kept.remove(inside[0])
                kept.append(i)
        keep_all.extend(idx[kept].tolist())
    return np.array(sorted(keep_all), dtype=int)


# (mirror left-right, mirror up-down) of each view, for 1, 2 or 4 views
FLIP_VIEWS = {1: [(False, False)], 2: [(False, False), (True, False)]}
FLIP_VIEWS[4] = FLIP_VIEWS[2] + [(False, True), (True, True)]


def fuse_views(views: list[tuple[np.ndarray, np.ndarray, np.ndarray]], iou: float = 0.55):
    """Fuse the boxes of several views of one slice (weighted box fusion).

    Boxes are visited by decreasing score; each joins the same-class cluster
    whose fused box it overlaps most (IoU >= ``iou``), unless that cluster
    already holds a box of its view. A cluster's box is the score-weighted
    mean of its members; its score is their sum over the number of views, so
    a box that only one view sees loses confidence and the box edges average
    out.

    Parameters
    ----------
    views : list of (xyxy (n, 4), scores (n,), classes (n,))

    Returns
    -------
    xyxy, scores, classes
    """
    xyxy = np.concatenate([v[0] for v in views]).reshape(-1, 4).astype(np.float64)
    scores = np.concatenate([v[1] for v in views]).astype(np.float64)
    classes = np.concatenate([v[2] for v in views]).astype(int)
    view_of = np.concatenate([np.full(len(v[1]), k) for k, v in enumerate(views)])
    out_xyxy, out_scores, out_classes = [], [], []
    for c in np.unique(classes):
        idx = np.flatnonzero(classes == c)
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        weight, weighted, members = [], [], []
        for i in idx:
            if weight:
                fused = np.array(weighted) / np.array(weight)[:, None]
                overlap = _iou_matrix(xyxy[i][None], fused)[0][0]
                overlap[[view_of[i] in m for m in members]] = -1
                j = int(np.argmax(overlap))
                if overlap[j] >= iou:
                    weight[j] += scores[i]
                    weighted[j] = weighted[j] + scores[i] * xyxy[i]
                    members[j].add(view_of[i])
                    continue
            weight.append(scores[i])
            weighted.append(scores[i] * xyxy[i])
            members.append({view_of[i]})
        out_xyxy.extend(np.array(weighted) / np.array(weight)[:, None])
        out_scores.extend(np.array(weight) / len(views))
        out_classes.extend([c] * len(weight))
    return (
        np.array(out_xyxy, np.float64).reshape(-1, 4),
        np.array(out_scores, np.float64),
        np.array(out_classes, int),
    )


def merge_cut_boxes(
    xyxy: np.ndarray, classes: np.ndarray, tile_ids: np.ndarray, cut: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Join boxes cut by a tile border with the same object's box from a neighbouring tile.

    Parameters
    ----------
    xyxy : (n, 4) float
        Boxes in slice pixels.
    classes, tile_ids : (n,) int
    cut : (n, 4) bool
        Whether the box touches its tile's left, top, right, bottom border
        where that border is inside the slice.

    Returns
    -------
    xyxy : (n, 4)
        Each box replaced by the union of its group.
    group : (n,) int
        Group id per box; boxes of one group are one object.

    Two same-class boxes of different tiles are one object when one is cut on
    a side and the other on the opposite side (an object longer than the tile
    overlap, seen in parts), they overlap, and along the axis perpendicular to
    the cut their extents agree (interval IoU >= 0.5). A cut box whose object
    lies whole in another tile needs no merging: containment suppression
    drops it as a piece of the whole box.
    """
    n = len(xyxy)
    parent = np.arange(n)

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def agree(lo_a, hi_a, lo_b, hi_b):
        inter = np.minimum(hi_a, hi_b) - np.maximum(lo_a, lo_b)
        return inter / (np.maximum(hi_a, hi_b) - np.minimum(lo_a, lo_b)) >= 0.5

    cut_before = np.flatnonzero(cut[:, 0] | cut[:, 1])  # on the left or top
    for i in np.flatnonzero(cut[:, 2] | cut[:, 3]):  # cut on the right or bottom
        a = xyxy[i]
        j = cut_before[(classes[cut_before] == classes[i]) & (tile_ids[cut_before] != tile_ids[i])]
        b = xyxy[j]
        overlap = (np.minimum(a[2], b[:, 2]) > np.maximum(a[0], b[:, 0])) & (
            np.minimum(a[3], b[:, 3]) > np.maximum(a[1], b[:, 1])
        )
        horizontal = cut[i, 2] & cut[j, 0] & agree(a[1], a[3], b[:, 1], b[:, 3])
        vertical = cut[i, 3] & cut[j, 1] & agree(a[0], a[2], b[:, 0], b[:, 2])
        for k in j[overlap & (horizontal | vertical)]:
            parent[find(i)] = find(k)
    group = np.array([find(i) for i in range(n)], dtype=int)
    lo = np.full((n, 2), np.inf)
    hi = np.full((n, 2), -np.inf)
    np.minimum.at(lo, group, xyxy[:, :2])
    np.maximum.at(hi, group, xyxy[:, 2:])
    return np.concatenate([lo[group], hi[group]], axis=1), group


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length`` with >= ``overlap`` shared.

    The overlap is capped at half a tile: more only multiplies the tiles (an
    overlap as large as the tile would step one pixel at a time), while every
    object up to half a tile already lies whole in one of them.
    """
    if length <= tile:
        return [0]
    step = tile - min(overlap, tile // 2)
    n = math.ceil((length - tile) / step) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


# ------------------------------------------------------------------ detector


def cuda_available() -> bool:
    """Whether the installed OpenCV was built with CUDA and sees a device."""
    import cv2

    try:
        return cv2.cuda.getCudaEnabledDeviceCount() > 0
    except cv2.error:
        return False


def read_names(path: Path) -> list[str]:
    """Class names of an ``obj.names`` file."""
    try:
        return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    except UnicodeDecodeError:
        raise FamousError("is not a text file of class names.", path) from None


def _with_low_yolo_thresh(cfg_text: str) -> str:
    """The cfg with ``thresh=0.001`` in every ``[yolo]`` section.

    OpenCV zeroes class scores under the ``[yolo]`` section's ``thresh``
    (default 0.2), which would make lower per-class thresholds ineffective;
    FAMOUS applies its own thresholds after decoding.
    """
    out, in_yolo = [], False
    for line in cfg_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            in_yolo = stripped.lower() == "[yolo]"
            out.append(line)
            if in_yolo:
                out.append("thresh=0.001")
            continue
        if in_yolo and re.match(r"thresh\s*=", stripped):
            continue
        out.append(line)
    return "\n".join(out) + "\n"


class Detector:
    """A YOLO detector on whole slices: ``detector(index, image) -> list[Box]``.

    Use :func:`load_detector` to make one. The OpenCV network is loaded on
    first use and dropped when pickled, so a detector can be sent to worker
    processes or dask workers, where it reloads from the model folder.
    """

    def __init__(
        self,
        model_dir: Path,
        info: CfgInfo,
        names: list[str],
        settings: DetectSettings,
        backend: str,
        backend_note: str,
    ):
        self.model_dir = model_dir
        self.cfg = model_dir / CFG_NAME
        self.weights = model_dir / WEIGHTS_NAME
        self.info = info
        self.names = names
        self.settings = settings
        self.backend = backend
        self.backend_note = backend_note
        self._nets: dict = {}

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_nets"] = {}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

    def network(self, n: int = 1):
        """The OpenCV network for batches of ``n`` tiles, loaded on first use.

        One network per batch size: OpenCV sets a network up again whenever its
        input shape changes, and a slice's tiles come as full batches, a smaller
        remainder and the one-tile whole-slice pass.
        """
        if n not in self._nets:
            self._nets[n] = self._load()
        return self._nets[n]

    def _load(self):
        import cv2

        cfg = _with_low_yolo_thresh(self.cfg.read_text())
        net = cv2.dnn.readNetFromDarknet(
            np.frombuffer(cfg.encode(), np.uint8), np.fromfile(self.weights, np.uint8)
        )
        if self.backend.startswith("cuda"):
            net.setPreferableBackend(cv2.dnn.DNN_BACKEND_CUDA)
            target = (
                cv2.dnn.DNN_TARGET_CUDA_FP16
                if self.backend == "cuda_fp16"
                else cv2.dnn.DNN_TARGET_CUDA
            )
            net.setPreferableTarget(target)
        else:
            net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
            net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        return net

    @property
    def confirm_thresholds(self) -> list[float]:
        """Per-class score an organelle must reach to be kept (see :class:`DetectSettings`)."""
        return self.settings.confirm()

    def describe(self) -> dict:
        """Settings for ``run.json``: backend used, files, input size, thresholds."""
        return {
            "kind": "yolo_darknet_opencv",
            "model_dir": str(self.model_dir.resolve()),
            "cfg": str(self.cfg.resolve()),
            "weights": str(self.weights.resolve()),
            "backend": self.backend,
            "backend_note": self.backend_note,
            "input_size": [self.info.width, self.info.height],
            "channels": self.info.channels,
            "classes": self.names,
            **self.settings.to_json(self.names),
        }

    def forward(self, tiles: np.ndarray) -> np.ndarray:
        """Raw decoded YOLO rows for a batch of tiles.

        Parameters
        ----------
        tiles : (n, h, w) or (n, h, w, 3) uint8, h and w the network input size
            One slice, or a slice between its neighbours (channels last).

        Returns
        -------
        (n, rows, 5 + classes) float32
            cx, cy, w, h (fractions of the tile), objectness, class scores.
        """
        if tiles.ndim == 4:
            blob = tiles.transpose(0, 3, 1, 2).astype(np.float32) * np.float32(1 / 255)
        else:
            blob = tiles.astype(np.float32)[:, None] * np.float32(1 / 255)
            if self.info.channels == 3:
                blob = np.repeat(blob, 3, axis=1)
        n = len(tiles)
        net = self.network(n)
        net.setInput(blob)
        outs = net.forward(net.getUnconnectedOutLayersNames())
        return np.concatenate([o.reshape(n, -1, o.shape[-1]) for o in outs], axis=1)

    def _candidates(
        self,
        out: np.ndarray,
        scale: tuple[float, float],
        origins: np.ndarray,
        keep_cls,
        thr,
        shape: tuple[int, int],
        edge_factor: float,
    ):
        """Rows of a batch of tiles -> xyxy boxes (slice pixels), scores, classes, tiles.

        ``out`` is :meth:`forward`'s (tiles, rows, 5 + classes), ``origins``
        each tile's (x, y) in the ``shape`` slice. Boxes at the slice border
        need only ``edge_factor`` times the threshold (:func:`above_threshold`),
        before they can merge with others. Returns the boxes above threshold
        and the index in ``out`` of the tile each came from.
        """
        lowest = (thr[keep_cls] * edge_factor).min(initial=np.inf)
        # OpenCV's class scores are objectness times class probability, so a row
        # whose objectness is under every threshold cannot pass (1e-3: fp16 rounding)
        tile, row = np.nonzero(out[..., 4] >= lowest - 1e-3)
        r = out[tile, row]
        cls = r[:, 5:].argmax(axis=1)
        score = r[np.arange(len(r)), 5 + cls]
        ok = (score >= thr[cls] * edge_factor) & keep_cls[cls]
        r, cls, score, tile = r[ok], cls[ok], score[ok], tile[ok]
        sx, sy = scale
        ox, oy = origins[tile].astype(r.dtype).T
        x0 = (r[:, 0] - r[:, 2] / 2) * sx + ox
        y0 = (r[:, 1] - r[:, 3] / 2) * sy + oy
        x1 = (r[:, 0] + r[:, 2] / 2) * sx + ox
        y1 = (r[:, 1] + r[:, 3] / 2) * sy + oy
        xyxy = np.stack([x0, y0, x1, y1], axis=1)
        ok = above_threshold(xyxy, score, cls, thr, shape, edge_factor)
        return xyxy[ok], score[ok], cls[ok], tile[ok]

    def detect(self, image: np.ndarray) -> list[Box]:
        """Boxes of one slice, in slice pixels, after merging and suppression.

        ``image`` is the slice, 2-D uint8, or for a model with
        ``settings.neighbours`` the slice between its neighbours, (Y, X, 3).
        """
        image = np.asarray(image)
        st = self.settings
        channels = (3,) if st.neighbours else ()
        if image.dtype != np.uint8 or image.ndim < 2 or image.shape[2:] != channels:
            want = "(Y, X, 3) slices k-1, k, k+1" if st.neighbours else "2-D"
            raise FamousError(
                f"the detector needs a {want} uint8 slice, got {image.dtype} {image.shape}."
            )
        thr = np.asarray(st.score_thresholds, np.float32)
        if st.flip_views == 1:
            xyxy, scores, classes = self._detect_view(image, thr)
        else:
            rows, cols = image.shape[:2]
            views = []
            for flip_x, flip_y in FLIP_VIEWS[st.flip_views]:
                view = np.ascontiguousarray(image[:: -1 if flip_y else 1, :: -1 if flip_x else 1])
                # a box a view misses counts 0 in the fused mean: half the threshold
                # keeps the boxes that can still reach it with another view's help
                b, sc, c = self._detect_view(view, thr * 0.5)
                if flip_x:
                    b[:, [0, 2]] = cols - b[:, [2, 0]]
                if flip_y:
                    b[:, [1, 3]] = rows - b[:, [3, 1]]
                views.append((b, sc, c))
            xyxy, scores, classes = fuse_views(views)
            # no second suppression: each view was suppressed already, and on
            # unseen phantoms one more over the fused boxes cost 0.015 mAP
            ok = above_threshold(xyxy, scores, classes, thr, image.shape[:2], st.edge_score_factor)
            xyxy, scores, classes = xyxy[ok], scores[ok], classes[ok]
        if st.zoom_thresholds:
            xyxy, scores, classes = self._add_zoomed(image, xyxy, scores, classes)
        return [
            Box(
                int(classes[i]),
                float(xyxy[i, 0]),
                float(xyxy[i, 1]),
                float(xyxy[i, 2] - xyxy[i, 0]),
                float(xyxy[i, 3] - xyxy[i, 1]),
                float(scores[i]),
            )
            for i in range(len(scores))
        ]

    def _add_zoomed(self, image, xyxy, scores, classes):
        """The boxes plus those of the zoom pass's classes found on the enlarged slice.

        An enlarged box is added only when it is small (``zoom_max_size``) and
        neither it nor any box of the normal pass lies half or more inside the
        other: it adds small objects, it never replaces or duplicates one.
        """
        import cv2

        st = self.settings
        f = st.zoom_factor
        thr = np.full(len(self.names), np.inf, np.float32)
        thr[list(st.zoom_thresholds)] = list(st.zoom_thresholds.values())
        big = cv2.resize(image, None, fx=f, fy=f, interpolation=cv2.INTER_LINEAR)
        # the normal pass handles the slice border with its lowered bar already
        zb, zs, zc = self._detect_view(big, thr, st.zoom_overlap, edge_factor=1.0, whole=False)
        zb = zb / f
        small = np.maximum(zb[:, 2] - zb[:, 0], zb[:, 3] - zb[:, 1]) <= st.zoom_max_size
        zb, zs, zc = zb[small], zs[small], zc[small]
        if len(xyxy) and len(zb):
            zb, zs, zc = (a[_iou_matrix(zb, xyxy)[1].max(axis=1) < 0.5] for a in (zb, zs, zc))
        return (
            np.concatenate([xyxy, zb]),
            np.concatenate([scores, zs]),
            np.concatenate([classes, zc]),
        )

    def _detect_view(
        self,
        image: np.ndarray,
        thr: np.ndarray,
        overlap: int | None = None,
        edge_factor: float | None = None,
        whole: bool = True,
    ):
        """xyxy boxes, scores and classes of one slice as it is, above ``thr`` per class.

        ``overlap`` and ``edge_factor`` default to the settings' tile overlap
        and edge score factor; ``whole`` False skips the whole-slice pass.
        """
        import cv2

        rows, cols = image.shape[:2]
        tw, th = self.info.width, self.info.height
        st = self.settings
        overlap = st.tile_overlap if overlap is None else overlap
        edge_factor = st.edge_score_factor if edge_factor is None else edge_factor
        whole_cls = np.zeros(len(self.names), bool)
        if whole:
            whole_cls[st.whole_slice_classes] = True
        middle = image[..., 1] if image.ndim == 3 else image
        pad_value = int(np.median(middle[:: max(1, rows // 64), :: max(1, cols // 64)]))
        if rows < th or cols < tw:
            padded = np.full((max(rows, th), max(cols, tw), *image.shape[2:]), pad_value, np.uint8)
            padded[:rows, :cols] = image
        else:
            padded = image
        prow, pcol = padded.shape[:2]
        origins = [
            (x, y) for y in tile_origins(prow, th, overlap) for x in tile_origins(pcol, tw, overlap)
        ]
        boxes, scores, classes, tiles_of, cuts = [], [], [], [], []
        margin = 2.0
        for start in range(0, len(origins), st.batch):
            chunk = np.array(origins[start : start + st.batch])
            batch = np.stack([padded[y : y + th, x : x + tw] for x, y in chunk])
            b, s, c, t = self._candidates(
                self.forward(batch), (tw, th), chunk, ~whole_cls, thr, (rows, cols), edge_factor
            )
            x, y = chunk[t, 0], chunk[t, 1]
            inner = np.stack([x > 0, y > 0, x + tw < pcol, y + th < prow], axis=1)
            cut = inner & np.stack(
                [
                    b[:, 0] <= x + margin,
                    b[:, 1] <= y + margin,
                    b[:, 2] >= x + tw - margin,
                    b[:, 3] >= y + th - margin,
                ],
                axis=1,
            )
            boxes.append(b), scores.append(s), classes.append(c), cuts.append(cut)
            tiles_of.append(start + t)
        if whole_cls.any():
            # the whole slice, shrunk to fit one tile with its aspect ratio kept
            f = min(tw / cols, th / rows)
            nw, nh = max(1, round(cols * f)), max(1, round(rows * f))
            small = np.full((th, tw, *image.shape[2:]), pad_value, np.uint8)
            small[:nh, :nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
            b, s, c, _ = self._candidates(
                self.forward(small[None]),
                (tw / f, th / f),
                np.zeros((1, 2)),
                whole_cls,
                thr,
                (rows, cols),
                edge_factor,
            )
            boxes.append(b), scores.append(s), classes.append(c)
            cuts.append(np.zeros((len(b), 4), bool)), tiles_of.append(np.full(len(b), -1))
        xyxy = np.concatenate(boxes).astype(np.float64)
        scores = np.concatenate(scores)
        classes = np.concatenate(classes)
        if len(xyxy) == 0:
            return xyxy.reshape(0, 4), scores, classes
        pieces = np.concatenate(cuts).any(axis=1)
        if len(origins) > 1:
            xyxy, group = merge_cut_boxes(
                xyxy, classes, np.concatenate(tiles_of), np.concatenate(cuts)
            )
            # a cut box merged with its other parts is whole
            pieces &= np.bincount(group, minlength=len(group))[group] == 1
        if st.box_scale is not None:
            xyxy = apply_box_scale(xyxy, classes, st.box_scale, (rows, cols))
        xyxy[:, [0, 2]] = np.clip(xyxy[:, [0, 2]], 0, cols)
        xyxy[:, [1, 3]] = np.clip(xyxy[:, [1, 3]], 0, rows)
        ok = (xyxy[:, 2] - xyxy[:, 0] >= 1) & (xyxy[:, 3] - xyxy[:, 1] >= 1)
        ok &= above_threshold(xyxy, scores, classes, thr, (rows, cols), edge_factor)
        xyxy, scores, classes, pieces = xyxy[ok], scores[ok], classes[ok], pieces[ok]
        keep = suppress(xyxy, scores, classes, st.nms_iou, st.contain(len(self.names)), pieces)
        return xyxy[keep], scores[keep], classes[keep]

    @property
    def neighbours(self) -> bool:
        """Whether :meth:`detect` takes each slice between its neighbours."""
        return self.settings.neighbours

    def __call__(self, index: int, image: np.ndarray) -> list[Box]:
        return self.detect(image)


def choose_backend(backend: str) -> tuple[str, str]:
    """The backend to use for a request, and a note saying why."""
    if backend not in BACKENDS:
        raise FamousError(f"unknown backend {backend!r}.", fix=f"use one of {', '.join(BACKENDS)}.")
    has_cuda = cuda_available()
    if backend == "auto":
        return (
            ("cuda", "auto: OpenCV has CUDA")
            if has_cuda
            else ("cpu", "auto: this OpenCV build has no CUDA device")
        )
    if backend.startswith("cuda") and not has_cuda:
        return (
            "cpu",
            f"{backend} requested, but this OpenCV build has no CUDA (or sees no device); "
            "fell back to the CPU. See the README for a CUDA-enabled OpenCV.",
        )
    return backend, f"{backend} requested"


def load_detector(model_dir: str | Path, classes=None, backend: str = "auto") -> Detector:
    """Load and check a model folder; nothing is run until the first slice.

    Parameters
    ----------
    model_dir : str or Path
        Folder with ``model.cfg`` and ``model.weights`` (and optionally
        ``obj.names``, ``thresholds.json``).
    classes : ClassConfig, optional
        The run's class config; its class count (and names, when the model has
        ``obj.names``) must match the model.
    backend : {"auto", "cpu", "cuda", "cuda_fp16"}

    Raises
    ------
    FamousError
        Missing files, cfg/weights mismatch, non-Darknet weights, or a class
        count that differs from the class config.
    """
    import warnings

    import cv2

    if not hasattr(cv2.dnn, "readNetFromDarknet"):
        raise FamousError(
            f"OpenCV {cv2.__version__} has no Darknet importer (OpenCV 5 dropped it).",
            fix="pip install opencv-python-headless==4.11.0.86.",
        )
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FamousError(
            "model folder not found.", model_dir, "give the folder `famous train` wrote."
        )
    info = check_model(model_dir / CFG_NAME, model_dir / WEIGHTS_NAME)
    names_path = model_dir / NAMES_NAME
    if names_path.is_file():
        names = read_names(names_path)
        if len(names) != info.n_classes:
            raise FamousError(
                f"lists {len(names)} classes but {CFG_NAME} has {info.n_classes}.",
                names_path,
                "keep obj.names in step with the cfg.",
            )
    elif classes is not None:
        names = list(classes.names)
    else:
        names = [f"class_{i}" for i in range(info.n_classes)]
    if classes is not None:
        classes.check_count(info.n_classes, f"model {model_dir}", model_dir / CFG_NAME)
        if names_path.is_file() and list(classes.names) != names:
            raise FamousError(
                f"names classes {names}, but the class config has {list(classes.names)} "
                "(order matters: it is the detector's class index).",
                names_path,
                f"use the model's {CLASSES_NAME} as the class config, or rename the classes there.",
            )
    th_path = model_dir / THRESHOLDS_NAME
    if th_path.is_file():
        try:
            data = json.loads(th_path.read_text())
        except ValueError as exc:
            raise FamousError(f"is not valid JSON ({exc}).", th_path) from None
        settings = DetectSettings.from_json(data, names, th_path)
    else:
        settings = DetectSettings(
            [0.25] * info.n_classes, tile_overlap=min(info.width, info.height) // 4
        )
    if settings.neighbours and info.channels != 3:
        raise FamousError(
            f"asks for neighbouring slices, but {CFG_NAME} takes {info.channels} channel(s).",
            th_path,
            'set "neighbours": false, or use the cfg the model was trained with.',
        )
    used, note = choose_backend(backend)
    if used != backend and backend != "auto":
        warnings.warn(note, stacklevel=2)
    return Detector(model_dir, info, names, settings, used, note)


# ---------------------------------------------------------------- evaluation


def _xyxy(boxes: list[Box]) -> np.ndarray:
    return np.array([(b.x, b.y, b.x + b.w, b.y + b.h) for b in boxes], np.float64).reshape(-1, 4)


def small_boxes(classes: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """Which boxes are small: under a quarter of their class's median area among these boxes.

    The caps of round organelles, which detectors trained on few slices find
    least; :func:`evaluate` reports their recall apart, and training can
    centre crops on them (``AugmentConfig.small_focus``).
    """
    classes, areas = np.asarray(classes), np.asarray(areas, np.float64)
    small = np.zeros(len(areas), bool)
    for c in np.unique(classes):
        mine = classes == c
        small[mine] = areas[mine] < 0.25 * np.median(areas[mine])
    return small


def truth_categories(truth: list[Box], shape: tuple[int, int], small) -> list[str]:
    """Case of each truth box: ``"edge"``, ``"small"`` or ``"other"``.

    ``"edge"`` touches the image border; ``"small"`` is flagged in ``small``
    (see :func:`small_boxes`).
    """
    rows, cols = shape
    out = []
    for b, is_small in zip(truth, small):
        if b.x <= 1 or b.y <= 1 or b.x + b.w >= cols - 1 or b.y + b.h >= rows - 1:
            out.append("edge")
        elif is_small:
            out.append("small")
        else:
            out.append("other")
    return out


def match_class(
    pred: list[Box], truth: list[Box], c: int, iou: float = 0.5
) -> tuple[list[tuple[float, bool]], np.ndarray]:
    """Match the class-``c`` predictions of one image to its class-``c`` truth boxes.

    Predictions are matched by decreasing score to the unmatched truth box
    with the highest IoU (>= ``iou``).

    Returns
    -------
    scored : list of (score, is a true box), one per class-``c`` prediction
    hit : (len(truth),) bool, which truth boxes were found
    """
    p = sorted((b for b in pred if b.cls == c), key=lambda b: -b.score)
    hit = np.zeros(len(truth), bool)
    ious = _iou_matrix(_xyxy(p), _xyxy(truth))[0] if (p and truth) else None
    scored = []
    for k, b in enumerate(p):
        ok = False
        if truth:
            cand = np.where(hit, -1.0, ious[k])
            j = int(np.argmax(cand))
            if cand[j] >= iou:
                hit[j] = ok = True
        scored.append((b.score, ok))
    return scored, hit


def evaluate(
    preds: list[list[Box]],
    truths: list[list[Box]],
    shapes: list[tuple[int, int]],
    names: list[str],
    iou: float = 0.5,
) -> dict:
    """Detection metrics over images: AP@iou per class and mAP, precision/recall, recall by case.

    Predictions are matched greedily by decreasing score to the unmatched truth
    box of the same class with the highest IoU (>= ``iou``). Recall is also
    given separately for truth boxes touching the image border, small ones
    (under a quarter of their class's median area) and the others, the three
    cases where detectors trained on few slices differ most.

    Returns
    -------
    dict
        ``mAP``, ``per_class`` {name: AP, precision, recall, n_truth, n_pred,
        recall_edge, recall_small, recall_other}, and ``recall_by_case``.
    """
    n_classes = len(names)
    every = [b for t in truths for b in t]
    small = small_boxes([b.cls for b in every], [b.w * b.h for b in every])
    ends = np.cumsum([0] + [len(t) for t in truths])
    scored: list[list[tuple[float, bool]]] = [[] for _ in range(n_classes)]
    n_truth = np.zeros(n_classes, int)
    found: dict[tuple[int, str], list[bool]] = {}
    for n, (pred, truth, shape) in enumerate(zip(preds, truths, shapes)):
        cats = truth_categories(truth, shape, small[ends[n] : ends[n + 1]])
        for c in range(n_classes):
            t_idx = [i for i, b in enumerate(truth) if b.cls == c]
            n_truth[c] += len(t_idx)
            pairs, hit = match_class(pred, [truth[i] for i in t_idx], c, iou)
            scored[c].extend(pairs)
            for j, i in enumerate(t_idx):
                found.setdefault((c, cats[i]), []).append(bool(hit[j]))
    per_class = {}
    aps = []
    for c, name in enumerate(names):
        s = sorted(scored[c], key=lambda v: -v[0])
        tp = np.cumsum([ok for _, ok in s]) if s else np.zeros(0)
        fp = np.cumsum([not ok for _, ok in s]) if s else np.zeros(0)
        n_t = int(n_truth[c])
        if n_t:
            rec = tp / n_t
            prec = tp / np.maximum(tp + fp, 1)
            mrec = np.concatenate([[0.0], rec, [1.0]])
            mpre = np.concatenate([[1.0], prec, [0.0]])
            mpre = np.maximum.accumulate(mpre[::-1])[::-1]
            ap = float(np.sum((mrec[1:] - mrec[:-1]) * mpre[1:]))
            aps.append(ap)
        else:
            ap = float("nan")
        entry = {
            "AP50": ap,
            "n_truth": n_t,
            "n_pred": len(s),
            "precision": float(tp[-1] / len(s)) if s else float("nan"),
            "recall": float(tp[-1] / n_t) if (s and n_t) else (0.0 if n_t else float("nan")),
        }
        for case in ("edge", "small", "other"):
            hits = found.get((c, case), [])
            entry[f"recall_{case}"] = float(np.mean(hits)) if hits else float("nan")
            entry[f"n_{case}"] = len(hits)
        per_class[name] = entry
    by_case = {}
    for case in ("edge", "small", "other"):
        hits = [h for (c, k), v in found.items() if k == case for h in v]
        by_case[case] = {"recall": float(np.mean(hits)) if hits else float("nan"), "n": len(hits)}
    return {
        "mAP50": float(np.mean(aps)) if aps else float("nan"),
        "per_class": per_class,
        "recall_by_case": by_case,
    }
