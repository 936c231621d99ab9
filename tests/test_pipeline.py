"""The whole bpy-free pipeline on the phantom: accuracy, bridges, resume, executors."""

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import tifffile

from famous_addon.cli import build_parser, main
from famous_addon.core import fileio
from famous_addon.core import runfolder as rf
from famous_addon.core.compare.score import match_objects
from famous_addon.core.errors import FamousError
from famous_addon.core.phantom.write import write_phantom
from famous_addon.core.pipeline import run_pipeline
from famous_addon.core.request import RunRequest, RunSettings, run_settings


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    write_phantom(out, shape=(48, 384, 384), seed=7, stl=False)
    return out


def _truth(phantom):
    labels = tifffile.imread(phantom / "truth_labels.tif")
    rows = list(csv.DictReader(open(phantom / "truth.csv")))
    return labels, rows


def _run(phantom, out, progress=None, **kw):
    request = RunRequest(
        phantom / "stack.tif", phantom / "classes.toml", out, boxes=phantom / "boxes", **kw
    )
    return run_pipeline(request, progress=progress)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


def _mask_box(mask: np.ndarray, score: float = 1.0):
    """The box around a 2-D mask, as a detector would draw it."""
    from famous_addon.core.boxes import Box

    yy, xx = np.nonzero(mask)
    return Box(0, xx.min(), yy.min(), np.ptp(xx) + 1, np.ptp(yy) + 1, score)


def _write_dark_organelles(folder, truth: np.ndarray) -> None:
    """``folder``'s stack.tif: ``truth``'s organelles dark on a light ground, blurred and
    noisy, and its obj.names (mitochondria)."""
    import cv2

    # each slice blurred on its own: OpenCV takes a 3-D array's last axis for
    # channels and would blur along z and y instead
    stack = np.stack([cv2.GaussianBlur(np.where(t > 0, 70.0, 190.0), (0, 0), 1.0) for t in truth])
    stack += np.random.default_rng(0).normal(0, 10, truth.shape)
    tifffile.imwrite(folder / "stack.tif", np.clip(stack, 0, 255).astype(np.uint8))
    (folder / "obj.names").write_text("mitochondria\n")


def _write_piece_boxes(folder, k: int, pieces: list[np.ndarray], shape) -> None:
    """Slice ``k``'s YOLO file in ``folder``/boxes: a box around each 2-D mask, score 0.9."""
    from famous_addon.core.boxes import write_yolo_txt

    boxes = [_mask_box(piece, 0.9) for piece in pieces]
    write_yolo_txt(folder / "boxes" / f"slice_{k:05d}.txt", boxes, shape)


def _synthetic_request(folder, run, voxel_size_nm=(10.0, 10.0, 10.0), **settings) -> RunRequest:
    """A run of ``folder``'s stack.tif with its boxes/ (labels written)."""
    return RunRequest(
        folder / "stack.tif",
        folder / "obj.names",
        run,
        boxes=folder / "boxes",
        voxel_size_nm=voxel_size_nm,
        labels=True,
        settings=RunSettings(**settings),
    )


def _classes_of(run):
    return {o["id"]: o["class"] for o in rf.RunFolder(run).organelles()}


def test_truth_boxes_recover_every_class(phantom, tmp_path):
    run = tmp_path / "run"
    summary = _run(phantom, run, labels=True)
    labels = tifffile.imread(run / "labels.tif")
    truth, rows = _truth(phantom)
    assert labels.shape == truth.shape and labels.dtype == np.uint16
    scores = match_objects(
        labels, _classes_of(run), truth, {int(r["id"]): r["class"] for r in rows}, 0.5, 1e-6
    )
    for s in scores:
        assert s.n_b > 0
        assert s.f1 >= 0.95, (s.class_name, s)
        assert s.volume_a_um3 == pytest.approx(s.volume_b_um3, rel=0.10), s.class_name
    assert sum(summary.counts.values()) == len(rf.RunFolder(run).organelles())


def test_an_inset_moves_each_organelles_edge_inwards_and_keeps_the_organelles(phantom, tmp_path):
    from scipy import ndimage

    from famous_addon.core.classes import load_classes

    plain, moved = tmp_path / "plain", tmp_path / "inset"
    _run(phantom, plain, labels=True)
    pixel_nm = json.loads((plain / "run.json").read_text())["fingerprint"]["voxel_size_nm"][2]
    classes = load_classes(phantom / "classes.toml")
    inset = replace(
        classes,
        classes=tuple(
            replace(c, extract=replace(c.extract, inset_nm=2 * pixel_nm)) for c in classes
        ),
    )
    run_pipeline(
        RunRequest(phantom / "stack.tif", inset, moved, boxes=phantom / "boxes", labels=True)
    )
    a, b = tifffile.imread(plain / "labels.tif"), tifffile.imread(moved / "labels.tif")
    assert np.all((b == 0) | (b == a))  # pixels are only taken away
    keys = ("id", "class", "z_min", "z_max", "n_slices")
    rows_a, rows_b = rf.RunFolder(plain).organelles(), rf.RunFolder(moved).organelles()
    assert [[r[k] for k in keys] for r in rows_a] == [[r[k] for k in keys] for r in rows_b]
    assert [int(r["voxels"]) for r in rows_b] == np.bincount(b.ravel())[1:].tolist()
    # what is left: the pixels more than 2 px from the background (but for ridges of
    # thin profiles and edges between touching organelles)
    deep = np.stack([ndimage.distance_transform_edt(s > 0) > 2 for s in a])
    assert np.mean((b > 0) == deep) > 0.995
    assert np.count_nonzero(b) == pytest.approx(np.count_nonzero(deep), rel=0.01)
    assert np.count_nonzero(b) < 0.95 * np.count_nonzero(a)


