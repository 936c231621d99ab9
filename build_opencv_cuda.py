"""Build OpenCV 4.11 with the CUDA backend of its DNN module, for GPU detection.

OpenCV's wheels on PyPI have no CUDA, so ``famous run --backend cuda`` falls
back to the CPU with them. This script builds the modules FAMOUS uses (core,
imgproc, imgcodecs with PNG and JPEG, dnn) with CUDA and cuDNN into a ``cv2``
package for one Python, with no CUDA toolkit on the machine: nvcc, the CUDA
runtime, cuBLAS, cuDNN and NPP come from NVIDIA's CUDA 13.0 wheels on PyPI,
the OpenCV source from the sdist of ``opencv-contrib-python-headless``
4.11.0.86 (checked against its SHA-256). CUDA 13 dropped some fields of
``cudaDeviceProp`` and NPP's ``nppGetStreamContext`` that OpenCV 4.11 still
uses: the source is patched to read them through ``cudaDeviceGetAttribute``.

The result, in ``--out``: ``cv2/`` (the module) and ``nvidia/`` (cuBLAS and
cuDNN, found by the module through its RPATH). Use it in place of the pip
wheel by putting ``--out`` first on ``PYTHONPATH``::

    python build_opencv_cuda.py --arch 8.6 --python .venv/bin/python --out opencv_cuda
    PYTHONPATH=opencv_cuda .venv/bin/python -c \\
        "import cv2; print(cv2.cuda.getCudaEnabledDeviceCount())"
    PYTHONPATH=opencv_cuda .venv/bin/famous run ... --backend cuda

``--arch`` is the GPU's compute capability (``nvidia-smi
--query-gpu=compute_cap --format=csv``); CUDA 13 builds for 7.5 (Turing) and
newer. Needs CMake, Ninja and a C++17 compiler; measured on 2 cores: 1.1 GB
downloaded, 12 minutes of build, 3.2 GB of disk in ``--work``. Linux x86-64
only.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import urllib.request
import zipfile
from pathlib import Path

OPENCV_SDIST = (
    "https://files.pythonhosted.org/packages/53/cc/"
    "295e9a4e783ca71ba1b8fbd34e51bc603eba4611afcfc7de1b09b2d6ed8d/"
    "opencv-contrib-python-headless-4.11.0.86.tar.gz"
)
OPENCV_SHA256 = "839319098a73264c580c97cb1ca835f7fce3d30e4fa9fa6d4d0618fff551be0b"
# CUDA 13.0, the oldest 13.x: its runtime runs on every driver that runs 13.x.
CUDA_WHEELS = [
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-nvvm==13.0.88",
    "nvidia-cuda-cccl==13.0.85",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cublas==13.0.2.14",
    "nvidia-npp==13.0.3.3",
    "nvidia-cudnn-cu13==9.13.1.26",
]
# What the module loads at run time; everything else is linked statically.
RUNTIME_LIBS = ("cu13/lib/libcublas*.so.*", "cudnn/lib/libcudnn*.so.*")
# cudaDeviceProp fields removed in CUDA 13 -> the attribute that replaces each.
REMOVED_FIELDS = {
    "clockRate": "cudaDevAttrClockRate",
    "kernelExecTimeoutEnabled": "cudaDevAttrKernelExecTimeout",
    "computeMode": "cudaDevAttrComputeMode",
    "maxTexture1DLinear": "cudaDevAttrMaxTexture1DLinearWidth",
    "memoryClockRate": "cudaDevAttrMemoryClockRate",
    "deviceOverlap": "cudaDevAttrGpuOverlap",
}


def run(cmd: list[str], **kwargs) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run(cmd, check=True, **kwargs)


def toolkit(work: Path) -> Path:
    """NVIDIA's wheels unpacked into ``work/tk/nvidia`` (``cu13/`` is the toolkit root)."""
    root = work / "tk" / "nvidia"
    if (root / "cu13" / "bin" / "nvcc").is_file():
        return root
    wheels = work / "dl"
    run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--platform", "manylinux_2_27_x86_64", "--platform", "manylinux2014_x86_64",
         "--platform", "manylinux2010_x86_64", "-d", wheels, *CUDA_WHEELS]
    )  # fmt: skip
    for wheel in sorted(wheels.glob("nvidia_*.whl")):
        with zipfile.ZipFile(wheel) as z:
            z.extractall(work / "tk")
    for exe in [*root.glob("cu13/bin/*"), *root.glob("cu13/nvvm/bin/*")]:
        if exe.is_file():
            exe.chmod(0o755)
    # CMake's FindCUDA looks for unversioned libraries and for lib64/
    for lib in [*root.glob("cu13/lib/lib*.so.*"), *root.glob("cudnn/lib/lib*.so.*")]:
        link = lib.with_name(lib.name.split(".so")[0] + ".so")
        if not link.exists():
            link.symlink_to(lib.name)
    if not (root / "cu13" / "lib64").exists():
        (root / "cu13" / "lib64").symlink_to("lib")
    return root


