"""The YOLO training loss (needs the ``train`` extra).

Boxes by 1 - GIoU, objectness and classes by binary cross-entropy, with
darknet's assignment of truth boxes to anchors and grid cells.
"""

from __future__ import annotations

import torch

from .model import DarknetTorch, decode_head

F = torch.nn.functional


def _box_iou_xywh(a, b, giou: bool = False):
    """IoU (or GIoU) of matching rows of two (n, 4) cx cy w h tensors."""
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
    net: DarknetTorch,
    raws,
    targets,
    input_hw,
    ignore_iou: float = 0.7,
    match_iou: float = 0.25,
    negatives=None,
    unknown=None,
):
    """YOLO loss for one batch.

    Parameters
    ----------
    raws : list of tensors
        Raw head outputs.
    targets : tensor (M, 6) or (M, 7)
        image index, class, cx, cy, w, h (input pixels), and optionally the
        box's weight in the loss (a pseudo-box weighs less than a user's).
    negatives : tensor (N,), optional
        Per image, the weight of its background (no object) in the
        objectness loss: 0 leaves everything but its boxes out of the loss,
        for images whose boxes are known to be incomplete. Default: 1.
    unknown : tensor (K, 5), optional
        image index, cx, cy, w, h (input pixels) of regions neither object nor
        background: a grid cell whose centre lies in one learns nothing unless
        a truth box is assigned to it (self-training: unconfirmed regions).

    Each truth box is assigned, in the grid cell holding its centre, to its
    best-fitting anchor and to every other anchor whose shape IoU exceeds
    ``match_iou`` (as darknet's ``iou_thresh``). Loss: 1 - GIoU for the boxes,
    binary cross-entropy for objectness (predictions overlapping a truth box
    by more than ``ignore_iou`` are not pushed down) and for the classes.

    Returns
    -------
    total, parts : tensor, dict of floats
    """
    n_cls = net.info.n_classes
    n_img = raws[0].shape[0]
    dev = raws[0].device
    targets = targets.to(dev)
    # each head holds its own anchors (the cfg's masked ones), so its columns of
    # ``positive`` are its place in head order; the cfg's mask indices number the
    # anchors differently and once swapped the heads (coarse head, small boxes)
    anchor_global = torch.arange(sum(len(h["mask"]) for h in net.heads))
    positive = _anchor_matches(net, targets, match_iou) if len(targets) else None
    loss_box, loss_obj, loss_cls = (torch.zeros((), device=dev) for _ in range(3))
    n_pos = 0
    offset = 0
    for raw, head in zip(raws, net.heads):
        pred = decode_head(raw, head, n_cls, input_hw)
        n, a, h, w, _ = pred.shape
        obj_target = torch.zeros(n, a, h, w, device=dev)
        obj_weight = _background_weight(pred.shape[:4], negatives, unknown, input_hw, dev)
        if len(targets):
            _ignore_covered(pred, targets, obj_weight, ignore_iou)
            loss_box, loss_cls, n_head = _positive_losses(
                pred,
                head,
                targets,
                positive,
                anchor_global[offset : offset + a],
                n_cls,
                input_hw,
                (obj_target, obj_weight),
                (loss_box, loss_cls),
            )
            n_pos += n_head
        bce = F.binary_cross_entropy_with_logits(pred[..., 4], obj_target, reduction="none")
        loss_obj = loss_obj + (bce * obj_weight).sum()
        offset += a
    total = (3.0 * loss_box + loss_obj + loss_cls) / n_img
    parts = {
        "box": loss_box.item() / n_img,
        "obj": loss_obj.item() / n_img,
        "cls": loss_cls.item() / n_img,
        "positives": n_pos,
    }
    return total, parts


def _anchor_matches(net: DarknetTorch, targets, match_iou: float):
    """(M, anchors) bool: the anchors each truth box is assigned to.

    Its best-fitting anchor by shape IoU, and every other anchor whose shape
    IoU exceeds ``match_iou``; columns: the heads' anchors, head after head.
    """
    dev = targets.device
    all_anchors = torch.cat([h["anchors"] for h in net.heads]).to(dev)
    tw, th = targets[:, 4:5], targets[:, 5:6]
    aw, ah = all_anchors[:, 0][None], all_anchors[:, 1][None]
    inter = torch.min(tw, aw) * torch.min(th, ah)
    shape_iou = inter / (tw * th + aw * ah - inter)
    best = shape_iou.argmax(1)
    positive = shape_iou > match_iou
    positive[torch.arange(len(targets), device=dev), best] = True
    return positive


