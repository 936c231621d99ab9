"""Train a YOLOv4-tiny detector on YOLO_mark boxes, without darknet (needs the ``train`` extra).

The network is built in PyTorch from the same Darknet ``.cfg`` it is exported
with, so the exported ``.weights`` run unchanged in darknet and in OpenCV's
Darknet importer (:mod:`famous_addon.core.detect`). Training is meant for the
few boxed slices of the FAMOUS workflow (the paper boxes ~1% of a stack):

* random crops from whole slices that keep objects cut by the crop border
  (their boxes clipped), so objects cut by a slice or tile edge are learnt;
* EM-suited augmentation: flips, 90-degree rotations, scale jitter,
  brightness/contrast/gamma, Gaussian noise and blur;
* anchors from k-means (IoU distance) on the user's boxes;
* a held-out split of annotated slices (when there are enough), mAP@0.5 and
  per-class precision/recall measured through the exported model in OpenCV,
  and per-class score thresholds chosen there;
* an exponential moving average of the weights over the last tenth of the
  steps (at most 1000), which is what is exported: short runs on few slices
  end noisy, and the average is steadier than the last step;
* a checkpoint after every epoch, so a stopped training resumes.

Torch is imported inside the functions, so this module imports without it.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .boxes import Box
from .detect import (
    CFG_NAME,
    CLASSES_NAME,
    NAMES_NAME,
    REPORT_NAME,
    THRESHOLDS_NAME,
    WEIGHTS_NAME,
    DetectSettings,
    cfg_info,
    evaluate,
    load_detector,
    parse_cfg_text,
    small_boxes,
    yolo_tiny_cfg,
)
from .errors import FamousError
from .progress import ProgressFn, silent, sub

CHECKPOINT_NAME = "checkpoint.pt"


def require_torch():
    """Import torch, or explain how to get it."""
    try:
        import torch
    except ImportError:
        raise FamousError(
            "training needs PyTorch, which is not installed.",
            fix="pip install 'famous-blender[train]' (CPU torch is enough).",
        ) from None
    return torch


# ------------------------------------------------------------------ network


def _darknet_order(block) -> list:
    """A conv block's tensors in the order Darknet stores them in ``.weights``:
    batch-norm beta (or the conv bias), then BN scale, running mean and
    variance, then the kernel."""
    conv = block[0]
    if len(block) > 1 and block[1].__class__.__name__ == "BatchNorm2d":
        bn = block[1]
        return [bn.bias, bn.weight, bn.running_mean, bn.running_var, conv.weight]
    return [conv.bias, conv.weight]


class DarknetTorch:
    """A Darknet cfg as PyTorch layers (convolutional, route, shortcut, maxpool, upsample, yolo).

    Not an ``nn.Module`` subclass, so that this module imports without torch;
    the layers live in :attr:`layers` (an ``nn.ModuleList``, one entry per
    cfg section, identity for layers without parameters).

    Parameters
    ----------
    cfg_text : str
        Darknet cfg.
    """

    def __init__(self, cfg_text: str):
        torch = require_torch()
        nn = torch.nn
        self.cfg_text = cfg_text
        self.sections = parse_cfg_text(cfg_text)
        self.info = cfg_info(self.sections)
        layers = []
        c = self.info.channels
        channels = []
        for i, (name, o) in enumerate(self.sections[1:]):
            if name == "convolutional":
                n, k, s = int(o["filters"]), int(o.get("size", 1)), int(o.get("stride", 1))
                bn = int(o.get("batch_normalize", 0)) == 1
                pad = k // 2 if int(o.get("pad", 0)) else int(o.get("padding", 0))
                mods = [nn.Conv2d(c, n, k, s, pad, bias=not bn)]
                if bn:
                    # OpenCV's Darknet importer normalises with eps 1e-6
                    mods.append(nn.BatchNorm2d(n, eps=1e-6, momentum=0.03))
                act = o.get("activation", "linear")
                if act == "leaky":
                    mods.append(nn.LeakyReLU(0.1))
                elif act == "mish":
                    mods.append(nn.Mish())
                elif act != "linear":
                    raise FamousError(f"layer {i}: activation {act!r} is not supported.")
                layers.append(nn.Sequential(*mods))
                c = n
            else:
                if name == "route":
                    idx = [j if j >= 0 else i + j for j in (int(v) for v in o["layers"].split(","))]
                    c = sum(channels[j] for j in idx) // int(o.get("groups", 1))
                layers.append(nn.Identity())
            channels.append(c)
        self.layers = nn.ModuleList(layers)
        self.heads = [
            {
                "anchors": torch.tensor(y["anchors"], dtype=torch.float32),
                "scale_x_y": y["scale_x_y"],
                "mask": y["mask"],
            }
            for y in self.info.yolo_layers
        ]
        self._init_head_biases()

    def _init_head_biases(self):
        """Start with low objectness and class scores, so negatives do not swamp early steps."""
        torch = require_torch()
        n_cls = self.info.n_classes
        for y in self.info.yolo_layers:
            conv = self.layers[y["layer"] - 1][0]
            with torch.no_grad():
                b = conv.bias.view(len(y["mask"]), 5 + n_cls)
                b[:, 4] = -4.5
                b[:, 5:] = math.log(0.6 / max(n_cls - 0.99, 1))

    def __call__(self, x):
        """Raw outputs of the layers feeding each ``[yolo]`` (N, A*(5+C), H, W)."""
        torch = require_torch()
        F = torch.nn.functional
        outs, heads = [], []
        for i, (name, o) in enumerate(self.sections[1:]):
            if name == "convolutional":
                x = self.layers[i](x)
            elif name == "route":
                idx = [j if j >= 0 else i + j for j in (int(v) for v in o["layers"].split(","))]
                groups = int(o.get("groups", 1))
                if groups > 1:
                    x = torch.chunk(outs[idx[0]], groups, dim=1)[int(o.get("group_id", 0))]
                else:
                    x = torch.cat([outs[j] for j in idx], 1) if len(idx) > 1 else outs[idx[0]]
            elif name == "shortcut":
                j = int(o["from"])
                x = x + outs[j if j >= 0 else i + j]
            elif name == "maxpool":
                size, stride = int(o.get("size", 2)), int(o.get("stride", 2))
                if stride == size:
                    x = F.max_pool2d(x, size, stride)
                else:
                    p = size - 1
                    x = F.max_pool2d(
                        F.pad(x, (p // 2, p - p // 2, p // 2, p - p // 2), value=-1e9), size, stride
                    )
            elif name == "upsample":
                x = F.interpolate(x, scale_factor=int(o.get("stride", 2)), mode="nearest")
            elif name == "yolo":
                heads.append(x)
            outs.append(x)
        return heads

    def parameters(self):
        return self.layers.parameters()

    def train(self, mode: bool = True):
        self.layers.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def convs(self):
        """The convolutional blocks in cfg order."""
        return [
            m for (name, _), m in zip(self.sections[1:], self.layers) if name == "convolutional"
        ]

    def save_weights(self, path: Path, seen: int = 0) -> None:
        """Write Darknet ``.weights``: 20-byte header, then per conv layer
        biases (batch-norm beta), [BN scale, running mean, running variance], kernel."""
        from .fileio import atomic_write_bytes

        chunks = [np.array([0, 2, 5], "<i4").tobytes(), np.array([seen], "<i8").tobytes()]
        for block in self.convs():
            for t in _darknet_order(block):
                chunks.append(t.detach().cpu().numpy().astype("<f4").ravel().tobytes())
        atomic_write_bytes(Path(path), b"".join(chunks))

    def load_weights(self, path: Path) -> None:
        """Read Darknet ``.weights`` written for this cfg (sizes checked first)."""
        torch = require_torch()
        from .detect import weights_header_size

        header = weights_header_size(path)
        data = np.fromfile(path, "<f4", offset=header)
        if data.size != self.info.n_params:
            raise FamousError(
                f"holds {data.size} parameters, the cfg needs {self.info.n_params}.", path
            )
        pos = 0
        with torch.no_grad():
            for block in self.convs():
                for t in _darknet_order(block):
                    n = t.numel()
                    t.copy_(torch.from_numpy(data[pos : pos + n].copy()).view_as(t))
                    pos += n


def with_neighbour_channels(net: DarknetTorch) -> DarknetTorch:
    """A copy of a one-slice network that takes slices k-1, k, k+1 as three channels.

    The first convolution's kernel moves to the middle channel and the
    neighbours' kernels start at zero, so the new network begins exactly
    where the old one was and training only has to learn what the
    neighbouring slices add.
    """
    import re

    torch = require_torch()
    text, n = re.subn(r"(?m)^(\s*channels\s*=\s*)1\s*$", r"\g<1>3", net.cfg_text, count=1)
    if n != 1:
        raise FamousError("the model's cfg does not say channels=1; it cannot be widened.")
    wide = DarknetTorch(text)
    state = net.layers.state_dict()
    first = next(k for k in state if k.endswith("weight"))
    kernel = state[first]
    state[first] = torch.zeros(kernel.shape[0], 3, *kernel.shape[2:], dtype=kernel.dtype)
    state[first][:, 1:2] = kernel
    wide.layers.load_state_dict(state)
    return wide


def decode_head(raw, head: dict, n_classes: int, input_hw: tuple[int, int]):
    """Raw head output -> (N, A, H, W, 5+C): box centre/size in input pixels, then logits.

    The same decoding as darknet and OpenCV: ``x = (col + sigmoid(tx) * s - (s - 1) / 2) * stride``,
    ``w = anchor_w * exp(tw)``.
    """
    torch = require_torch()
    n, _, h, w = raw.shape
    a = len(head["mask"])
    p = raw.view(n, a, 5 + n_classes, h, w).permute(0, 1, 3, 4, 2)
    s = head["scale_x_y"]
    stride_y, stride_x = input_hw[0] / h, input_hw[1] / w
    dev = raw.device
    gy, gx = torch.meshgrid(torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij")
    xy = torch.sigmoid(p[..., :2]) * s - (s - 1) / 2
    cx = (xy[..., 0] + gx) * stride_x
    cy = (xy[..., 1] + gy) * stride_y
    anchors = head["anchors"].to(dev).view(1, a, 1, 1, 2)
    wh = torch.exp(p[..., 2:4].clamp(max=8.0)) * anchors
    return torch.cat([cx[..., None], cy[..., None], wh, p[..., 4:]], dim=-1)


# -------------------------------------------------------------------- loss


def _box_iou_xywh(a, b, giou: bool = False):
    """IoU (or GIoU) of matching rows of two (n, 4) cx cy w h tensors."""
    torch = require_torch()
    ax0, ay0, ax1, ay1 = (
        a[:, 0] - a[:, 2] / 2,
        a[:, 1] - a[:, 3] / 2,
        a[:, 0] + a[:, 2] / 2,
        a[:, 1] + a[:, 3] / 2,
    )
    bx0, by0, bx1, by1 = (
        b[:, 0] - b[:, 2] / 2,
        b[:, 1] - b[:, 3] / 2,
        b[:, 0] + b[:, 2] / 2,
        b[:, 1] + b[:, 3] / 2,
    )
    iw = (torch.min(ax1, bx1) - torch.max(ax0, bx0)).clamp(min=0)
    ih = (torch.min(ay1, by1) - torch.max(ay0, by0)).clamp(min=0)
    inter = iw * ih
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter + 1e-9
    iou = inter / union
    if not giou:
        return iou
    cw = torch.max(ax1, bx1) - torch.min(ax0, bx0)
    ch = torch.max(ay1, by1) - torch.min(ay0, by0)
    hull = cw * ch + 1e-9
    return iou - (hull - union) / hull


def yolo_loss(
    net: DarknetTorch, raws, targets, input_hw, ignore_iou: float = 0.7, match_iou: float = 0.25
):
    """YOLO loss for one batch.

    Parameters
    ----------
    raws : list of tensors
        Raw head outputs.
    targets : tensor (M, 6)
        image index, class, cx, cy, w, h (input pixels).

    Each truth box is assigned, in the grid cell holding its centre, to its
    best-fitting anchor and to every other anchor whose shape IoU exceeds
    ``match_iou`` (as darknet's ``iou_thresh``). Loss: 1 - GIoU for the boxes,
    binary cross-entropy for objectness (predictions overlapping a truth box
    by more than ``ignore_iou`` are not pushed down) and for the classes.

    Returns
    -------
    total, parts : tensor, dict of floats
    """
    torch = require_torch()
    F = torch.nn.functional
    n_cls = net.info.n_classes
    n_img = raws[0].shape[0]
    dev = raws[0].device
    targets = targets.to(dev)
    all_anchors = torch.cat([h["anchors"] for h in net.heads]).to(dev)
    mask_ids = [m for h in net.heads for m in h["mask"]]
    anchor_global = torch.tensor(mask_ids)
    if len(targets):
        tw, th = targets[:, 4:5], targets[:, 5:6]
        aw, ah = all_anchors[:, 0][None], all_anchors[:, 1][None]
        inter = torch.min(tw, aw) * torch.min(th, ah)
        shape_iou = inter / (tw * th + aw * ah - inter)
        best = shape_iou.argmax(1)
        positive = shape_iou > match_iou
        positive[torch.arange(len(targets), device=dev), best] = True
    loss_box = torch.zeros((), device=dev)
    loss_obj = torch.zeros((), device=dev)
    loss_cls = torch.zeros((), device=dev)
    n_pos = 0
    offset = 0
    for raw, head in zip(raws, net.heads):
        pred = decode_head(raw, head, n_cls, input_hw)
        n, a, h, w, _ = pred.shape
        obj_target = torch.zeros(n, a, h, w, device=dev)
        obj_weight = torch.ones(n, a, h, w, device=dev)
        if len(targets):
            with torch.no_grad():
                # predictions already covering a truth box are not negatives
                boxes = pred[..., :4].detach()
                for b in range(n):
                    tb = targets[targets[:, 0] == b][:, 2:6]
                    if len(tb) == 0:
                        continue
                    pb = boxes[b].reshape(-1, 1, 4).expand(-1, len(tb), 4).reshape(-1, 4)
                    ious = _box_iou_xywh(pb, tb.repeat(a * h * w, 1)).view(-1, len(tb))
                    obj_weight[b].view(-1)[ious.max(1).values > ignore_iou] = 0
            stride_x, stride_y = input_hw[1] / w, input_hw[0] / h
            # with scale_x_y >= 2 a cell reaches half a cell beyond its borders, so the
            # two neighbouring cells nearest the centre learn the box too (more positives,
            # faster learning from few slices)
            reach = head["scale_x_y"] >= 2.0
            for local in range(a):
                g = int(anchor_global[offset + local])
                sel = positive[:, g]
                if not sel.any():
                    continue
                t0 = targets[sel]
                fx, fy = t0[:, 2] / stride_x, t0[:, 3] / stride_y
                cells = [(t0, fx.long(), fy.long())]
                if reach:
                    for dx, dy, near in (
                        (-1, 0, fx % 1 < 0.5),
                        (1, 0, fx % 1 >= 0.5),
                        (0, -1, fy % 1 < 0.5),
                        (0, 1, fy % 1 >= 0.5),
                    ):
                        ci, cj = fx.long() + dx, fy.long() + dy
                        ok = near & (ci >= 0) & (ci < w) & (cj >= 0) & (cj < h)
                        cells.append((t0[ok], ci[ok], cj[ok]))
                for t, gi, gj in cells:
                    if not len(t):
                        continue
                    bi = t[:, 0].long()
                    gi, gj = gi.clamp(0, w - 1), gj.clamp(0, h - 1)
                    p = pred[bi, local, gj, gi]
                    giou = _box_iou_xywh(p[:, :4], t[:, 2:6], giou=True)
                    loss_box = loss_box + (1 - giou).sum()
                    onehot = F.one_hot(t[:, 1].long(), n_cls).float()
                    loss_cls = loss_cls + F.binary_cross_entropy_with_logits(
                        p[:, 5:], onehot, reduction="sum"
                    )
                    obj_target[bi, local, gj, gi] = 1.0
                    obj_weight[bi, local, gj, gi] = 1.0
                    n_pos += len(t)
        loss_obj = (
            loss_obj
            + (
                F.binary_cross_entropy_with_logits(pred[..., 4], obj_target, reduction="none")
                * obj_weight
            ).sum()
        )
        offset += a
    total = (3.0 * loss_box + loss_obj + loss_cls) / n_img
    parts = {
        "box": loss_box.item() / n_img,
        "obj": loss_obj.item() / n_img,
        "cls": loss_cls.item() / n_img,
        "positives": n_pos,
    }
    return total, parts


# -------------------------------------------------------------------- data


def kmeans_anchors(
    wh: np.ndarray, k: int, seed: int = 0, iters: int = 100
) -> list[tuple[float, float]]:
    """``k`` anchors (w, h) from box sizes by k-means with 1 - IoU distance, smallest first.

    With fewer distinct boxes than ``k``, the sizes are spread by scaling the
    available ones, so every head still gets anchors.
    """
    wh = np.asarray(wh, np.float64).reshape(-1, 2)
    if len(wh) == 0:
        raise FamousError("no boxes to choose anchors from.")
    rng = np.random.default_rng(seed)
    if len(np.unique(wh, axis=0)) < k:
        scales = np.geomspace(0.5, 2.0, k)
        base = np.exp(np.log(wh).mean(0))
        centers = base[None] * scales[:, None]
    else:
        centers = wh[rng.choice(len(wh), k, replace=False)]
        for _ in range(iters):
            inter = np.minimum(wh[:, None, 0], centers[None, :, 0]) * np.minimum(
                wh[:, None, 1], centers[None, :, 1]
            )
            iou = inter / (wh[:, None].prod(-1) + centers[None].prod(-1) - inter)
            assign = iou.argmax(1)
            new = np.array(
                [
                    np.median(wh[assign == j], 0) if (assign == j).any() else centers[j]
                    for j in range(k)
                ]
            )
            if np.allclose(new, centers):
                break
            centers = new
    order = np.argsort(centers.prod(1))
    return [(float(max(2.0, w)), float(max(2.0, h))) for w, h in centers[order]]


@dataclass
class AugmentConfig:
    """Random crop and augmentation ranges (see :class:`CropSampler`)."""

    scale: tuple[float, float] = (0.5, 1.5)
    contrast: tuple[float, float] = (0.7, 1.3)
    brightness: float = 0.12
    gamma: tuple[float, float] = (0.7, 1.4)
    noise: float = 0.04
    blur_p: float = 0.2
    min_box_px: float = 3.0
    small_focus: float = 0.0
    large_focus: float = 0.0


class CropSampler:
    """Random augmented crops from whole annotated slices.

    A crop keeps every object it cuts, with the box clipped to the crop, so
    the network learns objects cut by a slice or tile border.

    Parameters
    ----------
    images : list of uint8 arrays
        2-D slices, or (Y, X, 3) slices between their neighbours.
    boxes : list of (n, 5) arrays
        class, x0, y0, x1, y1 in image pixels.
    size : int
        Crop (training input) size.
    aug : AugmentConfig
        With ``small_focus`` p > 0, a share p of the crops is centred (within
        its middle half, at zoom >= 1) on a random small box
        (:func:`~.detect.small_boxes`): random crops seldom hold the caps of
        round organelles, so a detector learns them least. With
        ``large_focus`` p > 0, a share p of the other crops holds the whole of a
        random large box (longer side over half the crop), zoomed out as far
        as needed: a random crop almost always cuts such a box, so a detector
        trained on small crops learns large organelles only in pieces.

    Every draw takes its own random generator, so batches can be made in
    parallel threads and still be the same for the same seed.
    """

    def __init__(self, images, boxes, size: int, aug: AugmentConfig | None = None):
        self.images = images
        self.boxes = boxes
        self.size = size
        self.aug = aug or AugmentConfig()
        area = np.array([im.size for im in images], np.float64)
        self.p = area / area.sum()
        self.fill = [float(np.median(im)) for im in images]
        # (image, box) pairs of the small boxes, which small_focus centres crops on
        pairs = [(i, j) for i, b in enumerate(boxes) for j in range(len(b))]
        every = np.concatenate(boxes) if pairs else np.zeros((0, 5))
        area = (every[:, 3] - every[:, 1]) * (every[:, 4] - every[:, 2])
        self.small = [pair for pair, s in zip(pairs, small_boxes(every[:, 0], area)) if s]
        longer = np.maximum(every[:, 3] - every[:, 1], every[:, 4] - every[:, 2])
        self.large = [pair for pair, n in zip(pairs, longer) if n > size / 2]

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One crop (size x size, x 3 with neighbours; float32 in [0, 1]) and its boxes.

        Boxes are (n, 5): class, cx, cy, w, h.
        """
        a, size = self.aug, self.size
        i = int(rng.choice(len(self.images), p=self.p))
        img, bx = self.images[i], self.boxes[i]
        rows, cols = img.shape[:2]
        zoom = float(np.exp(rng.uniform(np.log(a.scale[0]), np.log(a.scale[1]))))
        src = size / zoom
        x0 = rng.uniform(0, max(cols - src, 0)) if cols > src else -(src - cols) * rng.uniform()
        y0 = rng.uniform(0, max(rows - src, 0)) if rows > src else -(src - rows) * rng.uniform()
        if self.small and a.small_focus and rng.random() < a.small_focus:
            i, j = self.small[int(rng.integers(len(self.small)))]
            img, bx = self.images[i], self.boxes[i]
            cx, cy = (bx[j, 1] + bx[j, 3]) / 2, (bx[j, 2] + bx[j, 4]) / 2
            # the box anywhere in the middle half of the crop, at zoom >= 1 so it stays visible
            zoom = max(zoom, 1.0)
            src = size / zoom
            x0 = cx - src * rng.uniform(0.25, 0.75)
            y0 = cy - src * rng.uniform(0.25, 0.75)
        elif self.large and a.large_focus and rng.random() < a.large_focus:
            i, j = self.large[int(rng.integers(len(self.large)))]
            img, bx = self.images[i], self.boxes[i]
            bx0, by0, bx1, by1 = bx[j, 1:5]
            # zoomed out until the box fills at most 90 % of the crop, anywhere inside it
            zoom = min(zoom, 0.9 * size / max(bx1 - bx0, by1 - by0))
            src = size / zoom
            x0 = rng.uniform(bx1 - src, bx0)
            y0 = rng.uniform(by1 - src, by0)
        m = np.array([[zoom, 0, -x0 * zoom], [0, zoom, -y0 * zoom]], np.float32)
        interp = cv2.INTER_AREA if zoom < 1 else cv2.INTER_LINEAR
        crop = cv2.warpAffine(
            img,
            m,
            (size, size),
            flags=interp,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=(self.fill[i],) * 3,
        )
        b = bx.astype(np.float64).copy()
        if len(b):
            b[:, [1, 3]] = np.clip((b[:, [1, 3]] - x0) * zoom, 0, size)
            b[:, [2, 4]] = np.clip((b[:, [2, 4]] - y0) * zoom, 0, size)
            keep = (b[:, 3] - b[:, 1] >= a.min_box_px) & (b[:, 4] - b[:, 2] >= a.min_box_px)
            b = b[keep]
        k = int(rng.integers(4))
        crop = np.rot90(crop, k)
        for _ in range(k):  # rot90 turns counter-clockwise: (x, y) -> (y, size - x)
            b = b[:, [0, 2, 1, 4, 3]].copy() if len(b) else b
            if len(b):
                b[:, [2, 4]] = size - b[:, [4, 2]]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
            if len(b):
                b[:, [1, 3]] = size - b[:, [3, 1]]
        x = np.ascontiguousarray(crop, np.float32) / 255.0
        if rng.random() < a.blur_p:
            x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.5, 1.5))
        x = x ** rng.uniform(*a.gamma)
        x = (x - 0.5) * rng.uniform(*a.contrast) + 0.5 + rng.uniform(-a.brightness, a.brightness)
        x = x + rng.normal(0, rng.uniform(0, a.noise), x.shape)
        x = np.clip(x, 0, 1).astype(np.float32)
        out = np.zeros((len(b), 5), np.float32)
        if len(b):
            out[:, 0] = b[:, 0]
            out[:, 1] = (b[:, 1] + b[:, 3]) / 2
            out[:, 2] = (b[:, 2] + b[:, 4]) / 2
            out[:, 3] = b[:, 3] - b[:, 1]
            out[:, 4] = b[:, 4] - b[:, 2]
        return x, out

    def batch(self, n: int, seed: tuple[int, ...]):
        """``n`` crops as tensors: images (n, channels, s, s) and targets (M, 6), from ``seed``."""
        torch = require_torch()
        rng = np.random.default_rng(seed)
        xs, ts = [], []
        for k in range(n):
            x, t = self.sample(rng)
            xs.append(x)
            ts.append(np.concatenate([np.full((len(t), 1), k, np.float32), t], 1))
        x = np.stack(xs)
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if x.ndim == 4 else x[:, None]
        return torch.from_numpy(x), torch.from_numpy(np.concatenate(ts).reshape(-1, 6))


