"""Detector subcommands: ``annotate-pick``, ``boxes-from-labels``, ``train``, ``recalibrate``."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..core.detector.config import DEFAULT_EPOCHS
from ..core.errors import FamousError
from . import add_voxel_size


def cmd_annotate_pick(args) -> int:
    """Export evenly spread slices as 8-bit PNGs for YOLO_mark, with ``obj.names``."""
    # imported when the command runs, so that `famous --help` stays quick
    from ..core.annotations import export_for_annotation
    from ..core.classes import load_classes
    from ..core.progress import TqdmProgress
    from ..core.stack import open_stack

    stack = open_stack(args.stack)
    classes = load_classes(args.classes)
    bar = TqdmProgress("annotate-pick")
    try:
        picks = export_for_annotation(
            stack,
            classes,
            args.out,
            args.fraction,
            args.min_slices,
            progress=bar,
            neighbours=args.neighbours,
        )
    finally:
        bar.close()
    print(f"wrote {len(picks)} slices ({', '.join(str(k) for k in picks)}) to {args.out}")
    print(f"classes in obj.names: {', '.join(classes.names)}")
    print(
        "box them with YOLO_mark, then: famous train",
        args.out,
        "--classes",
        args.classes,
        "--out MODEL",
    )
    return 0


def cmd_boxes_from_labels(args) -> int:
    """Turn a label volume into YOLO boxes (and, with --stack, PNGs) for chosen slices."""
    # imported when the command runs, so that `famous --help` stays quick
    import numpy as np

    from ..core.annotations import (
        boxes_from_label_slice,
        parse_slice_list,
        spread_indices,
        write_neighbours,
        write_source,
        write_yolo_mark,
    )
    from ..core.boxes import write_yolo_txt
    from ..core.classes import load_classes
    from ..core.fileio import read_csv
    from ..core.stack import open_stack

    labels = open_stack(args.labels)
    classes = load_classes(args.classes)
    if args.slices:
        picks = parse_slice_list(args.slices, len(labels))
    else:
        picks = spread_indices(len(labels), args.fraction)
    if args.label_classes:
        class_of = {}
        for row in read_csv(args.label_classes):
            if "id" not in row or "class" not in row:
                raise FamousError(
                    "needs the columns id and class.",
                    args.label_classes,
                    "e.g. the phantom's truth.csv.",
                )
            class_of[int(row["id"])] = classes.index(row["class"])
    else:
        class_of = classes.index(args.cls) if args.cls else 0
    image_stack = open_stack(args.stack) if args.stack else None
    if args.neighbours and image_stack is None:
        raise FamousError(
            "--neighbours needs the image stack.", fix="add --stack STACK (the images)."
        )
    if image_stack is not None and image_stack.shape != labels.shape:
        raise FamousError(
            f"has shape {image_stack.shape}, the labels {labels.shape}.",
            args.stack,
            "give the image stack the labels were drawn on.",
        )
    boxes = [
        boxes_from_label_slice(labels.read_raw(k), class_of, args.min_pixels, args.split_touching)
        for k in picks
    ]
    stems = [f"slice_{k:05d}" for k in picks]
    if image_stack is not None:
        write_yolo_mark(args.out, [image_stack.read(k) for k in picks], stems, classes.names, boxes)
        if args.neighbours:
            write_neighbours(args.out, image_stack, picks)
        write_source(args.out, image_stack)
    else:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for stem, b in zip(stems, boxes):
            write_yolo_txt(out / f"{stem}.txt", b, labels.shape[1:])
    n = sum(len(b) for b in boxes)
    counts = np.bincount([b.cls for bs in boxes for b in bs], minlength=len(classes))
    print(f"wrote {n} boxes on {len(picks)} slices to {args.out}")
    for name, c in zip(classes.names, counts):
        print(f"  {name:<16} {c}")
    return 0


def cmd_train(args) -> int:
    """Train a YOLOv4-tiny detector on a YOLO_mark folder and write a model folder."""
    # imported when the command runs, so that `famous --help` stays quick
    from ..core.annotations import slices_pixel_nm
    from ..core.classes import load_classes
    from ..core.detector.config import TrainConfig, require_torch
    from ..core.progress import TqdmProgress

    annotations = args.annotations[0]
    if len(args.annotations) > 1:
        # imported when the command runs, so that `famous --help` stays quick
        from ..core.annotations import MERGED_DIR, merge_folders

        annotations = str(merge_folders(args.annotations, Path(args.out) / MERGED_DIR))
    classes = load_classes(args.classes, annotations=annotations)
    config = TrainConfig(
        heads=args.heads,
        input_size=args.input_size,
        train_size=args.train_size,
        batch=args.batch,
        steps_per_epoch=args.steps_per_epoch,
        seed=args.seed,
        threads=args.threads,
        device=args.device,
        workers=args.workers,
        lr=args.lr,
        init=args.init or "",
        flip_views=args.flip_views,
        neighbours=args.neighbours,
        small_focus=args.small_focus,
        large_focus=args.large_focus,
        ema=not args.no_ema,
        precision=args.precision,
        zoom_pass=_zoom_pass_option(args.zoom_pass or []),
    )
    require_torch()
    # torch: the optional train extra, imported after the check above explains its absence
    from ..core.detector.train import train_model

    bar = TqdmProgress("train")
    command = "famous " + " ".join(shlex.quote(a) for a in sys.argv[1:])

    stack = _self_training_stack(args)
    # each class's extraction recipe chosen on the boxes too (self-training does that itself)
    pixel_nm = None if stack else slices_pixel_nm(args.annotations, args.voxel_size)

    def train(out, pseudo=None, mix=None, progress=bar):
        return train_model(
            annotations,
            classes,
            out,
            epochs=args.epochs,
            width=args.width,
            progress=progress,
            config=config,
            command=command,
            resume=not args.restart,
            pseudo=pseudo,
            mix=mix,
            pixel_nm=pixel_nm,
        )

    try:
        report = (
            _self_train(args, stack, annotations, classes, train, bar) if stack else train(args.out)
        )
    finally:
        bar.close()
    _print_trained(report, args.out)
    return 0


def _print_trained(report: dict, out) -> None:
    """What a training did: time, metrics, self-training rounds, insets, where the model is."""
    from ..core.calibrate import inset_lines  # extraction's modules, once a model exists

    print(f"trained in {report['train_seconds'] / 60:.1f} min")
    _print_metrics(report)
    for facts in report.get("self_training", {}).get("rounds", []):
        added = facts.get("pseudo") or {}
        print(
            f"self-training round {facts['round']}: held-out mAP@0.5 {facts['mAP50']:.3f}"
            + (f", {added['n_boxes']} pseudo-boxes on {added['n_images']} slices" if added else "")
        )
    for line in inset_lines(report.get("extraction_calibration")):
        print(line)
    print(f"model written to {out}")


def _self_training_stack(args):
    """The stack ``famous train`` self-trains on: ``--stack``, else the one the slices'
    ``source.json`` records (``annotate-pick`` writes it); None with ``--no-self-train``
    or where no stack is known or it is not there (said in one line)."""
    # imported when the command runs, so that `famous --help` stays quick
    from ..core.annotations import recorded_stack, recorded_voxel_size
    from ..core.stack import open_stack

    if args.no_self_train:
        return None
    voxel = tuple(args.voxel_size) if args.voxel_size else recorded_voxel_size(args.annotations)
    path = args.stack or recorded_stack(args.annotations)
    if path is None:
        print("no self-training: the boxed slices' stack is not known (--stack STACK)")
        return None
    if not args.stack and not Path(path).exists():
        print(f"no self-training: {path}, the slices' stack (source.json), is not there")
        return None
    stack = open_stack(path, voxel)
    if stack.voxel_size_nm is None:  # its runs need it
        print(f"no self-training: {path} has no voxel size (--voxel-size Z Y X)")
        return None
    print(f"self-training on {path} (--no-self-train: off)")
    return stack


def _self_train(args, stack, annotations, classes, train, bar) -> dict:
    """Self-training: the first training, then rounds on the stack's other slices."""
    # imported when the command runs, so that `famous --help` stays quick
    from ..core.selftrain import SelfTrainConfig, self_train

    config = SelfTrainConfig(rounds=args.rounds, slices=args.pseudo_slices)
    return self_train(annotations, stack, classes, args.out, train, config, bar)


