"""The synthetic vEM phantom: determinism, geometry, look and the files it writes."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import tifffile
import trimesh
from scipy import ndimage
from skimage.measure import label, regionprops

from famous_addon.core.boxes import Box, YoloTxtBoxes
from famous_addon.core.classes import load_classes, preset
from famous_addon.core.errors import Cancelled, FamousError
from famous_addon.core.phantom import write as phantom_write
from famous_addon.core.phantom.cell import Phantom
from famous_addon.core.phantom.geometry import Ellipsoid, Grid
from famous_addon.core.phantom.organelles import (
    CLASS_NAMES,
    EARLY_ENDOSOME,
    LATE_ENDOSOME,
    LYSOSOME,
    MITOCHONDRIA,
    NUCLEUS,
)
from famous_addon.core.phantom.truth import load_truth
from famous_addon.core.phantom.write import write_phantom
from famous_addon.core.stack import open_stack

SHAPE = (24, 192, 192)
VOXEL = (20.0, 20.0, 20.0)


@pytest.fixture(scope="module")
def phantom():
    return Phantom(SHAPE, seed=3, voxel_size_nm=VOXEL)


@pytest.fixture(scope="module")
def volume(phantom):
    return phantom.render_volume()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    calls = []
    info = write_phantom(
        out, SHAPE, seed=3, voxel_size_nm=VOXEL, progress=lambda f, m: calls.append(f)
    )
    return out, info, calls


def ids_of(phantom, cls):
    return [o.id for o in phantom.objects if o.cls == cls]


def test_class_order_is_the_fibsem_preset():
    assert list(CLASS_NAMES) == preset("fibsem").names
    assert [EARLY_ENDOSOME, LATE_ENDOSOME, MITOCHONDRIA, LYSOSOME, NUCLEUS] == list(range(5))


def test_default_phantom_counts_match_a_hela_cell():
    ph = Phantom()
    n = {c: sum(o.cls == c for o in ph.objects) for c in range(5)}
    assert 8 <= n[MITOCHONDRIA] <= 15
    assert 6 <= n[EARLY_ENDOSOME] <= 10
    assert 5 <= n[LATE_ENDOSOME] <= 8
    assert 5 <= n[LYSOSOME] <= 8
    assert n[NUCLEUS] == 1
    assert [o.id for o in ph.objects] == list(range(1, len(ph.objects) + 1))
    assert sum(o.kind == "dumbbell" for o in ph.objects) == 1
    touching = [o for o in ph.objects if o.touching]
    assert len(touching) >= 4  # at least two pairs
    for o in touching:
        assert ph.objects[o.touching - 1].touching == o.id


def test_same_seed_same_slices_other_seed_other_slices(phantom):
    again = Phantom(SHAPE, seed=3, voxel_size_nm=VOXEL)
    other = Phantom(SHAPE, seed=4, voxel_size_nm=VOXEL)
    for k in (0, 11, 23):
        im1, lab1 = phantom.render_slice(k)
        im2, lab2 = again.render_slice(k)
        np.testing.assert_array_equal(im1, im2)
        np.testing.assert_array_equal(lab1, lab2)
        im3, lab3 = other.render_slice(k)
        assert np.mean(im1 != im3) > 0.5
        assert not np.array_equal(lab1 > 0, lab3 > 0)


def test_slice_by_slice_in_any_order_equals_the_full_render(volume):
    images, labels = volume
    fresh = Phantom(SHAPE, seed=3, voxel_size_nm=VOXEL)
    for k in (17, 3, 22, 4, 12):
        image, lab = fresh.render_slice(k)
        assert image.dtype == np.uint8 and lab.dtype == np.uint16
        np.testing.assert_array_equal(image, images[k])
        np.testing.assert_array_equal(lab, labels[k])


def test_every_class_is_present_and_ids_are_unique_objects(phantom, volume):
    _, labels = volume
    present = set(np.unique(labels)) - {0}
    assert {phantom.objects[i - 1].cls for i in present} == set(range(5))
    assert present == {o.id for o in phantom.objects}


def test_dumbbell_is_one_3d_object_but_two_2d_parts_on_most_slices(phantom, volume):
    _, labels = volume
    (dumb,) = [o for o in phantom.objects if o.kind == "dumbbell"]
    mask = labels == dumb.id
    assert ndimage.label(mask, np.ones((3, 3, 3)))[1] == 1
    per_slice = [ndimage.label(s, np.ones((3, 3)))[1] for s in mask if s.any()]
    assert per_slice.count(1) >= 1  # the bridge slices
    assert per_slice.count(2) >= 2 * per_slice.count(1)
    # and an annotator boxes the lobes separately where the bridge is missing
    k = next(k for k in range(SHAPE[0]) if ndimage.label(mask[k], np.ones((3, 3)))[1] == 2)
    mito_boxes = [b for b in phantom.boxes(k, labels[k]) if b.cls == MITOCHONDRIA]
    lobes = [
        b for b in mito_boxes if labels[k][int(b.cy), int(b.x) : int(b.x + b.w)].max() == dumb.id
    ]
    assert len(lobes) == 2


def test_truth_boxes_are_the_tight_boxes_of_the_visible_components(phantom, volume):
    _, labels = volume
    for k in range(0, SHAPE[0], 5):
        lab = labels[k]
        expected = set()
        for i in np.unique(lab[lab > 0]):
            for region in regionprops(label(lab == i, connectivity=2)):
                if region.area >= 9:
                    r0, c0, r1, c1 = region.bbox
                    expected.add((phantom.objects[i - 1].cls, c0, r0, c1 - c0, r1 - r0))
        got = {(b.cls, b.x, b.y, b.w, b.h) for b in phantom.boxes(k, lab)}
        assert got == expected


def test_boxes_skip_specks_and_split_components(phantom):
    lab = np.zeros(SHAPE[1:], np.uint16)
    lysosome = ids_of(phantom, LYSOSOME)[0]
    lab[10:20, 30:36] = lysosome
    lab[40:45, 50:60] = lysosome
    lab[100:102, 100:104] = lysosome  # 8 px: below what an annotator boxes
    boxes = phantom.boxes(0, lab)
    assert sorted(boxes, key=lambda b: b.y) == [
        Box(LYSOSOME, 30.0, 10.0, 6.0, 10.0),
        Box(LYSOSOME, 50.0, 40.0, 10.0, 5.0),
    ]


def test_organelles_are_apart_except_the_touching_pairs(phantom, volume):
    _, labels = volume
    for o in phantom.objects:
        grown = ndimage.binary_dilation(labels == o.id, np.ones((1, 3, 3), bool))
        neighbours = set(np.unique(labels[grown])) - {0, o.id}
        assert neighbours <= ({o.touching} if o.touching else set()), o
    pairs = [o for o in phantom.objects if o.touching and o.id < o.touching]
    assert pairs
    for o in pairs:
        grown = ndimage.binary_dilation(labels == o.id, np.ones((1, 5, 5), bool))
        assert np.any(labels[grown] == o.touching), "a touching pair is more than 1 px apart"


def test_organelles_are_cut_by_the_x_y_and_z_edges(phantom, volume):
    _, labels = volume

    def cut(*faces):
        ids = set().union(*(np.unique(f) for f in faces)) - {0}
        return {i for i in ids if phantom.objects[i - 1].cls != NUCLEUS}

    assert cut(labels[0], labels[-1])
    assert cut(labels[:, 0, :], labels[:, -1, :])
    assert cut(labels[:, :, 0], labels[:, :, -1])
    nucleus = ids_of(phantom, NUCLEUS)[0]
    faces = [labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]]
    assert any(np.any(f == nucleus) for f in faces)


def test_ellipsoid_voxel_volume_matches_the_analytic_volume():
    # deeper than the shared phantom, so that several endosomes lie wholly inside
    phantom = Phantom((40, 160, 160), seed=2, voxel_size_nm=(25, 25, 25))
    _, labels = phantom.render_volume()
    voxels = np.bincount(labels.ravel(), minlength=len(phantom.objects) + 1)
    vox_um3 = float(np.prod(phantom.spacing_um))
    checked = 0
    for o in phantom.objects:
        (part,) = o.parts if o.kind == "ellipsoid" else (None,)
        if part is None:
            continue
        lo = np.asarray(part.center) - part.axes - 2 * phantom.spacing_um
        hi = np.asarray(part.center) + part.axes + 2 * phantom.spacing_um
        if np.any(lo < 0) or np.any(hi > phantom.extent_um - phantom.spacing_um):
            continue  # cut by an edge
        exact = 4 / 3 * math.pi * np.prod(part.axes)
        assert voxels[o.id] * vox_um3 == pytest.approx(exact, rel=0.08), o
        checked += 1
    assert checked >= 3


def test_slice_jitter_moves_image_and_truth_together(phantom):
    k = next(k for k in range(SHAPE[0]) if np.any(phantom.jitter[k] != 0))
    assert set(np.unique(phantom.jitter)) <= {-1, 0, 1}
    image, lab = phantom.render_slice(k, noise=False)
    aligned = Phantom(SHAPE, seed=3, voxel_size_nm=VOXEL)
    aligned.jitter[k] = 0
    image0, lab0 = aligned.render_slice(k, noise=False)
    dy, dx = phantom.jitter[k]
    inner = (slice(2, -2), slice(2, -2))
    np.testing.assert_array_equal(lab[inner], np.roll(lab0, (dy, dx), axis=(0, 1))[inner])
    np.testing.assert_array_equal(image[inner], np.roll(image0, (dy, dx), axis=(0, 1))[inner])
    assert not np.array_equal(lab, lab0)


def test_intensities_follow_the_fibsem_look(phantom, volume):
    images, labels = volume

    def mean_of(ids):
        # the core of each organelle, away from the blurred rim
        core = ndimage.binary_erosion(np.isin(labels, ids), np.ones((1, 5, 5), bool))
        return float(images[core].mean())

    far = ~ndimage.binary_dilation(labels > 0, np.ones((1, 7, 7), bool))
    cytoplasm = float(images[far].mean())
    assert 120 < cytoplasm < 180
    assert mean_of(ids_of(phantom, NUCLEUS)) < cytoplasm - 30
    assert mean_of(ids_of(phantom, MITOCHONDRIA)) < cytoplasm - 30
    assert mean_of(ids_of(phantom, LATE_ENDOSOME)) < cytoplasm - 30
    assert mean_of(ids_of(phantom, EARLY_ENDOSOME)) > cytoplasm + 25
    assert 3 < cytoplasm - mean_of(ids_of(phantom, LYSOSOME)) < 25
    # noise at FIB-SEM levels: flat cytoplasm still varies by several grey levels
    assert 6 < images[far].std() < 30


def test_anisotropic_voxels_hold_the_same_cell():
    iso = Phantom((24, 192, 192), seed=5, voxel_size_nm=(20, 20, 20))
    aniso = Phantom((12, 192, 192), seed=5, voxel_size_nm=(40, 20, 20))
    assert [(o.cls, o.kind) for o in iso.objects] == [(o.cls, o.kind) for o in aniso.objects]

    def volumes(ph):
        _, labels = ph.render_volume()
        counts = np.bincount(labels.ravel(), minlength=len(ph.objects) + 1)
        return counts[1:] * float(np.prod(ph.spacing_um))

    v_iso, v_aniso = volumes(iso), volumes(aniso)
    big = v_iso > 0.01
    assert big.sum() >= 5
    np.testing.assert_allclose(v_aniso[big], v_iso[big], rtol=0.1)
    for c in range(5):
        sel = [o.cls == c for o in iso.objects]
        assert v_aniso[sel].sum() == pytest.approx(v_iso[sel].sum(), rel=0.1)


def test_bad_shapes_and_slices_are_clear_errors(phantom):
    with pytest.raises(FamousError, match="too small"):
        Phantom((10, 40, 40), voxel_size_nm=(10, 10, 10))
    with pytest.raises(FamousError, match="voxel size"):
        Phantom((10, 100, 100), voxel_size_nm=(0, 10, 10))
    with pytest.raises(FamousError, match="slice 24"):
        phantom.render_slice(24)


def test_written_files_read_back(written, phantom, volume):
    out, info, calls = written
    images, labels = volume
    with tifffile.TiffFile(out / "stack.tif") as tf:
        assert tf.series[0].shape == SHAPE and tf.series[0].axes == "ZYX"
        assert tf.imagej_metadata["spacing"] == pytest.approx(0.02)
        assert tf.imagej_metadata["unit"] == "um"
        num, den = tf.pages[0].tags["XResolution"].value
        assert den / num == pytest.approx(0.02)
        np.testing.assert_array_equal(tf.asarray(), images)
    stack = open_stack(out / "stack.tif")
    assert stack.shape == SHAPE and stack.voxel_size_nm == pytest.approx(VOXEL)
    np.testing.assert_array_equal(stack.read(7), images[7])
    truth, rows = load_truth(out)
    np.testing.assert_array_equal(truth, labels)
    assert truth.dtype == np.uint16
    counts = np.bincount(labels.ravel())
    assert [r["id"] for r in rows] == sorted(set(np.unique(labels)) - {0})
    for r in rows:
        assert r["class"] == CLASS_NAMES[phantom.objects[r["id"] - 1].cls]
        assert r["voxels"] == counts[r["id"]]
        assert r["volume_um3"] == pytest.approx(counts[r["id"]] * 0.02**3, rel=1e-4)
    assert load_classes(out / "classes.toml").names == list(CLASS_NAMES)
    n_boxes = np.zeros(len(phantom.objects) + 1, int)
    for k in range(SHAPE[0]):
        for i, box in phantom.boxes_with_ids(k, labels[k]):
            assert box.cls == phantom.objects[i - 1].cls
            n_boxes[i] += 1
    assert [r["n_boxes"] for r in rows] == [n_boxes[r["id"]] for r in rows]
    assert sum(r["n_boxes"] for r in rows) == info["boxes"]
    assert info["counts"] == {
        n: sum(phantom.objects[r["id"] - 1].name == n for r in rows) for n in CLASS_NAMES
    }
    assert calls and calls[-1] == 1.0 and calls == sorted(calls)


def test_written_boxes_and_annotations(written, phantom, volume):
    out, info, _ = written
    _, labels = volume
    files = sorted((out / "boxes").glob("*.txt"))
    assert [f.name for f in files] == [f"slice_{k:05d}.txt" for k in range(SHAPE[0])]
    source = YoloTxtBoxes(out / "boxes", SHAPE[1:], len(CLASS_NAMES), SHAPE[0])
    total = 0
    for k in range(SHAPE[0]):
        want = phantom.boxes(k, labels[k])
        got = source(k)
        total += len(got)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.cls == w.cls
            assert (g.x, g.y, g.w, g.h) == pytest.approx((w.x, w.y, w.w, w.h), abs=1e-3)
    assert total == info["boxes"]
    ann = out / "annotations"
    assert (ann / "obj.names").read_text().split() == list(CLASS_NAMES)
    pngs = (ann / "train.txt").read_text().split()
    assert len(pngs) == 2 and pngs == [f"slice_{k:05d}.png" for k in info["annotated_slices"]]
    for name in pngs:
        png = cv2.imread(str(ann / name), cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint8 and png.shape == SHAPE[1:]
        assert (ann / name).with_suffix(".txt").read_text() == (
            out / "boxes" / name.replace(".png", ".txt")
        ).read_text()


def test_truth_stl_volumes_match_the_voxels(written):
    out, info, _ = written
    _, rows = load_truth(out)
    stls = sorted((out / "truth_stl").glob("*/*.stl"))
    assert len(stls) == len(rows) == info["stl"]
    by_id = {r["id"]: r for r in rows}
    biggest = sorted(rows, key=lambda r: -r["voxels"])[:4]
    for r in biggest:
        path = out / "truth_stl" / r["class"] / f"{r['class']}_{r['id']}.stl"
        mesh = trimesh.load(path)
        assert mesh.is_watertight
        assert mesh.volume == pytest.approx(by_id[r["id"]]["volume_um3"], rel=0.1)
    # vertices in µm, (x, y, z), inside the stack
    mesh = trimesh.load(stls[0])
    extent = np.array([SHAPE[2], SHAPE[1], SHAPE[0]]) * 0.02
    assert np.all(mesh.bounds[0] > -0.02) and np.all(mesh.bounds[1] < extent + 0.02)


def test_stl_is_skipped_with_a_note_when_the_volume_is_large(tmp_path, monkeypatch):
    monkeypatch.setattr(phantom_write, "STL_MAX_BYTES", 1000)
    info = write_phantom(tmp_path, (4, 64, 64), seed=1, voxel_size_nm=(30, 30, 30))
    assert info["stl"] == 0 and "skipped" in info["notes"][0]
    assert not (tmp_path / "truth_stl").exists()
    assert (tmp_path / "truth.csv").is_file()


def test_ellipsoid_section_is_exact():
    grid = Grid(0.01, 0.01, 102, 102)
    e = Ellipsoid((0.0, 0.5, 0.5), (0.2, 0.3, 0.1))
    rows, cols, rho2 = e.section(0.0, grid)
    inside = rho2 <= 1
    # area of the central section: pi * 0.3 * 0.1 µm² = 942.5 px
    assert inside.sum() == pytest.approx(math.pi * 30 * 10, rel=0.02)
    assert e.section(0.25, grid) is None


def test_a_cancelled_write_leaves_no_tiff_behind(tmp_path):
    def cancel_halfway(fraction, message):
        if fraction >= 0.5:
            raise Cancelled

    with pytest.raises(Cancelled):
        write_phantom(
            tmp_path, (6, 64, 64), seed=1, voxel_size_nm=(30, 30, 30), progress=cancel_halfway
        )
    assert not list(tmp_path.glob("*.tif")) and not list(tmp_path.glob(".*tmp*"))


def test_bad_annotate_fraction_is_a_clear_error(tmp_path):
    with pytest.raises(FamousError, match="annotate_fraction"):
        write_phantom(tmp_path, (4, 64, 64), voxel_size_nm=(30, 30, 30), annotate_fraction=2)


def test_rewriting_a_phantom_replaces_it_but_other_folders_are_refused(tmp_path):
    out = tmp_path / "ph"
    write_phantom(out, (8, 64, 64), seed=1, voxel_size_nm=(30, 30, 30), stl=False)
    write_phantom(out, (4, 64, 64), seed=1, voxel_size_nm=(30, 30, 30), stl=False)
    assert len(list((out / "boxes").glob("*.txt"))) == 4
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FamousError, match="not empty"):
        write_phantom(other, (4, 64, 64), voxel_size_nm=(30, 30, 30))
    assert (other / "notes.txt").read_text() == "keep me"
