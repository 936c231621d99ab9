"""build_addon.py: zips with the right manifest and wheels, built offline."""

import ast
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import build_addon  # noqa: E402


def fake_wheel(folder: Path, name: str, version: str, tag: str) -> Path:
    path = folder / f"{name.replace('-', '_')}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name.replace('-', '_')}/__init__.py", "")
    return path


BINARY = {"scipy", "pillow", "kiwisolver", "contourpy", "fonttools", "matplotlib", "scikit-image"}
PLATFORM_TAGS = {
    "linux-x64": "manylinux_2_17_x86_64.manylinux2014_x86_64",
    "windows-x64": "win_amd64",
    # OpenCV 4.11.0.86's only macOS wheels are built for macOS 13
    "macos-arm64": "macosx_13_0_arm64",
    "macos-x64": "macosx_13_0_x86_64",
}


@pytest.fixture
def wheel_pool(tmp_path):
    """Wheels named as on PyPI for every needed package, plus wrong ones to skip."""
    pool = tmp_path / "pool"
    pool.mkdir()
    for platform, plat_tag in PLATFORM_TAGS.items():
        for py in build_addon.pythons_of(platform):
            for name, version in build_addon.requirements(platform, py).items():
                version = version or "1.0"
                if name == "opencv-python-headless":
                    fake_wheel(pool, name, version, f"cp37-abi3-{plat_tag}")
                elif name in BINARY:
                    fake_wheel(pool, name, version, f"cp{py}-cp{py}-{plat_tag}")
                else:
                    fake_wheel(pool, name, version, "py3-none-any")
    fake_wheel(pool, "colorama", "0.9", "py3-none-any")
    fake_wheel(pool, "numpy", "1.26.4", "cp311-cp311-win_amd64")
    fake_wheel(pool, "scipy", "0.1", "cp311-cp311-win_amd64")
    return pool


@pytest.mark.parametrize(("platform", "python"), [("linux-x64", "311"), ("windows-x64", "313")])
def test_zip_has_manifest_package_and_wheels(wheel_pool, tmp_path, platform, python):
    out = tmp_path / "dist"
    argv = ["--out", str(out), "--platform", platform, "--python", python]
    assert build_addon.main([*argv, "--wheels-from", str(wheel_pool)]) == 0
    (zpath,) = out.glob("*.zip")
    assert zpath.name == f"famous-0.1.0-{platform}-py{python}.zip"
    with zipfile.ZipFile(zpath) as zf:
        names = zf.namelist()
        manifest = tomllib.loads(zf.read("blender_manifest.toml").decode())
    assert "__init__.py" in names and "core/pipeline.py" in names and "ui/panels.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert manifest["id"] == "famous" and manifest["type"] == "add-on"
    assert manifest["platforms"] == [platform]
    assert manifest["blender_version_min"] == ("4.2.0" if python == "311" else "5.1.0")
    wheels = sorted(n for n in names if n.startswith("wheels/"))
    assert sorted(w.removeprefix("./") for w in manifest["wheels"]) == wheels
    assert len(wheels) == len(build_addon.requirements(platform, python))
    plat = "manylinux" if platform == "linux-x64" else "win_amd64"
    for w in wheels:
        assert "numpy" not in w
        assert "none-any" in w or "abi3" in w or (f"cp{python}-cp{python}" in w and plat in w)
    # OpenCV for the NumPy of that Blender: 1.26 up to 5.0, 2 from 5.1 on
    opencv = "4.11.0.86" if python == "311" else "4.14.0.94"
    assert any(w.startswith(f"wheels/opencv_python_headless-{opencv}-cp37-abi3") for w in wheels)
    if platform == "windows-x64":
        # tqdm needs colorama on Windows only; unpinned, the newest wheel is taken.
        assert "wheels/colorama-1.0-py3-none-any.whl" in wheels


