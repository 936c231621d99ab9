"""Bad input never gives a wrong answer, a traceback or a write outside the output folder.

Every case of the table runs ``famous`` as a user would (in-process, through
``famous_addon.cli.main``) and checks the exit status 2, one error line that
names the bad file, and that nothing half-written is left behind. The tests
after it check the inputs that used to run to a wrong result, the run
folder's lock, failed and killed runs, and output paths built from names.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile

from famous_addon.cli import main
from famous_addon.core import runfolder as rf
from famous_addon.core.errors import FamousError
from famous_addon.core.fileio import read_csv as csv_rows
from famous_addon.core.guard import FolderLock, inside, writable_folder
from famous_addon.core.phantom.write import write_phantom
from famous_addon.core.pipeline import run_pipeline
from famous_addon.core.request import RunRequest

DEMO_MODEL = Path(__file__).resolve().parents[1] / "assets" / "demo_model"


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    write_phantom(out, shape=(16, 192, 192), seed=2, stl=False)
    return out


@pytest.fixture(scope="module")
def finished(phantom, tmp_path_factory):
    """A finished run with labels, for the commands that read one."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main([*_run_args(phantom, run), "--labels"]) == 0
    return run


def _run_args(phantom, out, stack=None, classes=None, boxes=None):
    return [
        "run",
        str(stack or phantom / "stack.tif"),
        "--classes",
        str(classes or phantom / "classes.toml"),
        "--boxes",
        str(boxes or phantom / "boxes"),
        "--out",
        str(out),
    ]


def _leftovers(root: Path) -> list[Path]:
    """Temporary files of an interrupted write anywhere under ``root``."""
    return [p for p in Path(root).rglob(".*") if ".tmp" in p.name or "probe" in p.name]


