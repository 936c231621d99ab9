"""A detector's inference settings: the ``thresholds.json`` beside the model.

Per-class score and confirmation thresholds, suppression, tiling, test-time
views, neighbouring slices, the border's lowered bar and the enlarged pass
for small objects, read and written as JSON and checked on reading.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import FamousError
from .boxops import CONTAINMENT

# (mirror left-right, mirror up-down) of each view, for 1, 2 or 4 views
FLIP_VIEWS = {1: [(False, False)], 2: [(False, False), (True, False)]}
FLIP_VIEWS[4] = FLIP_VIEWS[2] + [(False, True), (True, True)]


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
        of it (see :func:`~.boxops.suppress`). None turns this off for the class:
        where organelles lie close together the larger box is more often two
        neighbours in one box than a whole object (on unseen phantoms the rule
        cost the step-7 demo model 0.05-0.19 AP for endosomes, lysosomes and
        mitochondria). Pieces cut by a tile border are dropped in any case.
        Training chooses it per class (:func:`~.calibrate.choose_containment`).
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
        :func:`~.boxops.fuse_views`). On two unseen phantoms four views moved the step-7
        demo model's mAP@0.5 from 0.946 / 0.935 to 0.947 / 0.954 for four times the
        DNN time and lowered its lysosome recall at the chosen thresholds, so
        it is off unless a model's ``thresholds.json`` turns it on.
    neighbours : bool
        The model sees each slice between its neighbours in z: its 3-channel
        input is slices k-1, k, k+1 (``famous train --neighbours``), and
        :meth:`~.inference.Detector.detect` takes (Y, X, 3) images
        (:meth:`~famous_addon.core.stack.Stack.read_with_neighbours`). Off: a 3-channel model
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
        at about twice the DNN time (before it looked in windows only). The
        enlarged view was seen in training only through scale jitter, so its
        boxes must clear a higher bar than the class's box threshold, and
        they only add objects the normal pass has not boxed.
    zoom_factor : float
        How many times the slice is enlarged for that pass.
    zoom_max_size : float
        Longest side, in slice pixels, of a box the enlarged pass may add:
        it is there for small cross-sections, and its larger boxes can make
        false organelles (on one of fifteen unseen phantoms, boxes 19-30 px
        across where there was none linked into a false lysosome).
    zoom_overlap : int
        Tile overlap of the enlarged pass where it looks at the whole
        enlarged slice, in enlarged pixels: at least the largest enlarged
        object of its classes. On larger slices it looks in windows around
        what the normal pass saw instead (``inference.ZOOM_WINDOW``).
    largest_tile : int
        Longest side, in pixels, of the tiles the network runs on. Darknet
        models are fully convolutional, so OpenCV runs them at any input
        size divisible by 32 with the same weights: a slice up to this size
        is one tile (each pixel seen once, no box cut by a tile border), a
        larger one is cut into tiles this size. 416-px tiles, which overlap
        so that every object lies whole in one, made the network compute a
        2,048 x 1,792 slice 3.4 times over. 2,048 holds the network in about
        0.5 GB; the model's input size (or 0) gives the tiles it was trained at.
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
    largest_tile: int = 2048

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
            "largest_tile": self.largest_tile,
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
            given = data.get(key, {})
            if not isinstance(given, dict):
                raise FamousError(
                    f"has {key} {given!r}, not a score per class name.",
                    path,
                    f'give e.g. {{"{names[0]}": 0.3}}.',
                )
            for name, value in given.items():
                values[index(name)] = _number(value, f"{key} of {name!r}", path, 0.0, 1.0)
            return values

        if not isinstance(data, dict):
            raise FamousError(
                "is not a JSON object of settings.", path, "write it with `famous recalibrate`."
            )
        thresholds = per_class("score_thresholds", [0.25] * len(names))
        flip_views = data.get("flip_views", 1)
        if flip_views not in FLIP_VIEWS:
            raise FamousError(f"has flip_views {flip_views!r}.", path, "use 1 (off), 2 or 4 views.")
        edge = data.get("edge_score_factor", cls.edge_score_factor)
        if not isinstance(edge, (int, float)) or not 0 < edge <= 1:
            raise FamousError(
                f"has edge_score_factor {edge!r}.", path, "use a number in (0, 1]; 1 turns it off."
            )
        whole = data.get("whole_slice_classes", [])
        if not isinstance(whole, list):
            raise FamousError(
                f"has whole_slice_classes {whole!r}, not a list of class names.", path
            )
        return cls(
            score_thresholds=thresholds,
            nms_iou=_number(data.get("nms_iou", 0.45), "nms_iou", path, 0.0, 1.0),
            containment=_containment(data.get("containment", CONTAINMENT), names, index, path),
            tile_overlap=int(
                _number(data.get("tile_overlap", 96), "tile_overlap", path, 0, 4096, whole=True)
            ),
            whole_slice_classes=[index(n) for n in whole],
            batch=max(1, int(_number(data.get("batch", 4), "batch", path, 0, 4096, whole=True))),
            confirm_thresholds=per_class("confirm_thresholds", thresholds),
            box_scale=_box_scale(data.get("box_scale"), names, index, path),
            flip_views=flip_views,
            neighbours=bool(data.get("neighbours", False)),
            edge_score_factor=float(edge),
            largest_tile=int(
                _number(data.get("largest_tile", 2048), "largest_tile", path, 0, 16384, whole=True)
            ),
            **_zoom_pass(data.get("zoom_pass"), index, path),
        )


def _number(value, what: str, path: Path, lo: float, hi: float, whole: bool = False) -> float:
    """``value`` as a float when it is a number (a whole one if asked) in [lo, hi]."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and lo <= value <= hi and (not whole or float(value).is_integer())
    if not ok:
        kind = "a whole number" if whole else "a number"
        raise FamousError(
            f"has {what} {value!r}, not {kind} in [{lo:g}, {hi:g}].",
            path,
            "write the number without quotes, or let `famous recalibrate` write the file.",
        )
    return float(value)


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