def _boxes_array(boxes: list[Box]) -> np.ndarray:
    return np.array([(b.cls, b.x, b.y, b.x + b.w, b.y + b.h) for b in boxes], np.float64).reshape(
        -1, 5
    )


# -------------------------------------------------------------------- training


@dataclass
class TrainConfig:
    """Settings of one training run (stored in the checkpoint and the report)."""

    epochs: int = 60
    width: str = "slim"
    heads: int = 2
    input_size: int = 416
    train_size: int = 256
    batch: int = 8
    steps_per_epoch: int = 16
    lr: float = 2e-3
    weight_decay: float = 5e-4
    val_fraction: float = 0.2
    seed: int = 0
    threads: int = 0
    device: str = "cpu"
    workers: int = 2
    init: str = ""
    flip_views: int = 1
    neighbours: bool = False
    small_focus: float = 0.0
    large_focus: float = 0.0
    ema: bool = True
    precision: str = "auto"
    zoom_pass: dict[str, float] = field(default_factory=dict)

    def key(self) -> dict:
        """The settings a checkpoint must share to be resumed (not where it runs or infers)."""
        skip = ("threads", "device", "workers", "flip_views", "precision", "zoom_pass")
        return {k: v for k, v in asdict(self).items() if k not in skip}


PRECISIONS = ("auto", "fp32", "bf16")