def _zoom_pass_option(items: list[str]) -> dict[str, float]:
    """``--zoom-pass CLASS=SCORE`` options as {class: score}."""
    out = {}
    for item in items:
        name, _, score = item.partition("=")
        try:
            out[name] = float(score)
        except ValueError:
            raise FamousError(
                f"--zoom-pass {item!r} is not CLASS=SCORE.", fix="e.g. --zoom-pass lysosome=0.9."
            ) from None
    return out


def cmd_recalibrate(args) -> int:
    """Choose a model folder's thresholds again on annotated slices."""
    # imported when the command runs, so that `famous --help` stays quick
    from ..core.detector.calibrate import recalibrate_model

    command = "famous " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    report = recalibrate_model(args.model, args.annotations, args.flip_views, command)
    _print_metrics(report)
    off = [n for n, v in report["metrics"]["containment"].items() if v is None]
    print(f"containment suppression off for: {', '.join(off) or 'no class'}")
    print(f"thresholds.json and report.json of {args.model} updated")
    return 0


def _print_metrics(report: dict) -> None:
    m = report["metrics"]
    print(f"evaluated on {m['evaluated_on']}")
    print(f"mAP@0.5 {m['mAP50']:.3f}")
    print(f"{'class':<16} {'AP50':>6} {'prec':>6} {'recall':>6} {'thresh':>6}")
    for name, c in m["per_class"].items():
        print(
            f"{name:<16} {c['AP50']:>6.3f} {c['precision']:>6.3f} {c['recall']:>6.3f} "
            f"{report['thresholds'][name]:>6.3f}"
        )
    cases = ", ".join(f"{k} {v['recall']:.3f} (n={v['n']})" for k, v in m["recall_by_case"].items())
    print(f"recall by case: {cases}")


