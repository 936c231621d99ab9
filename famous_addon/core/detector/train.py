"""Train a YOLOv4-tiny detector on YOLO_mark boxes, without darknet (needs the ``train`` extra).

The network is built in PyTorch from the same Darknet ``.cfg`` it is exported
with, so the exported ``.weights`` run unchanged in darknet and in OpenCV's
Darknet importer (:mod:`.inference`). Training is meant for the
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

Needs torch at import: import this module only where the ``train`` extra is
installed (:func:`~.config.require_torch` says how to get it).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..annotations import read_unconfirmed, read_yolo_mark
from ..calibrate import calibrate
from ..classes import load_classes, save_classes
from ..errors import FamousError
from ..fileio import atomic_path, atomic_write_bytes, write_json
from ..progress import ProgressFn, silent, sub
from .annotated import read_boxed, split_images
from .calibrate import calibrate_model
from .config import DEFAULT_EPOCHS, PRECISIONS, PseudoShare, TrainConfig
from .darknet import (
    CFG_NAME,
    CLASSES_NAME,
    NAMES_NAME,
    REPORT_NAME,
    WEIGHTS_NAME,
    check_model,
    write_checksum,
    yolo_tiny_cfg,
)
from .data import AugmentConfig, CropSampler, boxes_array, kmeans_anchors
from .loss import yolo_loss
from .model import DarknetTorch, with_neighbour_channels
from .settings import DetectSettings

CHECKPOINT_NAME = "checkpoint.pt"


def autocast_dtype(precision: str, device_type: str):
    """The dtype the forward pass runs in under autocast, or None for float32.

    ``auto`` is bfloat16 on a CPU with AMX tiles, where it made a training
    step 1.4x faster (0.10 s against 0.146 s for the slim demo network, batch
    8 of 256 x 256, 2 threads) and an epoch, with its data preparation, 1.3x
    (2.4 s against 3.1 s); float32 elsewhere, where it was not measured.
    Weights, optimiser and loss stay in float32 either way.
    """
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
    window = min(1000.0, max(1.0, total_steps / 10))
    return AveragedModel(
        net.layers, multi_avg_fn=get_ema_multi_avg_fn(1 - 1 / window), use_buffers=True
    )


def _on_cpu(module) -> dict:
    """A module's state dict with every tensor on the CPU, for a checkpoint."""
    return {k: v.cpu() for k, v in module.state_dict().items()}


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
    epochs: int = DEFAULT_EPOCHS,
    width: str = "slim",
    progress: ProgressFn | None = None,
    *,
    config: TrainConfig | None = None,
    command: str | None = None,
    resume: bool = True,
    pseudo: str | Path | None = None,
    mix: PseudoShare | None = None,
    pixel_nm: float | None = None,
) -> dict:
    """Train a detector on a YOLO_mark folder and write a model folder.

    Parameters
    ----------
    annotations : str or Path
        YOLO_mark folder (images + ``.txt`` boxes).
    classes : ClassConfig, str or Path
        Class names in the detector's order (what :func:`~.classes.load_classes` reads).
    out : str or Path
        Model folder to write: ``model.cfg``, ``model.weights(.sha256)``, ``obj.names``,
        ``classes.toml``, ``thresholds.json``, ``report.json`` (``checkpoint.pt`` meanwhile).
    epochs, width : int, {"tiny", "slim"}
        Passes of ``steps_per_epoch`` batches of random crops; the network's width.
    progress : callable, optional
        ``progress(fraction, message)``; may raise :class:`Cancelled`, after
        which the last checkpoint lets a later call resume.
    config : TrainConfig, optional
        Further settings; ``epochs`` and ``width`` override its fields.
    command : str, optional
        The command line, recorded in ``report.json``.
    resume : bool
        Continue from ``checkpoint.pt`` in ``out`` when its settings match.
    pseudo, mix : str or Path, PseudoShare, optional
        A YOLO_mark folder of pseudo-labelled slices (:mod:`~famous_addon.core.selftrain`)
        mixed into the crops as ``mix`` says; anchors, split, thresholds and
        calibration come from the user's boxes alone.
    pixel_nm : float, optional
        The slices' pixel size (nm): each class's extraction recipe is then
        chosen on the user's boxes too and kept in ``classes.toml`` for ``famous run``.

    Returns
    -------
    dict
        The report written to ``report.json``.
    """
    progress = progress or silent
    if not hasattr(classes, "names"):
        classes = load_classes(classes, annotations=annotations)
    cfgt = _checked_config(config, epochs, width)
    amp_dtype = autocast_dtype(cfgt.precision, torch.device(cfgt.device).type)
    zoom = _zoom_classes(cfgt.zoom_pass, classes)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    images, boxes = read_boxed(annotations, len(classes), cfgt.neighbours)
    train_idx, val_idx = split_images(len(images), cfgt.val_fraction, cfgt.seed)
    trainer = _Trainer(cfgt, classes, [boxes[i] for i in train_idx], out / CHECKPOINT_NAME, t_start)
    extra, given = _pseudo_set(pseudo, mix, len(train_idx), len(classes), cfgt.neighbours)
    if given:  # a checkpoint without or with other pseudo-boxes is not resumed
        trainer.key["pseudo"] = given
    if resume:
        trainer.resume()
    train_seconds = trainer.run([images[i] for i in train_idx], amp_dtype, progress, extra)
    trainer.export(out, classes)
    settings = trainer.detect_settings(zoom)
    report = {
        **_given(command, annotations, boxes, (train_idx, val_idx), given),
        **trainer.facts(train_seconds, amp_dtype),
        **_chosen_on_boxes(out, classes, images, boxes, settings, val_idx, pixel_nm, progress),
    }
    write_json(out / REPORT_NAME, report)
    trainer.ckpt_path.unlink(missing_ok=True)
    progress(1.0, f"done: mAP@0.5 {report['metrics']['mAP50']:.3f}")
    return report