def autocast_dtype(precision: str, device_type: str):
    """The dtype the forward pass runs in under autocast, or None for float32.

    ``auto`` is bfloat16 on a CPU with AMX tiles, where it made a training
    step 1.4x faster (0.10 s against 0.146 s for the slim demo network, batch
    8 of 256 x 256, 2 threads) and an epoch, with its data preparation, 1.3x
    (2.4 s against 3.1 s); float32 elsewhere, where it was not measured.
    Weights, optimiser and loss stay in float32 either way.
    """
    torch = require_torch()
    if precision not in PRECISIONS:
        raise FamousError(
            f"precision {precision!r} is not one of {', '.join(PRECISIONS)}.",
            fix="give --precision auto, fp32 or bf16.",
        )
    if precision == "auto":
        # a private probe, so an older or newer torch without it means no AMX
        amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        precision = "bf16" if device_type == "cpu" and amx() else "fp32"
    return torch.bfloat16 if precision == "bf16" else None


def weight_average(net: DarknetTorch, total_steps: int):
    """An exponential moving average of the network's weights and batch-norm statistics.

    Its window is a tenth of the run (at most 1000 steps), so the starting
    weights have faded from it (by e^-10) when training ends, while it still
    smooths over many noisy late steps.

    Returns
    -------
    torch.optim.swa_utils.AveragedModel
        Update it with ``update_parameters(net.layers)`` after each step; its
        ``module`` holds the averaged layers.
    """
    require_torch()
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    window = min(1000.0, max(1.0, total_steps / 10))
    return AveragedModel(
        net.layers, multi_avg_fn=get_ema_multi_avg_fn(1 - 1 / window), use_buffers=True
    )


