"""What a run is asked to do: one request object for the CLI, the panel and the headless script.

:class:`RunRequest` carries every option of :func:`~.pipeline.run_pipeline`;
``famous run`` and ``blender_scripts/run_famous.py`` build it from their
arguments with :meth:`RunRequest.from_args`, the Blender panel from its
properties. :class:`RunSettings` holds the linking and point-cloud options
that ``run.json`` records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from .classes import ClassConfig
from .errors import FamousError
from .stack import Stack


@dataclass(frozen=True)
class RunSettings:
    """Options of the linking and point-cloud stages (recorded in run.json).

    Before the bridge merge, a mask that spans two organelles of the slice
    beside is cut between them where the grey values along the cut lie at
    least ``separation`` of the way to the background (0: off; see
    :mod:`.separate`). With ``short_joins_one``, an organelle shorter than
    :meth:`min_span` (and not on the stack's first or last slice) joins only
    the long organelle it overlaps most (or ones it holds half of) in the
    bridge merge, and a box that holds boxes of two organelles of its slice
    is left out (:func:`~.refine.bridge_pairs`,
    :func:`~.refine.drop_spanning`). A track that ends is joined to one that begins
    within the gap (below) where their masks overlap by ``continue_overlap`` of
    the smaller, skipping no more slices than either is long (0: off; see
    :mod:`.continuation`). An organelle that does not touch the first or last
    slice is kept when it spans at least ``min_slices`` slices and
    ``min_depth_nm`` in z (see :meth:`min_span`). Where a kept organelle skips slices, up to
    ``fill_gaps_nm`` of them in z get a box interpolated between its boxes
    on either side (see :meth:`gap_slices`). A kept organelle is then
    followed into the slices beyond its ends (and across longer gaps) where
    the detector missed it, while the mask found there overlaps the one
    beside it by ``follow_iou`` (0: off; see :func:`~.follow.follow`).
    Last, organelles whose masks touch on ``join_touching`` of the shorter
    one's slices are joined, pieces already joined counting as one: pieces of
    one organelle the detector boxed side by side (0: off; see
    :func:`~.refine.join_touching`). The same rule keeps
    the bridge merge from joining two neighbours through a box over one's
    edge (:func:`~.refine.neighbours`).
    """

    layers_to_scan: int = 50
    tolerance: float = 0.2
    min_tolerance_px: float = 2.5
    merge_bridges: bool = True
    merge_min_overlap: float = 0.3
    short_joins_one: bool = False
    separation: float = 0.25
    min_slices: int = 3
    min_depth_nm: float = 100.0
    confirm_boxes: int = 2
    fill_gaps_nm: float = 100.0
    follow_iou: float = 0.5
    join_touching: float = 0.5
    continue_overlap: float = 0.5
    points: str = "outline"
    outlier_k: int = 8
    outlier_std: float = 2.0

    def min_span(self, z_nm: float) -> int:
        """Fewest slices an organelle must span at slice thickness ``z_nm``.

        The organelles FAMOUS segments are at least ~100 nm across, so each
        spans at least ``min_depth_nm`` (100 nm) in z, while a detector's
        false positives flicker over a few slices whatever the slice
        thickness: at 10 nm slices 3 were not enough (on ten unseen phantoms
        most false objects spanned 3-5 slices, the thinnest real organelle
        19), at 40 nm 3 slices are already 120 nm. On real FIB-SEM (lucchi, 5
        nm slices) 100 nm rather than 60 dropped organelles of 12-19 slices,
        mostly pieces of large mitochondria the detector boxed in parts:
        object F1 0.758 -> 0.779 on average over four detectors, none lower
        (docs/results.md). The floor of
        3 slices is a count, not a depth, because flicker is counted in
        slices: on CDeep3M's 40 nm sections 2 slices let more of it through
        (object F1 0.571 against 0.576 and 0.592 against 0.628 for two
        detectors). Organelles cut by the stack's ends are exempt
        (:func:`~.refine.drop_small`).
        """
        depth = math.ceil(self.min_depth_nm / z_nm - 1e-9) if z_nm > 0 else 0
        return max(self.min_slices, depth)

    def gap_slices(self, z_nm: float) -> int:
        """Most slices in a row an organelle may skip and get filled in.

        Algorithm 4 links an organelle across slices where the detector
        missed it, but those slices keep no pixels of it, so the organelle
        comes out with a hole or cut in two. An organelle does not vanish for
        a few slices: on two of fifteen unseen phantoms such gaps (8 slices in
        one, 1-3 slices in the other) kept an organelle's 3-D IoU just under
        0.5.
        """
        return int(self.fill_gaps_nm / z_nm + 1e-9) if z_nm > 0 else 0


@dataclass(frozen=True)
class RunRequest:
    """Everything one run needs: input, box source, output and options.

    Parameters
    ----------
    stack : path or Stack
        The image stack (see :func:`~famous_addon.core.stack.open_stack`).
    classes : path or ClassConfig
        Class TOML, ``obj.names`` or preset name.
    out : path
        Run folder to create (or to resume).
    boxes, model : path
        Exactly one: a folder of per-slice YOLO txt files, or a detector model folder.
    backend : {"auto", "cpu", "cuda", "cuda_fp16"}
        DNN backend for ``model``.
    flip_views : {1, 2, 4}, optional
        Test-time mirrored views for ``model``; None: the model's own setting.
    zoom_pass : bool
        False turns off the ``model``'s enlarged pass for small objects
        (``DetectSettings.zoom_thresholds``), for about a quarter of the
        run time of a model that has one (on 2,048 px slices).
    voxel_size_nm : (z, y, x), optional
        Overrides the stack's metadata.
    channel : int, optional
        The channel of a multi-channel TIFF (hyperstack) to segment.
    labels : bool
        Also write ``labels.tif``.
    workers : int or "auto"
        Local processes for the per-slice stage; "auto" (``famous run``'s
        default): one per core, at most 4, where the stack is large enough
        to repay starting them (:func:`~.slices.auto_workers`).
    dask_scheduler : str, optional
        Address of a running ``dask.distributed`` scheduler for the per-slice stage.
    resume : bool
        Continue a run in ``out`` that was interrupted (cached slices are reused).
    annotations : path, optional
        A YOLO_mark folder of annotated slices (boxes only): each class's
        extraction recipe is then chosen on them (:mod:`.calibrate`) and the
        choice reported in run.json.
    settings : RunSettings
        Linking and point-cloud options.
    """

    stack: str | Path | Stack
    classes: str | Path | ClassConfig
    out: str | Path
    boxes: str | Path | None = None
    model: str | Path | None = None
    backend: str = "auto"
    flip_views: int | None = None
    zoom_pass: bool = True
    voxel_size_nm: tuple[float, float, float] | None = None
    channel: int | None = None
    labels: bool = False
    workers: int | str = 1
    dask_scheduler: str | None = None
    resume: bool = False
    annotations: str | Path | None = None
    settings: RunSettings = field(default_factory=RunSettings)

    def __post_init__(self):
        # checked here, before any slice is read, whichever front end built the request
        if (self.boxes is None) == (self.model is None):
            raise FamousError(
                "give exactly one source of boxes.",
                fix="use --boxes DIR (YOLO txt per slice) or --model MODEL_DIR (trained "
                "detector); in the panel: Boxes from.",
            )
        if self.workers != "auto" and (
            isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1
        ):
            raise FamousError(
                f"workers {self.workers!r}: the per-slice stage needs at least 1 process.",
                fix="give --workers 1 (this process) or more, or auto.",
            )
        if self.channel is not None and (isinstance(self.channel, bool) or self.channel < 0):
            raise FamousError(
                f"channel {self.channel!r} is not a channel number.", fix="channels count from 0."
            )

    @classmethod
    def from_args(cls, args, **overrides) -> RunRequest:
        """The request of parsed command-line arguments (``famous run``, ``run_famous.py``).

        Options a parser does not have keep their defaults; ``overrides`` win
        over both. ``voxel_size`` is the arguments' name for ``voxel_size_nm``.
        """
        names = {f.name for f in fields(cls)} - {"settings"}
        values = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
        if getattr(args, "voxel_size", None) is not None:
            values["voxel_size_nm"] = tuple(args.voxel_size)
        if hasattr(args, "layers_to_scan"):
            values["settings"] = run_settings(args)
        return cls(**{**values, **overrides})


def run_settings(args) -> RunSettings:
    """The linking settings of ``famous run``'s arguments, as a ``RunSettings``.

    The parser repeats ``RunSettings``' defaults in its options so that
    ``famous --help`` shows them without importing the pipeline; a test holds
    the two equal.
    """
    return RunSettings(
        layers_to_scan=args.layers_to_scan,
        tolerance=args.tolerance,
        min_tolerance_px=args.min_tolerance_px,
        merge_bridges=not args.no_merge,
        merge_min_overlap=args.merge_overlap,
        short_joins_one=args.short_joins_one,
        separation=args.separation,
        min_slices=args.min_slices,
        min_depth_nm=args.min_depth_nm,
        confirm_boxes=args.confirm_boxes,
        fill_gaps_nm=args.fill_gaps_nm,
        follow_iou=args.follow_iou,
        join_touching=args.join_touching,
        continue_overlap=args.continue_overlap,
    )