def _ignore_covered(pred, targets, obj_weight, ignore_iou: float) -> None:
    """Zero the objectness weight of predictions overlapping a truth box by more than
    ``ignore_iou``: predictions already covering a truth box are not negatives."""
    n, a, h, w, _ = pred.shape
    with torch.no_grad():
        boxes = pred[..., :4].detach()
        for b in range(n):
            tb = targets[targets[:, 0] == b][:, 2:6]
            if len(tb) == 0:
                continue
            pb = boxes[b].reshape(-1, 1, 4).expand(-1, len(tb), 4).reshape(-1, 4)
            ious = _box_iou_xywh(pb, tb.repeat(a * h * w, 1)).view(-1, len(tb))
            obj_weight[b].view(-1)[ious.max(1).values > ignore_iou] = 0


def _background_weight(shape, negatives, unknown, input_hw, dev):
    """(N, A, H, W) objectness weights before the truth boxes: each image's
    ``negatives`` weight, and 0 at the grid cells whose centre lies in an ``unknown`` box."""
    n, a, h, w = shape
    obj_weight = torch.ones(n, a, h, w, device=dev)
    if negatives is not None:  # images whose background is not taught
        obj_weight = obj_weight * negatives.to(dev).view(n, 1, 1, 1)
    if unknown is None or not len(unknown):
        return obj_weight
    cx = (torch.arange(w, device=dev) + 0.5) * (input_hw[1] / w)
    cy = (torch.arange(h, device=dev) + 0.5) * (input_hw[0] / h)
    for b, x, y, bw, bh in unknown.tolist():
        cols = (cx >= x - bw / 2) & (cx <= x + bw / 2)
        rows = (cy >= y - bh / 2) & (cy <= y + bh / 2)
        obj_weight[int(b)] *= ~(rows[:, None] & cols[None, :])
    return obj_weight


def _cells(t0, fx, fy, reach: bool, w: int, h: int) -> list[tuple]:
    """(boxes, column, row) of the grid cells that learn the boxes ``t0``.

    The cell holding each box's centre (``fx``, ``fy`` in cells), and with
    ``reach`` the neighbouring cell nearest the centre along each axis.
    """
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
    return cells


def _positive_losses(pred, head, targets, positive, anchor_ids, n_cls, input_hw, obj, running):
    """Add one head's box and class losses over its positive cells, and mark those as objects.

    Parameters
    ----------
    pred : tensor (N, A, H, W, 5 + C)
        The head's decoded output (:func:`~.model.decode_head`).
    positive : (M, anchors) bool
        The anchors each truth box is assigned to (:func:`_anchor_matches`).
    anchor_ids : (A,) tensor
        The column of ``positive`` for each of this head's anchors: its place
        among all heads' anchors, head after head.
    obj : (obj_target, obj_weight)
        Set to 1 at the positive cells.
    running : (loss_box, loss_cls)
        The sums so far, added to in the same order as over all heads at once.

    Returns
    -------
    loss_box, loss_cls, number of positives
    """
    obj_target, obj_weight = obj
    loss_box, loss_cls = running
    n, a, h, w, _ = pred.shape
    stride_x, stride_y = input_hw[1] / w, input_hw[0] / h
    # with scale_x_y >= 2 a cell reaches half a cell beyond its borders, so the
    # two neighbouring cells nearest the centre learn the box too (more positives,
    # faster learning from few slices)
    reach = head["scale_x_y"] >= 2.0
    n_pos = 0
    for local in range(a):
        g = int(anchor_ids[local])
        sel = positive[:, g]
        if not sel.any():
            continue
        t0 = targets[sel]
        fx, fy = t0[:, 2] / stride_x, t0[:, 3] / stride_y
        for t, gi, gj in _cells(t0, fx, fy, reach, w, h):
            if not len(t):
                continue
            bi = t[:, 0].long()
            gi, gj = gi.clamp(0, w - 1), gj.clamp(0, h - 1)
            p = pred[bi, local, gj, gi]
            giou = _box_iou_xywh(p[:, :4], t[:, 2:6], giou=True)
            onehot = F.one_hot(t[:, 1].long(), n_cls).float()
            cls = F.binary_cross_entropy_with_logits(p[:, 5:], onehot, reduction="none")
            if t.shape[1] > 6:  # weighted boxes
                weight = t[:, 6]
                loss_box = loss_box + ((1 - giou) * weight).sum()
                loss_cls = loss_cls + (cls.sum(1) * weight).sum()
                obj_weight[bi, local, gj, gi] = weight
            else:
                loss_box = loss_box + (1 - giou).sum()
                loss_cls = loss_cls + cls.sum()
                obj_weight[bi, local, gj, gi] = 1.0
            obj_target[bi, local, gj, gi] = 1.0
            n_pos += len(t)
    return loss_box, loss_cls, n_pos
