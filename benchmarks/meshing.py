"""Meshing speed and accuracy of the two meshers (hull, volume), on the bpy wheel.

1. Speed on a 2,000-point organelle (a sampled ellipsoid surface, 1 x 0.7 x
   0.5 µm, cleaned by the core's outlier removal): median seconds per
   organelle for the hull mesher ("uniform" and "project") and for the volume
   mesher on the same ellipsoid voxelised at 10 nm (goal: <= 0.25 s).
2. The demo phantom (default 64 x 512 x 512, seed 0): the pipeline with its
   truth boxes, then every organelle meshed by both meshers; per class the
   median time and the volume error against the phantom's true volume
   (``truth.csv``), each run organelle matched to the truth object it overlaps
   most. Ends with the demo's total meshing time per mesher.
3. The same meshes against the phantom's truth STLs: per class and mesher,
   the distance between the two surfaces (both ways, from 20,000 points
   sampled on each to the other surface: mean and 95th percentile in nm;
   organelles that are the only one on their truth object) beside the z-step, the goal
   being a 95th percentile of at most one z-step.

With ``--voxel-size`` slices thicker than the pixels (e.g. 40 10 10, as on
serial-section TEM or SBEM), the phantom is written at that voxel size; the
truth surfaces and volumes come from the same cell written at the pixel size
in z too, and the volume mesher is also run on stacked sections (its
``interpolate=False``), the way it meshed before shape interpolation.

    python benchmarks/meshing.py [--shape 64 512 512] [--voxel-size 10 10 10] [--seed 0]
        [--work /tmp/famous_mesh_bench]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import bpy
import numpy as np
import tifffile

from famous_addon.blender import measure, meshing
from famous_addon.blender.scene import LabelVoxels
from famous_addon.core.errors import FamousError
from famous_addon.core.fileio import read_csv
from famous_addon.core.phantom.write import write_phantom
from famous_addon.core.pipeline import run_pipeline
from famous_addon.core.pointcloud import clean_grouped
from famous_addon.core.request import RunRequest
from famous_addon.core.runfolder import RunFolder


def timed(fn, *args, **kwargs):
    """Wall and CPU seconds of one call (CPU: all threads of this process; on a
    shared machine it shows the work where wall time shows the wait)."""
    t0, c0 = time.perf_counter(), time.process_time()
    obj = fn(*args, **kwargs)
    return time.perf_counter() - t0, time.process_time() - c0, obj


def ellipsoid_speed(repeats: int) -> None:
    radii = np.array([1.0, 0.7, 0.5])
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(2000, 3))
    pts = pts / np.linalg.norm(pts, axis=1, keepdims=True) * radii
    pts = pts[clean_grouped(pts, np.array([0, len(pts)]), np.zeros(1, int))[0]]
    step = 0.01
    grid = np.indices((2 * 50 + 1, 2 * 70 + 1, 2 * 100 + 1)).reshape(3, -1).T
    inside = ((((grid - [50, 70, 100]) * step) / radii[::-1]) ** 2).sum(axis=1) <= 1
    vox = grid[inside]
    exact = 4 / 3 * np.pi * radii.prod()
    print(f"\n1. ellipsoid 1 x 0.7 x 0.5 µm, {len(pts)} points / {len(vox)} voxels, {repeats} runs")
    print(f"{'mesher':<16} {'wall s':>7} {'cpu s':>7} {'volume err':>11} {'vertices':>9}")
    runs = [
        ("hull uniform", lambda: meshing.hull_mesh("b", pts, None, "uniform")),
        ("hull project", lambda: meshing.hull_mesh("b", pts, None, "project")),
        ("volume", lambda: meshing.volume_mesh("b", vox, (10.0, 10.0, 10.0))),
    ]
    for name, fn in runs:
        walls, cpus = [], []
        for _ in range(repeats):
            wall, cpu, obj = timed(fn)
            walls.append(wall)
            cpus.append(cpu)
            stats = measure.mesh_stats(obj)
            meshing.remove_object(obj)
        err = stats.volume_um3 / exact - 1
        print(
            f"{name:<16} {statistics.median(walls):>7.3f} {statistics.median(cpus):>7.3f}"
            f" {err:>+10.1%} {stats.vertices:>9}"
        )


def truth_match(run: RunFolder, phantom: Path) -> dict[int, int]:
    """Run organelle id -> the truth id it overlaps most."""
    labels = tifffile.imread(run.labels_path)
    truth = tifffile.imread(phantom / "truth_labels.tif")
    out = {}
    for row in run.organelles():
        ids = truth[labels == row["id"]]
        ids = ids[ids > 0]
        if ids.size:
            out[row["id"]] = int(np.bincount(ids).argmax())
    return out


def phantom_accuracy(shape, seed: int, work: Path, voxel_nm=(10.0, 10.0, 10.0)) -> None:
    phantom, run_dir = work / "phantom", work / "run"
    thick = voxel_nm[0] > voxel_nm[1]
    # truth surfaces of thick sections: the same cell (placed in µm) at the pixel size in z
    reference = work / "reference" if thick else phantom
    made = work / "phantom.txt"  # what the phantoms there were written for
    key = f"{tuple(shape)} seed {seed} voxel {tuple(voxel_nm)}"
    if not made.is_file() or made.read_text() != key or not (reference / "truth_stl").is_dir():
        write_phantom(phantom, shape=shape, seed=seed, voxel_size_nm=voxel_nm, stl=not thick)
        if thick:
            fine = (round(shape[0] * voxel_nm[0] / voxel_nm[1]), *shape[1:])
            fine_nm = (voxel_nm[1], *voxel_nm[1:])
            write_phantom(reference, shape=fine, seed=seed, voxel_size_nm=fine_nm, stl=True)
        made.write_text(key)
    shutil.rmtree(run_dir, ignore_errors=True)
    t_run, _, _ = timed(
        run_pipeline,
        RunRequest(
            phantom / "stack.tif",
            phantom / "classes.toml",
            run_dir,
            boxes=phantom / "boxes",
            labels=True,
        ),
    )
    run = RunFolder(run_dir)
    truth = {int(r["id"]): float(r["volume_um3"]) for r in read_csv(reference / "truth.csv")}
    match = truth_match(run, phantom)
    # surfaces are compared where one organelle is one truth object (not split)
    taken = np.bincount(list(match.values()))
    clouds = run.pointclouds()
    labels = LabelVoxels(run.labels_path)
    config = run.classes()
    rows = run.organelles()
    print(
        f"\n2. phantom {tuple(shape)} seed {seed}: {len(rows)} organelles, pipeline {t_run:.1f} s"
    )
    results: dict[str, dict[str, list]] = {}
    for row in rows:
        cls = row["class"]
        points, normals = clouds.get(row["id"])
        vox = labels.voxels(row)
        shape_kind = config[config.index(cls)].mesh.shape
        keys = ("n",) + tuple(f"{m}_{x}" for m in ("hull", "vol", "stack") for x in "terd")
        per = results.setdefault(cls, {k: [] for k in keys})
        per["n"].append(len(points))
        true = truth.get(match.get(row["id"], -1))
        cut = {"n_slices": labels.n_slices}
        meshers = [
            ("hull", meshing.hull_mesh, ("b", points, normals, shape_kind), {}),
            ("vol", meshing.volume_mesh, ("b", vox, run.voxel_size_nm), cut),
        ]
        if thick:
            stacked = {"interpolate": False}
            meshers.append(("stack", meshing.volume_mesh, ("b", vox, run.voxel_size_nm), stacked))
        for key, fn, args, kwargs in meshers:
            try:
                _, dt, obj = timed(fn, *args, **kwargs)
            except FamousError:
                # Flat point clouds (one slice) have no hull; the scene uses voxels.
                per["no_hull"] = per.get("no_hull", 0) + 1
                continue
            per[f"{key}_t"].append(dt)
            volume = measure.mesh_stats(obj).volume_um3
            per[f"{key}_r"].append(volume / row["volume_um3"] - 1)
            if true:
                per[f"{key}_e"].append(volume / true - 1)
                stl = reference / "truth_stl" / cls / f"{cls}_{match[row['id']]}.stl"
                if stl.is_file() and taken[match[row["id"]]] == 1:
                    per[f"{key}_d"].append(surface_distances(obj, stl))
            meshing.remove_object(obj)
    labels.close()
    print(
        f"{'class':<15} {'n':>3} {'points':>7} {'hull cpu':>9} {'volume cpu':>11}"
        f" {'hull err':>9} {'volume err':>11} {'|err| closer':>13}"
        f" {'hull/voxels':>12} {'volume/voxels':>14}" + (f" {'stacked err':>12}" if thick else "")
    )
    totals = {"hull": 0.0, "vol": 0.0}
    for cls, per in results.items():
        totals["hull"] += sum(per["hull_t"])
        totals["vol"] += sum(per["vol_t"])
        he, ve = np.array(per["hull_e"]), np.array(per["vol_e"])
        closer = "hull" if np.abs(he).mean() < np.abs(ve).mean() else "volume"
        if per.get("no_hull"):
            closer += f" ({per['no_hull']} no hull)"
        print(
            f"{cls:<15} {len(per['n']):>3} {int(np.median(per['n'])):>7}"
            f" {np.median(per['hull_t']):>9.3f} {np.median(per['vol_t']):>11.3f}"
            f" {np.median(he):>+9.1%} {np.median(ve):>+11.1%} {closer:>13}"
            f" {np.median(per['hull_r']):>+12.1%} {np.median(per['vol_r']):>+14.1%}"
            + (f" {np.median(per['stack_e']):>+12.1%}" if thick else "")
        )
    print(
        "(err: median of mesh volume / true volume - 1; closer: smaller mean |err|;\n"
        " x/voxels: median of mesh volume / the run's own voxel volume - 1, the mesher's own error)"
    )
    print(f"demo meshing total (cpu): hull {totals['hull']:.1f} s, volume {totals['vol']:.1f} s")
    step = run.voxel_size_nm[0]
    print(f"\n3. surface distance to the truth STLs (nm; z-step {step:g} nm)")
    keys = ("hull", "vol", "stack") if thick else ("hull", "vol")
    names = {"hull": "hull", "vol": "volume", "stack": "stacked"}
    print(
        f"{'class':<15}"
        + "".join(f" {names[k] + ' mean':>13} {names[k] + ' p95':>12}" for k in keys)
    )
    for cls, per in results.items():
        cells = []
        for key in keys:
            d = np.concatenate(per[f"{key}_d"]) if per[f"{key}_d"] else np.zeros(1)
            cells += [d.mean() * 1000, np.percentile(d, 95) * 1000]
        print(
            f"{cls:<15}"
            + "".join(f" {c:>13.1f}" if i % 2 == 0 else f" {c:>12.1f}" for i, c in enumerate(cells))
        )


def surface_distances(obj, stl: Path, n: int = 20000) -> np.ndarray:
    """Distances (µm) from points sampled on each surface to the other surface's samples."""
    import trimesh

    from famous_addon.blender.export import world_triangles

    ours = trimesh.Trimesh(*world_triangles(obj), process=False)
    truth = trimesh.load(stl)
    rng = np.random.default_rng(0)
    a = trimesh.sample.sample_surface(ours, n, seed=rng)[0]
    b = trimesh.sample.sample_surface(truth, n, seed=rng)[0]
    return np.concatenate([_to_surface(a, truth), _to_surface(b, ours)])


def _to_surface(points: np.ndarray, mesh, k: int = 12) -> np.ndarray:
    """Each point's distance to the mesh surface: the closest of its k nearest triangles."""
    import trimesh
    from scipy.spatial import cKDTree

    tri = mesh.triangles
    _, near = cKDTree(tri.mean(axis=1)).query(points, k=k)
    closest = trimesh.triangles.closest_point(tri[near.ravel()], np.repeat(points, k, axis=0))
    return np.linalg.norm(closest - np.repeat(points, k, axis=0), axis=1).reshape(-1, k).min(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shape", nargs=3, type=int, default=[64, 512, 512])
    ap.add_argument("--voxel-size", nargs=3, type=float, default=[10.0, 10.0, 10.0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--work", type=Path, default=Path("/tmp/famous_mesh_bench"))
    args = ap.parse_args()
    bpy.ops.wm.read_factory_settings(use_empty=True)
    ellipsoid_speed(args.repeats)
    phantom_accuracy(tuple(args.shape), args.seed, args.work, tuple(args.voxel_size))


if __name__ == "__main__":
    main()