def opencv_source(work: Path) -> Path:
    """The OpenCV sdist unpacked in ``work`` and patched for CUDA 13."""
    src = work / "opencv-contrib-python-headless-4.11.0.86"
    if not src.is_dir():
        archive = work / "opencv.tar.gz"
        if not archive.is_file():
            print("downloading", OPENCV_SDIST, flush=True)
            urllib.request.urlretrieve(OPENCV_SDIST, archive)
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if digest != OPENCV_SHA256:
            archive.unlink()
            sys.exit(f"{archive}: SHA-256 {digest}, expected {OPENCV_SHA256}; run again.")
        with tarfile.open(archive) as tar:
            tar.extractall(work, filter="data")
    patch_for_cuda13(src / "opencv")
    return src


def patch_for_cuda13(opencv: Path) -> None:
    """Read the device properties CUDA 13 removed through ``cudaDeviceGetAttribute``."""
    info = opencv / "modules/core/src/cuda_info.cpp"
    text = info.read_text()
    if "cudaAttrInt" not in text:
        helper = (
            "namespace\n{\n    int cudaAttrInt(cudaDeviceAttr attr, int dev)\n    {\n"
            "        int value = 0;\n"
            "        cudaSafeCall( cudaDeviceGetAttribute(&value, attr, dev) );\n"
            "        return value;\n    }\n}\n\n"
        )
        anchor = "namespace\n{\n    class DeviceProps\n"
        text = text.replace(anchor, helper + anchor, 1)
        for field, attr in REMOVED_FIELDS.items():
            text = text.replace(
                f"deviceProps().get(device_id_)->{field}", f"cudaAttrInt({attr}, device_id_)"
            )
            text = re.sub(rf"\bprop\.{field}\b", f"cudaAttrInt({attr}, dev)", text)
        info.write_text(text)
    header = opencv / "modules/core/include/opencv2/core/private.cuda.hpp"
    text = header.read_text()
    old = "            nppSafeCall(nppGetStreamContext(&nppStreamContext));\n"
    fields = {
        "nMultiProcessorCount": "multiProcessorCount",
        "nMaxThreadsPerMultiProcessor": "maxThreadsPerMultiProcessor",
        "nMaxThreadsPerBlock": "maxThreadsPerBlock",
        "nSharedMemPerBlock": "sharedMemPerBlock",
        "nCudaDevAttrComputeCapabilityMajor": "major",
        "nCudaDevAttrComputeCapabilityMinor": "minor",
    }
    new = (
        "            cudaSafeCall(cudaGetDevice(&nppStreamContext.nCudaDeviceId));\n"
        "            cudaDeviceProp prop;\n"
        "            cudaSafeCall(cudaGetDeviceProperties(&prop,"
        " nppStreamContext.nCudaDeviceId));\n"
        + "".join(f"            nppStreamContext.{k} = prop.{v};\n" for k, v in fields.items())
    )
    header.write_text(text.replace(old, new))