def test_every_platform_is_built_and_passes_blenders_validator(wheel_pool, tmp_path, capsys):
    out = tmp_path / "dist"
    assert build_addon.main(["--out", str(out), "--wheels-from", str(wheel_pool)]) == 0
    names = sorted(p.name for p in out.glob("*.zip"))
    assert names == [
        "famous-0.1.0-linux-x64-py311.zip",
        "famous-0.1.0-linux-x64-py313.zip",
        "famous-0.1.0-macos-arm64-py311.zip",
        "famous-0.1.0-macos-arm64-py313.zip",
        "famous-0.1.0-macos-x64-py311.zip",  # Blender 4.5 is the last for Intel Macs
        "famous-0.1.0-windows-x64-py311.zip",
        "famous-0.1.0-windows-x64-py313.zip",
    ]
    assert "no zip for windows-arm64" in capsys.readouterr().out
    ext = build_addon.blender_ext()
    assert ext is not None, "Blender's extension tool comes with the bpy wheel"
    for zpath in out.glob("*.zip"):
        manifest = ext.pkg_manifest_from_archive_and_validate(str(zpath), strict=True)
        assert not isinstance(manifest, str), manifest
        (platform,) = manifest.platforms
        assert zpath.name.split("-")[2] == platform.split("-")[0]
        for wheel in manifest.wheels:
            # Blender's reading of the wheel's tag: the zip's platform, or any
            assert ext.blender_platform_compatible_with_wheel_platform_from_filepath(
                platform, wheel
            )
        if platform == "macos-x64":
            assert manifest.blender_version_max == "5.0.0"


def test_a_wheel_of_another_platform_fails_validation(wheel_pool, tmp_path):
    wheels = [next(wheel_pool.glob("scipy-*win_amd64.whl"))]
    path = build_addon.build_zip(tmp_path, "linux-x64", "311", wheels)
    with pytest.raises(build_addon.BuildError, match="not for linux-x64"):
        build_addon.validate(path)


def test_a_platform_that_fails_is_named_and_the_others_are_built(wheel_pool, tmp_path, capsys):
    for w in wheel_pool.glob("scipy-*macosx*arm64*"):
        w.unlink()
    argv = ["--out", str(tmp_path), "--python", "311", "--wheels-from", str(wheel_pool)]
    assert build_addon.main(argv) == 1
    printed = capsys.readouterr()
    assert "NOT BUILT  macos-arm64 py311: no macos-arm64 cp311 wheel for scipy" in printed.out
    built = sorted(
        p.name.split("-")[2] + "-" + p.name.split("-")[3] for p in tmp_path.glob("*.zip")
    )
    assert built == ["linux-x64", "macos-x64", "windows-x64"]


@pytest.mark.parametrize("platform", sorted(build_addon.PLATFORMS))
def test_platform_tags_are_the_ones_pip_downloads_for(platform):
    """A zip accepts every tag pip takes for the tags it is given (the macOS build once
    asked pip for macOS 12 wheels, and OpenCV has only macOS 13's)."""
    cmd = [sys.executable, "-m", "pip", "debug", "--verbose", "--python-version", "3.11"]
    cmd += ["--implementation", "cp", "--abi", "cp311"]
    for tag in build_addon.PIP_PLATFORMS[platform]:
        cmd += ["--platform", tag]
    text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    tags = text.split("Compatible tags:", 1)[1].splitlines()[1:]
    pips = {t.strip().split("-")[2] for t in tags if t.strip()} - {"any"}
    # Blender's installer reads only these machine names from a wheel's tag (older pips
    # also list fat32 and such for Intel Macs; no wheel we need is built so)
    machines = ("_x86_64", "_arm64", "_universal2", "win_amd64")
    assert {t for t in pips if t.endswith(machines)} <= set(build_addon.PLATFORMS[platform])


def test_without_wheels(tmp_path):
    assert build_addon.main(["--out", str(tmp_path), "--platform", "linux-x64", "--no-wheels"]) == 0
    for zpath in tmp_path.glob("*.zip"):
        with zipfile.ZipFile(zpath) as zf:
            assert "wheels" not in tomllib.loads(zf.read("blender_manifest.toml").decode())


def test_every_import_is_bundled_or_explained():
    """A new third-party import in the add-on must be bundled (or say why not)."""
    known = set(build_addon.requirements("linux-x64", "311")) | set(build_addon.NOT_BUNDLED)
    missing = {}
    for path in (ROOT / "famous_addon").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for mod in mods:
                top = mod.split(".")[0]
                if top in sys.stdlib_module_names or top == "famous_addon":
                    continue
                if build_addon.IMPORT_NAMES.get(top, top).replace("_", "-") not in known:
                    missing.setdefault(top, path.name)
    assert not missing, f"add to BUNDLED or NOT_BUNDLED in build_addon.py: {missing}"
