"""Object matching and scores against answers known by construction."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from famous_addon.core.compare import annotator, comparison, score, segmentations
from famous_addon.core.compare import run as runner
from famous_addon.core.compare.score import count_overlaps, match_objects
from famous_addon.core.compare.tables import format_table
from famous_addon.core.errors import FamousError


def ball(shape, center, radius, spacing=(1.0, 1.0, 1.0)):
    """Voxels whose centres lie within ``radius`` (world units) of ``center``."""
    zz, yy, xx = np.indices(shape, dtype=float)
    d2 = sum(((g * s - c) ** 2) for g, s, c in zip((zz, yy, xx), spacing, center))
    return d2 <= radius**2


def blobs(n=12, shape=(24, 64, 64), seed=3):
    """A label volume of ``n`` separated boxes with random sizes and classes."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.uint16)
    classes = {}
    names = ["mito", "lyso", "endo"]
    for i in range(n):
        z0 = 2 + 10 * (i % 2)
        y0 = 2 + 20 * ((i // 2) % 3)
        x0 = 2 + 30 * (i // 6)
        dz, dy, dx = rng.integers(4, 9), rng.integers(8, 17), rng.integers(10, 25)
        lab[z0 : z0 + dz, y0 : y0 + dy, x0 : x0 + dx] = i + 1
        classes[i + 1] = names[i % 3]
    return lab, classes


def by_class(scores):
    return {s.class_name: s for s in scores}


def test_lens_volume_of_two_overlapping_spheres():
    spacing = (0.5, 0.25, 0.25)  # anisotropic voxels, µm
    shape = (64, 128, 128)
    r, d = 10.0, 8.0
    c = np.array([16.0, 16.0, 16.0])
    a = ball(shape, c - [0, 0, d / 2], r, spacing).astype(np.uint8)
    b = ball(shape, c + [0, 0, d / 2], r, spacing).astype(np.uint8)
    vox = float(np.prod(spacing))
    [s] = match_objects(a, {1: "sphere"}, b, {1: "sphere"}, voxel_volume_um3=vox)
    lens = math.pi * (4 * r + d) * (2 * r - d) ** 2 / 12
    sphere = 4 / 3 * math.pi * r**3
    assert s.volume_b_um3 == pytest.approx(sphere, rel=0.02)
    assert s.volume_overlap * s.volume_b_um3 == pytest.approx(lens, rel=0.02)
    assert s.dice == pytest.approx(lens / sphere, rel=0.02)
    # IoU = lens / (2 sphere - lens) ~ 0.29: a match at 0.25, not at 0.5
    assert (s.tp, s.fp, s.fn) == (0, 1, 1)
    [s25] = match_objects(a, {1: "sphere"}, b, {1: "sphere"}, iou_threshold=0.25)
    assert (s25.tp, s25.fp, s25.fn) == (1, 0, 0)


def test_identical_segmentations_score_one():
    lab, classes = blobs()
    scores = match_objects(lab, classes, lab, classes)
    assert {s.class_name for s in scores} == {"mito", "lyso", "endo"}
    for s in scores:
        assert s.precision == s.recall == s.f1 == s.jaccard == 1.0
        assert s.volume_overlap == s.dice == 1.0
        assert s.tp == s.n_a == s.n_b == 4 and s.fp == s.fn == 0


def test_one_object_removed_gives_exactly_one_fn():
    lab, classes = blobs()
    test = lab.copy()
    test[test == 5] = 0
    classes_test = {k: v for k, v in classes.items() if k != 5}
    scores = by_class(match_objects(test, classes_test, lab, classes))
    assert sum(s.fn for s in scores.values()) == 1
    assert sum(s.fp for s in scores.values()) == 0
    hit = scores[classes[5]]
    assert (hit.tp, hit.fn, hit.n_b, hit.n_a) == (3, 1, 4, 3)
    assert hit.recall == pytest.approx(3 / 4)
    assert hit.precision == 1.0
    assert hit.jaccard == pytest.approx(3 / 4)
    assert hit.f1 == pytest.approx(6 / 7)


def test_reclassified_object_is_fp_in_one_class_and_fn_in_other():
    lab, classes = blobs()
    other = dict(classes)
    other[1] = "lyso"  # was mito
    s = by_class(match_objects(lab, other, lab, classes))
    assert (s["mito"].tp, s["mito"].fn, s["mito"].fp) == (3, 1, 0)
    assert (s["lyso"].tp, s["lyso"].fp, s["lyso"].fn) == (4, 1, 0)
    # Table 1's volume overlap is per class, so a reclassified object loses its volume too
    vol1 = int(np.count_nonzero(lab == 1))
    mito_b = sum(int(np.count_nonzero(lab == k)) for k, c in classes.items() if c == "mito")
    assert s["mito"].volume_overlap == pytest.approx((mito_b - vol1) / mito_b)


def test_relabelled_ids_and_shifted_boundaries():
    lab, classes = blobs()
    # new ids (a permutation) and each object grown by one voxel in x: IoU stays > 0.5
    perm = np.arange(lab.max() + 1)
    perm[1:] = np.random.default_rng(0).permutation(np.arange(100, 100 + lab.max()))
    moved = perm[lab]
    moved[:, :, 1:] = np.where(moved[:, :, 1:] == 0, moved[:, :, :-1], moved[:, :, 1:])
    classes_moved = {int(perm[k]): v for k, v in classes.items()}
    for s in match_objects(moved, classes_moved, lab, classes):
        assert (s.tp, s.fp, s.fn) == (4, 0, 0)
        assert s.volume_overlap == 1.0
        assert s.volume_a_um3 > s.volume_b_um3


def test_hungarian_prefers_the_assignment_with_more_total_iou():
    # B: two objects side by side. A: one object covering B1 plus half of B2 and
    # one object equal to B2's other half. Greedy by best IoU would still be right
    # here, but both A objects overlap B2, so the assignment must be one-to-one.
    b = np.zeros((1, 1, 40), np.uint8)
    b[0, 0, 0:20] = 1
    b[0, 0, 20:40] = 2
    a = np.zeros_like(b)
    a[0, 0, 0:26] = 1  # IoU with B1 = 20/26, with B2 = 6/34
    a[0, 0, 26:40] = 2  # IoU with B2 = 14/20
    cl = {1: "x", 2: "x"}
    [s] = match_objects(a, cl, b, cl, iou_threshold=0.1)
    assert (s.tp, s.fp, s.fn) == (2, 0, 0)
    ov = count_overlaps(a, b)
    pair_iou = ov.pair_n / (ov.size_of_a(ov.pair_a) + ov.size_of_b(ov.pair_b) - ov.pair_n)
    ma, mb, _ = score.assign(ov.pair_a, ov.pair_b, pair_iou, 0.1)
    assert sorted(zip(ma.tolist(), mb.tolist())) == [(1, 1), (2, 2)]


def test_split_object_is_reported_and_adjusted():
    b = np.zeros((4, 10, 40), np.uint8)
    b[:, :, 0:40] = 1
    a = np.zeros_like(b)
    # three parts of 15, 13 and 12 columns: none reaches IoU 0.5 alone
    a[:, :, 0:15] = 3
    a[:, :, 15:28] = 1
    a[:, :, 28:40] = 2
    cl_b = {1: "mito"}
    cl_a = {1: "mito", 2: "mito", 3: "mito"}
    [raw] = match_objects(a, cl_a, b, cl_b, adjust_splits=False)
    assert (raw.tp, raw.fp, raw.fn, raw.splits_a) == (0, 3, 1, 0)
    [adj] = match_objects(a, cl_a, b, cl_b)
    assert adj.splits_a == 1
    assert (adj.tp, adj.fp, adj.fn) == (1, 0, 0)
    # the reverse: B cut the object A sees whole
    [rev] = match_objects(b, cl_b, a, cl_a)
    assert rev.splits_b == 1 and (rev.tp, rev.fp, rev.fn) == (1, 0, 0)


def test_slabs_of_a_memmap_give_the_same_counts(tmp_path, monkeypatch):
    lab, classes = blobs()
    other = lab.copy()
    other[:, :, ::7] = 0
    path_a, path_b = tmp_path / "a.dat", tmp_path / "b.dat"
    for path, arr in ((path_a, lab), (path_b, other)):
        mm = np.memmap(path, dtype=arr.dtype, mode="w+", shape=arr.shape)
        mm[:] = arr
        mm.flush()
    whole = count_overlaps(lab, other)
    monkeypatch.setattr(score, "_SLAB_VOXELS", 64 * 64 * 3)  # 3 slices per slab
    ma = np.memmap(path_a, dtype=lab.dtype, mode="r", shape=lab.shape)
    mb = np.memmap(path_b, dtype=lab.dtype, mode="r", shape=lab.shape)
    slabs = count_overlaps(ma, mb)
    for name in ("ids_a", "size_a", "ids_b", "size_b", "pair_a", "pair_b", "pair_n"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(slabs, name))
    for k in classes:
        assert slabs.size_of_a(np.array([k]))[0] == np.count_nonzero(lab == k)


def test_objects_without_voxels_and_without_class():
    lab, classes = blobs(n=3)
    extra = dict(classes)
    extra[99] = "mito"  # an annotated object that fell off the grid: unmatched
    s = by_class(match_objects(lab, classes, lab, extra))
    assert s["mito"].fn == 1 and s["mito"].n_b == 2
    unnamed = lab.copy()
    unnamed[0, 0, 0] = 7
    s = by_class(match_objects(unnamed, classes, lab, classes))
    assert s[score.UNCLASSIFIED].fp == 1


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(FamousError, match="different shapes"):
        match_objects(np.zeros((2, 3, 4), np.uint8), {}, np.zeros((2, 3, 5), np.uint8), {})


def test_format_table_lists_every_class_with_percentages():
    lab, classes = blobs()
    test = lab.copy()
    test[test == 5] = 0
    kept = {k: v for k, v in classes.items() if k != 5}
    text = format_table(match_objects(test, kept, lab, classes))
    lines = text.splitlines()
    assert lines[0].split()[:6] == ["class", "n_a", "n_b", "TP", "FP", "FN"]
    row = next(line for line in lines if line.startswith(classes[5]))
    assert "75.00%" in row and "100.00%" in row
    assert len(lines) == 2 + 3


# -- the phantom: truth STLs (M1), a simulated second annotator (M2), the pipeline


@pytest.fixture(scope="module")
def phantom_case(tmp_path_factory):
    import tifffile

    from famous_addon.core.compare.stl import write_object_stls
    from famous_addon.core.phantom.write import write_phantom
    from famous_addon.core.pipeline import run_pipeline
    from famous_addon.core.request import RunRequest

    root = tmp_path_factory.mktemp("phantom_compare")
    ph = root / "phantom"
    info = write_phantom(ph, shape=(32, 256, 256), seed=2)
    run_pipeline(
        RunRequest(
            ph / "stack.tif", ph / "classes.toml", root / "run", boxes=ph / "boxes", labels=True
        )
    )
    truth = tifffile.imread(ph / "truth_labels.tif")
    classes = segmentations.read_classes_csv(ph / "truth.csv")
    m2, m2_classes, changes = annotator.simulate_annotator(truth, classes, seed=4)
    vox_um = tuple(v / 1000 for v in info["voxel_size_nm"])
    write_object_stls(root / "M2", m2, m2_classes, vox_um)
    return dict(
        root=root,
        ph=ph,
        run=root / "run",
        truth=truth,
        classes=classes,
        m2=m2,
        m2_classes=m2_classes,
        changes=changes,
    )


def test_simulated_annotator_moves_drops_and_reclassifies(phantom_case):
    truth, m2, ch = phantom_case["truth"], phantom_case["m2"], phantom_case["changes"]
    classes = phantom_case["classes"]
    assert len(ch.dropped) == 1 and len(ch.reclassified) == 1
    assert not np.any(m2 == ch.dropped[0])
    ((rid, (old, new)),) = ch.reclassified.items()
    assert classes[rid] == old != new == phantom_case["m2_classes"][rid]
    moved = 0
    for i in phantom_case["m2_classes"]:
        a, b = truth == i, m2 == i
        assert np.count_nonzero(a & b) / np.count_nonzero(a | b) >= 0.6
        assert not np.any(b & (truth != 0) & ~a)  # grows into background only
        moved += np.count_nonzero(a != b) > 0
    assert moved >= len(phantom_case["m2_classes"]) - 1


def test_phantom_m1_vs_m2_match_the_perturbation(phantom_case):
    c = phantom_case
    comp, paths = runner.run_compare(
        [c["run"], c["ph"] / "truth_stl", c["root"] / "M2"], c["root"] / "report"
    )
    assert [p.name for p in comp.pairs] == ["automatic vs M1", "automatic vs M2", "M1 vs M2"]
    pair = next(p for p in comp.pairs if p.name == "M1 vs M2")
    classes, ch = c["classes"], c["changes"]
    changed = set(ch.dropped) | set(ch.reclassified)
    scores = by_class(pair.scores[0.5])
    for name, s in scores.items():
        ids = [i for i, k in classes.items() if k == name]
        assert s.tp == sum(i not in changed for i in ids), name
        assert s.fp == sum(i in changed for i in ids), name
        assert s.fn == sum(new == name for _, new in ch.reclassified.values()), name
        # Table 1 from the voxels themselves: |M1_c ∩ M2_c| / |M2_c|
        m1_c = np.isin(c["truth"], ids)
        m2_c = np.isin(c["m2"], [i for i, k in c["m2_classes"].items() if k == name])
        if m2_c.any():
            want = np.count_nonzero(m1_c & m2_c) / np.count_nonzero(m2_c)
            assert s.volume_overlap == pytest.approx(want, abs=0.005), name
    ((rid, (old, new)),) = ch.reclassified.items()
    assert pair.confusion[(new, old)] == 1
    assert pair.confusion[(score.NO_MATCH, classes[ch.dropped[0]])] >= 1
    # every table and plot is there
    for key in ("metrics_csv", "confusion_csv", "volumes_csv", "report_md", "report_html"):
        assert paths[key].is_file()
    rows = compare_report_rows(paths["metrics_csv"])
    assert len(rows) == 3 * len(comp.class_order)
    assert {"pair", "class", "tp", "fp", "fn", "precision", "recall", "f1", "jaccard",
            "volume_a_um3", "volume_b_um3", "volume_overlap", "dice"} <= set(rows[0])  # fmt: skip
    md = paths["report_md"].read_text()
    assert (
        "Table 1" in md
        and "Table 4: Precision, Recall, Jaccard index and F1 scores - M1 vs M2" in md
    )
    pngs = sorted(p.name for p in (c["root"] / "report" / "plots").glob("*.png"))
    assert "volumes.png" in pngs and "confusion_M1_vs_M2.png" in pngs
    assert "scatter_automatic_vs_M1.png" in pngs
    assert sum(n.startswith("overlay_z") for n in pngs) >= 2


def test_phantom_automatic_vs_truth_equals_direct_matching(phantom_case):
    """STL truth voxelised on the stack's grid gives the same scores as the truth labels."""
    import tifffile

    from famous_addon.core.runfolder import RunFolder

    c = phantom_case
    run = RunFolder(c["run"])
    auto = tifffile.imread(run.labels_path)
    auto_classes = {r["id"]: r["class"] for r in run.organelles()}
    direct = by_class(match_objects(auto, auto_classes, c["truth"], c["classes"]))
    grid, _ = segmentations.resolve_grid([c["run"]])
    segs = [
        segmentations.load_segmentation(c["run"], grid, "automatic"),
        segmentations.load_segmentation(c["ph"] / "truth_stl", grid, "M1"),
    ]
    comp = comparison.compare_segmentations(segs, grid)
    via_stl = by_class(comp.pairs[0].scores[0.5])
    for name, s in direct.items():
        t = via_stl[name]
        assert (t.tp, t.fp, t.fn) == (s.tp, s.fp, s.fn), name
        assert t.volume_b_um3 == pytest.approx(s.volume_b_um3 * grid.voxel_volume_um3, rel=0.01)


def test_cli_compare_with_a_label_tiff(phantom_case, capsys):
    from famous_addon.cli import main

    c = phantom_case
    out = c["root"] / "cli"
    labels = f"{c['ph'] / 'truth_labels.tif'},{c['ph'] / 'truth.csv'}"
    rc = main(["compare", str(c["run"]), labels, "--out", str(out), "--no-plots", "--iou", "0.5"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "automatic vs M1" in text and "report:" in text
    rows = compare_report_rows(out / "metrics.csv")
    assert {r["pair"] for r in rows} == {"automatic vs M1"}


def compare_report_rows(path):
    from famous_addon.core.fileio import read_csv

    return read_csv(path)


def test_label_tiffs_compressed_and_resampled(tmp_path):
    import tifffile

    from famous_addon.core.compare.stl import Grid

    lab, classes = blobs()
    tif = tmp_path / "seg.tif"
    # compressed: cannot be memory-mapped, so it is read a slab at a time
    tifffile.imwrite(
        tif,
        lab,
        imagej=True,
        compression="zlib",
        resolution=(1 / 0.01, 1 / 0.01),
        metadata={"spacing": 0.02, "unit": "um", "axes": "ZYX"},
    )
    (tmp_path / "seg.csv").write_text(
        "id,class\n" + "".join(f"{k},{v}\n" for k, v in classes.items())
    )
    grid, _ = segmentations.resolve_grid([tif])
    assert grid == Grid(lab.shape, (0.02, 0.01, 0.01))
    seg = segmentations.load_segmentation(tif, grid, "M1")
    assert isinstance(seg.labels, segmentations.LabelSlices)
    np.testing.assert_array_equal(seg.labels[3:9], lab[3:9])
    assert seg.classes == classes
    # a coarser comparison grid samples the nearest source voxel centre
    coarse, _ = segmentations.resolve_grid([tif], voxel_size_nm=(40, 20, 20))
    assert coarse.shape == (12, 32, 32)
    seg2 = segmentations.load_segmentation(tif, coarse, "M2")
    np.testing.assert_array_equal(seg2.labels[0:12], lab[::2, ::2, ::2])
    comp = comparison.compare_segmentations([seg2, dataclasses.replace(seg2, name="M3")], coarse)
    for s in comp.pairs[0].scores[0.5]:
        assert s.precision == s.recall == 1.0
        assert s.volume_a_um3 == pytest.approx(
            sum(
                np.count_nonzero(lab[::2, ::2, ::2] == k)
                for k, c in classes.items()
                if c == s.class_name
            )
            * coarse.voxel_volume_um3
        )


def test_headless_compare_and_cli_errors(phantom_case, capsys):
    from famous_addon.cli import main

    c = phantom_case
    truth = f"{c['ph'] / 'truth_labels.tif'},{c['ph'] / 'truth.csv'}"
    paths = runner.compare_for_headless(c["run"], [truth], c["root"] / "headless", plots=False)
    text = capsys.readouterr().out
    assert "automatic vs M1" in text and str(paths["report_md"]) in text
    assert paths["report_md"].is_file()
    missing = str(c["root"] / "no_such_folder")
    assert main(["compare", str(c["run"]), missing, "--out", str(c["root"] / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_large_stl_grids_are_voxelised_into_a_file(tmp_path, monkeypatch):
    import trimesh

    from famous_addon.core.compare.stl import Grid

    box = trimesh.creation.box(bounds=[[0.15, 0.15, 0.15], [0.95, 0.95, 0.95]])
    (tmp_path / "M1" / "mito").mkdir(parents=True)
    (tmp_path / "M1" / "mito" / "m_1.stl").write_bytes(trimesh.exchange.stl.export_stl(box))
    monkeypatch.setattr(segmentations, "_IN_MEMORY_BYTES", 1000)
    grid = Grid((12, 12, 12), (0.1, 0.1, 0.1))
    seg = segmentations.load_segmentation(tmp_path / "M1", grid, "M1")
    assert isinstance(seg.labels, np.memmap)
    assert np.count_nonzero(seg.labels) == 8**3  # centres 0.2, 0.3, ..., 0.9 on each axis


# -- units per STL file


@pytest.mark.parametrize(
    "box_um, scale, unit",
    [
        ([[0.2, 0.3, 0.05], [0.9, 1.1, 0.12]], 1.0, None),  # µm, on the stack
        ([[0.2, 0.3, 0.05], [0.9, 1.1, 0.12]], 1e3, ("nm", 1e-3)),
        ([[0.2, 0.3, 0.05], [0.9, 1.1, 0.12]], 1e4, ("Å", 1e-4)),
        ([[0.2, 0.3, 0.05], [0.9, 1.1, 0.12]], 1e-3, ("mm", 1e3)),
        ([[1.0, 0.3, 0.05], [3.0, 1.1, 0.12]], 1.0, None),  # partly off: axes or offset
        ([[20.0, 20.0, 0.05], [40.0, 40.0, 0.12]], 1.0, None),  # far off, no unit fits
    ],
)
def test_each_file_unit_is_judged_against_the_stack(box_um, scale, unit):
    from famous_addon.core.compare.stl import Grid, file_unit

    grid = Grid.from_nm((16, 160, 160), (10, 10, 10))  # 0.16 x 1.6 x 1.6 µm
    assert file_unit(np.array(box_um) * scale, grid) == unit


def test_one_class_in_nm_among_classes_in_um_is_rescaled_and_matched(phantom_case, capsys):
    import shutil

    import trimesh

    from famous_addon.cli import main

    c = phantom_case
    mixed = c["root"] / "mixed_units"
    shutil.copytree(c["ph"] / "truth_stl", mixed)
    in_nm = sorted((mixed / "nucleus").glob("*.stl"))
    assert in_nm and len(list(mixed.glob("*/*.stl"))) > len(in_nm)
    for path in in_nm:
        mesh = trimesh.load(path, file_type="stl")
        mesh.apply_scale(1000.0)  # exported in nm
        path.write_bytes(trimesh.exchange.stl.export_stl(mesh))
    labels = f"{c['ph'] / 'truth_labels.tif'},{c['ph'] / 'truth.csv'}"
    scores = {}
    for name, stls in (("um", c["ph"] / "truth_stl"), ("mixed", mixed)):
        out = c["root"] / f"units_{name}"
        assert main(["compare", labels, str(stls), "--out", str(out), "--no-plots"]) == 0
        scores[name] = {r["class"]: r for r in compare_report_rows(out / "metrics.csv")}
    nucleus = scores["mixed"]["nucleus"]
    assert int(nucleus["tp"]) == len(in_nm) and int(nucleus["fn"]) == int(nucleus["fp"]) == 0
    assert scores["mixed"] == scores["um"]
    said = [ln for ln in capsys.readouterr().out.splitlines() if "rescaled" in ln]
    # the terminal and the report name every rescaled file and no other
    assert sorted(ln.split(": ")[2] for ln in said) == [str(p) for p in in_nm]
    assert all("read as nm and rescaled by 0.001" in ln for ln in said)
    assert f"{in_nm[0]}: read as nm" in (c["root"] / "units_mixed" / "report.md").read_text()
