"""Build the installable Blender extension zips, with the wheels the add-on needs.

One zip per platform and Blender Python: ``dist/famous-<version>-<platform>-<py>.zip``,
``py311`` for Blender 4.2-5.0 and ``py313`` for Blender 5.1 and later. Each holds
``blender_manifest.toml`` (with ``platforms``, ``wheels`` and the Blender
version range filled in), the ``famous_addon`` package and ``wheels/*.whl``.

Wheels come from PyPI through ``pip download`` (``--only-binary=:all:``), in
the versions installed in the environment that runs this script (the versions
the tests ran with), or from a folder given with ``--wheels-from``.
NumPy is never bundled: Blender ships its own.

Usage::

    python build_addon.py                    # all platforms, both Pythons
    python build_addon.py --platform linux-x64 --python 311
    python build_addon.py --wheels-from DIR  # offline, wheels already downloaded
    python build_addon.py --no-wheels        # the add-on alone (for development)
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import tomli_w
from packaging.requirements import Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parent
PACKAGE = ROOT / "famous_addon"

# What the add-on imports that Blender does not ship. Their own dependencies
# are added from the installed packages' metadata (wheels in an extension are
# installed without a resolver). OpenCV is pinned: 4.12+ needs NumPy 2, and
# Blender 4.2-5.0 ship NumPy 1.26.
BUNDLED = {
    "opencv-python-headless": "4.11.0.86",
    "scipy": None,
    "tifffile": None,
    "scikit-image": None,
    "mrcfile": None,
    "natsort": None,
    "tqdm": None,
    "tomli-w": None,
    "trimesh": None,
    "matplotlib": None,
}
# Imported by the add-on but not bundled, with the reason (checked by a test).
NOT_BUNDLED = {
    "numpy": "Blender ships it",
    "bpy": "Blender itself",
    "bmesh": "Blender itself",
    "mathutils": "Blender itself",
    "bpy-extras": "Blender itself (bpy_extras)",
    "torch": "training runs outside Blender (famous train)",
    "dask": "cluster runs are started from the command line",
    "distributed": "cluster runs are started from the command line",
}
SHIPPED_BY_BLENDER = {"numpy"}
# Import name -> distribution name, where they differ.
IMPORT_NAMES = {
    "cv2": "opencv-python-headless",
    "skimage": "scikit-image",
    "PIL": "pillow",
    "tomli_w": "tomli-w",
    "dateutil": "python-dateutil",
    "lazy_loader": "lazy-loader",
}

# Extension platform -> marker values of that platform.
MARKERS = {
    "linux-x64": {
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
    },
    "windows-x64": {
        "sys_platform": "win32",
        "platform_system": "Windows",
        "platform_machine": "AMD64",
    },
    "macos-arm64": {
        "sys_platform": "darwin",
        "platform_system": "Darwin",
        "platform_machine": "arm64",
    },
}
# Extension platform -> wheel platform tags, most specific first.
PLATFORMS = {
    "linux-x64": ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"],
    "windows-x64": ["win_amd64"],
    "macos-arm64": ["macosx_12_0_arm64", "macosx_11_0_arm64"],
}
# Blender's Python -> the Blender versions that use it.
PYTHONS = {
    "311": {"blender_version_min": "4.2.0", "blender_version_max": "5.1.0"},
    "313": {"blender_version_min": "5.1.0"},
}


def requirements(platform: str, python: str) -> dict[str, str | None]:
    """Every distribution to bundle for a platform and Python, with its version.

    :data:`BUNDLED` and, recursively, their dependencies whose markers hold
    there (extras left out, NumPy left to Blender). Versions are the pins or
    those installed here; a dependency not installed here (e.g. one only
    Windows needs) gets ``None``: the newest wheel.
    """
    env = {**MARKERS[platform], "python_version": f"{python[0]}.{python[1:]}", "extra": ""}
    wanted: dict[str, str | None] = {}
    todo = [(canonicalize_name(n), v) for n, v in BUNDLED.items()]
    while todo:
        name, version = todo.pop()
        if name in wanted or name in SHIPPED_BY_BLENDER:
            continue
        try:
            installed = metadata.version(name)
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            installed, requires = None, []
        wanted[name] = version or installed
        for text in requires:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate(env):
                todo.append((canonicalize_name(req.name), None))
    return dict(sorted(wanted.items()))


def supported_tags(platform: str, python: str) -> list[Tag]:
    """Wheel tags a Blender with this Python on this platform accepts, best first."""
    version = (int(python[0]), int(python[1:]))
    plats = PLATFORMS[platform]
    return [
        *cpython_tags(version, platforms=plats),
        *compatible_tags(version, interpreter=f"cp{python}", platforms=plats),
    ]


def select_wheels(pool: list[Path], platform: str, python: str, wanted: dict) -> list[Path]:
    """One wheel per wanted distribution, the best match for the platform and Python.

    Raises SystemExit naming what is missing.
    """
    rank = {tag: i for i, tag in enumerate(supported_tags(platform, python))}
    best: dict[str, tuple[int, Path]] = {}
    for path in pool:
        name, version, _, tags = parse_wheel_filename(path.name)
        if name not in wanted or wanted[name] not in (None, str(version)):
            continue
        score = min((rank[t] for t in tags if t in rank), default=None)
        if score is None:
            continue
        # Best tag first; for an unpinned package, the newest version.
        key = (score, tuple(-p for p in version.release))
        if name not in best or key < best[name][0]:
            best[name] = (key, path)
    missing = sorted(set(wanted) - set(best))
    if missing:
        sys.exit(
            f"build_addon.py: no {platform} cp{python} wheel for "
            + ", ".join(m if wanted[m] is None else f"{m}=={wanted[m]}" for m in missing)
        )
    return sorted(p for _, p in best.values())


def download(cache: Path, platform: str, python: str, wanted: dict) -> None:
    """``pip download`` the wheels of one platform and Python into ``cache``."""
    cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-deps"]
    cmd += ["--dest", str(cache), "--python-version", python[0] + "." + python[1:]]
    cmd += ["--implementation", "cp", "--abi", f"cp{python}", "--abi", "abi3", "--abi", "none"]
    for tag in PLATFORMS[platform]:
        cmd += ["--platform", tag]
    cmd += [name if version is None else f"{name}=={version}" for name, version in wanted.items()]
    subprocess.run(cmd, check=True)


def package_files() -> list[Path]:
    """The add-on's files, without caches."""
    return sorted(
        p
        for p in PACKAGE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    )