def _chosen_on_boxes(out, classes, images, boxes, settings, held_out, pixel_nm, progress) -> dict:
    """``report.json``'s entries of what is chosen on the user's boxes after training.

    The score thresholds (``metrics``, ``thresholds``; on the ``held_out``
    images, all without), and with ``pixel_nm`` each class's extraction
    recipe (``extraction_calibration``), saved to the folder's ``classes.toml``.
    """
    progress(0.92, "choosing thresholds")  # on the user's boxes alone
    thresholds, metrics = calibrate_model(
        out, classes, images, boxes, settings, held_out=held_out or None
    )
    facts = {"metrics": metrics, "thresholds": dict(zip(classes.names, thresholds))}
    if pixel_nm:
        progress(0.96, "choosing each class's extraction recipe")
        slices = [im[..., 1] if im.ndim == 3 else im for im in images]  # the middle of three
        chosen, facts["extraction_calibration"] = calibrate(slices, boxes, classes, pixel_nm)
        save_classes(chosen, out / CLASSES_NAME)
    return facts


def _pseudo_set(pseudo, mix: PseudoShare | None, first: int, n_classes: int, neighbours: bool):
    """The pseudo-labelled images, their boxes and their mix (``first`` set), or None; and
    what ``report.json`` says of them (None without)."""
    if pseudo is None:
        return None, None
    images, boxes = read_yolo_mark(
        pseudo, n_classes=n_classes, load_images=True, neighbours=neighbours
    )
    unconfirmed = read_unconfirmed(pseudo, images, n_classes)
    mix = replace(mix or PseudoShare(first), first=first, background=unconfirmed is not None)
    facts = {
        "folder": str(Path(pseudo).resolve()),
        "n_images": len(images),
        "n_boxes": sum(len(b) for b in boxes),
        "n_unconfirmed": sum(map(len, unconfirmed)) if unconfirmed is not None else None,
        "share": mix.share,
        "weight": mix.weight,
    }
    if unconfirmed is not None:  # class -1: a region left out of the loss (CropSampler)
        boxes = [b + [replace(u, cls=-1) for u in us] for b, us in zip(boxes, unconfirmed)]
    return (images, boxes, mix), facts