def _famous_fails(argv, capsys, named) -> str:
    """Run ``famous argv``: exit 2, no traceback, one error line naming ``named``."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ": error: " in ln]
    assert len(errors) == 1, err
    # the line itself, after the progress bar's carriage returns
    line = errors[0].split("\r")[-1]
    assert line.startswith(f"famous {argv[0]}: error: "), line
    assert str(named) in line, line
    return line


# ---------------------------------------------------------------- the cases
# Each builder makes its bad input under `tmp` and returns (argv, file named, pattern).


def _stack_case(tmp, phantom, stack, pattern, extra=()):
    return [*_run_args(phantom, tmp / "out", stack=stack), *extra], stack, pattern


def _cut_tiff(tmp, phantom, keep):
    data = (phantom / "stack.tif").read_bytes()
    cut = tmp / "cut.tif"
    cut.write_bytes(data[: keep(len(data))])
    return cut


def _generic_cut(tmp, phantom):
    whole = tmp / "generic.tif"
    tifffile.imwrite(whole, tifffile.imread(phantom / "stack.tif"), metadata=None)
    data = whole.read_bytes()
    cut = tmp / "gcut.tif"
    cut.write_bytes(data[: len(data) // 2])
    return _stack_case(tmp, phantom, cut, "page chain breaks", ["--voxel-size", 10, 10, 10])


def _hyperstack(tmp, phantom, extra=()):
    stack = tifffile.imread(phantom / "stack.tif")
    path = tmp / "hyper.tif"
    tifffile.imwrite(path, np.stack([stack, stack], 1), imagej=True, metadata={"axes": "ZCYX"})
    pattern = "hyperstack with 2 channels" if not extra else "has no channel 5"
    return _stack_case(tmp, phantom, path, pattern, ["--voxel-size", 10, 10, 10, *extra])


def _png_folder_with_channel(tmp, phantom):
    folder = tmp / "slices"
    folder.mkdir()
    for k, img in enumerate(tifffile.imread(phantom / "stack.tif")):
        tifffile.imwrite(folder / f"s{k}.tif", img)
    return _stack_case(tmp, phantom, folder, "one channel", ["--channel", 1])


def _all_nan(tmp, phantom):
    path = tmp / "nan.tif"
    tifffile.imwrite(path, np.full((16, 192, 192), np.nan, np.float32), photometric="minisblack")
    return _stack_case(tmp, phantom, path, "no finite grey value", ["--voxel-size", 10, 10, 10])


def _text_as_tiff(tmp, phantom):
    path = tmp / "notes.tif"
    path.write_text("not an image")
    return _stack_case(tmp, phantom, path, "cannot be read as a TIFF")


def _box_case(tmp, phantom, text: str | bytes, pattern, name="slice_00003.txt"):
    boxes = tmp / "boxes"
    shutil.copytree(phantom / "boxes", boxes)
    path = boxes / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    # a file that belongs to no slice is named as folder and file, its lines as the file
    named = f"{boxes}: {name}" if name != "slice_00003.txt" else path
    return _run_args(phantom, tmp / "out", boxes=boxes), named, pattern


def _class_case(tmp, phantom, text: str | bytes, pattern, name="classes.toml"):
    path = tmp / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return _run_args(phantom, tmp / "out", classes=path), path, pattern


def _toml_with(phantom, old, new):
    text = (phantom / "classes.toml").read_text()
    assert old in text
    return text.replace(old, new, 1)


def _model_case(tmp, phantom, edit, pattern):
    model = tmp / "model"
    shutil.copytree(DEMO_MODEL, model)
    named = edit(model)
    argv = [
        "run",
        str(phantom / "stack.tif"),
        "--classes",
        str(model / "classes.toml"),
        "--model",
        str(model),
        "--out",
        str(tmp / "out"),
    ]
    return argv, named, pattern


def _cfg_groups_zero(model):
    cfg = model / "model.cfg"
    cfg.write_text(cfg.read_text().replace("groups=2", "groups=0", 1))
    return cfg


def _thresholds(model, change):
    path = model / "thresholds.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data)))
    return path


def _other_weights(model):
    """Weights of the same network trained otherwise: the right size, other values."""
    path = model / "model.weights"
    data = np.fromfile(path, np.uint8)
    params = data[20:].view("<f4")
    params[:] = np.random.default_rng(0).permutation(params)
    path.write_bytes(data.tobytes())
    return path


def _checksum_text(model):
    path = model / "model.weights.sha256"
    path.write_text("not a checksum\n")
    return path


def _out_under_file(tmp, phantom):
    (tmp / "afile").write_text("precious")
    return _run_args(phantom, tmp / "afile" / "run"), tmp / "afile", "file, not a folder|Not a dir"


def _out_is_file(tmp, phantom, command, finished):
    path = tmp / "afile"
    path.write_text("precious")
    argv = {
        "run": _run_args(phantom, path),
        "compare": ["compare", finished, phantom / "truth_labels.tif", "--out", path],
        "quantify": ["quantify", finished, "--out", path],
    }[command]
    return argv, path, "is a file, not a folder"


def _damaged_run_json(tmp, finished, text):
    run = tmp / "run"
    shutil.copytree(finished, run)
    (run / "run.json").write_text(text)
    return ["quantify", run, "--out", tmp / "q"], run / "run.json", None


def _evil_run_json(tmp, finished):
    run = tmp / "run"
    shutil.copytree(finished, run)
    info = json.loads((run / "run.json").read_text())
    info["classes"]["class"][0]["name"] = "../../escaped"
    (run / "run.json").write_text(json.dumps(info))
    return ["quantify", run, "--out", tmp / "q"], run / "run.json", "class name '../../escaped'"


CASES = {
    # stacks
    "stack missing": lambda t, p: _stack_case(t, p, t / "nope.tif", "not found"),
    "stack format unknown": lambda t, p: _stack_case(t, p, p / "truth.csv", "unknown stack format"),
    "stack not a tiff": _text_as_tiff,
    "imagej tiff cut in half": lambda t, p: _stack_case(
        t, p, _cut_tiff(t, p, lambda n: n // 2), "ImageJ header says 16 images"
    ),
    "imagej tiff cut at the end": lambda t, p: _stack_case(
        t, p, _cut_tiff(t, p, lambda n: n - 40), "truncated|cannot be read"
    ),
    "generic tiff cut in half": _generic_cut,
    "hyperstack without channel": _hyperstack,
    "hyperstack channel out of range": lambda t, p: _hyperstack(t, p, ["--channel", 5]),
    "channel of a folder": _png_folder_with_channel,
    "float stack all nan": _all_nan,
    # boxes
    "box file not utf-8": lambda t, p: _box_case(t, p, b"\xff\xfe0 .5 .5 .1 .1\n", "not UTF-8"),
    "zero-size box": lambda t, p: _box_case(t, p, "2 .5 .5 0 0\n", "line 1: .*covers no pixel"),
    "sliver past the edge": lambda t, p: _box_case(
        t, p, "0 .5 .5 .1 .1\n2 1.0009 .5 .0002 .1\n", "line 2: .*covers no pixel"
    ),
    "box nan": lambda t, p: _box_case(t, p, "2 nan .5 .1 .1\n", "not in \\[0, 1\\]"),
    "box class id": lambda t, p: _box_case(t, p, "7 .5 .5 .1 .1\n", "class id 7"),
    "box four fields": lambda t, p: _box_case(t, p, "2 .5 .5 .1\n", "4 fields"),
    "box score text": lambda t, p: _box_case(t, p, "2 .5 .5 .1 .1 high\n", "not numeric"),
    "box score above 1": lambda t, p: _box_case(t, p, "2 .5 .5 .1 .1 7\n", "score 7"),
    "box beyond the stack": lambda t, p: _box_case(
        t, p, "2 .5 .5 .1 .1\n", "names slice 99", name="slice_00099.txt"
    ),
    # class configs
    "toml bytes": lambda t, p: _class_case(t, p, b"\xff\xfe\x00\x01garbage", "not UTF-8"),
    "toml [class]": lambda t, p: _class_case(
        t, p, '[class]\nname = "a"\n', "\\[class\\] \\(one table\\)"
    ),
    "toml class = -6": lambda t, p: _class_case(t, p, "class = -6\n", "not a list of"),
    "toml quoted number": lambda t, p: _class_case(
        t, p, _toml_with(p, "blur_nm = 50.0", 'blur_nm = "50"'), "blur_nm = '50' is not a"
    ),
    "toml threshold_offset text": lambda t, p: _class_case(
        t,
        p,
        _toml_with(p, "threshold_offset = 0.5", 'threshold_offset = "x"'),
        "threshold_offset = 'x'",
    ),
    "toml extract a number": lambda t, p: _class_case(
        t, p, '[[class]]\nname = "a"\nextract = 1.5e16\n', "extract = 1.5e\\+16 is not a table"
    ),
    "toml number out of range": lambda t, p: _class_case(
        t, p, _toml_with(p, "blur_nm = 50.0", "blur_nm = 1.5e16"), "out of range"
    ),
    "toml mesh a list": lambda t, p: _class_case(
        t, p, '[[class]]\nname = "a"\nmesh = ["hull"]\n', "mesh = \\['hull'\\] is not a table"
    ),
    "toml iterations fraction": lambda t, p: _class_case(
        t, p, _toml_with(p, "iterations = 1", "iterations = 1.5"), "not a whole number"
    ),
    "toml bool as text": lambda t, p: _class_case(
        t, p, _toml_with(p, "fill_holes = true", 'fill_holes = "yes"'), "not true or false"
    ),
    "toml unknown class key": lambda t, p: _class_case(
        t, p, '[[class]]\nname = "a"\ncolour = "#ffffff"\n', "unknown key\\(s\\) colour"
    ),
    "class name with slash": lambda t, p: _class_case(
        t, p, '[[class]]\nname = "../../up"\n', "class name '../../up'"
    ),
    "class name with backslash": lambda t, p: _class_case(
        t, p, '[[class]]\nname = "a\\\\b"\n', "path separator"
    ),
    "class name with dots": lambda t, p: _class_case(
        t, p, '[[class]]\nname = "..hidden"\n', "'..' or a leading '.'"
    ),
    "obj.names escaping": lambda t, p: _class_case(t, p, "mito\n../x\n", "'../x'", "obj.names"),
    "obj.names not utf-8": lambda t, p: _class_case(t, p, b"mito\n\xff\n", "UTF-8", "obj.names"),
    "json config with nan": lambda t, p: _class_case(
        t,
        p,
        '{"class": [{"name": "a", "extract": {"blur_nm": NaN}}]}',
        "is not a number",
        "c.json",
    ),
    # models
    "cfg groups=0": lambda t, p: _model_case(t, p, _cfg_groups_zero, "groups=0 must be"),
    "thresholds score text": lambda t, p: _model_case(
        t,
        p,
        lambda m: _thresholds(m, lambda d: {**d, "score_thresholds": {"nucleus": "high"}}),
        "score_thresholds of 'nucleus' 'high'",
    ),
    "thresholds not an object": lambda t, p: _model_case(
        t, p, lambda m: _thresholds(m, lambda d: [1, 2]), "not a JSON object"
    ),
    "thresholds nms text": lambda t, p: _model_case(
        t, p, lambda m: _thresholds(m, lambda d: {**d, "nms_iou": "0.4"}), "nms_iou '0.4'"
    ),
    "weights of another training": lambda t, p: _model_case(
        t, p, _other_weights, "not the file this model folder was trained with"
    ),
    "weights checksum not hex": lambda t, p: _model_case(
        t, p, _checksum_text, "not a SHA-256 checksum"
    ),
    # output folders and options
    "run --out under a file": _out_under_file,
    "workers 0": lambda t, p: ([*_run_args(p, t / "out"), "--workers", 0], "workers 0", "1"),
    "workers negative": lambda t, p: ([*_run_args(p, t / "out"), "--workers", -3], "workers", ""),
    "phantom too small": lambda t, p: (
        ["phantom", t / "out", "--shape", 16, 128, 128],
        "at least 150 pixels",
        "1.5 µm",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_input_gives_one_line_naming_it_and_leaves_nothing(case, phantom, tmp_path, capsys):
    argv, named, pattern = CASES[case](tmp_path, phantom)
    line = _famous_fails(argv, capsys, named)
    if pattern:
        assert re.search(pattern, line), line
    assert not (tmp_path / "out").exists(), "a refused run must not create its folder"
    assert not _leftovers(tmp_path)


@pytest.mark.parametrize("command", ["run", "compare", "quantify"])
def test_an_out_that_is_a_file_is_refused_and_kept(command, phantom, finished, tmp_path, capsys):
    argv, path, pattern = _out_is_file(tmp_path, phantom, command, finished)
    assert pattern in _famous_fails(argv, capsys, path)
    assert path.read_text() == "precious"


@pytest.mark.skipif(os.name == "nt" or os.geteuid() == 0, reason="root writes anywhere")
@pytest.mark.parametrize("command", ["run", "compare", "quantify"])
def test_a_read_only_out_is_refused(command, phantom, finished, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        argv, _, _ = _out_is_file(tmp_path, phantom, command, finished)
        argv[argv.index(tmp_path / "afile")] = ro
        assert "cannot be written" in _famous_fails(argv, capsys, ro)
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize(
    "text, pattern",
    [("{not json", "not valid JSON"), ("[1, 2]", "not a JSON object"), (b"\xff\xff", "UTF-8")],
)
def test_a_damaged_run_json_is_named(text, pattern, finished, tmp_path, capsys):
    argv, path, _ = _damaged_run_json(tmp_path, finished, "")
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert pattern in _famous_fails(argv, capsys, path)
    assert not (tmp_path / "q" / "classes.csv").exists()


def test_a_class_name_in_run_json_cannot_reach_a_path(finished, tmp_path, capsys):
    argv, path, pattern = _evil_run_json(tmp_path, finished)
    assert pattern in _famous_fails(argv, capsys, path)
    assert not list(tmp_path.rglob("escaped*"))


def test_a_bad_slice_list_is_one_line(phantom, tmp_path, capsys):
    argv = ["boxes-from-labels", phantom / "truth_labels.tif", "--out", tmp_path / "b"]
    for bad in ("1:2:3:4", "0-99999999999", "0:9:0"):
        _famous_fails([*argv, "--slices", bad], capsys, bad if ":" in bad else "99999999999")


# ------------------------------------------------- inputs that gave wrong answers


def _counts(capsys_out: str) -> dict[str, int]:
    rows = [ln.split() for ln in capsys_out.splitlines()]
    names = ("early_endosome", "late_endosome", "mitochondria", "lysosome", "nucleus")
    return {r[0]: int(r[1]) for r in rows if len(r) == 2 and r[0] in names}


@pytest.fixture(scope="module")
def plain_counts(phantom, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "run"
    request = RunRequest(
        phantom / "stack.tif", phantom / "classes.toml", out, boxes=phantom / "boxes"
    )
    return run_pipeline(request).counts


def test_one_nan_in_a_float_stack_keeps_every_class(phantom, plain_counts, tmp_path, capsys):
    stack = tifffile.imread(phantom / "stack.tif").astype(np.float32)
    stack[3, 5, 5] = np.nan
    stack[9, 7, 7] = -np.inf
    path = tmp_path / "float.tif"
    tifffile.imwrite(path, stack, photometric="minisblack")
    out = tmp_path / "run"
    args = _run_args(phantom, out, stack=path)
    assert main([*args, "--voxel-size", "10", "10", "10"]) == 0
    printed = capsys.readouterr().out
    assert "note: 2 non-finite values" in printed
    assert _counts(printed) == plain_counts

    def refuse(name):
        raise ValueError(f"bare {name} in run.json")

    info = json.loads((out / "run.json").read_text(), parse_constant=refuse)
    lo, hi = info["input"]["intensity_window"]
    assert 0 <= lo < hi <= 255


def test_slices_tagged_as_channels_run_as_slices(phantom, plain_counts, tmp_path, capsys):
    path = tmp_path / "channels.tif"
    stack = tifffile.imread(phantom / "stack.tif")
    tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "CYX"})
    args = [*_run_args(phantom, tmp_path / "run", stack=path), "--voxel-size", "10", "10", "10"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "note: the file's 16 images are tagged as channels" in printed
    assert _counts(printed) == plain_counts


def test_the_chosen_channel_of_a_hyperstack_is_used_and_said(
    phantom, plain_counts, tmp_path, capsys
):
    stack = tifffile.imread(phantom / "stack.tif")
    noise = np.random.default_rng(0).integers(0, 256, stack.shape, dtype=np.uint8)
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, np.stack([noise, stack], 1), imagej=True, metadata={"axes": "ZCYX"})
    args = [*_run_args(phantom, tmp_path / "run", stack=path), "--voxel-size", "10", "10", "10"]
    assert main([*args, "--channel", "1"]) == 0
    printed = capsys.readouterr().out
    assert "note: channel 1 of 2 used" in printed
    assert _counts(printed) == plain_counts
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["fingerprint"]["channel"] == 1 and "channel 1 of 2 used" in info["input"]["notes"]


def test_a_phantom_of_the_smallest_size_is_made(tmp_path, capsys):
    assert main(["phantom", str(tmp_path / "p"), "--shape", "4", "150", "150"]) == 0
    assert tifffile.imread(tmp_path / "p" / "stack.tif").shape == (4, 150, 150)


# ------------------------------------------------------- the run folder's life


def test_a_second_run_on_a_locked_folder_is_refused(phantom, finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = (run / "run.json").read_bytes()
    with FolderLock(run):
        line = _famous_fails([*_run_args(phantom, run), "--resume"], capsys, run)
        assert "another FAMOUS run is writing this folder" in line
        with pytest.raises(FamousError, match="another FAMOUS run"):
            FolderLock(run).acquire()
    assert (run / "run.json").read_bytes() == before
    assert main([*_run_args(phantom, run), "--resume"]) == 0  # the lock went with its holder
    assert not (run / ".famous.lock").exists()


def test_a_lock_held_by_another_process_is_refused(phantom, finished, tmp_path, capsys):
    import subprocess  # only this test starts a second process

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from famous_addon.core.guard import FolderLock; "
            f"lock = FolderLock({str(run)!r}).acquire(); print('held', flush=True); "
            "sys.stdin.readline()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert "another FAMOUS run" in _famous_fails(
            [*_run_args(phantom, run), "--resume"], capsys, run
        )
    finally:
        holder.kill()  # killed, not released: the OS frees the lock
        holder.wait()
    assert main([*_run_args(phantom, run), "--resume"]) == 0


def test_a_failed_run_says_so_and_resumes_once_fixed(phantom, finished, tmp_path, capsys):
    out = tmp_path / "run"
    request = RunRequest(
        phantom / "stack.tif", phantom / "classes.toml", out, boxes=phantom / "boxes", labels=True
    )

    def disk_full(fraction, message):
        if message.startswith("linking"):
            raise FamousError("no space left on the disk.", out, "free some space.")

    with pytest.raises(FamousError, match="no space left"):
        run_pipeline(request, progress=disk_full)
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed" and "no space left" in info["error"]
    with pytest.raises(FamousError, match="this run failed"):
        rf.RunFolder(out)
    line = _famous_fails([*_run_args(phantom, out), "--labels"], capsys, out)
    assert "a failed run" in line and "--resume" in line
    assert main([*_run_args(phantom, out), "--labels", "--resume"]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "complete" and "error" not in info
    for name in ("organelles.csv", "detections.csv"):
        assert (out / name).read_bytes() == (finished / name).read_bytes()
    assert np.array_equal(
        tifffile.imread(out / "labels.tif"), tifffile.imread(finished / "labels.tif")
    )


def test_a_run_killed_while_writing_labels_resumes_clean(phantom, finished, tmp_path):
    out = tmp_path / "run"
    request = RunRequest(
        phantom / "stack.tif", phantom / "classes.toml", out, boxes=phantom / "boxes", labels=True
    )

    def killed(fraction, message):
        if fraction >= 0.85:
            # what a kill -9 while labels.tif is written leaves: the writer's temporary file
            (out / ".labels.k1ll3d.tmp.tif").write_bytes(b"II*\x00half")
            (out / "cache" / ".slice_00003.npz.x.tmp").write_bytes(b"half")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_pipeline(request, progress=killed)
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    assert not (out / ".famous.lock").exists()
    run_pipeline(replace(request, resume=True))
    assert not _leftovers(out)
    assert np.array_equal(
        tifffile.imread(out / "labels.tif"), tifffile.imread(finished / "labels.tif")
    )


def test_a_resume_without_labels_rewrites_the_labels_that_are_there(phantom, tmp_path):
    out = tmp_path / "run"
    assert main([*_run_args(phantom, out), "--labels"]) == 0
    # other linking settings, no --labels: the old labels.tif must not stay beside new tables
    assert main([*_run_args(phantom, out), "--resume", "--no-merge", "--min-slices", "1"]) == 0
    labels = tifffile.imread(out / "labels.tif")
    ids = {o["id"] for o in rf.RunFolder(out).organelles()}
    assert set(np.unique(labels)) - {0} == ids


def test_a_resume_leaves_no_measurements_of_the_labels_it_replaced(phantom, tmp_path):
    out = tmp_path / "run"
    assert main([*_run_args(phantom, out), "--quantify"]) == 0
    assert (out / "classes.csv").is_file() and list((out / "plots").glob("*.png"))
    assert main([*_run_args(phantom, out), "--resume", "--no-merge", "--min-slices", "1"]) == 0
    assert not (out / "classes.csv").exists() and not (out / "plots").exists()
    # measured again with the resumed run, they describe its labels
    assert main([*_run_args(phantom, out), "--resume", "--quantify"]) == 0
    n_classes = len(rf.RunFolder(out).class_names)
    assert len(list(csv_rows(out / "classes.csv"))) == n_classes


# ---------------------------------------------------------- paths from names


def test_paths_from_names_cannot_leave_the_output_folder(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    assert inside(root, "mito", "mito_1.stl") == root / "mito" / "mito_1.stl"
    for parts in (("..", "x.stl"), ("a", "..", "..", "x"), ("/etc", "passwd")):
        with pytest.raises(FamousError, match="outside the output folder"):
            inside(root, *parts)
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(FamousError, match="outside"):
        inside(root, "link", "x.stl")


def test_stls_of_a_class_named_to_escape_are_refused(tmp_path):
    from famous_addon.core.compare.stl import write_object_stls  # loads trimesh

    labels = np.zeros((6, 8, 8), np.uint16)
    labels[2:4, 2:5, 2:5] = 1
    with pytest.raises(FamousError, match="outside the output folder"):
        write_object_stls(tmp_path / "stl", labels, {1: "../../escaped"}, (0.01, 0.01, 0.01))
    assert not list(tmp_path.parent.rglob("escaped*"))


def test_writable_folder_makes_and_checks_it(tmp_path):
    assert writable_folder(tmp_path / "a" / "b").is_dir()
    (tmp_path / "f").write_text("x")
    with pytest.raises(FamousError, match="is a file"):
        writable_folder(tmp_path / "f")
    with pytest.raises(FamousError, match="cannot be written"):
        writable_folder(tmp_path / "f" / "sub")
    assert not _leftovers(tmp_path)