def manifest(platform: str, python: str, wheels: list[Path]) -> dict:
    """The manifest of one zip."""
    with open(PACKAGE / "blender_manifest.toml", "rb") as fh:
        data = tomllib.load(fh)
    data.update(PYTHONS[python])
    data["platforms"] = [platform]
    if wheels:
        data["wheels"] = [f"./wheels/{w.name}" for w in wheels]
    return data


def build_zip(out: Path, platform: str, python: str, wheels: list[Path]) -> Path:
    """Write one extension zip; returns its path."""
    data = manifest(platform, python, wheels)
    path = out / f"famous-{data['version']}-{platform}-py{python}.zip"
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in package_files():
            rel = f.relative_to(PACKAGE).as_posix()
            if rel == "blender_manifest.toml":
                zf.writestr(rel, tomli_w.dumps(data))
            else:
                zf.write(f, rel)
        for w in wheels:
            zf.write(w, f"wheels/{w.name}")
    tmp.replace(path)
    return path


def validate(path: Path) -> None:
    """``blender --command extension validate`` when a Blender is on PATH."""
    blender = shutil.which("blender")
    if blender:
        subprocess.run([blender, "--command", "extension", "validate", str(path)], check=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build the FAMOUS Blender extension zips.")
    p.add_argument("--out", default="dist", help="folder for the zips (default: dist)")
    p.add_argument("--platform", action="append", choices=sorted(PLATFORMS))
    p.add_argument("--python", action="append", choices=sorted(PYTHONS))
    src = p.add_mutually_exclusive_group()
    src.add_argument("--wheels-from", type=Path, help="take wheels from this folder (offline)")
    src.add_argument("--no-wheels", action="store_true", help="bundle no wheels")
    p.add_argument("--cache", type=Path, default=ROOT / "build" / "wheels", help="download cache")
    args = p.parse_args(argv)
    out = Path(args.out)
    built = []
    for platform in args.platform or sorted(PLATFORMS):
        for python in args.python or sorted(PYTHONS):
            wheels = []
            if not args.no_wheels:
                wanted = requirements(platform, python)
                folder = args.wheels_from or args.cache
                if args.wheels_from is None:
                    folder.mkdir(parents=True, exist_ok=True)
                    download(folder, platform, python, wanted)
                wheels = select_wheels(sorted(folder.glob("*.whl")), platform, python, wanted)
            path = build_zip(out, platform, python, wheels)
            validate(path)
            built.append(path)
            print(f"{path}  ({len(wheels)} wheels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
