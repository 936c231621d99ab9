"""The detector's network in PyTorch, built from its Darknet cfg (needs the ``train`` extra).

The network is built from the same Darknet ``.cfg`` it is exported with, so
the exported ``.weights`` run unchanged in darknet and in OpenCV's Darknet
importer (:mod:`.inference`). Import this module only where torch is
installed (:func:`~.config.require_torch` says how to get it).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch

from ..errors import FamousError
from ..fileio import atomic_write_bytes
from .darknet import cfg_info, parse_cfg_text, weights_header_size


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

    Not an ``nn.Module`` subclass: the layers live in :attr:`layers` (an
    ``nn.ModuleList``, one entry per cfg section, identity for layers without
    parameters), whose state dict is what checkpoints hold.

    Parameters
    ----------
    cfg_text : str
        Darknet cfg.
    """

    def __init__(self, cfg_text: str):
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
        n_cls = self.info.n_classes
        for y in self.info.yolo_layers:
            conv = self.layers[y["layer"] - 1][0]
            with torch.no_grad():
                b = conv.bias.view(len(y["mask"]), 5 + n_cls)
                b[:, 4] = -4.5
                b[:, 5:] = math.log(0.6 / max(n_cls - 0.99, 1))

    def __call__(self, x):
        """Raw outputs of the layers feeding each ``[yolo]`` (N, A*(5+C), H, W)."""
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
        chunks = [np.array([0, 2, 5], "<i4").tobytes(), np.array([seen], "<i8").tobytes()]
        for block in self.convs():
            for t in _darknet_order(block):
                chunks.append(t.detach().cpu().numpy().astype("<f4").ravel().tobytes())
        atomic_write_bytes(Path(path), b"".join(chunks))

    def load_weights(self, path: Path) -> None:
        """Read Darknet ``.weights`` written for this cfg (sizes checked first)."""
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
