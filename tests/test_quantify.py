"""Quantification against analytic shapes at an isotropic and an anisotropic voxel size."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tifffile

from famous_addon.core.classes import preset
from famous_addon.core.errors import FamousError
from famous_addon.core.fileio import read_csv, write_csv, write_json
from famous_addon.core.quantify.labelfile import export_labels, read_labels
from famous_addon.core.quantify.morphometry import measure_labels
from famous_addon.core.quantify.run import quantify_run
from famous_addon.core.quantify.tables import class_table
from famous_addon.core.runfolder import ORGANELLE_COLUMNS

VOXELS = [(10.0, 10.0, 10.0), (20.0, 8.0, 8.0)]


def world(shape_nm, vox):
    """Voxel-centre coordinates (z, y, x) in nm of a grid covering ``shape_nm``."""
    n = np.ceil(np.asarray(shape_nm) / np.asarray(vox)).astype(int)
    g = np.indices(n, dtype=np.float32)
    return [g[i] * vox[i] for i in range(3)]


def dist_to_segment(p, a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = b - a
    t = np.clip(sum((p[i] - a[i]) * d[i] for i in range(3)) / (d @ d), 0.0, 1.0)
    return np.sqrt(sum((p[i] - (a[i] + t * d[i])) ** 2 for i in range(3)))


def measure(mask_or_labels, vox, classes=None, **kw):
    labels = mask_or_labels.astype(np.uint16)
    classes = classes or {1: "mitochondria"}
    return measure_labels(labels, vox, classes, **kw)


@pytest.mark.parametrize("vox", VOXELS)
def test_sphere(vox):
    r = 160.0
    p = world((420, 420, 420), vox)
    c = (207.0, 211.0, 203.0)  # off-grid centre
    mask = sum((p[i] - c[i]) ** 2 for i in range(3)) <= r**2
    (row,) = measure(mask, vox)
    r_um = r / 1000
    assert row["volume_um3"] == pytest.approx(4 / 3 * math.pi * r_um**3, rel=0.03)
    assert row["surface_um2"] == pytest.approx(4 * math.pi * r_um**2, rel=0.03)
    assert abs(row["sphericity"] - 1.0) < 0.05
    assert row["equiv_diameter_um"] == pytest.approx(2 * r_um, rel=0.02)
    assert row["feret_um"] == pytest.approx(2 * r_um, rel=0.05)
    assert row["elongation"] == pytest.approx(1.0, abs=0.05)
    for axis, centre in zip("zyx", c):
        assert row[f"centroid_{axis}_um"] == pytest.approx(centre / 1000, abs=vox[0] / 1000)
    assert row["touches_border"] == 0
    assert row["n_slices"] == row["z_max"] - row["z_min"] + 1


@pytest.mark.parametrize("vox", VOXELS)
def test_rotated_ellipsoid_axes(vox):
    semi = np.array([90.0, 130.0, 230.0])  # along z, y', x' (x' is x rotated by 30° in xy)
    p = world((240, 560, 560), vox)
    c = (120.0, 280.0, 280.0)
    t = math.radians(30)
    dz, dy, dx = (p[i] - c[i] for i in range(3))
    u = dx * math.cos(t) + dy * math.sin(t)
    v = -dx * math.sin(t) + dy * math.cos(t)
    mask = (dz / semi[0]) ** 2 + (v / semi[1]) ** 2 + (u / semi[2]) ** 2 <= 1
    (row,) = measure(mask, vox, classes={1: "lysosome"})
    got = [row["axis_major_um"], row["axis_middle_um"], row["axis_minor_um"]]
    assert got == pytest.approx(list(2 * semi[::-1] / 1000), rel=0.05)
    assert row["elongation"] == pytest.approx(230 / 130, rel=0.05)
    assert row["feret_um"] == pytest.approx(0.46, rel=0.05)
    assert row["volume_um3"] == pytest.approx(4 / 3 * math.pi * np.prod(semi / 1000), rel=0.03)
    # not a tubular class: no skeleton measures
    assert row["length_um"] is None and row["branches"] is None


@pytest.mark.parametrize("vox", VOXELS)
def test_straight_rod_length_no_branches(vox):
    r = 50.0
    a, b = np.array([120.0, 130.0, 100.0]), np.array([320.0, 330.0, 600.0])  # oblique, through z
    p = world((440, 460, 700), vox)
    mask = dist_to_segment(p, a, b) <= r
    (row,) = measure(mask, vox)
    length = (np.linalg.norm(b - a) + 2 * r) / 1000
    assert row["length_um"] == pytest.approx(length, rel=0.05)
    assert row["branches"] == 0
    assert row["feret_um"] == pytest.approx(length, rel=0.05)
    assert row["elongation"] > 3


def test_even_thickness_bar_still_has_a_skeleton():
    # skimage's 3-D thinning erases a 4 x 4 bar entirely (scikit-image #3757)
    labels = np.zeros((10, 10, 60), np.uint16)
    labels[3:7, 3:7, 5:55] = 1
    (row,) = measure(labels, (10.0, 10.0, 10.0))
    assert row["length_um"] == pytest.approx(0.5, rel=0.05)
    assert row["branches"] == 0


@pytest.mark.parametrize("vox", VOXELS)
def test_y_tube_three_branches(vox):
    r, arm = 45.0, 250.0
    p = world((300, 700, 700), vox)
    c = np.array([150.0, 350.0, 350.0])
    mask = np.zeros(p[0].shape, bool)
    for deg in (90, 210, 330):
        end = c + arm * np.array([0.0, math.sin(math.radians(deg)), math.cos(math.radians(deg))])
        mask |= dist_to_segment(p, c, end) <= r
    (row,) = measure(mask, vox)
    assert row["branches"] == 3
    assert row["length_um"] == pytest.approx(3 * (arm + r) / 1000, rel=0.05)


@pytest.mark.parametrize("vox", VOXELS)
def test_gaps_between_spheres(vox):
    r = 100.0
    p = world((300, 800, 560), vox)
    centres = {1: (150.0, 150.0, 150.0), 2: (150.0, 150.0, 410.0), 3: (150.0, 590.0, 150.0)}
    labels = np.zeros(p[0].shape, np.uint16)
    for oid, c in centres.items():
        labels[sum((p[i] - c[i]) ** 2 for i in range(3)) <= r**2] = oid
    classes = {1: "lysosome", 2: "lysosome", 3: "nucleus"}
    rows = {row["id"]: row for row in measure_labels(labels, vox, classes)}
    gap_x = (410 - 150 - 2 * r) / 1000  # 60 nm along x
    gap_y = (590 - 150 - 2 * r) / 1000  # 240 nm along y
    assert rows[1]["nearest_lysosome_um"] == pytest.approx(gap_x, abs=vox[2] / 1000)
    assert rows[2]["nearest_lysosome_um"] == pytest.approx(gap_x, abs=vox[2] / 1000)
    assert rows[1]["nearest_nucleus_um"] == pytest.approx(gap_y, abs=vox[1] / 1000)
    assert rows[3]["nearest_lysosome_um"] == pytest.approx(gap_y, abs=vox[1] / 1000)
    # sphere 2 to the nucleus: a diagonal gap
    diag = (math.hypot(590 - 150, 410 - 150) - 2 * r) / 1000
    assert rows[2]["nearest_nucleus_um"] == pytest.approx(diag, abs=vox[1] / 1000)
    # the only nucleus has no other nucleus
    assert rows[3]["nearest_nucleus_um"] is None


@pytest.mark.parametrize("box", [(1, 1, 1), (1, 2, 2), (2, 3, 3), (1, 6, 6), (5, 5, 5)])
def test_sphericity_of_tiny_objects_stays_below_one(box):
    labels = np.zeros((12, 14, 14), np.uint16)
    labels[3 : 3 + box[0], 3 : 3 + box[1], 3 : 3 + box[2]] = 1
    (row,) = measure(labels, (10.0, 10.0, 10.0), classes={1: "lysosome"})
    assert 0.5 < row["sphericity"] <= 1.0
    assert row["volume_um3"] == pytest.approx(np.prod(box) * 1e-6)


def test_touches_border_and_class_table():
    vox = (10.0, 10.0, 10.0)
    p = world((200, 300, 300), vox)
    labels = np.zeros(p[0].shape, np.uint16)
    labels[sum((p[i] - c) ** 2 for i, c in enumerate((100, 100, 100))) <= 60**2] = 1
    labels[sum((p[i] - c) ** 2 for i, c in enumerate((100, 200, 290))) <= 60**2] = 2  # cut by x
    labels[(p[0] < 150) & (p[1] > 230) & (p[2] < 80)] = 3
    classes = {1: "lysosome", 2: "lysosome", 3: "cell"}
    rows = measure_labels(labels, vox, classes)
    assert [r["touches_border"] for r in rows] == [0, 1, 1]
    table = {
        t["class"]: t for t in class_table(rows, ["lysosome", "nucleus", "cell"], labels.shape, vox)
    }
    lyso = table["lysosome"]
    voxels = np.bincount(labels.ravel())
    assert lyso["count"] == 2 and lyso["count_touching_border"] == 1
    assert lyso["total_volume_um3"] == pytest.approx((voxels[1] + voxels[2]) * 1e-6)
    assert lyso["median_volume_um3"] == pytest.approx((voxels[1] + voxels[2]) / 2 * 1e-6)
    assert lyso["volume_fraction_stack"] == pytest.approx((voxels[1] + voxels[2]) / labels.size)
    assert lyso["volume_fraction_cell"] == pytest.approx((voxels[1] + voxels[2]) / voxels[3])
    assert lyso["density_per_um3_stack"] == pytest.approx(2 / (labels.size * 1e-6))
    assert table["nucleus"]["count"] == 0 and table["nucleus"]["total_volume_um3"] == 0
    assert table["nucleus"]["mean_volume_um3"] is None


@pytest.mark.parametrize("top", [300, 70000])
def test_export_labels_for_fiji(tmp_path, top):
    labels = np.zeros((4, 6, 7), np.int64)
    labels[1:3, 2:4, 2:5] = top
    labels[0, 0, 0] = 1
    out = export_labels(tmp_path / "labels.tif", labels, (40.0, 5.0, 8.0))
    with tifffile.TiffFile(out) as tif:
        data = tif.asarray()
        assert data.shape == labels.shape
        assert data.dtype == (np.uint16 if top < 65536 else np.uint32)
        np.testing.assert_array_equal(data, labels)
        assert tif.pages[0].resolution == pytest.approx((1 / 0.008, 1 / 0.005))
        if top < 65536:
            assert tif.imagej_metadata["spacing"] == pytest.approx(0.04)
            assert tif.imagej_metadata["unit"] == "um"
        else:
            assert 'PhysicalSizeZ="0.04"' in tif.ome_metadata
    assert not list(tmp_path.glob("*.tmp*"))


def test_read_labels_rejects_float(tmp_path):
    tifffile.imwrite(tmp_path / "f.tif", np.zeros((2, 3, 3), np.float32), photometric="minisblack")
    with pytest.raises(FamousError, match="integer label volume"):
        read_labels(tmp_path / "f.tif")


def make_run(tmp_path, labels, classes, vox):
    """A minimal finished run folder around a label volume."""
    run = tmp_path / "run"
    config = preset("fibsem")
    write_json(
        run / "run.json",
        {
            "status": "complete",
            "input": {"voxel_size_nm": list(vox), "shape": list(labels.shape)},
            "classes": config.to_dict(),
        },
    )
    rows = []
    for oid, cls in classes.items():
        zz, yy, xx = np.nonzero(labels == oid)
        n = len(zz)
        rows.append(
            [oid, cls, zz.min(), zz.max(), zz.max() - zz.min() + 1, yy.min(), yy.max()]
            + [xx.min(), xx.max(), n, n * np.prod(vox) * 1e-9, 17]
        )
    write_csv(run / "organelles.csv", ORGANELLE_COLUMNS, rows)
    export_labels(run / "labels.tif", labels, vox)
    return run


def test_quantify_run_writes_tables_and_plots(tmp_path):
    vox = (20.0, 8.0, 8.0)
    p = world((300, 640, 640), vox)
    labels = np.zeros(p[0].shape, np.uint16)
    labels[dist_to_segment(p, (150, 100, 100), (150, 100, 500)) <= 50] = 1
    labels[dist_to_segment(p, (150, 300, 100), (200, 400, 450)) <= 60] = 2
    labels[sum((p[i] - c) ** 2 for i, c in enumerate((150, 500, 300))) <= 90**2] = 3
    labels[sum((p[i] - c) ** 2 for i, c in enumerate((150, 500, 530))) <= 70**2] = 4
    classes = {1: "mitochondria", 2: "mitochondria", 3: "lysosome", 4: "lysosome"}
    run = make_run(tmp_path, labels, classes, vox)
    write_csv(run / "quantification.csv", ["id", "area_um2"], [(1, 0.25), (3, 0.1)])
    seen = []
    result = quantify_run(run, tmp_path / "out", progress=lambda f, m: seen.append(f))
    assert seen[-1] == 1.0 and seen == sorted(seen)
    rows = read_csv(result.organelles_csv)
    header = list(rows[0].keys())
    assert header[: len(ORGANELLE_COLUMNS)] == list(ORGANELLE_COLUMNS)
    for col in ("surface_um2", "sphericity", "elongation", "feret_um", "length_um", "branches"):
        assert col in header
    for cls in preset("fibsem").names:
        assert f"nearest_{cls}_um" in header
    by_id = {int(r["id"]): r for r in rows}
    original = {int(r["id"]): r for r in read_csv(run / "organelles.csv")}
    for oid, row in by_id.items():  # the run's own columns keep their values exactly
        assert {k: row[k] for k in ORGANELLE_COLUMNS} == {
            k: original[oid][k] for k in ORGANELLE_COLUMNS
        }
    assert float(by_id[1]["length_um"]) == pytest.approx(0.5, rel=0.05)
    assert by_id[3]["length_um"] == ""  # lysosomes are not tubular
    assert float(by_id[1]["area_mesh_um2"]) == 0.25 and by_id[2]["area_mesh_um2"] == ""
    assert float(by_id[3]["sphericity"]) == pytest.approx(1.0, abs=0.05)
    table = {r["class"]: r for r in read_csv(result.classes_csv)}
    assert int(table["mitochondria"]["count"]) == 2 and int(table["nucleus"]["count"]) == 0
    vol = (np.count_nonzero(labels == 3) + np.count_nonzero(labels == 4)) * np.prod(vox) * 1e-9
    assert float(table["lysosome"]["total_volume_um3"]) == pytest.approx(vol, rel=1e-4)
    names = sorted(p.name for p in result.plots)
    assert names == [
        "length_um.png",
        "sphericity.png",
        "volume_um3.png",
        "volume_vs_sphericity.png",
    ]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in result.plots)
    # the run folder itself is untouched when --out is elsewhere
    assert "sphericity" not in read_csv(run / "organelles.csv")[0]
    assert json.loads((run / "run.json").read_text())["status"] == "complete"


def test_quantify_run_needs_labels(tmp_path):
    labels = np.zeros((3, 8, 8), np.uint16)
    labels[1, 2:5, 2:5] = 1
    run = make_run(tmp_path, labels, {1: "lysosome"}, (10.0, 10.0, 10.0))
    (run / "labels.tif").unlink()
    with pytest.raises(FamousError, match="--labels"):
        quantify_run(run)


def test_cli_quantify(tmp_path, capsys):
    from famous_addon.cli import main

    labels = np.zeros((8, 30, 30), np.uint16)
    labels[2:6, 4:10, 4:20] = 1
    labels[2:6, 15:25, 15:25] = 2
    run = make_run(tmp_path, labels, {1: "mitochondria", 2: "lysosome"}, (20.0, 8.0, 8.0))
    fiji = tmp_path / "fiji" / "labels.tif"
    assert main(["quantify", str(run), "--export-labels", str(fiji)]) == 0
    out = capsys.readouterr().out
    assert "mitochondria" in out and "classes.csv" in out
    assert "sphericity" in read_csv(run / "organelles.csv")[0]  # default --out: the run
    with tifffile.TiffFile(fiji) as tif:
        assert tif.imagej_metadata["spacing"] == pytest.approx(0.02)
        np.testing.assert_array_equal(tif.asarray(), labels)
    assert main(["quantify", str(tmp_path / "nowhere")]) == 2