def _given(command: str | None, annotations, boxes, split, pseudo: dict | None) -> dict:
    """The part of ``report.json`` on what a training was given."""
    return {
        "command": command or " ".join(sys.argv),
        "annotations": str(Path(annotations).resolve()),
        "n_images": len(boxes),
        "n_boxes": sum(len(b) for b in boxes),
        "pseudo": pseudo,
        "train_images": split[0],
        "val_images": split[1],
    }


def _checked_config(config: TrainConfig | None, epochs: int, width: str) -> TrainConfig:
    """``config`` with ``epochs`` and ``width`` set, its crop shares checked."""
    cfgt = TrainConfig(**{**asdict(config or TrainConfig()), "epochs": int(epochs), "width": width})
    for name, share in (("small_focus", cfgt.small_focus), ("large_focus", cfgt.large_focus)):
        if not 0 <= share <= 1:
            option = "--" + name.replace("_", "-")
            raise FamousError(
                f"{name} is {share}, not a share of the crops.",
                fix=f"give {option} between 0 and 1 (0.3: three crops in ten).",
            )
    return cfgt


def _network(cfgt: TrainConfig, classes, wh: np.ndarray) -> tuple[DarknetTorch, str, list]:
    """The network to train, its cfg text and its anchors (w, h), smallest first.

    A new YOLOv4-tiny with anchors from the training boxes' sizes ``wh``, or
    with ``cfgt.init`` the model it fine-tunes.
    """
    if not cfgt.init:
        anchors = kmeans_anchors(wh, 3 * cfgt.heads, cfgt.seed)
        channels = 3 if cfgt.neighbours else 1
        cfg_text = yolo_tiny_cfg(
            len(classes), anchors, cfgt.width, channels, cfgt.input_size, cfgt.heads
        )
        return DarknetTorch(cfg_text), cfg_text, anchors
    # fine-tune an existing model: its cfg (and so its anchors and width) is kept
    init = Path(cfgt.init)
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
    return net, cfg_text, anchors