def test_run_folder_contents(phantom, tmp_path):
    run = tmp_path / "run"
    _run(phantom, run, labels=True)
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete"
    assert info["input"]["voxel_size_nm"] == [10.0, 10.0, 10.0]
    assert set(info["timings_s"]) >= {"slices", "linking", "assemble", "total"}
    folder = rf.RunFolder(run)
    orgs = folder.organelles()
    clouds = folder.pointclouds()
    labels = tifffile.imread(run / "labels.tif")
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    assert sorted(ids.tolist()) == [o["id"] for o in orgs]
    for o, n in zip(orgs, counts):
        assert o["voxels"] == n
        assert o["volume_um3"] == pytest.approx(n * 1e-6)
        pts, normals = clouds.get(o["id"])
        assert len(pts) == o["n_points"] > 0
        # Points lie inside the organelle's bounding box, in µm.
        assert pts[:, 0].min() >= o["x_min"] * 0.01 - 1e-6
        assert pts[:, 0].max() <= o["x_max"] * 0.01 + 1e-6
        assert pts[:, 2].min() >= o["z_min"] * 0.01 - 1e-6
        assert np.allclose(
            np.linalg.norm(normals, axis=1)[np.any(normals != 0, axis=1)], 1, atol=1e-5
        )
    dets = fileio.read_csv(run / "detections.csv")
    assert {int(d["organelle_id"]) for d in dets} <= {o["id"] for o in orgs} | {0}
    # ImageJ metadata carries the voxel size.
    with tifffile.TiffFile(run / "labels.tif") as tf:
        assert tf.imagej_metadata["spacing"] == pytest.approx(0.01)


def _dumbbell_owners(run, phantom):
    truth, rows = _truth(phantom)
    tid = next(int(r["id"]) for r in rows if r["kind"] == "dumbbell")
    labels = tifffile.imread(run / "labels.tif")
    ids, counts = np.unique(labels[truth == tid], return_counts=True)
    share = counts[ids > 0] / (truth == tid).sum()
    return share[share > 0.05]


def test_dumbbell_stays_whole_with_merge_and_splits_without(phantom, tmp_path):
    _run(phantom, tmp_path / "merged", labels=True)
    merged = _dumbbell_owners(tmp_path / "merged", phantom)
    assert len(merged) == 1 and merged[0] > 0.6
    _run(phantom, tmp_path / "split", labels=True, settings=RunSettings(merge_bridges=False))
    assert len(_dumbbell_owners(tmp_path / "split", phantom)) >= 2


def test_interrupted_run_resumes_to_identical_labels(phantom, tmp_path):
    full = tmp_path / "full"
    _run(phantom, full, labels=True)

    class Killed(KeyboardInterrupt):
        """A signal, as a kill is: the run stays "interrupted" (an error would be "failed")."""

    def kill_midway(fraction, message):
        if fraction > 0.3:
            raise Killed

    part = tmp_path / "part"
    with pytest.raises(Killed):
        _run(phantom, part, labels=True, progress=kill_midway)
    cached = len(list((part / "cache").glob("*.npz")))
    assert 0 < cached < 48
    with pytest.raises(FamousError, match="interrupted run"):
        _run(phantom, part, labels=True)
    summary = _run(phantom, part, labels=True, resume=True)
    assert summary.timings["slices_computed"] == 48 - cached
    np.testing.assert_array_equal(
        tifffile.imread(part / "labels.tif"), tifffile.imread(full / "labels.tif")
    )


def test_workers_and_dask_equal_one_process(phantom, tmp_path):
    from distributed import LocalCluster

    _run(phantom, tmp_path / "one", labels=True)
    reference = tifffile.imread(tmp_path / "one" / "labels.tif")
    _run(phantom, tmp_path / "procs", labels=True, workers=2)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "procs" / "labels.tif"), reference)
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        _run(phantom, tmp_path / "dask", labels=True, dask_scheduler=cluster.scheduler_address)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "dask" / "labels.tif"), reference)


def test_workers_auto_starts_processes_only_for_large_stacks():
    from famous_addon.core.slices import AUTO_MAX_WORKERS, AUTO_MIN_PIXELS, auto_workers

    assert auto_workers(64, 512 * 512, cores=2) == 1  # the demo phantom: not worth starting
    assert auto_workers(165, 768 * 1024, cores=2) == 2  # lucchi: 130 Mpx
    assert auto_workers(1800, 1792 * 2048, cores=64) == AUTO_MAX_WORKERS
    assert auto_workers(3, AUTO_MIN_PIXELS, cores=8) == 3  # never more than slices
    assert auto_workers(1800, 1792 * 2048, cores=1) == 1
    args = build_parser().parse_args(
        ["run", "s.tif", "--classes", "c", "--model", "m", "--out", "o"]
    )
    assert RunRequest.from_args(args).workers == "auto"
    with pytest.raises(SystemExit):
        build_parser().parse_args(
            ["run", "s.tif", "--classes", "c", "--model", "m", "--out", "o", "--workers", "x"]
        )
    with pytest.raises(FamousError, match="workers 'many'"):
        RunRequest("s.tif", "c.toml", "o", model="m", workers="many")