def _on_cpu(module) -> dict:
    """A module's state dict with every tensor on the CPU, for a checkpoint."""
    return {k: v.cpu() for k, v in module.state_dict().items()}


def split_images(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Training and held-out image indices; no held-out split below 3 images."""
    if n < 3 or val_fraction <= 0:
        return list(range(n)), []
    n_val = max(1, round(n * val_fraction))
    order = np.random.default_rng(seed).permutation(n)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def _scored_boxes(preds, truths, c: int, iou: float) -> tuple[list[tuple[float, bool]], int]:
    """(score, is a true box) of each class-``c`` prediction, and the number of truth boxes."""
    from .detect import match_class

    scored = []
    n_truth = 0
    for pred, truth in zip(preds, truths):
        t = [b for b in truth if b.cls == c]
        n_truth += len(t)
        scored.extend(match_class(pred, t, c, iou)[0])
    return scored, n_truth


def choose_thresholds(
    preds: list[list[Box]],
    truths: list[list[Box]],
    n_classes: int,
    iou: float = 0.5,
    default: float = 0.25,
    cap: float = 0.8,
) -> list[float]:
    """Per-class score threshold with the best F1 on annotated images (ties: the lowest).

    The threshold lies halfway between the last kept and the next score, and
    within [0.1, ``cap``].
    """
    out = []
    for c in range(n_classes):
        scored, n_truth = _scored_boxes(preds, truths, c, iou)
        if not n_truth or not scored:
            out.append(default)
            continue
        scored.sort(key=lambda v: -v[0])
        tp = np.cumsum([ok for _, ok in scored])
        f1 = 2 * tp / (np.arange(1, len(scored) + 1) + n_truth)
        # the lowest threshold reaching the best F1: on a plateau, keep the recall
        best = int(np.flatnonzero(f1 >= f1.max() - 1e-9)[-1])
        # halfway to the next lower score, so the chosen boxes are kept with a margin
        nxt = scored[best + 1][0] if best + 1 < len(scored) else scored[best][0] * 0.5
        # a few held-out boxes make the F1 optimum noisy (two nucleus boxes put it at
        # 0.87, which lost 12 % of the nuclei on an unseen phantom): stay in [0.1, cap]
        out.append(float(np.clip((scored[best][0] + nxt) / 2, 0.1, cap)))
    return out


def choose_confirm_thresholds(
    preds: list[list[Box]],
    truths: list[list[Box]],
    thresholds: list[float],
    iou: float = 0.5,
    cap: float = 0.8,
) -> list[float]:
    """Per-class score that confirms an organelle: the median score of true boxes.

    An organelle is kept when a few of its boxes score at least as high as a
    typical correctly found box on the annotated slices (see
    :class:`~.detect.DetectSettings`). Never below the class's box threshold,
    and at most ``cap``, so a model that is sure of everything it saw in
    training still confirms real organelles on new slices.
    """
    out = []
    for c, thr in enumerate(thresholds):
        scored, _ = _scored_boxes(preds, truths, c, iou)
        true_scores = [s for s, ok in scored if ok]
        median = float(np.median(true_scores)) if true_scores else thr
        out.append(float(np.clip(median, thr, max(cap, thr))))
    return out


def choose_box_scale(
    preds: list[list[Box]],
    truths: list[list[Box]],
    shapes: list[tuple[int, int]],
    n_classes: int,
    iou: float = 0.5,
    min_pairs: int = 10,
    limits: tuple[float, float] = (0.8, 1.25),
    min_score: float = 0.3,
) -> list[tuple[float, float]]:
    """Per-class width and height factors that turn the detector's boxes into the user's.

    The median of truth size over predicted size, over predictions scoring at
    least ``min_score``, matched to a truth box (IoU >= ``iou``) and touching
    no image border (a border cuts both boxes alike). Classes with fewer than
    ``min_pairs`` matches keep (1, 1); factors stay within ``limits``.
    """
    from .detect import _iou_matrix, _xyxy

    ratios: list[list[tuple[float, float]]] = [[] for _ in range(n_classes)]
    for pred, truth, (rows, cols) in zip(preds, truths, shapes):
        inside = [
            b
            for b in pred
            if b.score >= min_score
            and min(b.x, b.y) > 1
            and b.x + b.w < cols - 1
            and b.y + b.h < rows - 1
        ]
        for c in range(n_classes):
            p = [b for b in inside if b.cls == c]
            t = [b for b in truth if b.cls == c]
            if not p or not t:
                continue
            m = _iou_matrix(_xyxy(p), _xyxy(t))[0]
            for i, j in enumerate(m.argmax(axis=1)):
                if m[i, j] >= iou:
                    ratios[c].append((t[j].w / p[i].w, t[j].h / p[i].h))
    out = []
    for r in ratios:
        if len(r) < min_pairs:
            out.append((1.0, 1.0))
            continue
        sw, sh = np.clip(np.median(np.asarray(r), axis=0), *limits)
        out.append((round(float(sw), 4), round(float(sh), 4)))
    return out


def _rescaled(boxes: list[Box], scale: list[tuple[float, float]], shape) -> list[Box]:
    """Boxes scaled as the detector will scale them (clipped to the image)."""
    from .detect import _xyxy, apply_box_scale

    if not boxes:
        return boxes
    xyxy = apply_box_scale(_xyxy(boxes), np.array([b.cls for b in boxes]), scale, shape)
    xyxy[:, [0, 2]] = np.clip(xyxy[:, [0, 2]], 0, shape[1])
    xyxy[:, [1, 3]] = np.clip(xyxy[:, [1, 3]], 0, shape[0])
    return [
        Box(b.cls, x0, y0, x1 - x0, y1 - y0, b.score)
        for b, (x0, y0, x1, y1) in zip(boxes, xyxy.tolist())
    ]


def choose_containment(
    on: list[list[Box]],
    off: list[list[Box]],
    truths: list[list[Box]],
    shapes: list[tuple[int, int]],
    containment: list[float | None],
    margin: float = 0.01,
) -> list[float | None]:
    """Per class, whether containment suppression helps: the given value, or None (off).

    ``on`` and ``off`` are the same images' detections with ``containment``
    and with the rule off for every class (suppression is class-wise, so one
    run of each serves all classes). A class turns it off when that raises
    its AP@0.5 by more than ``margin``: on the annotated slices of the step-7
    demo model this picked out endosomes, lysosomes and mitochondria
    (0.06-0.18 AP, as much as on unseen phantoms) and kept it for the nucleus
    (no difference there; on one unseen phantom off cost 0.05 AP).
    """
    from .detect import evaluate

    names = [str(c) for c in range(len(containment))]
    ap_on = evaluate(on, truths, shapes, names)["per_class"]
    ap_off = evaluate(off, truths, shapes, names)["per_class"]
    return [
        None if ap_off[n]["AP50"] > ap_on[n]["AP50"] + margin else value
        for n, value in zip(names, containment)
    ]


def _read_boxed(annotations: str | Path, n_classes: int, neighbours: bool = False):
    """Images and boxes of a YOLO_mark folder; an error when it holds no box at all."""
    from .annotations import read_yolo_mark

    images, boxes = read_yolo_mark(
        annotations, n_classes=n_classes, load_images=True, neighbours=neighbours
    )
    if not any(boxes):
        raise FamousError("holds no boxes.", annotations, "box the organelles in YOLO_mark first.")
    return images, boxes


def calibrate_model(
    model_dir: str | Path,
    classes,
    images: list[np.ndarray],
    truths: list[list[Box]],
    settings: DetectSettings,
    held_out: list[int] | None = None,
) -> tuple[list[float], dict]:
    """Choose per-class thresholds on annotated slices and measure the model there.

    Runs the model folder's detector (OpenCV, CPU) with near-zero thresholds,
    turns containment suppression off for the classes it hurts
    (:func:`choose_containment`, on all images: the slices a model was
    trained on show its merged boxes as clearly as new ones, and more boxes
    make a steadier choice), picks each class's box threshold with
    :func:`choose_thresholds` on the
    ``held_out`` images and its confirm threshold with
    :func:`choose_confirm_thresholds` on all of them (more true boxes make a
    steadier median), measures the detector at those thresholds on the
    held-out images and then writes ``thresholds.json`` (with the tiling and
    suppression ``settings``).

    Parameters
    ----------
    held_out : list of int, optional
        Indices of the images to choose thresholds and measure on; all when None.

    Returns
    -------
    thresholds : list of float
    metrics : dict
        ``mAP50`` (from the near-zero-threshold run), ``per_class`` (AP50,
        precision, recall, recall per case at the chosen thresholds),
        ``recall_by_case``, ``confirm_thresholds``, ``box_scale``,
        ``containment`` and ``evaluated_on``.
    """
    from dataclasses import replace

    from .fileio import write_json

    out = Path(model_dir)
    names = list(classes.names)
    if held_out is None:
        evaluated_on = "all annotated slices (no held-out split)"
        held_out = list(range(len(images)))
    else:
        evaluated_on = "held-out slices"
    low = replace(
        settings, score_thresholds=[0.01] * len(names), confirm_thresholds=None, box_scale=None
    )
    # the settings live in memory until chosen: an interrupted calibration
    # leaves the model folder's thresholds.json as it was
    det = load_detector(out, classes, "cpu")
    det.settings = low
    on = [det.detect(im) for im in images]
    det.settings = replace(low, containment=[None] * len(names))
    off = [det.detect(im) for im in images]
    all_shapes = [im.shape[:2] for im in images]
    containment = choose_containment(on, off, truths, all_shapes, low.contain(len(names)))
    all_preds = [
        [b for b in p_on if containment[b.cls] is not None]
        + [b for b in p_off if containment[b.cls] is None]
        for p_on, p_off in zip(on, off)
    ]
    box_scale = choose_box_scale(all_preds, truths, all_shapes, len(names))
    all_preds = [_rescaled(p, box_scale, s) for p, s in zip(all_preds, all_shapes)]
    low_preds = [all_preds[i] for i in held_out]
    eval_truths = [truths[i] for i in held_out]
    thresholds = choose_thresholds(low_preds, eval_truths, len(names))
    confirm = choose_confirm_thresholds(all_preds, truths, thresholds)
    chosen = replace(
        settings,
        score_thresholds=thresholds,
        confirm_thresholds=confirm,
        box_scale=box_scale,
        containment=containment,
    )
    det.settings = chosen
    shapes = [all_shapes[i] for i in held_out]
    at_thr = evaluate([det.detect(images[i]) for i in held_out], eval_truths, shapes, names)
    ap = evaluate(low_preds, eval_truths, shapes, names)
    metrics = {
        "mAP50": ap["mAP50"],
        "per_class": {
            n: {**at_thr["per_class"][n], "AP50": ap["per_class"][n]["AP50"]} for n in names
        },
        "recall_by_case": at_thr["recall_by_case"],
        "confirm_thresholds": dict(zip(names, confirm)),
        "box_scale": dict(zip(names, box_scale)),
        "containment": dict(zip(names, containment)),
        "evaluated_on": evaluated_on,
    }
    write_json(out / THRESHOLDS_NAME, chosen.to_json(names))
    return thresholds, metrics


def _zoom_classes(zoom_pass: dict[str, float], classes) -> dict[int, float]:
    """``TrainConfig.zoom_pass`` (class name: score) as class index: score, checked."""
    fix = "give --zoom-pass CLASS=SCORE with a class of the model and a score in (0, 1]."
    out = {}
    for name, score in zoom_pass.items():
        if name not in classes.names:
            raise FamousError(
                f"zoom pass for {name!r}, which is not a class of the model.", fix=fix
            )
        if not 0 < score <= 1:
            raise FamousError(f"zoom pass score {score} for {name!r} is not in (0, 1].", fix=fix)
        out[classes.index(name)] = float(score)
    return out


def train_model(
    annotations: str | Path,
    classes,
    out: str | Path,
    epochs: int = 60,
    width: str = "slim",
    progress: ProgressFn | None = None,
    *,
    config: TrainConfig | None = None,
    command: str | None = None,
    resume: bool = True,
) -> dict:
    """Train a detector on a YOLO_mark folder and write a model folder.

    Parameters
    ----------
    annotations : str or Path
        YOLO_mark folder (images + ``.txt`` boxes).
    classes : ClassConfig, str or Path
        Class names in the detector's order (a config, or what
        :func:`~famous_addon.core.classes.load_classes` reads).
    out : str or Path
        Model folder to write: ``model.cfg``, ``model.weights``, ``obj.names``,
        ``classes.toml``, ``thresholds.json``, ``report.json`` (and
        ``checkpoint.pt`` while training).
    epochs : int
        Passes of ``steps_per_epoch`` batches of random crops.
    width : {"tiny", "slim"}
    progress : callable, optional
        ``progress(fraction, message)``; may raise :class:`Cancelled`, after
        which the last checkpoint lets a later call resume.
    config : TrainConfig, optional
        Further settings; ``epochs`` and ``width`` override its fields.
    command : str, optional
        The command line, recorded in ``report.json``.
    resume : bool
        Continue from ``checkpoint.pt`` in ``out`` when its settings match.

    Returns
    -------
    dict
        The report written to ``report.json``.
    """
    torch = require_torch()
    from .classes import save_classes
    from .fileio import atomic_path, atomic_write_bytes, write_json

    progress = progress or silent
    if not hasattr(classes, "names"):
        from .classes import load_classes

        classes = load_classes(classes, annotations=annotations)
    cfgt = TrainConfig(**{**asdict(config or TrainConfig()), "epochs": int(epochs), "width": width})
    for name, share in (("small_focus", cfgt.small_focus), ("large_focus", cfgt.large_focus)):
        if not 0 <= share <= 1:
            option = "--" + name.replace("_", "-")
            raise FamousError(
                f"{name} is {share}, not a share of the crops.",
                fix=f"give {option} between 0 and 1 (0.3: three crops in ten).",
            )
    device_type = torch.device(cfgt.device).type
    amp_dtype = autocast_dtype(cfgt.precision, device_type)
    zoom = _zoom_classes(cfgt.zoom_pass, classes)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    if cfgt.threads:
        torch.set_num_threads(cfgt.threads)
    torch.manual_seed(cfgt.seed)

    images, boxes = _read_boxed(annotations, len(classes), cfgt.neighbours)
    n_boxes = sum(len(b) for b in boxes)
    train_idx, val_idx = split_images(len(images), cfgt.val_fraction, cfgt.seed)
    wh = np.array([(b.w, b.h) for i in train_idx for b in boxes[i]])
    if cfgt.init:
        # fine-tune an existing model: its cfg (and so its anchors and width) is kept
        init = Path(cfgt.init)
        from .detect import check_model

        info = check_model(init / CFG_NAME, init / WEIGHTS_NAME)
        classes.check_count(info.n_classes, f"model {init}", init / CFG_NAME)
        cfg_text = (init / CFG_NAME).read_text()
        net = DarknetTorch(cfg_text)
        net.load_weights(init / WEIGHTS_NAME)
        given = 3 if cfgt.neighbours else 1
        if cfgt.neighbours and info.channels == 1:
            net = with_neighbour_channels(net)
            cfg_text = net.cfg_text
        elif info.channels != given:
            raise FamousError(
                f"takes {info.channels}-channel input; this training gives {given}.",
                init / CFG_NAME,
                "fine-tune with --neighbours exactly when the model was trained with it.",
            )
        anchors = [tuple(a) for y in info.yolo_layers[::-1] for a in y["anchors"]]
    else:
        anchors = kmeans_anchors(wh, 3 * cfgt.heads, cfgt.seed)
        channels = 3 if cfgt.neighbours else 1
        cfg_text = yolo_tiny_cfg(
            len(classes), anchors, cfgt.width, channels, cfgt.input_size, cfgt.heads
        )
        net = DarknetTorch(cfg_text)
    opt = torch.optim.AdamW(net.parameters(), lr=cfgt.lr, weight_decay=cfgt.weight_decay)
    total_steps = cfgt.epochs * cfgt.steps_per_epoch
    warmup = min(100, total_steps // 10)
    ema = weight_average(net, total_steps) if cfgt.ema else None

    def lr_at(step):
        if step < warmup:
            return cfgt.lr * (step + 1) / warmup
        t = (step - warmup) / max(1, total_steps - warmup)
        return cfgt.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))

    ckpt_path = out / CHECKPOINT_NAME
    start_epoch, history, elapsed_before = 0, [], 0.0
    key = json.loads(
        json.dumps({"config": cfgt.key(), "anchors": anchors, "classes": list(classes.names)})
    )
    if resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if state.get("key") == key:
            net.layers.load_state_dict(state["model"])
            if ema is not None:  # the key holds cfgt.ema, so the checkpoint has an average
                ema.load_state_dict(state["ema"])
            if state.get("optimizer") is not None:
                opt.load_state_dict(state["optimizer"])
            start_epoch, history = state["epoch"], state["history"]
            elapsed_before = state.get("elapsed", 0.0)
    net.layers.to(cfgt.device)
    if ema is not None:
        ema.to(cfgt.device)
    for group in opt.state.values():
        for k, v in group.items():
            if torch.is_tensor(v) and k != "step":
                group[k] = v.to(cfgt.device)
    sampler = CropSampler(
        [images[i] for i in train_idx],
        [_boxes_array(boxes[i]) for i in train_idx],
        cfgt.train_size,
        AugmentConfig(small_focus=cfgt.small_focus, large_focus=cfgt.large_focus),
    )
    train_progress = sub(progress, 0.0, 0.9)
    hw = (cfgt.train_size, cfgt.train_size)
    net.train()
    first, last = start_epoch * cfgt.steps_per_epoch, cfgt.epochs * cfgt.steps_per_epoch
    # batches are drawn ahead in threads (OpenCV and numpy release the GIL), each
    # from its own (seed, step) generator, so the data do not depend on the threads
    pool = ThreadPoolExecutor(max(1, cfgt.workers))
    ahead = 2 * max(1, cfgt.workers)
    pending = {
        g: pool.submit(sampler.batch, cfgt.batch, (cfgt.seed, g))
        for g in range(first, min(first + ahead, last))
    }
    try:
        for epoch in range(start_epoch, cfgt.epochs):
            sums = {"loss": 0.0, "box": 0.0, "obj": 0.0, "cls": 0.0}
            for step in range(cfgt.steps_per_epoch):
                g = epoch * cfgt.steps_per_epoch + step
                if g + ahead < last:
                    pending[g + ahead] = pool.submit(
                        sampler.batch, cfgt.batch, (cfgt.seed, g + ahead)
                    )
                x, t = pending.pop(g).result()
                for group in opt.param_groups:
                    group["lr"] = lr_at(g)
                with torch.autocast(device_type, amp_dtype, enabled=amp_dtype is not None):
                    raws = net(x.to(cfgt.device))
                loss, parts = yolo_loss(net, [r.float() for r in raws], t, hw)
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
                opt.step()
                if ema is not None:
                    ema.update_parameters(net.layers)
                sums["loss"] += loss.item()
                for k in ("box", "obj", "cls"):
                    sums[k] += parts[k]
            means = {k: v / cfgt.steps_per_epoch for k, v in sums.items()}
            history.append({"epoch": epoch + 1, **means})
            final_epoch = epoch + 1 == cfgt.epochs
            state = {
                "key": key,
                "model": _on_cpu(net.layers),
                "ema": None if ema is None else _on_cpu(ema),
                # the optimiser is only needed to go on training
                "optimizer": None if final_epoch else opt.state_dict(),
                "epoch": epoch + 1,
                "history": history,
                "elapsed": elapsed_before + time.perf_counter() - t_start,
            }
            with atomic_path(ckpt_path) as tmp:
                torch.save(state, tmp)
            done = epoch + 1 - start_epoch
            eta = (time.perf_counter() - t_start) / done * (cfgt.epochs - epoch - 1)
            train_progress(
                (epoch + 1) / cfgt.epochs,
                f"epoch {epoch + 1}/{cfgt.epochs} loss {means['loss']:.2f} ETA {eta / 60:.1f} min",
            )
    finally:
        for f in pending.values():
            f.cancel()
        pool.shutdown(wait=True)
    train_seconds = elapsed_before + time.perf_counter() - t_start

    net.eval()
    net.layers.to("cpu")
    if ema is not None:
        net.layers.load_state_dict(ema.module.state_dict())
    atomic_write_bytes(out / CFG_NAME, cfg_text.encode())
    net.save_weights(out / WEIGHTS_NAME, seen=cfgt.epochs * cfgt.steps_per_epoch * cfgt.batch)
    atomic_write_bytes(out / NAMES_NAME, "".join(n + "\n" for n in classes.names).encode())
    save_classes(classes, out / CLASSES_NAME)

    progress(0.92, "choosing thresholds")
    overlap = int(min(cfgt.input_size // 2, max(32, np.percentile(wh.max(1), 95) * 1.1)))
    big = [
        c
        for c in range(len(classes))
        if any(b.cls == c for i in train_idx for b in boxes[i])
        and np.median([max(b.w, b.h) for i in train_idx for b in boxes[i] if b.cls == c])
        > 0.6 * cfgt.input_size
    ]
    thresholds, metrics = calibrate_model(
        out,
        classes,
        images,
        boxes,
        DetectSettings(
            [0.25] * len(classes),
            tile_overlap=overlap,
            whole_slice_classes=big,
            flip_views=cfgt.flip_views,
            neighbours=cfgt.neighbours,
            zoom_thresholds=zoom,
        ),
        held_out=val_idx or None,
    )
    report = {
        "command": command or " ".join(sys.argv),
        "annotations": str(Path(annotations).resolve()),
        "n_images": len(images),
        "n_boxes": n_boxes,
        "train_images": train_idx,
        "val_images": val_idx,
        "config": asdict(cfgt),
        "anchors": anchors,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(elapsed_before + time.perf_counter() - t_start, 1),
        "torch": torch.__version__,
        "forward_dtype": "bfloat16" if amp_dtype is not None else "float32",
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "history": history,
        "metrics": metrics,
        "thresholds": dict(zip(classes.names, thresholds)),
    }
    write_json(out / REPORT_NAME, report)
    ckpt_path.unlink(missing_ok=True)
    progress(1.0, f"done: mAP@0.5 {metrics['mAP50']:.3f}")
    return report


def recalibrate_model(
    model_dir: str | Path,
    annotations: str | Path,
    flip_views: int | None = None,
    command: str | None = None,
) -> dict:
    """Choose a trained model's thresholds again, as :func:`train_model` does at its end.

    For a model folder made by an earlier FAMOUS (whose calibration lacked a
    later step, such as the containment choice) or to be calibrated on other
    annotated slices. The weights are not touched; ``thresholds.json`` is
    rewritten and ``report.json`` gets the new metrics and thresholds (the
    training's own under ``metrics_at_training`` and ``thresholds_at_training``).

    Parameters
    ----------
    model_dir : str or Path
        A model folder (``famous train`` output).
    annotations : str or Path
        YOLO_mark folder. Its held-out split is the one ``famous train`` would
        make with the model's recorded validation fraction and seed.
    flip_views : {1, 2, 4}, optional
        Test-time views to calibrate for; default: the model's setting.
    command : str, optional
        Recorded in the report.

    Returns
    -------
    dict
        The updated report.
    """
    from dataclasses import replace

    from .classes import load_classes
    from .fileio import write_json

    out = Path(model_dir)
    classes = load_classes(out / CLASSES_NAME)
    settings = load_detector(out, classes, "cpu").settings
    settings = replace(settings, flip_views=flip_views or settings.flip_views, containment=None)
    report_path = out / REPORT_NAME
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    config = report.get("config", {})
    images, boxes = _read_boxed(annotations, len(classes), settings.neighbours)
    _, val_idx = split_images(
        len(images), config.get("val_fraction", TrainConfig.val_fraction), config.get("seed", 0)
    )
    thresholds, metrics = calibrate_model(
        out, classes, images, boxes, settings, held_out=val_idx or None
    )
    for key in ("metrics", "thresholds"):
        if key in report:
            report.setdefault(f"{key}_at_training", report[key])
    report["metrics"] = metrics
    report["thresholds"] = dict(zip(classes.names, thresholds))
    report["recalibrated"] = {
        "command": command or " ".join(sys.argv),
        "annotations": str(Path(annotations).resolve()),
        "val_images": val_idx,
    }
    write_json(report_path, report)
    return report


__all__ = [
    "CropSampler",
    "DarknetTorch",
    "TrainConfig",
    "calibrate_model",
    "choose_box_scale",
    "choose_containment",
    "choose_confirm_thresholds",
    "choose_thresholds",
    "decode_head",
    "kmeans_anchors",
    "recalibrate_model",
    "train_model",
    "yolo_loss",
]
