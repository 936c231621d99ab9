"""YOLOv4 detection through OpenCV DNN on whole slices, or on large tiles of them.

:func:`load_detector` checks a model folder (:mod:`.darknet`) and reads its
settings (:mod:`.settings`); the :class:`Detector` it returns runs the network
on each slice whole where it fits ``largest_tile`` (the network is fully
convolutional), otherwise on overlapping tiles, and merges, thresholds and
suppresses the tiles' boxes over the whole slice (:mod:`.boxops`). The OpenCV network is
loaded on first use, so a detector is cheap to make and to send to workers.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import cv2
import numpy as np

from ..boxes import Box
from ..errors import FamousError
from .boxops import (
    above_threshold,
    apply_box_scale,
    fuse_views,
    iou_matrix,
    merge_cut_boxes,
    suppress,
)
from .darknet import (
    CFG_NAME,
    CLASSES_NAME,
    NAMES_NAME,
    THRESHOLDS_NAME,
    WEIGHTS_NAME,
    CfgInfo,
    check_model,
    read_names,
)
from .settings import FLIP_VIEWS, DetectSettings

BACKENDS = ("auto", "cpu", "cuda", "cuda_fp16")

# The enlarged pass looks only where the normal pass has a row of one of its
# classes scoring ZOOM_PROBE or more, with a box up to twice the pass's largest:
# in windows of ZOOM_WINDOW enlarged pixels around them, each such row at least
# ZOOM_MARGIN px inside its window, not on the whole enlarged slice. With a
# margin of 32 px instead of 64 the same lysosomes came out with boxes a pixel
# or two larger, enough to miss an 8-px box's IoU 0.5; at probe 0.1 or 0.3
# lysosome box recall fell on 1 and 5 of ten unseen phantoms. At 0.03 it is
# the same or higher on all ten, and on the 1,792 x 2,048 scale phantom the
# pass takes under half its time (docs/results.md, session 28). Windows of
# 192 px hold that margin with a third fewer pixels than 256-px ones (a mark's
# central zone is smaller, but marks come one or a few together); below 192 the
# network's cost a pixel rises faster than the pixels fall (session 29).
ZOOM_PROBE = 0.03
ZOOM_WINDOW = 192
ZOOM_MARGIN = 64


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length`` with >= ``overlap`` shared.

    The overlap is capped at half a tile: more only multiplies the tiles (an
    overlap as large as the tile would step one pixel at a time), while every
    object up to half a tile already lies whole in one of them.
    """
    return _spread(length, tile, tile - min(overlap, tile // 2))


def _spread(length: int, tile: int, step: int) -> list[int]:
    """Start offsets of ``tile``-px tiles spread evenly over ``length``, at most ``step`` apart."""
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / step) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def zoom_windows(points: np.ndarray, shape: tuple[int, int], win: int, margin: int) -> list:
    """Origins (x, y) of the windows around ``points`` (n, 2 as x, y) of a ``shape`` image.

    The windows are tiles of ``win`` px spread over the image at most
    ``win - 2 margin`` apart; each point takes the one whose centre is
    nearest, so it lies at least ``margin`` px inside it (or as far as the
    image border allows).
    """
    rows, cols = shape
    step = max(1, win - 2 * margin)
    ox = np.array(_spread(cols, win, step))
    oy = np.array(_spread(rows, win, step))
    ix = np.abs(points[:, 0, None] - (ox[None] + win / 2)).argmin(axis=1)
    iy = np.abs(points[:, 1, None] - (oy[None] + win / 2)).argmin(axis=1)
    return sorted({(int(ox[i]), int(oy[j])) for i, j in zip(ix, iy)}, key=lambda o: (o[1], o[0]))


def cuda_available() -> bool:
    """Whether the installed OpenCV was built with CUDA and sees a device."""
    try:
        return cv2.cuda.getCudaEnabledDeviceCount() > 0
    except cv2.error:
        return False


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

    def network(self, n: int = 1, size: tuple[int, int] | None = None):
        """The OpenCV network for batches of ``n`` tiles of ``size`` (h, w), loaded on first use.

        One network per batch shape: OpenCV sets a network up again whenever its
        input shape changes, and a slice's tiles come as full batches, a smaller
        remainder, the one-tile whole-slice pass and the enlarged pass's windows.
        """
        key = n if size is None else (n, *size)
        if key not in self._nets:
            self._nets[key] = self._load()
        return self._nets[key]

    def _load(self):
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
            blob = np.ascontiguousarray(tiles.transpose(0, 3, 1, 2))
        else:
            blob = tiles[:, None]
            if self.info.channels == 3:
                blob = np.repeat(blob, 3, axis=1)
        n = len(tiles)
        net = self.network(n, blob.shape[2:])
        if self.backend.startswith("cuda"):
            net.setInput(blob.astype(np.float32) * np.float32(1 / 255))
        else:
            # OpenCV scales a uint8 blob itself, to the same floats: a slice's float
            # blob, built here and copied by setInput, took a tenth of its forward
            net.setInput(np.ascontiguousarray(blob), "", 1 / 255)
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
        probe = self._probe_bars()
        if st.flip_views == 1:
            xyxy, scores, classes, marks = self._detect_view(image, thr, probe=probe)
        else:
            rows, cols = image.shape[:2]
            views, marked = [], []
            for flip_x, flip_y in FLIP_VIEWS[st.flip_views]:
                view = np.ascontiguousarray(image[:: -1 if flip_y else 1, :: -1 if flip_x else 1])
                # a box a view misses counts 0 in the fused mean: half the threshold
                # keeps the boxes that can still reach it with another view's help
                b, sc, c, mk = self._detect_view(view, thr * 0.5, probe=probe)
                if flip_x:
                    b[:, [0, 2]] = cols - b[:, [2, 0]]
                    mk[:, 0] = cols - mk[:, 0]
                if flip_y:
                    b[:, [1, 3]] = rows - b[:, [3, 1]]
                    mk[:, 1] = rows - mk[:, 1]
                views.append((b, sc, c))
                marked.append(mk)
            marks = np.concatenate(marked)
            xyxy, scores, classes = fuse_views(views)
            # no second suppression: each view was suppressed already, and on
            # unseen phantoms one more over the fused boxes cost 0.015 mAP
            ok = above_threshold(xyxy, scores, classes, thr, image.shape[:2], st.edge_score_factor)
            xyxy, scores, classes = xyxy[ok], scores[ok], classes[ok]
        if st.zoom_thresholds:
            xyxy, scores, classes = self._add_zoomed(image, xyxy, scores, classes, marks)
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

    def _probe_bars(self) -> np.ndarray | None:
        """Per-class score of the normal pass's rows that mark where the enlarged pass
        looks (``ZOOM_PROBE`` for its classes, infinite for the others); None without it."""
        if not self.settings.zoom_thresholds:
            return None
        bars = np.full(len(self.names), np.inf, np.float32)
        bars[list(self.settings.zoom_thresholds)] = ZOOM_PROBE
        return bars

    def _marks(self, out, scale, origins, bars, shape) -> np.ndarray:
        """Centres (n, 2 as x, y; slice pixels) of the rows of a batch of tiles that
        reach ``bars`` for a class, with a box up to twice ``zoom_max_size``."""
        tile, row = np.nonzero(out[..., 4] >= bars.min() - 1e-3)
        r = out[tile, row]
        sx, sy = scale
        ok = (r[:, 5:] >= bars).any(axis=1)
        ok &= np.maximum(r[:, 2] * sx, r[:, 3] * sy) <= 2 * self.settings.zoom_max_size
        r, tile = r[ok], tile[ok]
        ox, oy = origins[tile].astype(np.float64).T
        x = np.clip(r[:, 0] * sx + ox, 0, shape[1] - 1)
        y = np.clip(r[:, 1] * sy + oy, 0, shape[0] - 1)
        return np.stack([x, y], axis=1)

    def _add_zoomed(self, image, xyxy, scores, classes, marks):
        """The boxes plus those of the zoom pass's classes found on the enlarged slice.

        The enlarged slice is looked at in windows around ``marks`` only
        (:meth:`_marks`: where the normal pass saw something small of those
        classes, however weakly, outside its own boxes), or whole where the
        windows would cost as much or the normal pass saw the slice padded.
        An enlarged box is added only when it is small (``zoom_max_size``) and
        neither it nor any box of the normal pass lies half or more inside the
        other: it adds small objects, it never replaces or duplicates one.
        """
        st = self.settings
        f = st.zoom_factor
        if len(marks) and len(xyxy):
            # a box the pass could add there would lie inside a box of the normal pass
            m = st.zoom_max_size / 2
            x, y = marks[:, :1], marks[:, 1:]
            held = (x >= xyxy[:, 0] + m) & (x <= xyxy[:, 2] - m)
            held &= (y >= xyxy[:, 1] + m) & (y <= xyxy[:, 3] - m)
            marks = marks[~held.any(axis=1)]
        thr = np.full(len(self.names), np.inf, np.float32)
        thr[list(st.zoom_thresholds)] = list(st.zoom_thresholds.values())
        big = cv2.resize(image, None, fx=f, fy=f, interpolation=cv2.INTER_LINEAR)
        rows, cols = image.shape[:2]
        # A slice under the network's input size was padded with grey for the normal
        # pass, which then marks nothing at its border (a lysosome cut by the corner
        # of tests/test_same_outputs.py's 384 px phantom is found enlarged): such a
        # slice is looked at whole, as is one smaller than a window once enlarged.
        origins = None
        seen_whole = rows >= self.info.height and cols >= self.info.width
        if seen_whole and min(big.shape[:2]) >= ZOOM_WINDOW:
            origins = zoom_windows(marks * f, big.shape[:2], ZOOM_WINDOW, ZOOM_MARGIN)
            if len(origins) * ZOOM_WINDOW**2 >= big.shape[0] * big.shape[1]:
                origins = None  # the windows would cost as much as the whole
        # edge factor 1: the normal pass handles the slice border with its lowered bar
        if origins is None:
            zb, zs, zc, _ = self._detect_view(
                big, thr, st.zoom_overlap, edge_factor=1.0, whole=False
            )
        elif origins:
            parts, _ = self._tile_pass(
                big, origins, (ZOOM_WINDOW,) * 2, np.isfinite(thr), thr, big.shape[:2], 1.0
            )
            # a box cut by a window's border is part of something larger than it
            whole = [~p[4].any(axis=1) for p in parts]
            parts = [tuple(a[w] for a in p) for p, w in zip(parts, whole)]
            zb, zs, zc = self._merge_and_suppress(parts, 1, big.shape[:2], thr, 1.0)
        else:
            zb, zs, zc = np.zeros((0, 4)), np.zeros(0, np.float32), np.zeros(0, int)
        zb = zb / f
        small = np.maximum(zb[:, 2] - zb[:, 0], zb[:, 3] - zb[:, 1]) <= st.zoom_max_size
        zb, zs, zc = zb[small], zs[small], zc[small]
        if len(xyxy) and len(zb):
            zb, zs, zc = (a[iou_matrix(zb, xyxy)[1].max(axis=1) < 0.5] for a in (zb, zs, zc))
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
        probe: np.ndarray | None = None,
    ):
        """xyxy boxes, scores and classes of one slice as it is, above ``thr`` per class,
        and the centres (n, 2) of the rows that reach ``probe`` (see :meth:`_marks`).

        ``overlap`` and ``edge_factor`` default to the settings' tile overlap
        and edge score factor; ``whole`` False skips the whole-slice pass.
        """
        rows, cols = image.shape[:2]
        st = self.settings
        overlap = st.tile_overlap if overlap is None else overlap
        tw, th = self.tile_shape(rows, cols, overlap)
        edge_factor = st.edge_score_factor if edge_factor is None else edge_factor
        whole_cls = np.zeros(len(self.names), bool)
        if whole:
            whole_cls[st.whole_slice_classes] = True
        padded, pad_value = self._padded(image, (tw, th))
        prow, pcol = padded.shape[:2]
        origins = [
            (x, y) for y in tile_origins(prow, th, overlap) for x in tile_origins(pcol, tw, overlap)
        ]
        parts, marks = self._tile_pass(
            padded, origins, (tw, th), ~whole_cls, thr, (rows, cols), edge_factor, probe
        )
        if whole_cls.any():
            parts.append(self._whole_slice_pass(image, pad_value, whole_cls, thr, edge_factor))
        boxes = self._merge_and_suppress(parts, len(origins), (rows, cols), thr, edge_factor)
        return (*boxes, marks)

    def tile_shape(self, rows: int, cols: int, overlap: int = 0) -> tuple[int, int]:
        """Width and height of the tiles a ``rows`` x ``cols`` slice is cut into.

        A slice up to ``settings.largest_tile`` is one tile, its sides
        rounded up to multiples of 32 (the network's stride). A longer side
        takes as few tiles as that size allows, each cut as small as they can
        be while still covering it with ``overlap``: an enlarged slice of
        3,072 px is two 1,600-px tiles, not two of 2,048. Never below the
        model's input size.
        """
        largest = self.settings.largest_tile

        def side(length: int, trained: int) -> int:
            top = max(largest, trained)
            if length > top:
                step = top - min(overlap, top // 2)
                n = math.ceil((length - top) / step) + 1
                length = math.ceil((length + (n - 1) * min(overlap, top // 2)) / n)
            return min(max(-(-length // 32) * 32, trained), top)

        return side(cols, self.info.width), side(rows, self.info.height)

    def _padded(self, image: np.ndarray, tile: tuple[int, int]) -> tuple[np.ndarray, int]:
        """The slice padded to a ``tile`` (width, height) or more with its median grey; the grey."""
        rows, cols = image.shape[:2]
        tw, th = tile
        middle = image[..., 1] if image.ndim == 3 else image
        pad_value = int(np.median(middle[:: max(1, rows // 64), :: max(1, cols // 64)]))
        if rows < th or cols < tw:
            padded = np.full((max(rows, th), max(cols, tw), *image.shape[2:]), pad_value, np.uint8)
            padded[:rows, :cols] = image
        else:
            padded = image
        return padded, pad_value

    def _tile_pass(
        self, padded, origins, tile, keep_cls, thr, shape, edge_factor, probe=None
    ) -> tuple[list[tuple], np.ndarray]:
        """Boxes of the ``tile`` (width, height) tiles at ``origins`` of the padded slice, batched.

        Returns one ``(xyxy, scores, classes, tile index, cut)`` per batch,
        ``cut`` (n, 4) saying which of the box's sides lies on a border of its
        tile inside the slice (see :func:`~.boxops.merge_cut_boxes`); and the
        centres of the rows that reach ``probe`` (:meth:`_marks`; none without).
        """
        tw, th = tile
        prow, pcol = padded.shape[:2]
        batch_size = self.settings.batch
        margin = 2.0
        parts, marks = [], [np.zeros((0, 2))]
        for start in range(0, len(origins), batch_size):
            chunk = np.array(origins[start : start + batch_size])
            batch = np.stack([padded[y : y + th, x : x + tw] for x, y in chunk])
            out = self.forward(batch)
            b, s, c, t = self._candidates(out, (tw, th), chunk, keep_cls, thr, shape, edge_factor)
            if probe is not None:
                marks.append(self._marks(out, (tw, th), chunk, probe, shape))
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
            parts.append((b, s, c, start + t, cut))
        return parts, np.concatenate(marks)

    def _whole_slice_pass(self, image, pad_value, whole_cls, thr, edge_factor) -> tuple:
        """Boxes of the ``whole_cls`` classes on the whole slice, shrunk to fit one tile.

        The aspect ratio is kept. Returns ``(xyxy, scores, classes, tile index
        -1, cut all False)`` as :meth:`_tile_pass` does for one batch.
        """
        rows, cols = image.shape[:2]
        tw, th = self.info.width, self.info.height
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
        return b, s, c, np.full(len(b), -1), np.zeros((len(b), 4), bool)

    def _merge_and_suppress(self, parts, n_tiles, shape, thr, edge_factor):
        """One slice's boxes from its passes' ``parts``: merged, scaled, thresholded, suppressed.

        Boxes cut by a tile border are joined with the other parts of their
        object when there are several tiles; a cut box left alone is a piece,
        which containment suppression always drops inside a larger box.
        """
        st = self.settings
        rows, cols = shape
        xyxy = np.concatenate([p[0] for p in parts]).astype(np.float64)
        scores = np.concatenate([p[1] for p in parts])
        classes = np.concatenate([p[2] for p in parts])
        if len(xyxy) == 0:
            return xyxy.reshape(0, 4), scores, classes
        cuts = np.concatenate([p[4] for p in parts])
        pieces = cuts.any(axis=1)
        if n_tiles > 1:
            xyxy, group = merge_cut_boxes(
                xyxy, classes, np.concatenate([p[3] for p in parts]), cuts
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
    names = _model_names(model_dir, info, classes)
    settings = _model_settings(model_dir, info, names)
    used, note = choose_backend(backend)
    if used != backend and backend != "auto":
        warnings.warn(note, stacklevel=2)
    return Detector(model_dir, info, names, settings, used, note)


def _model_names(model_dir: Path, info: CfgInfo, classes) -> list[str]:
    """The model's class names, checked against its cfg and the run's class config."""
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
    return names


def _model_settings(model_dir: Path, info: CfgInfo, names: list[str]) -> DetectSettings:
    """The model's ``thresholds.json`` (defaults when it has none), checked against its cfg."""
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
    return settings
