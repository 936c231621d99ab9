"""Build the installable Blender extension zips, with the wheels the add-on needs.

One zip per platform and Blender Python: ``dist/famous-<version>-<platform>-<py>.zip``,
``py311`` for Blender 4.2-5.0 and ``py313`` for Blender 5.1 and later, for Linux
x64, Windows x64, macOS arm64 (13 or later) and macOS x64 (13 or later; Blender
4.2-4.5 only, the last for Intel Macs, so ``py311`` only). Windows on Arm gets
none: OpenCV 4.11 has no wheel for it (:data:`NOT_BUILT`). Each holds
``blender_manifest.toml`` (with ``platforms``, ``wheels`` and the Blender
version range filled in), the ``famous_addon`` package and ``wheels/*.whl``.

Wheels come from PyPI through ``pip download`` (``--only-binary=:all:``), in
the versions installed in the environment that runs this script (the versions
the tests ran with), or from a folder given with ``--wheels-from``.
NumPy is never bundled: Blender ships its own. A platform that fails (a wheel
missing) does not stop the others; the run ends with what was not built and
why, and exits 1 if anything was not. Each zip is checked with Blender's own
extension validator (:func:`validate`).

Usage::

    python build_addon.py                    # all platforms, both Pythons
    python build_addon.py --platform linux-x64 --python 311
    python build_addon.py --wheels-from DIR  # offline, wheels already downloaded
    python build_addon.py --no-wheels        # the add-on alone (for development)
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import tomli_w
from packaging.requirements import Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags, mac_platforms
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parent
PACKAGE = ROOT / "famous_addon"

# What the add-on imports that Blender does not ship. Their own dependencies
# are added from the installed packages' metadata (wheels in an extension are
# installed without a resolver). OpenCV's version depends on Blender's NumPy
# (:data:`OPENCV`).
BUNDLED = {
    "opencv-python-headless": None,
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
# Blender's Python -> the OpenCV for its NumPy. Both read Darknet models (OpenCV 5
# does not). Blender 4.2-5.0 ship NumPy 1.26, and 4.11 is the last OpenCV built for
# NumPy 1; Blender 5.1 and later ship NumPy 2 (bpy 5.3 needs >= 2.2), which 4.11
# cannot run beside. `make test-blender-newest` runs the tests on bpy 5.3, NumPy 2
# and OpenCV 4.14.
OPENCV = {"311": "4.11.0.86", "313": "4.14.0.94"}
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
    "macos-x64": {
        "sys_platform": "darwin",
        "platform_system": "Darwin",
        "platform_machine": "x86_64",
    },
}
# The oldest macOS the zips run on: OpenCV 4.11.0.86's only macOS wheels are built
# for 13 (Ventura), which is also what Blender 4.5 needs on Intel Macs.
MACOS = (13, 0)
# Extension platform -> the platform tags ``pip download`` is given; pip also takes
# the tags compatible with them (older manylinux and macOS versions, universal2).
PIP_PLATFORMS = {
    "linux-x64": ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"],
    "windows-x64": ["win_amd64"],
    "macos-arm64": [f"macosx_{MACOS[0]}_{MACOS[1]}_arm64"],
    "macos-x64": [f"macosx_{MACOS[0]}_{MACOS[1]}_x86_64"],
}
# Extension platform -> every wheel platform tag its zip accepts, most specific first:
# at least every tag pip accepts for PIP_PLATFORMS (a test checks with `pip debug`).
PLATFORMS = {
    # pip adds the two manylinux tags older than manylinux2014 (same glibc range or older)
    "linux-x64": [*PIP_PLATFORMS["linux-x64"], "manylinux2010_x86_64", "manylinux1_x86_64"],
    "windows-x64": PIP_PLATFORMS["windows-x64"],
    "macos-arm64": list(mac_platforms(MACOS, "arm64")),
    "macos-x64": list(mac_platforms(MACOS, "x86_64")),
}
# Blender's Python -> the Blender versions that use it.
PYTHONS = {
    "311": {"blender_version_min": "4.2.0", "blender_version_max": "5.1.0"},
    "313": {"blender_version_min": "5.1.0"},
}
# Platforms Blender runs on only up to some version: Blender 4.5 LTS is the last
# for Intel Macs, so their zip is the cp311 one, for 4.2-4.5.
LAST_BLENDER = {"macos-x64": "5.0.0"}
# Platforms Blender supports that get no zip, and why (printed by every build).
NOT_BUILT = {
    "windows-arm64": "no OpenCV 4 wheel for Windows on Arm (4.11 and 4.14 have none; "
    "OpenCV 5 cannot read Darknet models)",
}


def pythons_of(platform: str) -> list[str]:
    """The Blender Pythons a platform's Blenders use."""
    last = LAST_BLENDER.get(platform)
    return [
        py
        for py, versions in PYTHONS.items()
        if last is None or _version(versions["blender_version_min"]) < _version(last)
    ]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split("."))


