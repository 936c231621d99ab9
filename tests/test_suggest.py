"""Suggested slices: where a run's 3-D result doubts itself, pre-filled for correcting."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from famous_addon.cli import main
from famous_addon.core.annotations import merge_folders, read_yolo_mark
from famous_addon.core.detector.boxops import iou_matrix
from famous_addon.core.errors import FamousError
from famous_addon.core.fileio import read_csv
from famous_addon.core.phantom.write import write_phantom
from famous_addon.core.stack import open_stack
from famous_addon.core.suggest import (
    REASONS,
    SUGGESTIONS_CSV,
    model_annotations,
    pick_slices,
    prefilled_boxes,
    slice_doubts,
    suggest,
)

DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo_model"


def _row(k, oid, x=10, y=10, w=20, h=20, score=0.9, cls="mito"):
    return {"slice": k, "class": cls, "x": x, "y": y, "w": w, "h": h, "score": score,
            "organelle_id": oid}  # fmt: skip


def test_doubts_count_each_kind_on_its_slices():
    rows = [_row(k, 1) for k in range(0, 10)]  # a track that stops at 9 ...
    rows += [_row(k, 2, x=14) for k in range(14, 30)]  # ... and starts again at 14, same place
    rows += [_row(k, 3, x=100) for k in range(0, 30) if k != 20]
    rows += [_row(20, 3, x=100, score=0.0)]  # filled in by gap filling
    rows += [_row(22, 3, x=100, w=40, h=40)]  # one organelle, two boxes on a slice
    rows += [_row(25, 4, x=200, y=200, score=0.3)]  # weak: threshold 0.25 + 0.25 * 0.75
    rows += [_row(26, 0, x=300, y=300)]  # dropped by the 3-D result
    rows += [_row(k, 5, x=400, w=20 if k != 5 else 45) for k in range(0, 12)]  # swells on 5
    d = slice_doubts(rows, 30, {"mito": 0.25}, max_gap=6)
    assert set(d) == set(REASONS)
    assert np.flatnonzero(d["broken_tracks"]).tolist() == [10, 11, 12, 13]
    assert np.flatnonzero(d["filled_boxes"]).tolist() == [20]
    assert np.flatnonzero(d["weak_boxes"]).tolist() == [25]
    assert np.flatnonzero(d["dropped_boxes"]).tolist() == [26]
    assert np.flatnonzero(d["suspected_merges"]).tolist() == [5, 22]
    # a track that starts again further than max_gap away is another organelle
    far = slice_doubts(rows[:10] + [_row(k, 2) for k in range(20, 30)], 30, {}, max_gap=6)
    assert not far["broken_tracks"].any()


def test_prefilled_boxes_keep_one_box_a_cross_section():
    rows = [
        _row(4, 1, x=0, y=0, w=10, h=10, score=0.9),  # an organelle boxed whole ...
        _row(4, 1, x=2, y=2, w=4, h=4, score=0.95),  # ... and a piece of it, scored higher
        _row(4, 1, x=40, y=0, w=10, h=10, score=0.5),  # its second cross-section (curved)
        _row(4, 2, x=5, y=5, w=10, h=10, score=0.8),  # a neighbour overlapping it
        _row(4, 3, x=60, y=60, w=8, h=8, score=0.0),  # filled in by 3-D continuity
        _row(4, 0, x=90, y=90, w=8, h=8),  # dropped by the 3-D result
        _row(5, 1, x=0, y=0, w=10, h=10),
    ]
    (got,) = prefilled_boxes(rows, [4], ["mito"])
    assert sorted((b.x, b.y, b.w) for b in got) == [(2, 2, 4), (5, 5, 10), (40, 0, 10), (60, 60, 8)]


def test_picks_take_most_doubt_spread_and_away_from_boxed_slices():
    doubt = {kind: np.zeros(100, np.int64) for kind in REASONS}
    doubt["broken_tracks"][[20, 21, 22, 80]] = [3, 3, 3, 2]
    doubt["weak_boxes"][51] = 9  # 4.5 after weighting, but next to a boxed slice
    picks = pick_slices(doubt, 3, boxed=[50])
    # spacing 100 // (2 * 4) = 12; among equal doubt the slice furthest from the boxed one
    assert [p.slice for p in picks[:2]] == [20, 80]
    assert picks[0].counts["broken_tracks"] == 3 and "3 broken tracks" in picks[0].why()
    assert picks[2].score == 0 and picks[2].why().startswith("no doubt")
    assert min(abs(picks[2].slice - k) for k in (20, 50, 80)) >= 12


def test_suggest_finds_the_region_a_model_missed_and_prefills_its_boxes(tmp_path, capsys):
    ph = tmp_path / "ph"
    write_phantom(ph, shape=(32, 256, 256), seed=3, stl=False)
    stack, labels = str(ph / "stack.tif"), str(ph / "truth_labels.tif")
    every, first = tmp_path / "every", tmp_path / "first"
    for out, slices in ((every, "0-31"), (first, "4,27")):
        args = ["boxes-from-labels", labels, "--slices", slices, "--out", str(out)]
        args += ["--stack", stack, "--classes", "fibsem", "--label-classes", str(ph / "truth.csv")]
        assert main(args) == 0
    # the "model" misses one organelle on slices 12-19: its boxes are taken out there
    truth = tifffile.imread(labels)
    inside = [set(np.unique(truth[k])) - {0} for k in range(32)]
    around = set.intersection(*inside[8:24])
    lost = max(around, key=lambda t: np.count_nonzero(truth[12:20] == t))
    for k in range(12, 20):
        ys, xs = np.nonzero(truth[k] == lost)
        where = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], float)
        txt = every / f"slice_{k:05d}.txt"
        lines = txt.read_text().splitlines()
        cxcywh = np.array([list(map(float, ln.split()[1:])) for ln in lines]) * 256
        xyxy = np.c_[cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2]
        keep = iou_matrix(xyxy, where)[0][:, 0] < 0.5
        assert not keep.all()
        txt.write_text("".join(ln + "\n" for ln, k_ in zip(lines, keep) if k_))
    run = tmp_path / "run"
    args = ["run", stack, "--classes", "fibsem", "--boxes", str(every), "--out", str(run)]
    assert main(args + ["--fill-gaps-nm", "0"]) == 0
    out = tmp_path / "suggested"
    args = ["suggest", str(DEMO), stack, "--n", "2", "--out", str(out), "--run", str(run)]
    assert main(args + ["--annotations", str(first)]) == 0
    said = capsys.readouterr().out
    # the next step, as the user types it (the demo model sees slices between neighbours)
    assert f"famous train FIRST_DIR {out} --init {DEMO}" in said and "--neighbours" in said
    rows = read_csv(out / SUGGESTIONS_CSV)
    picked = [int(r["slice"]) for r in rows]
    assert any(12 <= k <= 19 for k in picked), picked
    hit = next(r for r in rows if 12 <= int(r["slice"]) <= 19)
    # where the organelle was lost, its track breaks or 3-D continuity had to fill it in
    assert int(hit["broken_tracks"]) + int(hit["filled_boxes"]) >= 1
    assert "broken track" in hit["why"] or "filled-in box" in hit["why"]
    assert all(abs(k - b) >= 2 for k in picked for b in (4, 27))
    # the pre-filled boxes are the run's boxes there, read back as YOLO_mark would
    images, prefilled = read_yolo_mark(out, 5, load_images=True)
    assert len(images) == 2 and (out / "neighbours" / f"slice_{picked[0]:05d}.png").is_file()
    dets = read_csv(run / "detections.csv")
    for k, got in zip(sorted(picked), prefilled):
        want = [d for d in dets if int(d["slice"]) == k and int(d["organelle_id"] or 0)]
        assert len(got) == len(want) == int(rows[picked.index(k)]["prefilled_boxes"])
        a = np.array([(b.x, b.y, b.x + b.w, b.y + b.h) for b in got])
        b = np.array([[float(d[c]) for c in "xywh"] for d in want])
        b[:, 2:] += b[:, :2]
        b = np.clip(b, 0, 256)  # a box reaching past the slice is written clipped to it
        assert (iou_matrix(b, a)[0].max(axis=1) > 0.99).all()
    # a second export into the same folder never overwrites the user's corrections
    assert main(args + ["--annotations", str(first)]) != 0
    with pytest.raises(FamousError, match="no slices to suggest"):
        suggest(DEMO, open_stack(stack), tmp_path / "x", n=0, run=run)
    with pytest.raises(FamousError, match="not a model folder"):
        suggest(tmp_path, open_stack(stack), tmp_path / "x", run=run)


def test_merge_folders_joins_annotation_folders_and_refuses_clashes(tmp_path):
    ph = tmp_path / "ph"
    write_phantom(ph, shape=(12, 160, 160), seed=1, stl=False)
    for name, slices in (("a", "2,5"), ("b", "8"), ("c", "5")):
        args = ["boxes-from-labels", str(ph / "truth_labels.tif"), "--slices", slices]
        args += ["--out", str(tmp_path / name), "--stack", str(ph / "stack.tif"), "--neighbours"]
        assert main(args + ["--label-classes", str(ph / "truth.csv")]) == 0
    merged = merge_folders([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    images, boxes = read_yolo_mark(merged, 5, load_images=True)
    _, a_boxes = read_yolo_mark(tmp_path / "a", 5)
    _, b_boxes = read_yolo_mark(tmp_path / "b", 5)
    assert len(images) == 3 and len(list((merged / "neighbours").glob("*.png"))) == 3
    assert boxes == a_boxes + b_boxes
    merge_folders([tmp_path / "a", tmp_path / "b"], tmp_path / "m")  # its own folder: remade
    with pytest.raises(FamousError, match="slice_00005"):
        merge_folders([tmp_path / "a", tmp_path / "c"], tmp_path / "m2")
    assert not (tmp_path / "m2").exists()  # checked before anything is written
    with pytest.raises(FamousError, match="not a folder FAMOUS merged"):
        merge_folders([tmp_path / "a"], tmp_path / "b")  # a user's folder is never touched
    assert (tmp_path / "b" / "slice_00008.txt").is_file()


def test_train_takes_several_annotation_folders(tmp_path):
    pytest.importorskip("torch")
    ph = tmp_path / "ph"
    write_phantom(ph, shape=(12, 160, 160), seed=1, stl=False)
    for name, slices in (("a", "2,5"), ("b", "8")):
        args = ["boxes-from-labels", str(ph / "truth_labels.tif"), "--slices", slices]
        args += ["--out", str(tmp_path / name), "--stack", str(ph / "stack.tif")]
        assert main(args + ["--label-classes", str(ph / "truth.csv")]) == 0
    model = tmp_path / "model"
    assert (
        main(
            [
                "train",
                str(tmp_path / "a"),
                str(tmp_path / "b"),
                "--classes",
                "fibsem",
                "--out",
                str(model),
                "--epochs",
                "1",
                "--steps-per-epoch",
                "1",
                "--batch",
                "2",
                "--train-size",
                "64",
                "--input-size",
                "96",
                "--threads",
                "1",
                "--workers",
                "1",
                "--no-self-train",
            ]
        )  # fmt: skip
        == 0
    )
    report = json.loads((model / "report.json").read_text())
    assert report["n_images"] == 3
    assert sorted(p.name for p in (model / "annotations").glob("*.png")) == [
        "slice_00002.png",
        "slice_00005.png",
        "slice_00008.png",
    ]
    # the next suggestions keep away from every slice the model learnt from
    assert model_annotations(model) == [model / "annotations"]
    shutil.rmtree(tmp_path / "a")  # the model keeps its own copy of what it learnt from
    assert len(read_yolo_mark(model / "annotations", 5)[1]) == 3