def test_organelles_on_too_few_slices_are_dropped(phantom, tmp_path):
    boxes = tmp_path / "boxes"
    boxes.mkdir()
    for f in (phantom / "boxes").glob("*.txt"):
        (boxes / f.name).write_text(f.read_text())
    # A detector flash: a mitochondrion-sized box on two slices only, in empty cytoplasm.
    flash = "2 0.06 0.94 0.04 0.04\n"
    edge = "2 0.94 0.06 0.04 0.04\n"  # on the last two slices: cut by the stack, kept
    for k in (46, 47):
        path = boxes / f"slice_{k:05d}.txt"
        path.write_text(path.read_text() + edge)
    for k in (20, 21):
        path = boxes / f"slice_{k:05d}.txt"
        path.write_text(path.read_text() + flash)
    kw = {"labels": True}
    run_pipeline(
        RunRequest(
            phantom / "stack.tif", phantom / "classes.toml", tmp_path / "a", boxes=boxes, **kw
        )
    )
    run_pipeline(
        RunRequest(
            phantom / "stack.tif",
            phantom / "classes.toml",
            tmp_path / "b",
            boxes=boxes,
            settings=RunSettings(min_slices=1, min_depth_nm=0),
            **kw,
        )
    )
    kept = rf.RunFolder(tmp_path / "a").organelles()
    every = rf.RunFolder(tmp_path / "b").organelles()
    assert len(every) == len(kept) + 1
    short = [o for o in kept if o["n_slices"] < 3]
    assert short and all(o["z_min"] == 0 or o["z_max"] == 47 for o in short)
    assert any(o["z_min"] == 46 and o["n_slices"] == 2 for o in kept)
    assert sum(o["n_slices"] == 2 and o["z_min"] == 20 for o in every) == 1