class BuildError(Exception):
    """One zip could not be built; the message says why."""


def requirements(platform: str, python: str) -> dict[str, str | None]:
    """Every distribution to bundle for a platform and Python, with its version.

    :data:`BUNDLED` and, recursively, their dependencies whose markers hold
    there (extras left out, NumPy left to Blender). Versions are the pins or
    those installed here; a dependency not installed here (e.g. one only
    Windows needs) gets ``None``: the newest wheel.
    """
    env = {**MARKERS[platform], "python_version": f"{python[0]}.{python[1:]}", "extra": ""}
    wanted: dict[str, str | None] = {}
    pins = {**BUNDLED, "opencv-python-headless": OPENCV[python]}
    todo = [(canonicalize_name(n), v) for n, v in pins.items()]
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

    Raises BuildError naming what is missing.
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
        raise BuildError(
            f"no {platform} cp{python} wheel for "
            + ", ".join(m if wanted[m] is None else f"{m}=={wanted[m]}" for m in missing)
        )
    return sorted(p for _, p in best.values())


def download(cache: Path, platform: str, python: str, wanted: dict) -> None:
    """``pip download`` the wheels of one platform and Python into ``cache``."""
    cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-deps"]
    cmd += ["--dest", str(cache), "--python-version", python[0] + "." + python[1:]]
    cmd += ["--implementation", "cp", "--abi", f"cp{python}", "--abi", "abi3", "--abi", "none"]
    for tag in PIP_PLATFORMS[platform]:
        cmd += ["--platform", tag]
    cmd += [name if version is None else f"{name}=={version}" for name, version in wanted.items()]
    if subprocess.run(cmd).returncode != 0:
        raise BuildError(
            f"pip could not download the {platform} cp{python} wheels (its error above)"
        )


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
    if platform in LAST_BLENDER:
        data["blender_version_max"] = LAST_BLENDER[platform]
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
    """Check a zip as Blender does; raises BuildError.

    With Blender's own extension tool (``blender_ext.py`` of its ``bl_pkg``
    add-on, from the ``bpy`` wheel, as ``make`` installs it): the manifest is
    validated strictly, and every wheel's platform tag must fit each platform
    the manifest names, as Blender reads it when it installs the zip. Else
    ``blender --command extension validate`` where a Blender is on PATH.
    """
    ext = blender_ext()
    if ext is not None:
        found = ext.pkg_manifest_from_archive_and_validate(str(path), strict=True)
        if isinstance(found, str):
            raise BuildError(f"{path.name}: Blender's validator: {found}")
        for wheel in found.wheels or []:
            for platform in found.platforms or []:
                if not ext.blender_platform_compatible_with_wheel_platform_from_filepath(
                    platform, wheel
                ):
                    raise BuildError(f"{path.name}: {wheel} is not for {platform}")
        return
    blender = shutil.which("blender")
    if blender:
        cmd = [blender, "--command", "extension", "validate", str(path)]
        if subprocess.run(cmd).returncode != 0:
            raise BuildError(f"{path.name}: Blender's validator rejected it (its error above)")


def blender_ext():
    """Blender's extension tool module from the installed ``bpy`` wheel, or None.

    Loaded from its file, without importing ``bpy`` (which starts Blender).
    """
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        return None
    base = Path(list(spec.submodule_search_locations)[0])
    found = sorted(base.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if not found:
        return None
    loader = importlib.util.spec_from_file_location("blender_ext", found[-1])
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module


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
    built, failed = [], []
    for platform in args.platform or sorted(PLATFORMS):
        for python in [py for py in args.python or sorted(PYTHONS) if py in pythons_of(platform)]:
            try:
                path, n = _build_one(out, platform, python, args)
            except BuildError as e:
                # go on: one platform's missing wheel must not cost the others their zips
                failed.append(f"{platform} py{python}: {e}")
                print(f"build_addon.py: {platform} py{python} not built: {e}", file=sys.stderr)
                continue
            built.append(path)
            print(f"{path}  ({n} wheels)")
    print(f"built {len(built)} zip(s) in {out}")
    for line in failed:
        print(f"NOT BUILT  {line}")
    if not args.platform:
        for platform, why in NOT_BUILT.items():
            print(f"no zip for {platform}: {why}")
    return 1 if failed else 0


def _build_one(out: Path, platform: str, python: str, args) -> tuple[Path, int]:
    """One zip (its path and number of wheels); raises BuildError."""
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
    return path, len(wheels)


if __name__ == "__main__":
    sys.exit(main())