def python_paths(python: str) -> dict[str, str]:
    """The Python's executable, header folder, NumPy header folder and version."""
    code = (
        "import sysconfig, numpy; p = sysconfig.get_paths(); "
        "print(p['include']); print(numpy.get_include()); "
        "print(sysconfig.get_config_var('py_version_short'))"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if out.returncode:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        sys.exit(f"{python} cannot report its headers and NumPy ({last}): install numpy in it.")
    include, numpy_include, version = out.stdout.split()
    if not (Path(include) / "Python.h").is_file():
        sys.exit(
            f"{include}/Python.h not found: install the development headers of Python "
            f"{version} (Debian/Ubuntu: apt install python{version}-dev) and run again."
        )
    return {"executable": python, "include": include, "numpy": numpy_include, "version": version}


def configure(src: Path, build: Path, tk: Path, arch: str, py: dict[str, str], out: Path) -> None:
    off = (
        "OPENCL IPP LAPACK EIGEN FFMPEG GSTREAMER V4L GTK QT OPENEXR TIFF WEBP "
        "OPENJPEG JASPER ADE VA VA_INTEL 1394 OBSENSOR KLEIDICV FLATBUFFERS TBB OPENMP CUFFT "
        "NVCUVID NVCUVENC"
    )
    # the module finds cuBLAS and cuDNN in out/nvidia, two folders up from cv2/python-3.x/
    rpath = "$ORIGIN/../../nvidia/cu13/lib:$ORIGIN/../../nvidia/cudnn/lib"
    build.mkdir(parents=True, exist_ok=True)
    run(
        ["cmake", "-G", "Ninja", src / "opencv",
         "-DCMAKE_BUILD_TYPE=Release", "-DCMAKE_CXX_STANDARD=17",
         "-DCUDA_NVCC_FLAGS=--std=c++17",  # CUDA 13's Thrust needs C++17
         f"-DOPENCV_EXTRA_MODULES_PATH={src / 'opencv_contrib/modules/cudev'}",
         "-DBUILD_LIST=core,imgproc,imgcodecs,dnn,cudev,python3",
         "-DWITH_PNG=ON", "-DBUILD_PNG=ON", "-DWITH_JPEG=ON", "-DBUILD_JPEG=ON",
         "-DWITH_CUDA=ON", "-DWITH_CUDNN=ON", "-DOPENCV_DNN_CUDA=ON", "-DWITH_CUBLAS=ON",
         f"-DCUDA_ARCH_BIN={arch}", "-DCUDA_ARCH_PTX=", f"-DCUDA_TOOLKIT_ROOT_DIR={tk / 'cu13'}",
         f"-DCUDNN_LIBRARY={tk / 'cudnn/lib/libcudnn.so'}",
         f"-DCUDNN_INCLUDE_DIR={tk / 'cudnn/include'}",
         # NPP is linked by core but not used by these modules: leave it out of the module
         "-DCMAKE_SHARED_LINKER_FLAGS=-Wl,--as-needed",
         "-DCMAKE_MODULE_LINKER_FLAGS=-Wl,--as-needed",
         f"-DCMAKE_INSTALL_RPATH={rpath}",
         "-DBUILD_SHARED_LIBS=OFF", "-DBUILD_TESTS=OFF", "-DBUILD_PERF_TESTS=OFF",
         "-DBUILD_EXAMPLES=OFF", "-DBUILD_opencv_apps=OFF", "-DBUILD_DOCS=OFF",
         "-DBUILD_JAVA=OFF", "-DBUILD_opencv_python2=OFF",
         *(f"-DWITH_{name}=OFF" for name in off.split()),
         f"-DPYTHON3_EXECUTABLE={py['executable']}", f"-DPYTHON3_INCLUDE_DIR={py['include']}",
         f"-DPYTHON3_NUMPY_INCLUDE_DIRS={py['numpy']}",
         f"-DOPENCV_PYTHON3_INSTALL_PATH={out}", f"-DCMAKE_INSTALL_PREFIX={build / 'install'}"],
        cwd=build,
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", required=True, help="GPU compute capability, e.g. 8.6 or 9.0")
    ap.add_argument("--python", default=sys.executable, help="the Python to build cv2 for")
    ap.add_argument("--out", type=Path, default=Path("opencv_cuda"))
    ap.add_argument("--work", type=Path, default=Path("build/opencv_cuda"))
    ap.add_argument("--jobs", type=int, default=os.cpu_count())
    args = ap.parse_args()
    if not re.fullmatch(r"\d+\.\d", args.arch):
        ap.error(f"--arch {args.arch!r}: give the compute capability as MAJOR.MINOR, e.g. 8.6")
    for tool in ("cmake", "ninja"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: install it (pip install {tool}) and run again.")
    # absolute, since CMake runs it from the build folder; not resolved, or a venv's
    # python would lose its site-packages
    python = shutil.which(args.python)
    if python is None:
        sys.exit(f"--python {args.python}: no such Python.")
    py = python_paths(os.path.abspath(python))  # before the downloads: fail early
    work, out = args.work.resolve(), args.out.resolve()
    work.mkdir(parents=True, exist_ok=True)
    tk = toolkit(work)
    src = opencv_source(work)
    # one build folder per Python: CMake caches the Python it first found
    build = work / f"build-py{py['version']}"
    configure(src, build, tk, args.arch, py, out)
    run(["ninja", "-j", str(args.jobs), "install"], cwd=build)
    # The installed loader configs name build folders; the module is static and relocatable.
    (out / "cv2" / "config.py").write_text("BINARIES_PATHS = [] + BINARIES_PATHS\n")
    for config in (out / "cv2").glob("config-3*.py"):
        version = config.stem.removeprefix("config-")
        paths = f"[LOADER_DIR + '/python-{version}'] + PYTHON_EXTENSIONS_PATHS"
        config.write_text(f"PYTHON_EXTENSIONS_PATHS = {paths}\n")
    for lib in RUNTIME_LIBS:
        for path in tk.glob(lib):
            dest = out / "nvidia" / path.relative_to(tk)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
    check = "import cv2; print(cv2.cuda.getCudaEnabledDeviceCount())"
    print(f"\nbuilt: {out}/cv2 for Python {py['version']}. Check with")
    print(f"  PYTHONPATH={out} {py['executable']} -c '{check}'")


if __name__ == "__main__":
    main()