def test_slices_an_organelle_skips_are_filled(phantom, tmp_path):
    truth, rows = _truth(phantom)
    # the mitochondrion inside the slice seen on most slices loses its boxes on three of them
    inside = np.ones(truth.shape[1:], bool)
    inside[[0, -1]] = inside[:, [0, -1]] = False
    mito = [
        int(r["id"])
        for r in rows
        if r["class"] == "mitochondria" and not (truth[:, ~inside] == int(r["id"])).any()
    ]
    tid = max(mito, key=lambda t: (truth == t).any(axis=(1, 2)).sum())
    zs = np.flatnonzero((truth == tid).any(axis=(1, 2)))
    gap = range(zs[len(zs) // 2] - 1, zs[len(zs) // 2] + 2)
    boxes = tmp_path / "boxes"
    boxes.mkdir()
    _, rows_px, cols_px = truth.shape
    for f in (phantom / "boxes").glob("*.txt"):
        k = int(f.stem.split("_")[1])
        lines = f.read_text().splitlines()
        if k in gap:
            yy, xx = np.nonzero(truth[k] == tid)
            cx, cy = (
                (xx.min() + xx.max() + 1) / 2 / cols_px,
                (yy.min() + yy.max() + 1) / 2 / rows_px,
            )
            lines = [
                ln
                for ln in lines
                if not (
                    ln.startswith("2 ")
                    and np.hypot(*np.subtract([float(v) for v in ln.split()[1:3]], [cx, cy])) < 0.01
                )
            ]
            assert len(lines) == len(f.read_text().splitlines()) - 1
        (boxes / f.name).write_text("\n".join(lines) + "\n")
    iou = {}
    for fill in (0.0, 100.0):
        run = tmp_path / f"fill{fill:g}"
        run_pipeline(
            RunRequest(
                phantom / "stack.tif",
                phantom / "classes.toml",
                run,
                boxes=boxes,
                labels=True,
                settings=RunSettings(fill_gaps_nm=fill, follow_iou=0),
            )
        )
        labels = tifffile.imread(run / "labels.tif")
        ids, n = np.unique(labels[truth == tid], return_counts=True)
        oid = ids[ids > 0][n[ids > 0].argmax()]
        iou[fill] = _iou(labels == oid, truth == tid)
        on_gap = [(labels[k] == oid).any() for k in gap]
        filled = [d for d in fileio.read_csv(run / "detections.csv") if float(d["score"]) == 0]
        if fill:
            # every skipped slice gets the organelle back, from a box of score 0
            assert all(on_gap)
            assert sorted(int(d["slice"]) for d in filled) == list(gap)
            assert {int(d["organelle_id"]) for d in filled} == {oid}
        else:
            assert not any(on_gap) and not filled
    # measured: 3-D IoU 0.87 without filling, 0.96 with it
    assert iou[100.0] > iou[0.0] + 0.05, iou


def test_an_organelle_is_followed_into_the_slices_its_boxes_miss(tmp_path):
    import cv2

    from famous_addon.core.boxes import write_yolo_txt

    # three dark mitochondria on 12 slices: A runs through the stack and turns
    # (its box grows), B ends on slice 5; both are boxed on slices 0-5 only.
    # C drifts 4 px a slice and is boxed on slices 0-3 and 8-11, too far
    # apart for linking: two organelles unless followed across the gap
    stack = np.full((12, 160, 200), 200, np.uint8)
    truth = np.zeros(stack.shape, np.int32)
    for k in range(12):
        cv2.ellipse(truth[k], (60, 80), (30, 10), 6 * k, 0, 360, 1, -1)
        if k <= 5:
            cv2.circle(truth[k], (150, 80), 16 - k, 2, -1)
        cv2.circle(truth[k], (30 + 4 * k, 135), 12, 3, -1)
    stack[truth > 0] = 60
    noise = np.random.default_rng(0).normal(0, 8, stack.shape)
    tifffile.imwrite(tmp_path / "stack.tif", np.clip(stack + noise, 0, 255).astype(np.uint8))
    (tmp_path / "obj.names").write_text("mitochondria\n")
    boxed = {1: range(6), 2: range(6), 3: [0, 1, 2, 3, 8, 9, 10, 11]}
    for k in range(12):
        boxes = []
        for t in (t for t, ks in boxed.items() if k in ks):
            boxes.append(_mask_box(truth[k] == t))
        write_yolo_txt(tmp_path / "boxes" / f"slice_{k:05d}.txt", boxes, truth.shape[1:])
    got = {}
    for follow in (0.0, 0.5):
        run = tmp_path / f"follow{follow:g}"
        run_pipeline(_synthetic_request(tmp_path, run, (40.0, 10.0, 10.0), follow_iou=follow))
        got[follow] = tifffile.imread(run / "labels.tif")
    for follow, labels in got.items():
        a, b = (np.bincount(labels[:6][truth[:6] == t]).argmax() for t in (1, 2))
        assert a and b and a != b
        # B is never carried past its end
        assert not (labels[6:] == b).any()
        on = [(labels[k] == a).any() for k in range(12)]
        assert on == [True] * 6 + [bool(follow)] * 6
        if follow:
            for k in range(6, 12):
                iou = _iou(labels[k] == a, truth[k] == 1)
                assert iou > 0.8, (k, iou)
        c = [set(np.unique(labels[k][truth[k] == 3])) - {0} for k in range(12)]
        if follow:
            # followed up from slice 3, C meets its other part on slice 8 and joins it
            assert all(ids == c[0] for ids in c) and len(c[0]) == 1
        else:
            assert c[:4] == [c[0]] * 4 and c[8:] == [c[8]] * 4 and c[0] != c[8]
            assert c[4:8] == [set()] * 4


def _owners_of_two(folder, truth: np.ndarray, setting: str, values) -> dict:
    """Runs of ``folder``'s stack and boxes with each value of the run setting
    ``setting``; per value, the organelles holding most of truth objects 1 and 2.
    Where the value is not 0, each must match its object (IoU > 0.8)."""
    owners = {}
    for value in values:
        run = folder / f"{setting}{value:g}"
        run_pipeline(_synthetic_request(folder, run, **{setting: value}))
        labels = tifffile.imread(run / "labels.tif")
        owners[value] = [np.bincount(labels[truth == t]).argmax() for t in (1, 2)]
        if value:
            for t, o in zip((1, 2), owners[value]):
                assert o and _iou(labels == o, truth == t) > 0.8, (t, o)
    return owners


def test_two_tubes_boxed_together_on_some_slices_stay_two_organelles(tmp_path):
    import cv2

    # two dark tubes along z, one pixel apart, blurred as EM blurs them; a
    # detector boxes them together on slices 10-15, as it does touching mitochondria
    # (before and after, each tube spans the minimum depth, 100 nm, and may seed the cut)
    n = 32
    truth = np.zeros((n, 160, 200), np.int32)
    for k in range(n):
        cv2.ellipse(truth[k], (80, 80), (18, 26), 0, 0, 360, 1, -1)
        cv2.ellipse(truth[k], (117, 80 + k), (18, 24), 0, 0, 360, 2, -1)
    _write_dark_organelles(tmp_path, truth)
    for k in range(n):
        pieces = [truth[k] > 0] if 10 <= k < 16 else [truth[k] == 1, truth[k] == 2]
        _write_piece_boxes(tmp_path, k, pieces, truth.shape[1:])
    owners = _owners_of_two(tmp_path, truth, "separation", (0.0, RunSettings().separation))
    a, b = owners[RunSettings().separation]
    assert a != b
    # without the cut the boxes that span both join them into one organelle
    assert owners[0.0][0] == owners[0.0][1]


def test_a_detectors_box_over_the_facing_halves_of_two_tubes_is_dropped(tmp_path, monkeypatch):
    import cv2

    import famous_addon.core.pipeline as pipeline
    from famous_addon.core.boxes import Box, write_yolo_txt

    # two dark tubes a pixel apart, each boxed on every slice; on slices 10-15 a
    # third box from the middle of one to the middle of the other, as lucchi's
    # detector returned between t30 and t43 (docs/results.md, session 41)
    n = 32
    truth = np.zeros((n, 160, 200), np.int32)
    for k in range(n):
        cv2.ellipse(truth[k], (80, 80), (18, 26), 0, 0, 360, 1, -1)
        cv2.ellipse(truth[k], (117, 80), (18, 24), 0, 0, 360, 2, -1)
    _write_dark_organelles(tmp_path, truth)
    for k in range(n):
        boxes = [_mask_box(truth[k] == t, 0.9) for t in (1, 2)]
        if 10 <= k < 16:
            boxes.append(Box(0, 80, 58, 37, 44, 0.9))
        write_yolo_txt(tmp_path / "boxes" / f"slice_{k:05d}.txt", boxes, truth.shape[1:])

    class Detected:
        """The same boxes handed over as a detector's, not as the user's files."""

        def __init__(self, files):
            self.files = files

        def __call__(self, k, image):
            return self.files(k, image)

        def __getattr__(self, name):
            return getattr(self.files, name)

    made = pipeline.make_box_source
    monkeypatch.setattr(pipeline, "make_box_source", lambda *a, **k: Detected(made(*a, **k)))
    run = tmp_path / "detected"
    run_pipeline(_synthetic_request(tmp_path, run))
    labels = tifffile.imread(run / "labels.tif")
    owners = [np.bincount(labels[truth == t]).argmax() for t in (1, 2)]
    assert owners[0] != owners[1]
    for t, o in zip((1, 2), owners):
        assert _iou(labels == o, truth == t) > 0.95
    assert _rows(run / rf.DETECTIONS_CSV) == 2 * n
    # the user's boxes are never dropped: all 70 stay
    monkeypatch.setattr(pipeline, "make_box_source", made)
    run_pipeline(_synthetic_request(tmp_path, tmp_path / "drawn"))
    assert _rows(tmp_path / "drawn" / rf.DETECTIONS_CSV) == 2 * n + 6


def _rows(csv_path) -> int:
    """Data rows of a CSV file (its header left out)."""
    return len(csv_path.read_text().splitlines()) - 1


def test_pieces_boxed_side_by_side_are_joined_and_neighbours_touching_briefly_are_not(tmp_path):
    import cv2

    # a large organelle (1) boxed in two halves on every slice, as a detector boxes
    # CDeep3M's diagonal mitochondria, and a neighbour (2) pressed flat against it on
    # slices 12-15 only, 6 px away elsewhere, boxed on its own
    n = 30
    truth = np.zeros((n, 160, 200), np.int32)
    for k in range(n):
        gap = 0 if 12 <= k < 16 else 6
        cv2.rectangle(truth[k], (40, 50), (139, 89), 1, -1)
        cv2.rectangle(truth[k], (92, 90 + gap), (137, 124 + gap), 2, -1)
    _write_dark_organelles(tmp_path, truth)
    halves = np.zeros(truth.shape[1:], bool)
    halves[:, :90] = True
    for k in range(n):
        one = truth[k] == 1
        pieces = [one & halves, one & ~halves, truth[k] == 2]
        _write_piece_boxes(tmp_path, k, pieces, truth.shape[1:])
    owners = {}
    for share in (0.0, 0.05, RunSettings().join_touching):
        run = tmp_path / f"join{share:g}"
        run_pipeline(_synthetic_request(tmp_path, run, join_touching=share))
        labels = tifffile.imread(run / "labels.tif")
        owners[share] = {
            "left": np.bincount(labels[(truth == 1) & halves]).argmax(),
            "right": np.bincount(labels[(truth == 1) & ~halves]).argmax(),
            "neighbour": np.bincount(labels[truth == 2]).argmax(),
        }
    joined = owners[RunSettings().join_touching]
    assert joined["left"] == joined["right"] != joined["neighbour"]
    labels = tifffile.imread(tmp_path / f"join{RunSettings().join_touching:g}" / "labels.tif")
    assert _iou(labels == joined["left"], truth == 1) > 0.8
    assert _iou(labels == joined["neighbour"], truth == 2) > 0.8
    # without the join the halves stay two organelles
    apart = owners[0.0]
    assert len({apart["left"], apart["right"], apart["neighbour"]}) == 3
    # what keeps the neighbour apart is the share: it touches on 2 of its 30 slices
    low = owners[0.05]
    assert low["left"] == low["right"] == low["neighbour"]


def test_a_short_piece_touching_two_neighbours_joins_one_of_them_not_both(tmp_path):
    import cv2

    # two tubes 12 px apart on all 30 slices, each boxed on its own; on the last
    # three, dark cytoplasm between them is boxed with their near edges, as a
    # detector boxed CDeep3M's t8 and t11 (session 37). That box's mask touches
    # both tubes there: joining it to both made one organelle of two that touch
    # nowhere. The cytoplasm is dark in the stack only (3), not in the truth
    n = 30
    truth = np.zeros((n, 120, 200), np.int32)
    for k in range(n):
        cv2.ellipse(truth[k], (70, 60), (22, 30), 0, 0, 360, 1, -1)
        cv2.ellipse(truth[k], (126, 60), (22, 30), 0, 0, 360, 2, -1)
    dark = truth.copy()
    strip = dark[n - 3 :, 40:80, 85:112]
    strip[strip == 0] = 3
    _write_dark_organelles(tmp_path, dark)
    for k in range(n):
        pieces = [truth[k] == 1, truth[k] == 2]
        if k >= n - 3:
            pieces.append(np.pad(dark[k, :, 85:112] > 0, ((0, 0), (85, 88))))
        _write_piece_boxes(tmp_path, k, pieces, truth.shape[1:])
    owners = _owners_of_two(tmp_path, truth, "join_touching", (RunSettings().join_touching,))
    a, b = owners[RunSettings().join_touching]
    assert a != b


def _two_side_by_side(folder, last: int) -> np.ndarray:
    """Two organelles side by side (the neighbour, 2, on slices 0..``last``), their
    outlines meeting over a few pixels, each boxed on its own; on slice 14 the
    neighbour is missed and 1's box reaches 20 px over its near side, as a
    detector's box did on lucchi (t8 and t10, session 33): 1's mask there takes
    0.38 of 2. Writes the stack and boxes; returns the truth."""
    import cv2

    n = 30
    truth = np.zeros((n, 120, 200), np.int32)
    for k in range(n):
        cv2.ellipse(truth[k], (70, 60), (24, 30), 0, 0, 360, 1, -1)
        if k <= last:
            cv2.ellipse(truth[k], (114, 60), (24, 30), 0, 0, 360, 2, -1)
    _write_dark_organelles(folder, truth)
    near = np.zeros(truth.shape[1:], bool)
    near[:, :110] = True
    for k in range(n):
        one, two = truth[k] == 1, truth[k] == 2
        pieces = [one | (two & near)] if k == 14 else [one, two] if two.any() else [one]
        _write_piece_boxes(folder, k, pieces, truth.shape[1:])
    return truth


def test_a_box_over_a_neighbours_edge_does_not_join_the_two(tmp_path):
    # the neighbour on all 30 slices: 2's masks on slices 13 and 15 overlap 1's on 14
    truth = _two_side_by_side(tmp_path, last=29)
    owners = _owners_of_two(tmp_path, truth, "join_touching", (0.0, RunSettings().join_touching))
    a, b = owners[RunSettings().join_touching]
    assert a != b
    # without the touching rule, which also judges what a bridge joins, they are one
    assert owners[0.0][0] == owners[0.0][1]


def test_following_does_not_join_a_neighbour_the_bridge_merge_kept_apart(tmp_path):
    # the neighbour ends on slice 14, where it is missed: no gap to fill, so 1's mask
    # there keeps its 0.38 of 2 and overlaps 2 on slice 13. The bridge merge refuses
    # that pair; following, which joins what its slices overlap, joined it again
    # (lucchi's t8 and t10 with a freshly trained detector, session 34)
    truth = _two_side_by_side(tmp_path, last=14)
    run = tmp_path / "run"
    run_pipeline(_synthetic_request(tmp_path, run))
    labels = tifffile.imread(run / "labels.tif")
    a, b = (np.bincount(labels[truth == t]).argmax() for t in (1, 2))
    assert a and b and a != b
    assert _iou(labels == a, truth == 1) > 0.8


def test_an_organelle_whose_tracks_drift_apart_is_joined_across_missed_slices(tmp_path):
    import cv2

    # An oblique organelle (1) drifting 4 px a slice, boxed whole on three slices
    # of five, in two halves on the fourth and missed on the fifth: Algorithm 4 cuts
    # it into tracks of four slices, each shorter than the minimum span (10 slices
    # at 10 nm). A long organelle (2), and a small one (3) beside where 2 ends,
    # five slices on: 3 is on fewer slices than the gap, so it is not 2's continuation.
    n = 30
    truth = np.zeros((n, 120, 240), np.int32)
    for k in range(n):
        x = 20 + 4 * k
        if 2 <= k < n - 2:  # off the stack's ends, where short organelles are kept
            cv2.rectangle(truth[k], (x, 20), (x + 59, 49), 1, -1)
        if k < 12:
            cv2.rectangle(truth[k], (60, 75), (119, 104), 2, -1)
        if 17 <= k < 20:
            cv2.rectangle(truth[k], (62, 80), (79, 99), 3, -1)
    _write_dark_organelles(tmp_path, truth)
    for k in range(n):
        one = truth[k] == 1
        pieces = []
        if one.any():
            xs = np.nonzero(one.any(axis=0))[0]
            left = np.zeros_like(one)
            left[:, : (xs[0] + xs[-1]) // 2] = True
            pieces = {0: [one], 1: [one], 2: [one], 3: [one & left, one & ~left], 4: []}[k % 5]
        pieces += [truth[k] == j for j in (2, 3) if (truth[k] == j).any()]
        _write_piece_boxes(tmp_path, k, pieces, truth.shape[1:])
    found = {}
    for overlap in (0.0, RunSettings().continue_overlap):
        run = tmp_path / f"continue{overlap:g}"
        run_pipeline(_synthetic_request(tmp_path, run, continue_overlap=overlap))
        found[overlap] = tifffile.imread(run / "labels.tif")
    labels = found[RunSettings().continue_overlap]
    one = np.bincount(labels[truth == 1]).argmax()
    assert one and _iou(labels == one, truth == 1) > 0.8
    two = np.bincount(labels[truth == 2]).argmax()
    assert two != one and _iou(labels == two, truth == 2) > 0.8
    assert not (labels[truth == 3] == two).any()
    # without the join each track is too short to be kept, and the organelle is lost
    assert np.bincount(found[0.0][truth == 1]).argmax() == 0


def test_tracks_are_joined_across_the_gap_that_following_shortened(tmp_path):
    import cv2

    # 40 nm sections (a gap of 2 is filled): a disc drifting 2 px a section, boxed
    # on sections 0-4 and 10-13 only (too far apart for Algorithm 4 to link),
    # followed over 5-6 and 9, and not seen on 7-8; a second disc, boxed on every
    # section, beside it
    n = 14
    truth = np.zeros((n, 100, 180), np.int32)
    for k in range(n):
        if k not in (7, 8):
            cv2.circle(truth[k], (40 + 2 * k, 50), 16, 1, -1)
        cv2.circle(truth[k], (145, 50), 14, 2, -1)
    _write_dark_organelles(tmp_path, truth)
    for k in range(n):
        pieces = [truth[k] == j for j in (1, 2) if k < 5 or k >= 10 or j == 2]
        _write_piece_boxes(tmp_path, k, pieces, truth.shape[1:])
    found = {}
    for follow in (0.0, RunSettings().follow_iou):
        run = tmp_path / f"follow{follow:g}"
        request = _synthetic_request(tmp_path, run, (40.0, 10.0, 10.0), follow_iou=follow)
        run_pipeline(request)
        found[follow] = tifffile.imread(run / "labels.tif")
    labels = found[RunSettings().follow_iou]
    ids = [set(np.unique(labels[k][truth[k] == 1])) - {0} for k in range(n) if k not in (7, 8)]
    # the two tracks, followed to 2 sections apart, are one organelle
    assert all(i == ids[0] for i in ids) and len(ids[0]) == 1
    other = np.bincount(labels[truth == 2]).argmax()
    assert other and other not in ids[0]
    # without following the gap (5 sections) is too long: two organelles
    apart = found[0.0]
    first, last = (
        np.bincount(apart[z][truth[z] == 1]).argmax() for z in (slice(0, 5), slice(10, n))
    )
    assert first and last and first != last


def test_gap_slices_are_in_nm():
    assert [RunSettings().gap_slices(z) for z in (5, 10, 30, 40, 200)] == [20, 10, 3, 2, 0]
    assert RunSettings(fill_gaps_nm=0).gap_slices(10) == 0


def test_bad_inputs_fail_before_work(phantom, tmp_path):
    boxes = tmp_path / "boxes"
    boxes.mkdir()
    (boxes / "slice_00003.txt").write_text("9 0.5 0.5 0.1 0.1\n")
    with pytest.raises(FamousError, match=r"slice_00003.txt.*class id 9"):
        run_pipeline(RunRequest(phantom / "stack.tif", "fibsem", tmp_path / "r1", boxes=boxes))
    assert not (tmp_path / "r1").exists()
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(FamousError, match="voxel size"):
        run_pipeline(RunRequest(plain, "fibsem", tmp_path / "r2", boxes=phantom / "boxes"))
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "thesis.docx").write_text("precious")
    with pytest.raises(FamousError, match="not empty"):
        _run(phantom, tmp_path / "occupied")
    assert (tmp_path / "occupied" / "thesis.docx").read_text() == "precious"


def test_cli_run_and_clear_errors(phantom, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(
        [
            "run",
            str(phantom / "stack.tif"),
            "--classes",
            str(phantom / "classes.toml"),
            "--boxes",
            str(phantom / "boxes"),
            "--out",
            str(out),
            "--quantify",
        ]
    )
    assert code == 0 and (out / "labels.tif").is_file()
    assert "mitochondria" in capsys.readouterr().out
    measured = fileio.read_csv(out / "classes.csv")
    counts = {o["class"]: 0 for o in measured}
    for o in rf.RunFolder(out).organelles():
        counts[o["class"]] += 1
    assert {m["class"]: int(m["count"]) for m in measured} == counts
    assert "sphericity" in fileio.read_csv(out / "organelles.csv")[0]
    code = main(
        [
            "run",
            str(tmp_path / "missing.tif"),
            "--classes",
            "fibsem",
            "--boxes",
            "x",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    assert "missing.tif: not found" in capsys.readouterr().err


def test_calibration_on_annotated_slices_is_reported(phantom, tmp_path):
    run = tmp_path / "run"
    summary = _run(phantom, run, annotations=phantom / "annotations")
    info = json.loads((run / "run.json").read_text())
    assert set(info["calibration"]) == {
        "early_endosome",
        "late_endosome",
        "mitochondria",
        "lysosome",
        "nucleus",
    }
    for name, report in info["calibration"].items():
        assert report["choice"] and 0 <= report["score"] <= 1
        # The recipe used is the calibrated one.
        used = next(c for c in info["classes"]["class"] if c["name"] == name)
        assert used["extract"]["method"] == report["recipe"]["method"]
    assert summary.calibration == info["calibration"]
    assert info["calibration"]["lysosome"]["recipe"]["method"] == "ellipse"


def test_cli_run_defaults_are_the_pipelines():
    run = ["run", "s.tif", "--classes", "c.toml", "--boxes", "b", "--out", "o"]
    assert run_settings(build_parser().parse_args(run)) == RunSettings()
    args = build_parser().parse_args([*run, "--merge-overlap", "0.1", "--no-merge"])
    assert run_settings(args) == RunSettings(merge_min_overlap=0.1, merge_bridges=False)


def test_one_request_from_the_cli_and_the_headless_script():
    import importlib.util
    from pathlib import Path

    args = build_parser().parse_args(
        ["run", "s.tif", "--classes", "c.toml", "--model", "m", "--out", "o", "--workers", "2"]
        + ["--voxel-size", "40", "5", "5", "--flip-views", "2", "--no-merge"]
    )
    expected = RunRequest(
        "s.tif",
        "c.toml",
        "o",
        model="m",
        workers=2,
        voxel_size_nm=(40.0, 5.0, 5.0),
        flip_views=2,
        settings=RunSettings(merge_bridges=False),
    )
    assert RunRequest.from_args(args) == expected
    script = Path(__file__).resolve().parents[1] / "blender_scripts" / "run_famous.py"
    spec = importlib.util.spec_from_file_location("run_famous", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = module.build_parser().parse_args(
        ["--stack", "s.tif", "--classes", "c.toml", "--model", "m", "--out", "o"]
        + ["--workers", "2", "--voxel-size", "40", "5", "5", "--flip-views", "2"]
    )
    assert RunRequest.from_args(args) == replace(expected, settings=RunSettings())
    with pytest.raises(FamousError, match="exactly one source of boxes"):
        RunRequest("s.tif", "c.toml", "o")


def test_cli_info_and_phantom(tmp_path, capsys):
    assert main(["phantom", str(tmp_path / "p"), "--shape", "16", "192", "192", "--seed", "2"]) == 0
    assert (tmp_path / "p" / "stack.tif").is_file()
    capsys.readouterr()
    assert main(["info", str(tmp_path / "p" / "stack.tif")]) == 0
    text = capsys.readouterr().out
    assert "16 slices x 192 rows x 192 columns" in text
    assert "10 x 10 x 10 nm" in text and "ImageJ" in text


def test_min_span_is_in_slices_and_nm():
    s = RunSettings()
    assert [s.min_span(z) for z in (5, 10, 20, 40, 100)] == [20, 10, 5, 3, 3]
    assert RunSettings(min_slices=1, min_depth_nm=0).min_span(10) == 1
    assert RunSettings(min_slices=1, min_depth_nm=25).min_span(10) == 3


def test_unconfirmed_organelles_are_dropped():
    from famous_addon.core.refine import drop_unconfirmed

    # organelle 0: sure on 2 slices; 1: middling scores on 5 slices (a flicker);
    # 2: one box only, sure (a flash on the stack's last slice); 3: class 1 with
    # its own lower bar
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1, 2, 3, 3, -1])
    score = np.array([0.9, 0.85, 0.3, 0.5, 0.6, 0.7, 0.5, 0.6, 0.95, 0.45, 0.5, 0.99])
    cls = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0])
    det = {"score": score, "cls": cls}
    kept = drop_unconfirmed(labels, det, [0.8, 0.4], 2)
    assert kept.tolist() == [0, 0, 0, -1, -1, -1, -1, -1, -1, 1, 1, -1]
    one_is_enough = [0, 0, 0, -1, -1, -1, -1, -1, 1, 2, 2, -1]
    assert drop_unconfirmed(labels, det, [0.8, 0.4], 1).tolist() == one_is_enough
    assert (drop_unconfirmed(labels, det, [0.8, 0.4], 0) == labels).all()


def test_detector_confirmation_removes_false_organelles_only(tmp_path):
    import json
    import shutil
    from pathlib import Path

    # the demo model with box thresholds well under its confirm thresholds, so
    # that flickering false boxes are kept on slices and only confirmation can go
    model = tmp_path / "model"
    shutil.copytree(Path(__file__).resolve().parents[1] / "assets" / "demo_model", model)
    settings = json.loads((model / "thresholds.json").read_text())
    settings["score_thresholds"] = dict.fromkeys(settings["score_thresholds"], 0.3)
    settings["confirm_thresholds"] = dict.fromkeys(settings["confirm_thresholds"], 0.8)
    (model / "thresholds.json").write_text(json.dumps(settings))
    ph = tmp_path / "ph"
    write_phantom(ph, shape=(32, 384, 384), seed=11, stl=False)
    truth, rows = _truth(ph)
    truth_classes = {int(r["id"]): r["class"] for r in rows}
    scores = {}
    for n in (0, 2):
        run = tmp_path / f"run{n}"
        run_pipeline(
            RunRequest(
                ph / "stack.tif",
                ph / "classes.toml",
                run,
                model=model,
                labels=True,
                settings=RunSettings(confirm_boxes=n),
            )
        )
        labels = tifffile.imread(run / "labels.tif")
        scores[n] = match_objects(labels, _classes_of(run), truth, truth_classes, 0.5, 1e-6)
    tp = {n: sum(s.tp for s in scores[n]) for n in scores}
    fp = {n: sum(s.fp for s in scores[n]) for n in scores}
    assert fp[0] > 0 and fp[2] < fp[0] / 2, (fp, tp)
    assert tp[2] >= tp[0] - 1, (fp, tp)


def test_a_neighbours_model_gets_each_slice_between_its_neighbours(tmp_path):
    import shutil
    from pathlib import Path

    pytest.importorskip("torch")
    from famous_addon.core.detector.model import DarknetTorch, with_neighbour_channels

    # Two models that agree only when the run gives slice k in the middle
    # channel: the demo model made one-slice (its three first-layer kernels
    # summed: what it computes on three equal slices), and that model widened
    # again (the sum in the middle, zeros for the neighbours).
    demo = Path(__file__).resolve().parents[1] / "assets" / "demo_model"
    net = DarknetTorch((demo / "model.cfg").read_text())
    net.load_weights(demo / "model.weights")
    state = net.layers.state_dict()
    first = next(k for k in state if k.endswith("weight"))
    state[first] = state[first].sum(dim=1, keepdim=True)
    one = DarknetTorch(net.cfg_text.replace("channels=3", "channels=1"))
    one.layers.load_state_dict(state)
    settings = json.loads((demo / "thresholds.json").read_text())
    for name, model, neighbours in (
        ("one", one, False),
        ("wide", with_neighbour_channels(one), True),
    ):
        shutil.copytree(demo, tmp_path / name)
        (tmp_path / name / "model.cfg").write_text(model.cfg_text)
        model.save_weights(tmp_path / name / "model.weights")
        (tmp_path / name / "model.weights.sha256").unlink()  # the demo's: weights replaced
        (tmp_path / name / "thresholds.json").write_text(
            json.dumps({**settings, "neighbours": neighbours})
        )
    ph = tmp_path / "ph"
    write_phantom(ph, shape=(12, 256, 256), seed=3, stl=False)
    labels = {}
    for name in ("one", "wide"):
        run = tmp_path / f"run_{name}"
        run_pipeline(
            RunRequest(
                ph / "stack.tif", ph / "classes.toml", run, model=tmp_path / name, labels=True
            )
        )
        labels[name] = tifffile.imread(run / "labels.tif")
        boxes = json.loads((run / "run.json").read_text())["fingerprint"]["boxes"]
        assert boxes["neighbours"] is (name == "wide")
    assert labels["one"].max() > 0
    np.testing.assert_array_equal(labels["one"], labels["wide"])


def test_following_on_thin_slices_stops_where_the_mask_beside_is_something_else(tmp_path):
    import cv2

    from famous_addon.core.boxes import write_yolo_txt
    from famous_addon.core.follow import CONTINUITY_CAP

    # 10 nm voxels, three dark tubes along z: A ends on slice 9 and a blob of
    # its size lies 6 px beside its end on slices 10-17 (IoU 0.57 with A's last
    # mask); B is boxed everywhere; C goes on past its last box on slice 9.
    # An organelle's masks overlap by ~0.95 from slice to slice here, so the
    # blob is not A going on, and C is
    n = 18
    truth = np.zeros((n, 160, 200), np.int32)
    for k in range(n):
        cv2.circle(truth[k], (50, 60) if k < 10 else (56, 60), 14, 1 if k < 10 else 4, -1)
        cv2.circle(truth[k], (150, 60), 14, 2, -1)
        cv2.circle(truth[k], (100, 125), 14, 3, -1)
    stack = np.where(truth > 0, 60, 200).astype(np.float32)
    stack += np.random.default_rng(0).normal(0, 8, stack.shape)
    tifffile.imwrite(tmp_path / "stack.tif", np.clip(stack, 0, 255).astype(np.uint8))
    (tmp_path / "obj.names").write_text("mitochondria\n")
    for k in range(n):
        boxes = [_mask_box(truth[k] == t, 0.9) for t in ((1, 2, 3) if k < 10 else (2,))]
        write_yolo_txt(tmp_path / "boxes" / f"slice_{k:05d}.txt", boxes, truth.shape[1:])
    run = tmp_path / "run"
    run_pipeline(_synthetic_request(tmp_path, run))
    labels = tifffile.imread(run / "labels.tif")
    a, c = (np.bincount(labels[:10][truth[:10] == t]).argmax() for t in (1, 3))
    assert a and c and a != c
    assert not (labels[10:] == a).any()  # not carried into the blob
    for k in range(10, n):
        assert _iou(labels[k] == c, truth[k] == 3) > 0.8, k
    followed = json.loads((run / "run.json").read_text())["follow_iou_by_class"]
    assert followed == {"mitochondria": CONTINUITY_CAP}