class _Trainer:
    """One training run: network, optimiser, weight average, schedule and checkpoint.

    Parameters
    ----------
    cfgt : TrainConfig
    classes : ClassConfig
    boxes : list of list of Box
        The training images' boxes.
    ckpt_path : Path
        The checkpoint, written after every epoch.
    t_start : float
        ``time.perf_counter()`` when the run started.
    """

    def __init__(self, cfgt: TrainConfig, classes, boxes, ckpt_path: Path, t_start: float):
        self.cfgt = cfgt
        self.n_classes = len(classes)
        self.boxes = boxes
        self.ckpt_path = ckpt_path
        self.t_start = t_start
        self.device_type = torch.device(cfgt.device).type
        if cfgt.threads:
            torch.set_num_threads(cfgt.threads)
        torch.manual_seed(cfgt.seed)  # the new network's starting weights
        self.wh = np.array([(b.w, b.h) for bs in boxes for b in bs])
        self.net, self.cfg_text, self.anchors = _network(cfgt, classes, self.wh)
        self.opt = torch.optim.AdamW(
            self.net.parameters(), lr=cfgt.lr, weight_decay=cfgt.weight_decay
        )
        self.total_steps = cfgt.epochs * cfgt.steps_per_epoch
        self.warmup = min(100, self.total_steps // 10)
        self.ema = weight_average(self.net, self.total_steps) if cfgt.ema else None
        self.key = json.loads(
            json.dumps(
                {"config": cfgt.key(), "anchors": self.anchors, "classes": list(classes.names)}
            )
        )
        self.start_epoch, self.history, self.elapsed_before = 0, [], 0.0

    def lr_at(self, step: int) -> float:
        """Learning rate at a step: linear warm-up, then cosine down to 5 % of the peak."""
        cfgt = self.cfgt
        if step < self.warmup:
            return cfgt.lr * (step + 1) / self.warmup
        t = (step - self.warmup) / max(1, self.total_steps - self.warmup)
        return cfgt.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))

    def elapsed(self) -> float:
        """Seconds of this training, over its interrupted runs too."""
        return self.elapsed_before + time.perf_counter() - self.t_start

    def resume(self) -> None:
        """Continue from the checkpoint, when its settings match this run's."""
        if not self.ckpt_path.is_file():
            return
        try:
            # weights_only: a checkpoint is plain data, so a crafted pickle in a
            # shared or downloaded model folder cannot run code here
            state = torch.load(self.ckpt_path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises UnpicklingError, RuntimeError or EOFError
            raise FamousError(
                f"is not a checkpoint FAMOUS can trust or read ({type(err).__name__}).",
                self.ckpt_path,
                "delete it, or train again with --restart.",
            ) from None
        if state.get("key") != self.key:
            return
        self.net.layers.load_state_dict(state["model"])
        if self.ema is not None:  # the key holds cfgt.ema, so the checkpoint has an average
            self.ema.load_state_dict(state["ema"])
        if state.get("optimizer") is not None:
            self.opt.load_state_dict(state["optimizer"])
        self.start_epoch, self.history = state["epoch"], state["history"]
        self.elapsed_before = state.get("elapsed", 0.0)

    def _to_device(self) -> None:
        device = self.cfgt.device
        self.net.layers.to(device)
        if self.ema is not None:
            self.ema.to(device)
        for group in self.opt.state.values():
            for k, v in group.items():
                if torch.is_tensor(v) and k != "step":
                    group[k] = v.to(device)

    def run(self, images: list[np.ndarray], amp_dtype, progress: ProgressFn, pseudo=None) -> float:
        """Train the remaining epochs on random crops of ``images``, checkpointing each.

        ``pseudo``: pseudo-labelled images, their boxes and their mix
        (:class:`~.data.PseudoShare`), or None.
        Returns the seconds of training, over interrupted runs too.
        """
        cfgt = self.cfgt
        progress = sub(progress, 0.0, 0.9)  # the rest is calibration
        self._to_device()
        boxes = [boxes_array(b) for b in self.boxes]
        mix = None
        if pseudo is not None:
            images = [*images, *pseudo[0]]
            boxes += [boxes_array(b) for b in pseudo[1]]
            mix = pseudo[2]
        sampler = CropSampler(
            images,
            boxes,
            cfgt.train_size,
            AugmentConfig(small_focus=cfgt.small_focus, large_focus=cfgt.large_focus),
            mix,
        )
        self.net.train()
        first, last = self.start_epoch * cfgt.steps_per_epoch, cfgt.epochs * cfgt.steps_per_epoch
        # batches are drawn ahead in threads (OpenCV and numpy release the GIL), each
        # from its own (seed, step) generator, so the data do not depend on the threads
        pool = ThreadPoolExecutor(max(1, cfgt.workers))
        ahead = 2 * max(1, cfgt.workers)
        pending = {
            g: pool.submit(sampler.batch, cfgt.batch, (cfgt.seed, g))
            for g in range(first, min(first + ahead, last))
        }
        try:
            for epoch in range(self.start_epoch, cfgt.epochs):
                sums = {"loss": 0.0, "box": 0.0, "obj": 0.0, "cls": 0.0}
                for step in range(cfgt.steps_per_epoch):
                    g = epoch * cfgt.steps_per_epoch + step
                    if g + ahead < last:
                        pending[g + ahead] = pool.submit(
                            sampler.batch, cfgt.batch, (cfgt.seed, g + ahead)
                        )
                    x, t, negatives, unknown = pending.pop(g).result()
                    loss, parts = self._step(g, x, t, (negatives, unknown), amp_dtype)
                    sums["loss"] += loss
                    for k in ("box", "obj", "cls"):
                        sums[k] += parts[k]
                self._end_epoch(epoch, sums, progress)
        finally:
            for f in pending.values():
                f.cancel()
            pool.shutdown(wait=True)
        return self.elapsed()

    def _step(self, g: int, x, t, background, amp_dtype) -> tuple[float, dict]:
        """One optimiser step (global step ``g``) on images ``x`` with targets ``t``.

        ``background``: per image, the weight of its background, and the
        regions left out of the loss (``negatives``, ``unknown`` of
        :func:`~.loss.yolo_loss`).
        """
        cfgt = self.cfgt
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(g)
        with torch.autocast(self.device_type, amp_dtype, enabled=amp_dtype is not None):
            raws = self.net(x.to(cfgt.device))
        hw = (cfgt.train_size, cfgt.train_size)
        negatives, unknown = background
        loss, parts = yolo_loss(
            self.net, [r.float() for r in raws], t, hw, negatives=negatives, unknown=unknown
        )
        self.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 10.0)
        self.opt.step()
        if self.ema is not None:
            self.ema.update_parameters(self.net.layers)
        return loss.item(), parts

    def _end_epoch(self, epoch: int, sums: dict, progress: ProgressFn) -> None:
        """Record the epoch's mean losses, write the checkpoint, report progress."""
        cfgt = self.cfgt
        means = {k: v / cfgt.steps_per_epoch for k, v in sums.items()}
        self.history.append({"epoch": epoch + 1, **means})
        final_epoch = epoch + 1 == cfgt.epochs
        state = {
            "key": self.key,
            "model": _on_cpu(self.net.layers),
            "ema": None if self.ema is None else _on_cpu(self.ema),
            # the optimiser is only needed to go on training
            "optimizer": None if final_epoch else self.opt.state_dict(),
            "epoch": epoch + 1,
            "history": self.history,
            "elapsed": self.elapsed(),
        }
        with atomic_path(self.ckpt_path) as tmp:
            torch.save(state, tmp)
        done = epoch + 1 - self.start_epoch
        eta = (time.perf_counter() - self.t_start) / done * (cfgt.epochs - epoch - 1)
        progress(
            (epoch + 1) / cfgt.epochs,
            f"epoch {epoch + 1}/{cfgt.epochs} loss {means['loss']:.2f} ETA {eta / 60:.1f} min",
        )

    def export(self, out: Path, classes) -> None:
        """Write the model folder's cfg, weights (the average's, if any), their checksum,
        names and classes."""
        cfgt, net = self.cfgt, self.net
        net.eval()
        net.layers.to("cpu")
        if self.ema is not None:
            net.layers.load_state_dict(self.ema.module.state_dict())
        atomic_write_bytes(out / CFG_NAME, self.cfg_text.encode())
        net.save_weights(out / WEIGHTS_NAME, seen=cfgt.epochs * cfgt.steps_per_epoch * cfgt.batch)
        # loading compares it, so weights of another training are not run unnoticed
        write_checksum(out / WEIGHTS_NAME)
        atomic_write_bytes(out / NAMES_NAME, "".join(n + "\n" for n in classes.names).encode())
        save_classes(classes, out / CLASSES_NAME)

    def detect_settings(self, zoom: dict[int, float]) -> DetectSettings:
        """Inference settings to calibrate: tile overlap and whole-slice classes from the boxes."""
        cfgt, boxes = self.cfgt, self.boxes
        overlap = int(min(cfgt.input_size // 2, max(32, np.percentile(self.wh.max(1), 95) * 1.1)))
        n_classes = self.n_classes
        big = [
            c
            for c in range(n_classes)
            if any(b.cls == c for bs in boxes for b in bs)
            and np.median([max(b.w, b.h) for bs in boxes for b in bs if b.cls == c])
            > 0.6 * cfgt.input_size
        ]
        return DetectSettings(
            [0.25] * n_classes,
            tile_overlap=overlap,
            whole_slice_classes=big,
            flip_views=cfgt.flip_views,
            neighbours=cfgt.neighbours,
            zoom_thresholds=zoom,
        )

    def facts(self, train_seconds: float, amp_dtype) -> dict:
        """The run's part of ``report.json``: settings, anchors, times, torch, losses."""
        return {
            "config": asdict(self.cfgt),
            "anchors": self.anchors,
            "train_seconds": round(train_seconds, 1),
            "total_seconds": round(self.elapsed(), 1),
            "torch": torch.__version__,
            "forward_dtype": "bfloat16" if amp_dtype is not None else "float32",
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "history": self.history,
        }