NEIGHBOURS_HELP = (
    "also write neighbours/: each slice between the slices above and below it, "
    "for famous train --neighbours"
)


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add ``annotate-pick``, ``boxes-from-labels``, ``train`` and ``recalibrate``."""
    _add_annotate_pick(subparsers)
    _add_boxes_from_labels(subparsers)
    _add_train(subparsers)
    _add_recalibrate(subparsers)


def _add_annotate_pick(subparsers: argparse._SubParsersAction) -> None:
    """The ``annotate-pick`` command."""
    p = subparsers.add_parser(
        "annotate-pick",
        help="export evenly spread slices (~1%%) as PNGs for boxing in YOLO_mark",
    )
    p.add_argument("stack", help="multi-page TIFF, folder of slices, or MRC")
    p.add_argument("--fraction", type=float, default=0.01, help="share of slices (default 0.01)")
    p.add_argument("--min-slices", type=int, default=2, help="at least this many slices")
    p.add_argument("--out", required=True, help="folder to write (must not hold these slices)")
    p.add_argument(
        "--classes",
        default="fibsem",
        help="class TOML, obj.names, or fibsem/yeast (default fibsem)",
    )
    p.add_argument("--neighbours", action="store_true", help=NEIGHBOURS_HELP)
    p.set_defaults(func=cmd_annotate_pick)


def _add_boxes_from_labels(subparsers: argparse._SubParsersAction) -> None:
    """The ``boxes-from-labels`` command."""
    p = subparsers.add_parser(
        "boxes-from-labels",
        help="YOLO boxes from an existing label volume, for chosen slices",
        description="Each 4-connected piece of one label on a slice becomes a box; a binary "
        "mask works too. Class: --class for all, or --label-classes CSV (id,class).",
    )
    p.add_argument("labels", help="label volume (TIFF/folder/MRC; 0 = background)")
    p.add_argument("--slices", help="0-based slices: 10,50,90 or 5-9 or 0:200:20")
    p.add_argument("--fraction", type=float, default=0.01, help="spread slices, when no --slices")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--stack", help="the image stack, to write the slice PNGs beside the boxes")
    p.add_argument("--classes", default="fibsem", help="class TOML, obj.names, or fibsem/yeast")
    p.add_argument("--class", dest="cls", help="class name of every label (default: the first)")
    p.add_argument("--label-classes", help="CSV with columns id,class (e.g. a phantom's truth.csv)")
    p.add_argument("--min-pixels", type=int, default=4, help="drop smaller pieces (default 4)")
    p.add_argument(
        "--split-touching",
        type=float,
        default=0.0,
        metavar="DEPTH",
        help="cut pieces where they narrow, one box per part, for a semantic mask whose "
        "organelles touch (0.25: where a quarter narrower than the thickest part; default 0: off)",
    )
    p.add_argument("--neighbours", action="store_true", help=NEIGHBOURS_HELP)
    p.set_defaults(func=cmd_boxes_from_labels)


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    """The ``train`` command."""
    p = subparsers.add_parser(
        "train",
        help="train a YOLOv4-tiny detector on YOLO_mark boxes (needs the train extra)",
        description="Writes MODEL_DIR with model.cfg, model.weights, obj.names, classes.toml, "
        "thresholds.json and report.json; `famous run --model MODEL_DIR` needs nothing else. "
        "An interrupted training resumes from MODEL_DIR/checkpoint.pt.",
    )
    p.add_argument(
        "annotations",
        nargs="+",
        help="YOLO_mark folder(s) (images + .txt boxes): e.g. the first slices and the "
        "corrected ones from famous suggest",
    )
    p.add_argument("--classes", required=True, help="class TOML, obj.names, or fibsem/yeast")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument(
        "--epochs",
        type=int,
        default=DEFAULT_EPOCHS,
        help=f"passes of 16 batches (default {DEFAULT_EPOCHS}: 11-12 min on two cores)",
    )
    p.add_argument(
        "--width", choices=["tiny", "slim"], default="slim", help="slim: 1/4 the compute"
    )
    p.add_argument("--heads", type=int, choices=[2, 3], default=2, help="3 adds a stride-8 head")
    p.add_argument("--input-size", type=int, default=416, help="network input (tile) size")
    p.add_argument("--train-size", type=int, default=256, help="training crop size")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps-per-epoch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW)")
    p.add_argument("--init", metavar="MODEL_DIR", help="fine-tune this model (keeps its cfg)")
    p.add_argument("--device", default="cpu", help="torch device for training: cpu, cuda, cuda:1")
    p.add_argument("--workers", type=int, default=2, help="threads preparing batches")
    _add_train_extras(p)
    p.set_defaults(func=cmd_train)


def _add_train_extras(p: argparse.ArgumentParser) -> None:
    """``train``'s options for views, neighbouring slices, crops, averaging, precision, zoom."""
    p.add_argument(
        "--flip-views",
        type=int,
        choices=[1, 2, 4],
        default=1,
        help="test-time mirrored views the model is calibrated and run with (1: off)",
    )
    p.add_argument(
        "--neighbours",
        action="store_true",
        help="the detector sees each slice between the slices above and below it "
        "(needs the annotation folder's neighbours/, from annotate-pick --neighbours); "
        "with --init of a one-slice model, its weights start the middle channel",
    )
    p.add_argument(
        "--small-focus",
        type=float,
        default=0.0,
        metavar="P",
        help="share of training crops centred on a small box (under a quarter of its "
        "class's median area), at zoom >= 1 (default 0)",
    )
    p.add_argument(
        "--large-focus",
        type=float,
        default=0.0,
        metavar="P",
        help="share of the other training crops that hold the whole of a large box (longer "
        "side over half the crop), zoomed out to fit: organelles larger than half a crop are "
        "otherwise learnt in pieces (default 0)",
    )
    p.add_argument(
        "--no-ema",
        action="store_true",
        help="export the last step's weights instead of their moving average "
        "over the last tenth of the steps",
    )
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="forward pass in bfloat16 (weights stay float32); auto: bf16 on a CPU with "
        "AMX, where an epoch was 1.3x faster",
    )
    p.add_argument(
        "--zoom-pass",
        action="append",
        metavar="CLASS=SCORE",
        help="also look for CLASS on each slice enlarged 1.5x, keeping boxes up to 20 px "
        "that score SCORE (small cross-sections; repeat for more classes; e.g. lysosome=0.9)",
    )
    p.add_argument("--restart", action="store_true", help="ignore a checkpoint in --out")
    p.add_argument(
        "--stack",
        help="the stack to self-train on: after training, FAMOUS runs on it and retrains on "
        "the organelles it confirms in 3-D on slices you did not box (default: the stack "
        "the slices come from, which annotate-pick records; give the one you will run)",
    )
    p.add_argument(
        "--no-self-train",
        action="store_true",
        help="train on your boxes only: no second training and no run over the stack",
    )
    p.add_argument("--rounds", type=int, default=1, help="self-training rounds (default 1)")
    p.add_argument(
        "--pseudo-slices",
        type=int,
        default=0,
        metavar="N",
        help="slices pseudo-labelled per round (default: 4 per boxed slice, 10-40)",
    )
    add_voxel_size(
        p,
        "the stack's voxel size in nm, where its metadata (--stack) or the annotation "
        "folder's source.json (annotate-pick) lacks it: with it, each class's extraction "
        "recipe is chosen on your boxes too",
    )
    p.set_defaults(func=cmd_train)


def _add_recalibrate(subparsers: argparse._SubParsersAction) -> None:
    """The ``recalibrate`` command."""
    p = subparsers.add_parser(
        "recalibrate",
        help="choose a trained model's thresholds again on annotated slices",
        description="Rewrites MODEL_DIR/thresholds.json as `famous train` would at its end "
        "(box and confirm thresholds, box scale, containment suppression per class) and adds "
        "the new metrics to report.json. The weights are not touched.",
    )
    p.add_argument("model", help="model folder (famous train output)")
    p.add_argument("annotations", help="YOLO_mark folder (images + .txt boxes)")
    p.add_argument(
        "--flip-views", type=int, choices=[1, 2, 4], help="test-time views (default: the model's)"
    )
    p.set_defaults(func=cmd_recalibrate)
